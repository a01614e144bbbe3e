//! Damage, kills and concurrency never cost correctness.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn corrupted_blob_is_reported_by_verify_and_rebuilt() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let first = p.build("small");
    // Damage the blob of one pair.
    let key_stage = first.stage("pairs/synthetic-0002");
    let rec_key = key_stage["key"].as_str().unwrap().to_string();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            p.cache_dir()
                .join("records")
                .join(&rec_key[..2])
                .join(format!("{rec_key}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let digest = rec["outputs"]["target"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = p
        .cache_dir()
        .join("blobs/sha256")
        .join(&digest[..2])
        .join(&digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let verify = p.run(&["cache", "verify"]);
    assert_ne!(verify.code(), 0, "damage must fail verify");
    assert!(
        verify.stdout().contains(&format!("damaged blob {digest}")),
        "{}",
        verify.stdout()
    );

    let rebuilt = p.build("small");
    assert_eq!(
        rebuilt.ran_stages(),
        vec!["pairs/synthetic-0002".to_string()]
    );
    let clean = p.run(&["cache", "verify"]);
    assert_eq!(clean.code(), 0, "{}", clean.stdout());
}

const SLOW: &str = r#"
effect "slow" {
    sources {
        synthetic count=12 seed=1
        crop "center" size=32
    }
    teacher "command" {
        run "sh" "-c" "sleep 0.3; cat"
    }
    student width=4 blocks=1 teacher-width=4
    train { teacher-steps 4; student-steps 4; batch 2; }
}
"#;

#[test]
fn build_killed_mid_stage_completes_on_rerun_with_a_clean_cache() {
    let p = TestProject::new();
    p.recipe("slow", SLOW);
    let mut child = p
        .command(&["build", "--json", "--jobs", "2", "slow"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let some pairs finish and others be mid-flight, then SIGKILL.
    std::thread::sleep(Duration::from_millis(900));
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = p.run(&["cache", "verify"]);
    assert_eq!(
        partial.code(),
        0,
        "a killed build leaves no damaged entry:\n{}",
        partial.stdout()
    );
    let r = p.build("slow");
    assert!(
        r.ran_of_kind("pairs") < 12,
        "pairs finished before the kill are reused"
    );
    assert_eq!(r.ran() + r.cached(), 12 + 12 + 12 + 1 + 2);
    let verify = p.run(&["cache", "verify"]);
    assert_eq!(verify.code(), 0, "{}", verify.stdout());
    assert_eq!(p.build("slow").ran(), 0);
}

#[test]
fn two_builds_at_once_both_succeed_and_leave_a_clean_cache() {
    let p = TestProject::new();
    p.recipe(
        "slow",
        &SLOW
            .replace("count=12", "count=6")
            .replace("sleep 0.3", "sleep 0.1"),
    );
    let started = Instant::now();
    let a = p.command(&["build", "--json", "slow"]).output().unwrap();
    let _ = started;
    let b_child = p
        .command(&["build", "--json", "slow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c_child = p
        .command(&["build", "--json", "slow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = b_child.wait_with_output().unwrap();
    let c = c_child.wait_with_output().unwrap();
    assert!(a.status.success());
    assert!(
        b.status.success() && c.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&b.stderr),
        String::from_utf8_lossy(&c.stderr)
    );
    // Start two concurrent builds from a cold cache too.
    let q = TestProject::new();
    q.recipe(
        "slow",
        &SLOW
            .replace("count=12", "count=6")
            .replace("sleep 0.3", "sleep 0.1"),
    );
    let x = q
        .command(&["build", "--json", "slow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let y = q
        .command(&["build", "--json", "slow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (x, y) = (x.wait_with_output().unwrap(), y.wait_with_output().unwrap());
    assert!(
        x.status.success() && y.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&x.stderr),
        String::from_utf8_lossy(&y.stderr)
    );
    let count = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| {
                l.contains("\"stage-finished\"")
                    && l.contains("\"cached\":false")
                    && l.contains("\"kind\":\"pairs\"")
            })
            .count()
    };
    assert_eq!(
        count(&x) + count(&y),
        6,
        "each pair ran exactly once across both builds (per-key locks)"
    );
    let verify = q.run(&["cache", "verify"]);
    assert_eq!(verify.code(), 0, "{}", verify.stdout());
    assert_eq!(q.build("slow").ran(), 0);
}

#[test]
fn gc_keeps_what_recipes_reach_and_drops_the_rest() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    p.build("small");
    p.recipe("small", &SMALL_BRICK.replace("stud-size 4", "stud-size 8"));
    p.build("small");
    let gc = p.run(&["cache", "gc"]);
    assert_eq!(gc.code(), 0);
    assert!(
        gc.stdout().contains("removed 9 records"),
        "the 6 old pairs, the old sheet and both old trainings go: {}",
        gc.stdout()
    );
    assert_eq!(
        p.build("small").ran(),
        0,
        "what the recipe reaches survived"
    );
}
