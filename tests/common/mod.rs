//! A small builder for end-to-end tests: a temporary project with recipes, and the real
//! `effectc` binary run in it. Tests read like the behaviour they check.
#![allow(dead_code)]

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
