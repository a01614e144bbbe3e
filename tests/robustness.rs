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

/// Starts `effectc build --json` and reads its events as they come: `until` blocks until
/// an event matches (the build's own progress is the clock), with a generous guard
/// only against a hung build.
struct LiveBuild {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl LiveBuild {
    fn start(p: &TestProject, args: &[&str]) -> LiveBuild {
        let mut child = p
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        LiveBuild {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The first event for which `pred` holds; panics if the build ends (or hangs for
    /// minutes) without one.
    fn until(&mut self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        let guard = Duration::from_secs(600);
        loop {
            match self.events.recv_timeout(guard) {
                Ok(v) => {
                    let hit = pred(&v);
                    self.seen.push(v);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("the build never showed {what}; saw {:?}", self.seen),
            }
        }
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for LiveBuild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ran(kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |e| e["event"] == "stage-finished" && e["kind"] == kind && e["cached"] == false
}

#[test]
fn build_killed_mid_stage_completes_on_rerun_with_a_clean_cache() {
    let p = TestProject::new();
    p.recipe("slow", SLOW);
    let mut build = LiveBuild::start(&p, &["build", "--json", "--jobs", "2", "slow"]);
    // Kill right after the first pair is in the cache, with others mid-flight.
    build.until("a finished pair", ran("pairs"));
    build.sigkill();
    let finished_before = build.seen.iter().filter(|e| ran("pairs")(e)).count();
    assert!(finished_before >= 1);
    let partial = p.run(&["cache", "verify"]);
    assert_eq!(
        partial.code(),
        0,
        "a killed build leaves no damaged entry:\n{}",
        partial.stdout()
    );
    let r = p.build("slow");
    assert!(
        r.ran_of_kind("pairs") <= 12 - finished_before,
        "the {finished_before} pairs finished before the kill are reused (ran {})",
        r.ran_of_kind("pairs")
    );
    assert_eq!(r.ran() + r.cached(), 12 + 12 + 12 + 1 + 2);
    let verify = p.run(&["cache", "verify"]);
    assert_eq!(verify.code(), 0, "{}", verify.stdout());
    assert_eq!(p.build("slow").ran(), 0);
}

/// Live `effectc-nn` processes working for the project under `root` (their job file
/// lies in its cache), with their parent pids.
fn workers_of(root: &std::path::Path) -> Vec<(u32, u32)> {
    let root = root.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A zombie's cmdline is empty, so only running processes match.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_worker = args.first().is_some_and(|a| a.ends_with("effectc-nn"));
        if !is_worker || !args.iter().any(|a| a.contains(&root)) {
            continue;
        }
        let ppid = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok())
            })
            .unwrap_or(0);
        found.push((pid, ppid));
    }
    found
}

#[test]
#[cfg(target_os = "linux")]
fn a_sigkilled_build_leaves_no_tensor_worker_behind() {
    let p = TestProject::new();
    // Training long enough that the kill always lands inside it.
    p.recipe(
        "small",
        &SMALL_BRICK.replace("teacher-steps 20", "teacher-steps 1000000"),
    );
    let mut build = LiveBuild::start(&p, &["build", "--json", "small"]);
    build.until("training progress", |e| {
        e["event"] == "stage-progress" && e["stage"] == "train-teacher"
    });
    let parent = build.child.id();
    let workers = workers_of(p.root());
    assert!(
        workers.iter().any(|&(_, ppid)| ppid == parent),
        "the scan sees the running worker of effectc {parent}: {workers:?}"
    );
    build.sigkill();
    // The kernel kills the worker at once; the guard only bounds a failure.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = workers_of(p.root());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "effectc-nn outlived its killed parent: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg(target_os = "linux")]
fn a_sigkilled_build_leaves_no_teacher_command_behind() {
    let p = TestProject::new();
    // The teacher writes its pid (sh execs sleep: the same process) and never finishes.
    p.recipe(
        "slow",
        &SLOW.replace(
            r#"run "sh" "-c" "sleep 0.3; cat""#,
            r#"run "sh" "-c" "echo $$ > teacher.pid.tmp && mv teacher.pid.tmp teacher.pid && exec sleep 600""#,
        ),
    );
    let mut build = LiveBuild::start(&p, &["build", "--json", "--jobs", "1", "slow"]);
    let pidfile = p.root().join("teacher.pid");
    let deadline = Instant::now() + Duration::from_secs(600);
    let pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the teacher never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("sleep"))
    };
    assert!(running(pid), "the teacher runs while the build does");
    build.sigkill();
    let deadline = Instant::now() + Duration::from_secs(60);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "the teacher command {pid} outlived its killed build"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let a = p.command(&["build", "--json", "slow"]).output().unwrap();
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
