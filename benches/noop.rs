//! Benchmark (not a test): how fast a no-op rebuild and `plan` are with 1,000 and 10,000
//! source items, both synthetic (no files) and real PNG files on disk (`images
//! "data/*.png"`: one stat per file against the stat cache). Prints a table.
//!
//!     cargo bench --bench noop            (or: make bench)
//!     scripts/bench_dvc.sh                (the same real files under `dvc repro`)
//!
//! Goals (issues 2 and 15): a no-op rebuild under 100 ms on 10,000 real files, and at
//! least 10x faster than `dvc repro` on them; planning under 10 µs per item.

use effectc::cache::{Cache, StatCache};
use effectc::plan::lower::lower;
use effectc::project::Project;
use effectc::recipe::Loader;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the items come from.
#[derive(Clone, Copy)]
enum Shape {
    /// `synthetic count=N`: items made in memory, no source files.
    Synthetic,
    /// N PNG files under `data/`, each 24x24 with its own pixels.
    RealFiles,
}

fn recipe(shape: Shape, count: u32) -> String {
    let source = match shape {
        Shape::Synthetic => format!("synthetic count={count} seed=1"),
        Shape::RealFiles => "images \"data/*.png\"".to_string(),
    };
    format!(
        r#"effect "many" {{
    sources {{
        {source}
        crop "center" size=16
    }}
    teacher "procedural" {{ stud-size 4; }}
}}"#
    )
}

/// `count` distinct 24x24 PNGs in `dir/data`.
fn write_pngs(dir: &std::path::Path, count: u32) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..count {
        let img = image::RgbImage::from_fn(24, 24, |x, y| {
            let v = i.wrapping_mul(2654435761).wrapping_add(x * 31 + y * 17);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        img.save(data.join(format!("{i:05}.png"))).unwrap();
    }
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
    println!("| source | items | stages | first build | no-op build (median of 7) | no-op build --json | plan (median of 5) | in-process plan | per item |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for shape in [Shape::Synthetic, Shape::RealFiles] {
        for count in [1_000u32, 10_000] {
            bench(shape, count);
        }
    }
}

fn bench(shape: Shape, count: u32) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("effects")).unwrap();
    std::fs::write(dir.path().join("effects/many.kdl"), recipe(shape, count)).unwrap();
    if let Shape::RealFiles = shape {
        write_pngs(dir.path(), count);
    }
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
    let noop = time_cmd(dir.path(), &["build", "many"], 7);
    let noop_json = time_cmd(dir.path(), &["build", "--json", "many"], 7);
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
    let source = match shape {
        Shape::Synthetic => "synthetic",
        Shape::RealFiles => "PNG files",
    };
    println!(
        "| {source} | {count} | {stages} | {:.2} s | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} µs |",
        first.as_secs_f64(),
        noop.as_secs_f64() * 1e3,
        noop_json.as_secs_f64() * 1e3,
        plan.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e6 / count as f64
    );
}
