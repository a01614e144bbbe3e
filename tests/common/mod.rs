//! A small builder for end-to-end tests: a temporary project with recipes, and the real
//! `effectc` binary run in it. Tests read like the behaviour they check.
#![allow(dead_code)]

pub mod nginx;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct TestProject {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub output: Output,
    pub events: Vec<Value>,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    /// The `build-finished` event.
    pub fn finished(&self) -> &Value {
        self.events
            .iter()
            .rev()
            .find(|e| e["event"] == "build-finished")
            .unwrap_or_else(|| panic!("no build-finished event; stderr:\n{}", self.stderr()))
    }
    pub fn ran(&self) -> u64 {
        self.finished()["ran"].as_u64().unwrap()
    }
    pub fn cached(&self) -> u64 {
        self.finished()["cached"].as_u64().unwrap()
    }
    /// Stage ids that ran (not cached), sorted.
    pub fn ran_stages(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .events
            .iter()
            .filter(|e| e["event"] == "stage-finished" && e["cached"] == false)
            .map(|e| e["stage"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
    pub fn ran_of_kind(&self, kind: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e["event"] == "stage-finished" && e["cached"] == false && e["kind"] == kind)
            .count()
    }
    pub fn stage(&self, id: &str) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "stage-finished" && e["stage"] == id)
            .unwrap_or_else(|| panic!("no stage-finished for {id}"))
    }
}

pub fn effectc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_effectc"))
}

impl TestProject {
    pub fn new() -> TestProject {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("effects")).unwrap();
        TestProject { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    pub fn recipe(&self, name: &str, text: &str) -> &Self {
        self.write(&format!("effects/{name}.kdl"), text)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(effectc_bin());
        cmd.current_dir(self.root())
            .args(args)
            .env_remove("EFFECTC_CACHE")
            .env_remove("EFFECTC_MODELS");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("run effectc");
        let events = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Run { output, events }
    }

    /// `effectc build --json NAME`, which must succeed.
    pub fn build(&self, name: &str) -> Run {
        let r = self.run(&["build", "--json", name]);
        assert_eq!(
            r.code(),
            0,
            "build {name} failed:\n{}\n{}",
            r.stderr(),
            r.stdout()
        );
        r
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root().join("cache")
    }

    /// The cached file of output `output` of stage `id`, found through the key the
    /// build's `stage-finished` event names.
    pub fn output_of(&self, run: &Run, id: &str, output: &str) -> PathBuf {
        let key = effectc::digest::Digest::parse(run.stage(id)["key"].as_str().unwrap()).unwrap();
        let cache = effectc::cache::Cache::open(&self.cache_dir()).unwrap();
        let rec = cache
            .get_record(&key)
            .unwrap()
            .expect("record of a finished stage");
        cache.blob_path(&rec.outputs[output].digest)
    }
}

/// A small model-free recipe: synthetic sources and the procedural brick teacher.
pub const SMALL_BRICK: &str = r#"
effect "small" {
    sources {
        synthetic count=6 seed=3
        crop "center" size=32
        holdout 0.2
    }
    teacher "procedural" {
        style "brick-mosaic"
        stud-size 4
        palette "lego-classic"
    }
    student width=8 blocks=1 teacher-width=8
    train { teacher-steps 20; student-steps 20; batch 2; checkpoint-every 10; }
}
"#;

/// Writes a PNG of `size` with a seed-dependent pattern.
pub fn write_png(path: &Path, seed: u8, size: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            seed.wrapping_mul(7),
        ])
    });
    img.save(path).unwrap();
}

/// The tiny random diffusion project (SD, ControlNets, IP2P, LoRA and CLIP weights).
pub const TINY_DIFFUSION: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/projects/tiny-diffusion");

impl TestProject {
    /// A copy of a committed project (its symlinked models copied as real files), without
    /// its cache or outputs.
    pub fn copy_of(project: &str) -> TestProject {
        let p = TestProject::new();
        for entry in walkdir::WalkDir::new(project).follow_links(true) {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(project).unwrap();
            if rel.starts_with("cache") || rel.starts_with("out") {
                continue;
            }
            let to = p.root().join(rel);
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&to).unwrap();
            } else {
                std::fs::copy(entry.path(), &to).unwrap();
            }
        }
        p
    }

    /// Replaces `from` by `to` in one file of the project (which must contain it).
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let path = self.root().join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{rel} has no `{from}`");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    /// Links set-up's MediaPipe models into the project's own models folder (a project
    /// with a `models/` folder reads its models there).
    pub fn link_mediapipe_models(&self) {
        std::os::unix::fs::symlink(
            mediapipe_dir(),
            self.root().join("models/mediapipe-0.10.21"),
        )
        .unwrap();
    }
}

/// Runs ffmpeg quietly (set-up installs it); a failure fails the test with its stderr.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed (set-up installs it)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where set-up put MediaPipe's models.
pub fn mediapipe_dir() -> PathBuf {
    let root = std::env::var_os("EFFECTC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/effectc/models")
        });
    root.join("mediapipe-0.10.21")
}

/// The sample photos (astronaut, chelsea, coffee, rocket), read in place:
/// `$EFFECTC_SAMPLES`, else where scripts/samples.sh (run by scripts/test-deps.sh, so by
/// `make test`) unpacks them from scikit-image's wheel. Nothing outside the clone.
pub fn samples_dir() -> PathBuf {
    std::env::var_os("EFFECTC_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/effectc/samples-skimage-0.26.0")
        })
}

/// One sample photo's path; panics naming it and the script that installs it when missing.
pub fn sample_path(name: &str) -> PathBuf {
    let path = samples_dir().join(name);
    assert!(
        path.is_file(),
        "sample photo {} is missing: run scripts/test-deps.sh (`make test` does)",
        path.display()
    );
    path
}
