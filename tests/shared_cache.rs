//! One cache shared by several projects and shard jobs (`--cache DIR`): `cache gc` in one
//! project never deletes what another project or a shard still uses; a damaged snapshot
//! makes gc refuse (exit 3) before it deletes anything; `--older-than` removes only
//! records no build used within the window.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn run_in(p: &TestProject, cache: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--cache", cache.to_str().unwrap()];
    all.extend_from_slice(args);
    p.run(&all)
}

fn build_in(p: &TestProject, cache: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["build", "--json", "small"];
    args.extend_from_slice(extra);
    let r = run_in(p, cache, &args);
    assert_eq!(r.code(), 0, "build failed:\n{}", r.stderr());
    r
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Makes every file under `dir` look last used `age` ago.
fn age_files(dir: &Path, age: Duration) {
    let then = SystemTime::now() - age;
    for f in walk(dir) {
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(then))
            .unwrap_or_else(|e| panic!("age {}: {e}", f.display()));
    }
}

#[test]
fn gc_in_one_project_keeps_what_other_projects_and_shards_use() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    // Three projects, each with an effect named `small`: same name, different work.
    let one = TestProject::new();
    one.recipe("small", SMALL_BRICK);
    let two = TestProject::new();
    two.recipe("small", &SMALL_BRICK.replace("stud-size 4", "stud-size 6"));
    let shard = TestProject::new();
    shard.recipe("small", &SMALL_BRICK.replace("seed=3", "seed=5"));

    build_in(&one, c, &[]);
    build_in(&two, c, &[]);
    let sharded = build_in(&shard, c, &["--shard", "0/1"]);
    assert!(sharded.ran() > 0);
    // The first project moves on: its old pairs and trainings are garbage now.
    one.recipe("small", &SMALL_BRICK.replace("stud-size 4", "stud-size 8"));
    build_in(&one, c, &[]);

    let gc = run_in(&one, c, &["cache", "gc"]);
    assert_eq!(gc.code(), 0, "{}", gc.stderr());
    assert!(
        gc.stdout().contains("removed 9 records"),
        "only the first project's old 6 pairs, sheet and 2 trainings go: {}",
        gc.stdout()
    );
    assert_eq!(
        build_in(&two, c, &[]).ran(),
        0,
        "the other project kept all"
    );
    assert_eq!(
        build_in(&shard, c, &["--shard", "0/1"]).ran(),
        0,
        "the shard-only build kept all"
    );
    assert_eq!(build_in(&one, c, &[]).ran(), 0, "and gc's own project too");
}

#[test]
fn a_damaged_snapshot_makes_gc_refuse_and_delete_nothing() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    p.build("small");
    p.recipe("small", &SMALL_BRICK.replace("stud-size 4", "stud-size 8"));
    p.build("small");
    let snapshots = files_under(&p.cache_dir().join("snapshots"));
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    std::fs::write(&snapshots[0], b"\xff\xff\xff\xff not a snapshot").unwrap();
    let before = (
        files_under(&p.cache_dir().join("records")),
        files_under(&p.cache_dir().join("blobs")),
    );

    let gc = p.run(&["cache", "gc"]);
    assert_eq!(gc.code(), 3, "infrastructure error:\n{}", gc.stderr());
    let name = snapshots[0].file_name().unwrap().to_string_lossy();
    assert!(
        gc.stderr().contains(name.as_ref()),
        "names the file: {}",
        gc.stderr()
    );
    let after = (
        files_under(&p.cache_dir().join("records")),
        files_under(&p.cache_dir().join("blobs")),
    );
    assert_eq!(before, after, "nothing was deleted");

    // The next build answers from the records and writes a good snapshot; gc works again.
    assert_eq!(p.build("small").ran(), 0);
    let gc = p.run(&["cache", "gc"]);
    assert_eq!(gc.code(), 0, "{}", gc.stderr());
    assert!(gc.stdout().contains("removed 9 records"), "{}", gc.stdout());
    assert_eq!(p.build("small").ran(), 0);
}

#[test]
fn older_than_removes_only_records_not_used_within_the_window() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let used = TestProject::new();
    used.recipe("small", SMALL_BRICK);
    let idle = TestProject::new();
    idle.recipe("small", &SMALL_BRICK.replace("seed=3", "seed=9"));
    // Shards build the per-item stages only: quick, and enough records to age.
    let first_used = build_in(&used, c, &["--shard", "0/1"]).ran();
    let first_idle = build_in(&idle, c, &["--shard", "0/1"]).ran();
    assert!(first_used > 0 && first_idle > 0);

    // Forty days pass; then only one project builds (a no-op build: it runs nothing).
    age_files(&c.join("records"), Duration::from_secs(40 * 86_400));
    age_files(&c.join("snapshots"), Duration::from_secs(40 * 86_400));
    assert_eq!(build_in(&used, c, &["--shard", "0/1"]).ran(), 0);

    let gc = run_in(&used, c, &["cache", "gc", "--older-than", "30d"]);
    assert_eq!(gc.code(), 0, "{}", gc.stderr());
    assert!(
        gc.stdout()
            .contains(&format!("removed {first_idle} records")),
        "the idle project's records go, nothing else: {}",
        gc.stdout()
    );
    assert_eq!(build_in(&used, c, &["--shard", "0/1"]).ran(), 0);
    assert_eq!(
        build_in(&idle, c, &["--shard", "0/1"]).ran() as usize,
        first_idle as usize,
        "the idle project's work was collected"
    );
}
