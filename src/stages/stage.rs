//! The interface every stage kind implements. A stage is one unit of cached work; its
//! key covers its kind, implementation version, canonical params and the content
//! digests of its inputs — never file names, order or formatting in the recipe.

use crate::digest::{Digest, KeyHasher};
use crate::nn::DeviceSpec;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Canonical params: recipe path (`teacher.stud-size`) → canonical value text. A
/// BTreeMap, so the order they were written in never reaches the key. Made by
/// [`params_of`] from each kind's `#[derive(Serialize)]` params struct.
pub type Params = BTreeMap<String, String>;

/// Flattens a stage kind's params struct into [`Params`], one canonical way: nested
/// fields joined by `.`, list items by index (`.0`, `.1`; an empty list is `[]`),
/// strings as themselves, integers and bools in decimal, floats by their IEEE-754 bits
/// (`f64:3fe3333333333333`). So no float formatting, field order or map order ever
/// reaches a key; [`show_param`] turns a value back into what a person reads.
pub fn params_of<T: Serialize>(value: &T) -> Params {
    fn walk(path: &str, v: &serde_json::Value, out: &mut Params) {
        use serde_json::Value as V;
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            V::Object(m) => {
                for (k, v) in m {
                    walk(&join(k), v, out);
                }
            }
            V::Array(a) if a.is_empty() => {
                out.insert(path.to_string(), "[]".into());
            }
            V::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&join(&i.to_string()), v, out);
                }
            }
            V::String(s) => {
                out.insert(path.to_string(), s.clone());
            }
            V::Number(n) if n.is_f64() => {
                let bits = n.as_f64().unwrap_or(f64::NAN).to_bits();
                out.insert(path.to_string(), format!("f64:{bits:016x}"));
            }
            V::Number(n) => {
                out.insert(path.to_string(), n.to_string());
            }
            V::Bool(b) => {
                out.insert(path.to_string(), b.to_string());
            }
            V::Null => {
                out.insert(path.to_string(), "null".into());
            }
        }
    }
    let mut out = Params::new();
    // Plain data (numbers, strings, maps with string keys) always serializes.
    let value = serde_json::to_value(value).expect("stage params are plain data");
    walk("", &value, &mut out);
    out
}

/// A canonical param value as a person reads it (floats decoded from their bits).
pub fn show_param(value: &str) -> String {
    match value
        .strip_prefix("f64:")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    {
        Some(bits) => format!("{:?}", f64::from_bits(bits)),
        None => value.to_string(),
    }
}

/// Where the stage's work runs: per-item CPU work runs in parallel; heavy stages
/// (training, which parallelises inside libtorch) run alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Exclusive,
}

/// One input a stage kind reads, declared beside its outputs ([`Stage::inputs`]), so the
/// planner checks both ends of every wire before anything runs and lowering and the
/// stage spell the name once (through the port's constant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputPort {
    /// The input's name, or a pattern where `*` stands for one item's or target's name
    /// (`teacher/*`, `verify/*/check.json`): one input per item or target.
    pub pattern: &'static str,
    /// The planner must wire it, and a run finds it. An optional one may be absent (a
    /// skipped item's, one the recipe does not ask for): read with `optional_input`.
    pub required: bool,
    /// Wired to every output of one upstream stage (`InputRef::StageAll`): the stage
    /// sees `NAME/OUTPUT` for each.
    pub all: bool,
}

impl InputPort {
    pub const fn required(pattern: &'static str) -> InputPort {
        InputPort {
            pattern,
            required: true,
            all: false,
        }
    }
    pub const fn optional(pattern: &'static str) -> InputPort {
        InputPort {
            pattern,
            required: false,
            all: false,
        }
    }
    /// This optional port made required (a stage configured to read it).
    pub const fn as_required(self) -> InputPort {
        InputPort {
            required: true,
            ..self
        }
    }
    /// Every output of one upstream stage, under `pattern/`.
    pub const fn all_outputs(pattern: &'static str) -> InputPort {
        InputPort {
            pattern,
            required: true,
            all: true,
        }
    }
    /// The input's name: the pattern with each `*` replaced by `key` (an item's or a
    /// target's name); a plain name as it is.
    pub fn name(&self, key: &str) -> String {
        self.pattern.replace('*', key)
    }
    /// Whether a wired input's name is this port's.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.pattern, name)
    }
    /// Whether a name a running stage asks for is this port's (`NAME/OUTPUT` for an
    /// all-outputs port).
    fn matches_at_run(&self, name: &str) -> bool {
        if !self.all {
            return self.matches(name);
        }
        name.match_indices('/')
            .any(|(at, _)| at + 1 < name.len() && self.matches(&name[..at]))
    }
}

/// `*` matches one or more characters; everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            // At least one character for the `*`, then the rest of the pattern.
            rest.char_indices()
                .skip(1)
                .map(|(at, _)| at)
                .chain(std::iter::once(rest.len()).filter(|&n| n > 0))
                .any(|at| glob(tail, &rest[at..]))
        }
    }
}

/// Everything a running stage sees.
pub struct RunContext<'a> {
    pub stage_id: &'a str,
    /// Input name → read-only file (a cache blob or a source file).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Empty folder for the outputs; files named in `RunOutput` move into the cache.
    pub out_dir: &'a Path,
    /// Survives interrupted builds of the same key (training resumes from it).
    pub checkpoint_dir: PathBuf,
    pub cancel: &'a AtomicBool,
    pub progress: &'a (dyn Fn(Progress) + Sync),
    pub log: String,
    pub device: DeviceSpec,
    /// The stage kind's declared inputs ([`Stage::inputs`]): a name outside them is a
    /// typo, which `input` and `optional_input` report as effectc's bug.
    pub ports: &'static [InputPort],
    /// Up to how many batchable jobs may share one batch (`build --batch`).
    pub batch: usize,
    pub project_root: &'a Path,
}

impl RunContext<'_> {
    /// An input that may be absent: a whole-dataset stage's input from a per-item stage
    /// whose item was skipped (see [`RunOutput::skip`]), or one the recipe does not ask
    /// for. A name the stage kind does not declare is a typo: an error, never `None`.
    pub fn optional_input(&self, name: &str) -> Result<Option<&Path>, StageError> {
        self.declared(name)?;
        Ok(self.inputs.get(name).map(|p| p.as_path()))
    }
    pub fn input(&self, name: &str) -> Result<&Path, StageError> {
        self.declared(name)?;
        self.inputs.get(name).map(|p| p.as_path()).ok_or_else(|| {
            StageError::bug(format!("stage {} has no input `{name}`", self.stage_id))
        })
    }
    /// A JSON file an upstream stage wrote, read into its type. Bytes that do not parse
    /// are effectc's own bug (the writer and this reader disagree), not the data's.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, StageError> {
        let path = self.input(name)?;
        let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            StageError::bug(format!(
                "stage {}: input `{name}` ({}) is not the {} its upstream stage writes: {e}",
                self.stage_id,
                path.display(),
                std::any::type_name::<T>()
            ))
        })
    }
    /// The files of the upstream stage wired to an all-outputs `port` for `key` (a
    /// target's name): (the output's name, its file), in name order. A port the stage
    /// kind does not declare as all-outputs is a typo: an error.
    pub fn outputs_of(&self, port: InputPort, key: &str) -> Result<Vec<(&str, &Path)>, StageError> {
        if !port.all || !self.ports.contains(&port) {
            return Err(StageError::bug(format!(
                "stage {} reads all outputs of `{}`, which its kind does not declare",
                self.stage_id, port.pattern
            )));
        }
        let prefix = format!("{}/", port.name(key));
        Ok(self
            .inputs
            .iter()
            .filter_map(|(name, path)| Some((name.strip_prefix(&prefix)?, path.as_path())))
            .collect())
    }
    fn declared(&self, name: &str) -> Result<(), StageError> {
        if self.ports.iter().any(|p| p.matches_at_run(name)) {
            return Ok(());
        }
        Err(StageError::bug(format!(
            "stage {} reads input `{name}`, which its kind does not declare",
            self.stage_id
        )))
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct RunOutput {
    /// Output name → file in `out_dir`.
    pub files: BTreeMap<String, PathBuf>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Set by a per-item stage whose item cannot go on (a photo without a face): not a
    /// failure. The outcome is cached like any other (a record without outputs that
    /// says why), the item's later per-item stages do not run, and whole-dataset stages
    /// leave the item out.
    pub skipped: Option<String>,
}

impl RunOutput {
    /// "Skip this item", with the reason a person reads in the build's summary.
    pub fn skip(reason: impl Into<String>) -> RunOutput {
        RunOutput {
            skipped: Some(reason.into()),
            ..Default::default()
        }
    }
}

/// Whose problem a failed stage is. A domain error that knows says so by its type
/// ([`Tiered`]: a cache error is the machine's, an unreadable video the data's, an I/O
/// error by its kind) and `?` carries it into a [`StageError`] of that tier; the other
/// failures name theirs where they are made (`StageError::input`/`environment`/`bug`).
/// The build's exit code is the worst tier of its failures (`cli::exit`: 1 input,
/// 3 environment or bug).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The recipe's or the data's: fix it and rebuild.
    Input,
    /// The machine's (disk full, out of memory, a missing tool): fix it and retry.
    Environment,
    /// effectc's own: a planner or protocol invariant broke. Please report it.
    Bug,
}

impl Tier {
    /// The tier of an I/O error, by its kind: a full or read-only disk, a file over the
    /// size limit or a lost connection are the machine's; bytes that do not parse are
    /// the data's.
    pub fn of_io(e: &std::io::Error) -> Tier {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::InvalidData | K::UnexpectedEof => Tier::Input,
            _ => Tier::Environment,
        }
    }
}

/// A failed stage, never cached.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{message}")]
    Failed { tier: Tier, message: String },
    #[error("cancelled")]
    Cancelled,
}

impl StageError {
    pub fn input(msg: impl Into<String>) -> StageError {
        StageError::Failed {
            tier: Tier::Input,
            message: msg.into(),
        }
    }
    pub fn environment(msg: impl Into<String>) -> StageError {
        StageError::Failed {
            tier: Tier::Environment,
            message: msg.into(),
        }
    }
    pub fn bug(msg: impl Into<String>) -> StageError {
        StageError::Failed {
            tier: Tier::Bug,
            message: format!("{} (a bug in effectc: please report it)", msg.into()),
        }
    }
    /// An I/O error on `path`, its tier by the error's kind.
    pub fn io(path: &Path, e: std::io::Error) -> StageError {
        StageError::Failed {
            tier: Tier::of_io(&e),
            message: format!("{}: {e}", path.display()),
        }
    }
    /// An image that cannot be read or written: undecodable bytes are the data's, the
    /// rest by its I/O error.
    pub fn image(path: &Path, e: image::ImageError) -> StageError {
        match e {
            image::ImageError::IoError(e) => StageError::io(path, e),
            image::ImageError::Decoding(_)
            | image::ImageError::Unsupported(_)
            | image::ImageError::Limits(_) => {
                StageError::input(format!("{} is not a readable image: {e}", path.display()))
            }
            e => StageError::bug(format!("{}: {e}", path.display())),
        }
    }
    pub fn tier(&self) -> Option<Tier> {
        match self {
            StageError::Failed { tier, .. } => Some(*tier),
            StageError::Cancelled => None,
        }
    }
}

/// A domain error that carries its tier by its type: `?` makes it a [`StageError`] of
/// that tier, so no call site picks one.
pub trait Tiered: std::fmt::Display {
    fn tier(&self) -> Tier;
}

impl<E: Tiered> From<E> for StageError {
    fn from(e: E) -> StageError {
        match e.tier() {
            Tier::Input => StageError::input(e.to_string()),
            Tier::Environment => StageError::environment(e.to_string()),
            Tier::Bug => StageError::bug(e.to_string()),
        }
    }
}

/// A shared error (one loaded once, reported by every stage that needed it).
impl<T: Tiered + ?Sized> Tiered for &T {
    fn tier(&self) -> Tier {
        (**self).tier()
    }
}

impl Tiered for crate::cache::CacheError {
    /// The cache is the machine's: its disk said no, or one of its files is damaged.
    /// Never the recipe's fault.
    fn tier(&self) -> Tier {
        use crate::cache::CacheError as C;
        match self {
            C::Io { .. } | C::Damaged { .. } => Tier::Environment,
        }
    }
}

impl Tiered for crate::video::VideoError {
    /// A clip ffmpeg cannot read is the data's; a missing ffmpeg the machine's.
    fn tier(&self) -> Tier {
        use crate::video::VideoError as V;
        match self {
            V::Unreadable { .. } => Tier::Input,
            V::Missing(_) => Tier::Environment,
            V::Io(io) => Tier::of_io(io),
        }
    }
}

impl Tiered for crate::vision::VisionError {
    /// A model file that cannot be read is the machine's; the models are pinned, so one
    /// that does not load or run is effectc's own problem.
    fn tier(&self) -> Tier {
        match self {
            crate::vision::VisionError::Read { .. } => Tier::Environment,
            crate::vision::VisionError::Model { .. } | crate::vision::VisionError::Run { .. } => {
                Tier::Bug
            }
        }
    }
}

/// One stage kind (one file in `stages/`): its params, version and run.
pub trait Stage: Send + Sync {
    /// Unique per implementation: part of every key, so bumping one implementation's
    /// version never changes another's keys.
    fn kind(&self) -> &'static str;
    /// The name shown to people and in events (`pairs` for every teacher's pairs).
    fn family(&self) -> &'static str {
        self.kind()
    }
    /// The outputs (ports) this stage writes: consumers may wire only to these, which
    /// the planner checks before anything runs.
    fn outputs(&self) -> &'static [&'static str];
    /// The inputs (ports) this stage reads: the planner wires only these, and every
    /// required one, which it checks before anything runs.
    fn inputs(&self) -> &'static [InputPort];
    /// Bump when the implementation changes its output bytes: every key of the kind changes.
    fn version(&self) -> u32;
    fn params(&self) -> Params;
    fn resource(&self) -> Resource {
        Resource::Cpu
    }
    /// Whether several of this kind can share one batch of device work (`--batch`).
    fn batchable(&self) -> bool {
        false
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError>;
}

/// A stage's key from its kind, version, params and input digests (uv's stable-hash habit:
/// every field length-prefixed, maps ordered).
pub fn stage_key(
    kind: &str,
    version: u32,
    params: &Params,
    inputs: &BTreeMap<String, Digest>,
) -> Digest {
    stage_key_sorted(
        kind,
        version,
        params,
        inputs.iter().map(|(name, digest)| (name.as_str(), digest)),
    )
}

/// `stage_key` with the inputs as (name, digest) pairs already sorted by name, each name
/// once (no map to build).
pub fn stage_key_sorted<'i>(
    kind: &str,
    version: u32,
    params: &Params,
    inputs: impl ExactSizeIterator<Item = (&'i str, &'i Digest)>,
) -> Digest {
    let mut h = KeyHasher::new("effectc/stage-key/v1");
    h.str(kind).u64(version as u64);
    h.u64(params.len() as u64);
    for (k, v) in params {
        h.str(k).str(v);
    }
    h.u64(inputs.len() as u64);
    for (k, d) in inputs {
        h.str(k).digest(d);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_match_their_names_and_patterns() {
        let plain = InputPort::required("image");
        assert!(plain.matches("image") && !plain.matches("images") && !plain.matches("imag"));
        let check = InputPort::required("verify/*/check.json");
        assert_eq!(check.name("tflite-int8"), "verify/tflite-int8/check.json");
        assert!(check.matches("verify/a/b/check.json"));
        assert!(!check.matches("verify//check.json") && !check.matches("verify/a/check.jsn"));
        let control = InputPort::required("*-control-*");
        assert!(control.matches("00-control-canny") && !control.matches("00-source"));
        let model = InputPort::all_outputs("model");
        assert!(model.matches("model") && model.matches_at_run("model/model.onnx"));
        assert!(!model.matches_at_run("model") && !model.matches_at_run("model/"));
        let target = InputPort::all_outputs("target/*");
        assert!(target.matches_at_run("target/coreml/model.mlpackage/Manifest.json"));
    }

    #[test]
    fn domain_errors_carry_their_tier_by_type() {
        use std::path::PathBuf;
        let tier = |e: StageError| e.tier().unwrap();
        let disk = crate::cache::CacheError::Io {
            op: "write",
            path: PathBuf::from("/cache/x"),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        };
        // Bytes that do not parse would be the data's as a plain I/O error; in the
        // cache they are the machine's.
        assert_eq!(tier(disk.into()), Tier::Environment);
        let unreadable = crate::video::VideoError::Unreadable {
            clip: "clip.mp4".into(),
            message: "moov atom not found".into(),
        };
        assert_eq!(tier(unreadable.into()), Tier::Input);
        let model = crate::vision::VisionError::Model {
            path: PathBuf::from("face.tflite"),
            message: "bad op".into(),
        };
        assert_eq!(tier((&model).into()), Tier::Bug);
        assert!(StageError::from(&model)
            .to_string()
            .contains("a bug in effectc"));
    }

    #[test]
    fn params_are_encoded_one_canonical_way() {
        #[derive(Serialize)]
        struct P {
            #[serde(rename = "teacher.shading")]
            shading: f64,
            #[serde(rename = "teacher.stud-size")]
            stud: u32,
            flip: bool,
            lora: BTreeMap<String, f64>,
            argv: Vec<String>,
            none: Vec<u8>,
        }
        let p = params_of(&P {
            shading: 0.6,
            stud: 8,
            flip: false,
            lora: BTreeMap::from([("lego".to_string(), 1.0)]),
            argv: vec!["sh".into(), "-c".into()],
            none: vec![],
        });
        assert_eq!(
            p["teacher.shading"],
            format!("f64:{:016x}", 0.6f64.to_bits())
        );
        assert_eq!(show_param(&p["teacher.shading"]), "0.6");
        assert_eq!(show_param(&p["lora.lego"]), "1.0");
        assert_eq!(p["teacher.stud-size"], "8");
        assert_eq!(p["flip"], "false");
        assert_eq!((p["argv.0"].as_str(), p["argv.1"].as_str()), ("sh", "-c"));
        assert_eq!(p["none"], "[]");
        // 0.1 + 0.2 and 0.3 print alike in some formats; their bits differ, so do keys.
        assert_ne!(
            params_of(&serde_json::json!({"x": 0.1 + 0.2})),
            params_of(&serde_json::json!({"x": 0.3}))
        );
    }
}
