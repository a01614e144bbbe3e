//! Memory known before it is spent: builds under an address-space limit the test sets
//! for its own process tree (RLIMIT_AS, inherited by `effectc` and its tensor worker).
//! A batch too large for the limit trains as accumulated micro-batches and the build
//! succeeds; a net whose single item cannot fit fails before its first step with the
//! figures and the setting to change; a worker killed anyway reads as out of memory.

mod common;
use common::{Run, TestProject};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Address space the tensor worker takes with libtorch loaded and nothing done yet
/// (measured, so the limit below means the same on any machine).
fn worker_baseline_bytes() -> u64 {
    let worker = common::effectc_bin().with_file_name("effectc-nn");
    let mut child = Command::new(worker)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start effectc-nn");
    // `serve` answers a bad line once it is up (after its allocator re-exec).
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"not json\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    drop(stdin);
    let _ = child.wait();
    effectc::train::memory::meminfo_field(&status, "VmSize").unwrap() as u64 * 1024
}

/// `effectc build --json NAME` with RLIMIT_AS set to `limit` bytes for it and its children.
fn build_limited(p: &TestProject, name: &str, limit: u64) -> Run {
    let mut cmd = p.command(&["build", "--json", name]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = cmd.output().expect("run effectc");
    let events = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Run { output, events }
}

/// Synthetic items at `size` px, procedural teacher, a teacher of `teacher_width`,
/// batch 8, the discriminator on from the second of two steps.
fn recipe(size: u32, teacher_width: u32) -> String {
    format!(
        r#"
effect "big-batch" {{
    sources {{
        synthetic count=6 seed=2
        crop "center" size={size}
        holdout 0.2
    }}
    teacher "procedural" {{ stud-size 8; }}
    student width=8 blocks=1 teacher-width={teacher_width}
    train {{ teacher-steps 2; student-steps 2; batch 8; checkpoint-every 10; gan-start 0.5; }}
}}
"#
    )
}

/// Address space beyond the idle worker's. The worker's own grows by up to ~1.4 GB of
/// thread stacks and malloc arenas before it plans, so the headroom it sees is 1.8-3.2
/// GB: both cases below hold anywhere in that range.
const HEADROOM: u64 = 3_500_000_000;

#[test]
fn a_batch_too_large_for_the_memory_limit_trains_as_accumulated_micro_batches() {
    let limit = worker_baseline_bytes() + HEADROOM;
    let p = TestProject::new();
    // Teacher width 32 at 256 px: 0.41 GB an item estimated, 3.3 GB for the batch of 8.
    p.recipe("big-batch", &recipe(256, 32));
    let r = build_limited(&p, "big-batch", limit);
    assert_eq!(
        r.code(),
        0,
        "build under a {:.1} GB limit failed:\n{}\n{}",
        limit as f64 / 1e9,
        r.stderr(),
        r.stdout()
    );
    let teacher = &r.stage("train-teacher")["metrics"];
    let plan = teacher["memory_plan"].as_str().unwrap_or_else(|| {
        panic!("the teacher's batch fit in one pass under the limit: {teacher}")
    });
    assert!(
        plan.starts_with("batch 8 as ")
            && plan.contains("(accumulated)")
            && plan.contains("RLIMIT_AS"),
        "{plan}"
    );
    let micro = teacher["micro_batch"].as_u64().unwrap();
    assert!((1..8).contains(&micro), "{teacher}");
}

#[test]
fn a_net_whose_single_item_cannot_fit_fails_before_its_first_step() {
    let limit = worker_baseline_bytes() + HEADROOM;
    let p = TestProject::new();
    // Teacher width 128 at 512 px: 4.8 GB for one item.
    p.recipe("big-batch", &recipe(512, 128));
    let r = build_limited(&p, "big-batch", limit);
    assert_eq!(r.code(), 3, "{}\n{}", r.stderr(), r.stdout());
    let failed = r
        .events
        .iter()
        .find(|e| e["event"] == "stage-failed")
        .unwrap_or_else(|| panic!("no stage-failed:\n{}", r.stdout()));
    assert_eq!(failed["stage"], "train-teacher", "{failed}");
    assert_eq!(failed["tier"], "environment", "{failed}");
    let error = failed["error"].as_str().unwrap();
    for words in [
        "out of memory",
        "even with batch 1",
        "teacher-width=128",
        "RLIMIT_AS",
        " GB",
    ] {
        assert!(error.contains(words), "`{words}` missing from: {error}");
    }
    // Refused before the first step: no step was ever reported.
    assert!(
        !r.events.iter().any(|e| e["event"] == "stage-progress"
            && e["stage"] == "train-teacher"
            && e["done"].as_u64().unwrap_or(0) > 0),
        "a step ran"
    );
}

#[test]
fn a_worker_killed_by_sigkill_is_reported_as_out_of_memory_with_the_figures() {
    let p = TestProject::new();
    let text = recipe(64, 16).replace("teacher-steps 2", "teacher-steps 100000");
    p.recipe("big-batch", &text);
    let mut child = p
        .command(&["build", "--json", "big-batch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let effectc_pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Training has started (the plan is sent before the first step): kill its worker as
    // the kernel's OOM killer would.
    for line in lines.by_ref() {
        let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap_or_default();
        if e["event"] == "stage-progress" && e["stage"] == "train-teacher" {
            break;
        }
    }
    let worker = worker_of(effectc_pid).expect("the tensor worker runs");
    // SAFETY: a plain syscall to a process this test started (through effectc).
    unsafe { libc::kill(worker, libc::SIGKILL) };
    let rest: Vec<serde_json::Value> = lines
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{rest:?}");
    let failed = rest
        .iter()
        .find(|e| e["event"] == "stage-failed")
        .expect("a stage-failed event");
    assert_eq!(failed["tier"], "environment", "{failed}");
    let error = failed["error"].as_str().unwrap();
    for words in [
        "out of memory",
        "SIGKILL",
        "resident",
        "its plan was batch 8",
        "needed",
        "free",
    ] {
        assert!(error.contains(words), "`{words}` missing from: {error}");
    }
}

/// The `effectc-nn` child of `parent`.
fn worker_of(parent: u32) -> Option<i32> {
    for _ in 0..100 {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ..."
            let Some(after) = stat.rsplit_once(") ") else {
                continue;
            };
            let ppid = after
                .1
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(parent) && stat.contains("(effectc-nn)") {
                return Some(pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}
