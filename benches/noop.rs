//! Benchmark (not a test): how fast a no-op rebuild and `plan` are on a recipe with
//! 10,000 synthetic source items (30,000 per-item stages). Prints a table.
//!
//!     cargo bench --bench noop            (or: make bench)
//!
//! Goals (issue 2): no-op rebuild under 100 ms; planning under 10 µs per item.

use effectc::cache::{Cache, StatCache};
use effectc::plan::lower::lower;
use effectc::project::Project;
use effectc::recipe::Loader;
use std::process::Command;
use std::time::{Duration, Instant};

fn recipe(count: u32) -> String {
    format!(
        r#"effect "many" {{
    sources {{
        synthetic count={count} seed=1
        crop "center" size=16
    }}
    teacher "procedural" {{ stud-size 4; }}
}}"#
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_cmd(dir: &std::path::Path, args: &[&str], runs: usize) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let out = Command::new(env!("CARGO_BIN_EXE_effectc"))
                    .current_dir(dir)
                    .args(args)
                    .output()
                    .expect("run effectc");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    println!("| items | stages | first build | no-op build (median of 5) | plan (median of 5) | in-process plan | per item |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for count in [1_000u32, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("effects")).unwrap();
        std::fs::write(dir.path().join("effects/many.kdl"), recipe(count)).unwrap();
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_effectc"))
            .current_dir(dir.path())
            .args(["build", "--json", "many"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first = t.elapsed();
        let noop = time_cmd(dir.path(), &["build", "--json", "many"], 5);
        let plan = time_cmd(dir.path(), &["plan", "many"], 5);
        // Planning alone, in process: check the recipe and lower it into the DAG.
        let project = Project::discover(dir.path()).unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let mut best = Duration::MAX;
        let mut stages = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let loader = Loader::new(&project);
            let r = loader.load("many").unwrap();
            let mut stat = StatCache::load(cache.root());
            let p = lower(&project, &r, &mut |path| stat.digest_of(path)).unwrap();
            stages = p.nodes.len();
            best = best.min(t.elapsed());
        }
        println!(
            "| {count} | {stages} | {:.2} s | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} µs |",
            first.as_secs_f64(),
            noop.as_secs_f64() * 1e3,
            plan.as_secs_f64() * 1e3,
            best.as_secs_f64() * 1e3,
            best.as_secs_f64() * 1e6 / count as f64
        );
    }
}
