//! A no-op build is mostly start-up, so `effectc` itself must never load libtorch (about
//! 200 ms before `main`): only the `effectc-nn` worker, which trains and runs teachers,
//! links it. build.rs arranges this without link-time optimisation; this guards it.

#![cfg(target_os = "linux")]

use std::process::Command;

/// The shared libraries the dynamic loader would map for `exe` (what `ldd` prints, read
/// from glibc's loader itself so no tool is needed).
fn loaded_libraries(exe: &str) -> String {
    let out = Command::new(exe)
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {exe}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_cli_does_not_load_libtorch_and_the_worker_does() {
    let cli = loaded_libraries(env!("CARGO_BIN_EXE_effectc"));
    assert!(
        !cli.contains("libtorch") && !cli.contains("libc10"),
        "effectc loads libtorch, which costs every command its start-up time:\n{cli}"
    );
    let worker = loaded_libraries(env!("CARGO_BIN_EXE_effectc-nn"));
    assert!(
        worker.contains("libtorch_cpu"),
        "the worker should link libtorch (is this check still seeing the loader's list?):\n{worker}"
    );
}
