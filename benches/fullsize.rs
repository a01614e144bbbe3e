//! Benchmark (not a test): the full-size project (tests/projects/fullsize: the lego
//! recipe's shape, face-mask base at 512 px, student 32/6, teacher 128, batch 8, all
//! three targets, real photos, procedural teacher) built end to end; prints the time of
//! every stage from the build's `--json` events, slowest first.
//!
//!     cargo bench --bench fullsize
//!
//! Environment: EFFECTC_FULLSIZE_SIZE (crop size, default 512), EFFECTC_FULLSIZE_ITEMS
//! (default 24), EFFECTC_FULLSIZE_DEVICE (cpu | cuda | auto, default cpu),
//! EFFECTC_FULLSIZE_STEPS (teacher and student steps, default 4),
//! EFFECTC_FULLSIZE_TARGETS (comma list, default all three; e.g. `onnx` to leave the
//! slow fp16/int8 verification out), EFFECTC_FULLSIZE_KEEP (a folder to build in and keep),
//! EFFECTC_BIN (the `effectc` to run, default this build's; `effectc-nn` beside it) and
//! EFFECTC_SAMPLES (the sample photos) for a machine that has only the binaries.

#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/fullsize.rs"]
mod fullsize;

use std::io::BufRead;
use std::process::Stdio;
use std::time::Instant;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    let size = env_or("EFFECTC_FULLSIZE_SIZE", "512");
    let items: u32 = env_or("EFFECTC_FULLSIZE_ITEMS", "24").parse().unwrap();
    let device = env_or("EFFECTC_FULLSIZE_DEVICE", "cpu");
    let steps = env_or("EFFECTC_FULLSIZE_STEPS", "4");
    let targets = env_or("EFFECTC_FULLSIZE_TARGETS", "onnx,ios-coreml,android-nnapi");
    let p = fullsize::fullsize_project(items);
    let recipe = "effects/fullsize.kdl";
    p.edit(
        recipe,
        r#"crop "center" size=512"#,
        &format!(r#"crop "center" size={size}"#),
    );
    p.edit(recipe, "teacher-steps 4", &format!("teacher-steps {steps}"));
    p.edit(recipe, "student-steps 4", &format!("student-steps {steps}"));
    for t in ["onnx", "ios-coreml", "android-nnapi"] {
        if !targets.split(',').any(|x| x.trim() == t) {
            let line = std::fs::read_to_string(p.root().join(recipe))
                .unwrap()
                .lines()
                .find(|l| l.contains(&format!("target \"{t}\"")))
                .unwrap()
                .to_string();
            p.edit(recipe, &line, "");
        }
    }
    let root = match std::env::var_os("EFFECTC_FULLSIZE_KEEP") {
        Some(keep) => {
            let keep = std::path::PathBuf::from(keep);
            let _ = std::fs::remove_dir_all(&keep);
            std::fs::create_dir_all(&keep).unwrap();
            for e in walkdir::WalkDir::new(p.root()) {
                let e = e.unwrap();
                let to = keep.join(e.path().strip_prefix(p.root()).unwrap());
                if e.file_type().is_dir() {
                    std::fs::create_dir_all(&to).unwrap();
                } else {
                    std::fs::copy(e.path(), &to).unwrap();
                }
            }
            keep
        }
        None => p.root().to_path_buf(),
    };
    println!(
        "full-size project: {items} items at {size} px, {steps} steps, targets {targets}, device {device}, in {}",
        root.display()
    );
    let started = Instant::now();
    let bin = std::env::var_os("EFFECTC_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(common::effectc_bin);
    let mut child = std::process::Command::new(bin)
        .args(["build", "--json", "fullsize", "--device", &device])
        .current_dir(&root)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run effectc");
    // Events as they come, so a long build shows where it is.
    let mut events = vec![];
    for line in std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if matches!(e["event"].as_str(), Some("stage-finished" | "stage-failed"))
            && !e["stage"].as_str().unwrap_or("").contains('/')
        {
            eprintln!(
                "[{:7.1}s] {} {}",
                started.elapsed().as_secs_f64(),
                e["event"].as_str().unwrap(),
                e["stage"].as_str().unwrap()
            );
        }
        events.push(e);
    }
    let status = child.wait().unwrap();
    let rows = fullsize::stage_table(&events);
    println!();
    println!("{}", fullsize::markdown(&rows));
    println!(
        "build: {status}, {:.1} s wall ({} events)",
        started.elapsed().as_secs_f64(),
        events.len()
    );
}
