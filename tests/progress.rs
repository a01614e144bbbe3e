//! What a build prints for people: live progress on a terminal only, nothing of it in a
//! pipe or a CI log, and with `--quiet` only errors and the summary.

mod common;
use common::*;

/// Marks of live progress: carriage returns, cursor movement, ETAs, the overall line.
fn progress_marks(text: &str) -> Vec<&'static str> {
    ["\r", "\x1b[", "ETA", "elapsed", "running"]
        .into_iter()
        .filter(|m| text.contains(m))
        .collect()
}

#[test]
fn off_a_terminal_a_build_prints_no_progress_and_quiet_prints_only_the_summary() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    // stderr is a pipe here: not a terminal.
    let r = p.run(&["build", "small"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        progress_marks(&err).is_empty(),
        "progress in a pipe: {:?}\n{err}",
        progress_marks(&err)
    );
    assert!(err.contains("small: built in"), "{err}");
    assert!(err.contains("train-teacher ("), "metrics lines stay: {err}");
    assert!(r.stdout().is_empty(), "{}", r.stdout());

    // --quiet: the summary line, nothing else (cached or not).
    std::fs::remove_dir_all(p.cache_dir()).unwrap();
    let q = p.run(&["build", "--quiet", "small"]);
    assert_eq!(q.code(), 0, "{}", q.stderr());
    let lines: Vec<String> = q
        .stderr()
        .lines()
        .map(String::from)
        .filter(|l| !l.trim().is_empty())
        .collect();
    // The summary keeps its plain-words notes (a teacher that did not learn the effect):
    // they are part of the summary, not progress.
    assert!(lines[0].starts_with("small: built in"), "{lines:?}");
    assert!(
        lines[1..].iter().all(|l| l.starts_with("  note: ")),
        "{lines:?}"
    );
    assert!(q.stdout().is_empty());

    // --quiet still names what failed.
    p.recipe(
        "broken",
        &SMALL_BRICK.replace("effect \"small\"", "effect \"broken\"").replace(
            "teacher \"procedural\" {\n        style \"brick-mosaic\"\n        stud-size 4\n        palette \"lego-classic\"\n    }",
            "teacher \"command\" { run \"sh\" \"-c\" \"exit 3\"; }",
        ),
    );
    let f = p.run(&["build", "-q", "broken"]);
    assert_eq!(f.code(), 1, "{}", f.stderr());
    let err = f.stderr();
    assert!(err.contains("error: pairs/"), "{err}");
    assert!(err.contains("broken: FAILED"), "{err}");
    assert!(
        !err.contains("outputs:") && progress_marks(&err).is_empty(),
        "{err}"
    );
}

#[test]
fn on_a_terminal_a_build_shows_an_overall_line_and_a_line_per_running_stage() {
    // util-linux `script` gives the build a pseudo-terminal and records what it drew.
    let p = TestProject::new();
    // Enough teacher steps that the live line is drawn more than once.
    p.recipe(
        "small",
        &SMALL_BRICK.replace("teacher-steps 20", "teacher-steps 60"),
    );
    let log = p.root().join("tty.log");
    let cmd = format!("{} build small", effectc_bin().display());
    let status = std::process::Command::new("script")
        .current_dir(p.root())
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .env_remove("EFFECTC_CACHE")
        .args(["-qfec", &cmd])
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("util-linux `script`");
    assert!(status.success());
    let drawn = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    // The overall line: [done/total] effect, elapsed and ETA.
    assert!(
        drawn.contains("] small ") && drawn.contains("elapsed, ETA"),
        "no overall line:\n{drawn}"
    );
    // Training draws its steps (step/total, steps/s) on its own line.
    assert!(
        drawn.contains("train-teacher") && drawn.contains("steps/s"),
        "{drawn}"
    );
    assert!(drawn.contains("small: built in"), "{drawn}");
}
