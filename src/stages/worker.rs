//! Runs a job in the `effectc-nn` tensor worker: writes the job, relays progress lines,
//! forwards a cancel as SIGINT (the worker checkpoints first), and maps its exit code
//! (0 done, 1 the user's problem, 130 cancelled, else the machine's).

use crate::protocol::{gb, MemoryPlan, WorkerLine, WorkerReport};
use crate::stages::{Progress, RunContext, StageError};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

/// The worker binary, next to the running `effectc`.
pub fn worker_path() -> Result<PathBuf, StageError> {
    let exe = std::env::current_exe()
        .map_err(|e| StageError::environment(format!("cannot locate effectc itself: {e}")))?;
    let path = exe.with_file_name("effectc-nn");
    if !path.is_file() {
        return Err(StageError::environment(format!(
            "the tensor worker {} is missing: build it with `cargo build --release` (make setup)",
            path.display()
        )));
    }
    Ok(path)
}

/// glibc malloc settings for the worker. By default glibc serves every block above a
/// (dynamic, at most 32 MiB) threshold with a fresh mmap and unmaps it on free, so each
/// training step page-faults its activations in again: measured on 2 cores, half of
/// the step went to the kernel. Keeping freed memory in the heap (never mmap, never
/// trim) made training steps 1.8-2x faster (docs/design-notes.md). These are read at
/// process start, so they travel as environment; `effectc-nn` sets them itself (and
/// re-executes) when started without them.
pub const WORKER_MALLOC_ENV: &[(&str, &str)] = &[
    ("MALLOC_MMAP_THRESHOLD_", "4294967296"),
    ("MALLOC_TRIM_THRESHOLD_", "4294967296"),
    ("MALLOC_TOP_PAD_", "268435456"),
];

/// `effectc-nn` with the worker's allocator settings.
pub fn worker_command() -> Result<Command, StageError> {
    let mut cmd = Command::new(worker_path()?);
    cmd.envs(WORKER_MALLOC_ENV.iter().copied());
    Ok(cmd)
}

pub fn run_worker(
    ctx: &mut RunContext,
    subcommand: &str,
    job: &serde_json::Value,
) -> Result<WorkerReport, StageError> {
    let job_path = ctx.out_dir.join(format!("{subcommand}-job.json"));
    std::fs::write(
        &job_path,
        serde_json::to_vec_pretty(job).unwrap_or_default(),
    )
    .map_err(|e| StageError::io(&job_path, e))?;
    let mut cmd = worker_command()?;
    cmd.arg(subcommand)
        .arg(&job_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Dies with effectc, however effectc dies (no orphan writing into the checkpoint).
    let mut child = crate::process::spawn(cmd)
        .map_err(|e| StageError::environment(format!("cannot start the tensor worker: {e}")))?;
    let stderr = child.stderr.take();
    let stderr_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut s) = stderr {
            let _ = std::io::Read::read_to_string(&mut s, &mut text);
        }
        text
    });
    // Relay progress; forward a cancel to the worker as SIGINT (it checkpoints first).
    let pid = child.id();
    let cancel = ctx.cancel;
    let progress = ctx.progress;
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut report = None;
    let mut plan: Option<MemoryPlan> = None;
    // The worker's peak resident memory, sampled: the figure an OOM kill is reported with.
    let peak_rss = std::sync::atomic::AtomicU64::new(0);
    let oom_kills_before = cgroup_oom_kills();
    let stdout = child.stdout.take();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if let Some(rss) = resident_bytes(pid) {
                    peak_rss.fetch_max(rss, Ordering::SeqCst);
                }
                if cancel.load(Ordering::SeqCst) {
                    // SAFETY: a plain syscall to our own, not yet reaped, child.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGINT);
                    }
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Lines that are not protocol (a library printing) are not ours to read.
                match serde_json::from_str::<WorkerLine>(&line) {
                    Ok(WorkerLine::Progress(p)) if p.memory.is_some() => {
                        let m = p.memory.clone().unwrap_or_else(|| unreachable!());
                        progress(Progress {
                            done: p.step as u64,
                            total: p.total_steps as u64,
                            message: format!("memory: {}", m.summary()),
                        });
                        plan = Some(m);
                    }
                    Ok(WorkerLine::Progress(p)) => {
                        let losses = p
                            .losses
                            .iter()
                            .filter(|(k, _)| *k != "total")
                            .map(|(k, v)| format!("{k} {v:.3}"))
                            .collect::<Vec<_>>()
                            .join(" ");
                        progress(Progress {
                            done: p.step as u64,
                            total: p.total_steps as u64,
                            message: format!("{losses} | {:.1} steps/s", p.steps_per_s),
                        });
                    }
                    Ok(WorkerLine::Report(r)) => report = Some(r),
                    Err(_) => {}
                }
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    let status = child
        .wait()
        .map_err(|e| StageError::environment(format!("tensor worker: {e}")))?;
    let stderr = stderr_thread.join().unwrap_or_default();
    ctx.log.push_str(&stderr);
    match status.code() {
        Some(0) => {}
        Some(130) => return Err(StageError::Cancelled),
        Some(1) => return Err(StageError::input(stderr.trim().to_string())),
        // A Rust panic in the worker.
        Some(101) => {
            return Err(StageError::bug(format!(
                "the tensor worker panicked: {}",
                stderr.trim()
            )))
        }
        None if status.signal() == Some(libc::SIGKILL) => {
            return Err(StageError::environment(killed_message(
                plan.as_ref(),
                peak_rss.load(Ordering::SeqCst),
                oom_kills_before,
                stderr.trim(),
            )))
        }
        code => {
            return Err(StageError::environment(format!(
                "tensor worker failed ({}): {}",
                code.map(|c| c.to_string())
                    .unwrap_or_else(|| "killed".into()),
                stderr.trim()
            )))
        }
    }
    report.ok_or_else(|| StageError::bug("the tensor worker ended without a report"))
}

/// A worker the kernel killed (SIGKILL, which nothing in effectc sends it): out of
/// memory in all likelihood, said with the figures (the plan it sent, its peak, what is
/// free now) and the cgroup's OOM count when it rose.
fn killed_message(
    plan: Option<&MemoryPlan>,
    peak_rss: u64,
    oom_kills_before: Option<u64>,
    stderr: &str,
) -> String {
    let cgroup = match (oom_kills_before, cgroup_oom_kills()) {
        (Some(a), Some(b)) if b > a => ", and the cgroup's oom_kill count rose",
        _ => "",
    };
    let mut msg = format!(
        "out of memory: the kernel killed the tensor worker (SIGKILL{cgroup}) at a peak of {} resident",
        gb(peak_rss as f64)
    );
    if let Some(p) = plan {
        msg += &format!(
            "; its plan was {} (estimated {} per pass)",
            p.summary(),
            gb(p.micro_needed_bytes as f64)
        );
    }
    if let Some(kb) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| crate::train::memory::meminfo_field(&t, "MemAvailable"))
    {
        msg += &format!("; {} is free now", gb(kb * 1024.0));
    }
    msg += ". Lower `train batch` or the crop `size` in the recipe, or stop what else holds memory";
    if !stderr.is_empty() {
        msg += &format!("\n{stderr}");
    }
    msg
}

/// VmRSS of a live process, in bytes.
fn resident_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    crate::train::memory::meminfo_field(&text, "VmRSS").map(|kb| kb as u64 * 1024)
}

/// `oom_kill` of this process's cgroup (v2 `memory.events`), when readable.
fn cgroup_oom_kills() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let events = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.events")).ok()?;
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}
