//! Benchmark (not a test): `effectc watch` on projects of 1,000 and 10,000 real PNG
//! files. Prints a table: from saving one changed photo to the `watch-stale` event and
//! to the end of its rebuild, and the CPU an idle watch uses per minute.
//!
//!     cargo bench --bench watch            (or: make bench)
//!
//! Goals (issue 16): a changed photo noticed within a second; idle costs no CPU.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RECIPE: &str = r#"effect "many" {
    sources {
        images "data/*.png"
        crop "center" size=16
    }
    teacher "procedural" { stud-size 4; }
    // The dataset-wide stages (both trainings) re-run on every change: keep them tiny.
    student width=4 blocks=1 teacher-width=4
    train { teacher-steps 2; student-steps 2; batch 1; }
}"#;

fn write_png(path: &Path, seed: u32) {
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([
            (x * 16) as u8,
            (y * 16) as u8,
            (seed.wrapping_mul(2654435761) >> 24) as u8,
        ])
    });
    img.save(path).expect("write png");
}

/// User and system CPU seconds of a running process, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn until(rx: &mpsc::Receiver<(Instant, Value)>, event: &str) -> Instant {
    loop {
        let (at, v) = rx
            .recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|_| panic!("no `{event}` from watch"));
        if v["event"] == event {
            return at;
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!("| files | stages | save → watch-stale (median of 5) | save → rebuilt | idle CPU per minute |");
    println!("|---:|---:|---:|---:|---:|");
    for count in [1_000u32, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("effects")).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("effects/many.kdl"), RECIPE).unwrap();
        for i in 0..count {
            write_png(&dir.path().join(format!("data/{i:05}.png")), i);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_effectc"))
            .current_dir(dir.path())
            .args(["watch", "--json", "many"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start watch");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send((Instant::now(), v)).is_err() {
                        break;
                    }
                }
            }
        });
        // The first build: every item.
        let mut stages = 0;
        loop {
            let (_, v) = rx
                .recv_timeout(Duration::from_secs(1800))
                .expect("first build");
            if v["event"] == "build-finished" {
                stages = v["ran"].as_u64().unwrap_or(0) + v["cached"].as_u64().unwrap_or(0);
            }
            if v["event"] == "watch-waiting" {
                break;
            }
        }
        let before = cpu_seconds(child.id());
        let idle_for = Duration::from_secs(20);
        std::thread::sleep(idle_for);
        let idle_cpu = (cpu_seconds(child.id()) - before) * 60.0 / idle_for.as_secs_f64();
        while rx.try_recv().is_ok() {}

        let (mut to_stale, mut to_built) = (Vec::new(), Vec::new());
        for round in 0..5u32 {
            let saved = Instant::now();
            write_png(&dir.path().join("data/00007.png"), 1_000_000 + round);
            to_stale.push(until(&rx, "watch-stale") - saved);
            to_built.push(until(&rx, "watch-waiting") - saved);
        }
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "| {count} | {stages} | {:.0} ms | {:.0} ms | {idle_cpu:.3} s |",
            median(to_stale).as_secs_f64() * 1e3,
            median(to_built).as_secs_f64() * 1e3,
        );
    }
}
