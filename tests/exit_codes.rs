//! The build's exit code says whose problem a failure is, as the README promises: 1 when
//! the recipe or the data is at fault (a failing teacher command), 3 when the machine is
//! (a full disk). Every `stage-failed` event carries that tier, and neither kind of
//! failure leaves anything half-written behind.

mod common;
use common::*;
use std::os::unix::process::CommandExt;

const PROCEDURAL: &str = "teacher \"procedural\" {\n        style \"brick-mosaic\"\n        stud-size 4\n        palette \"lego-classic\"\n    }";

fn failures(r: &Run) -> Vec<&serde_json::Value> {
    r.events
        .iter()
        .filter(|e| e["event"] == "stage-failed")
        .collect()
}

#[test]
fn a_failing_teacher_command_is_the_recipes_problem_and_exits_1() {
    let p = TestProject::new();
    assert!(SMALL_BRICK.contains(PROCEDURAL));
    p.recipe(
        "small",
        &SMALL_BRICK.replace(
            PROCEDURAL,
            "teacher \"command\" { run \"sh\" \"-c\" \"echo no such style >&2; exit 3\"; }",
        ),
    );
    let r = p.run(&["build", "--json", "small"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let failed = failures(&r);
    assert!(!failed.is_empty(), "{}", r.stdout());
    for f in failed {
        assert_eq!(f["tier"], "input", "{f}");
        assert_eq!(f["user_error"], true, "{f}");
        assert_eq!(f["kind"], "pairs", "{f}");
        assert!(
            f["error"].as_str().unwrap().contains("no such style"),
            "the command's own words reach the user: {f}"
        );
    }
}

#[test]
fn a_full_disk_is_the_machines_problem_and_exits_3() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    // A file-size limit stands in for a full disk: with SIGXFSZ ignored, every write past
    // 2 KiB fails with EFBIG, as it would with ENOSPC, in effectc and in its children.
    let mut cmd = p.command(&["build", "--json", "small"]);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 2048,
                rlim_max: 2048,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = cmd.output().unwrap();
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let r = Run { output, events };
    assert_eq!(r.code(), 3, "{}\n{}", r.stderr(), r.stdout());
    let said = format!("{}{}", r.stdout(), r.stderr());
    assert!(
        said.contains("File too large"),
        "the cause is named: {said}"
    );
    for f in failures(&r) {
        assert_eq!(f["tier"], "environment", "{f}");
        assert_eq!(f["user_error"], false, "{f}");
    }
    // Nothing half-written: without the limit the same cache builds cleanly.
    let again = p.build("small");
    assert!(again.ran() > 0);
    assert_eq!(p.run(&["cache", "verify"]).code(), 0);
}
