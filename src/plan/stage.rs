//! A stage: one unit of cached work. Its key covers its kind, implementation version,
//! canonical params and the content digests of its inputs — never file names, order or
//! formatting in the recipe.

use crate::digest::{Digest, KeyHasher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Canonical params: recipe path (`teacher.stud-size`) → canonical value text. A
/// BTreeMap, so the order they were written in never reaches the key.
pub type Params = BTreeMap<String, String>;

/// What a stage reads.
#[derive(Clone, Debug)]
pub enum InputRef {
    /// An output of another stage of the plan (by node index and output name).
    Stage { node: usize, output: String },
    /// Every output of another stage, as inputs named `<input name>/<output name>`
    /// (a Core ML package is a folder of files).
    StageAll { node: usize },
    /// A source file of the project, with its content digest.
    File { path: PathBuf, digest: Digest },
}

#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    pub from: InputRef,
}

/// Where the stage's work runs: per-item CPU work runs in parallel; heavy stages
/// (training, which parallelises inside libtorch) run alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Exclusive,
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
    /// Up to how many batchable jobs may share one batch (`build --batch`).
    pub batch: usize,
    pub project_root: &'a Path,
}

impl RunContext<'_> {
    pub fn input(&self, name: &str) -> Result<&Path, StageError> {
        self.inputs.get(name).map(|p| p.as_path()).ok_or_else(|| {
            StageError::infra(format!(
                "stage {} has no input `{name}` (planner bug)",
                self.stage_id
            ))
        })
    }
}

/// Where tensor work runs. Resolved inside the tensor worker process (`effectc-nn`):
/// the CLI itself never loads libtorch, whose start-up alone costs ~200 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA when present, else CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(text: &str) -> Result<DeviceSpec, String> {
        match text {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => Ok(DeviceSpec::Cuda(n)),
                None => Err(format!(
                    "unknown device `{other}`: use auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
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
}

/// A failed stage. `user` errors are the recipe's or the data's (fix and rebuild);
/// the rest are infrastructure (disk, CUDA...: retry). Neither is ever cached.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    User(String),
    #[error("{0}")]
    Infra(String),
    #[error("cancelled")]
    Cancelled,
}

impl StageError {
    pub fn user(msg: impl Into<String>) -> StageError {
        StageError::User(msg.into())
    }
    pub fn infra(msg: impl Into<String>) -> StageError {
        StageError::Infra(msg.into())
    }
    pub fn io(path: &Path, e: impl std::fmt::Display) -> StageError {
        StageError::Infra(format!("{}: {e}", path.display()))
    }
}

/// One stage kind (one file in `stages/`): its params, version and run.
pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
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
