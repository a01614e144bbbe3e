//! The pair generator as a long-lived `effectc-nn serve` process per device, so a build
//! loads the diffusion models once rather than once per pair, and a batcher that gathers
//! the pair jobs running at the same moment into one batch (`build --batch N`). CLIP
//! requests (attributes, identity) go to the same process, one at a time ([`clip`]).
//!
//! Pair stages call [`generate`]; the first caller to find the device idle becomes the
//! batch's leader: it waits a moment for others (up to N jobs), sends them as one
//! request, hands each caller its answer, and repeats while jobs are waiting.

use crate::diffusion::job::DiffuseJob;
use crate::protocol::{ServeAnswer, ServeRequest, WorkerReport};
use crate::stages::{RunContext, StageError};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a leader waits for more jobs to join its batch.
const GATHER: Duration = Duration::from_millis(150);

type Answer = Result<WorkerReport, StageError>;

struct Waiting {
    job: DiffuseJob,
    reply: mpsc::Sender<Answer>,
}

#[derive(Default)]
struct Device {
    pending: Vec<Waiting>,
    leading: bool,
}

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn devices() -> &'static Mutex<HashMap<String, Device>> {
    static D: OnceLock<Mutex<HashMap<String, Device>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

/// A device's server, started on first use.
type Slot = Arc<Mutex<Option<Server>>>;

/// One server slot per device, each behind its own lock, so devices work in parallel.
fn server_slot(device: &str) -> Slot {
    static S: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let mut all = S
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.entry(device.to_string()).or_default().clone()
}

/// Generates `job`'s pair, batched with whatever other pair jobs of the same device
/// arrive together (at most `ctx.batch`).
pub fn generate(ctx: &RunContext, job: DiffuseJob) -> Answer {
    let device = job.device.clone();
    let (tx, rx) = mpsc::channel();
    let lead = {
        let mut all = devices().lock().unwrap_or_else(|p| p.into_inner());
        let d = all.entry(device.clone()).or_default();
        d.pending.push(Waiting { job, reply: tx });
        !std::mem::replace(&mut d.leading, true)
    };
    if lead {
        lead_batches(&device, ctx.batch.max(1), ctx);
    }
    rx.recv().unwrap_or_else(|_| {
        Err(StageError::environment(
            "the pair batch ended without an answer",
        ))
    })
}

/// Runs batches for `device` until no job is waiting.
fn lead_batches(device: &str, batch: usize, ctx: &RunContext) {
    loop {
        // Let the jobs started alongside this one join (or stop early when full).
        let started = Instant::now();
        while started.elapsed() < GATHER {
            let n = devices()
                .lock()
                .map(|all| all.get(device).map_or(0, |d| d.pending.len()))
                .unwrap_or(0);
            if n >= batch || batch == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let group: Vec<Waiting> = {
            let mut all = devices().lock().unwrap_or_else(|p| p.into_inner());
            let d = all.entry(device.to_string()).or_default();
            if d.pending.is_empty() {
                d.leading = false;
                return;
            }
            let n = d.pending.len().min(batch);
            d.pending.drain(..n).collect()
        };
        let jobs: Vec<DiffuseJob> = group.iter().map(|w| w.job.clone()).collect();
        match run_batch(device, &jobs, ctx) {
            Ok(reports) => {
                for (w, r) in group.into_iter().zip(reports) {
                    let _ = w.reply.send(Ok(r));
                }
            }
            Err(e) => {
                let message = e.to_string();
                let tier = e.tier();
                for w in group {
                    let _ = w.reply.send(Err(match tier {
                        None => StageError::Cancelled,
                        Some(tier) => StageError::Failed {
                            tier,
                            message: message.clone(),
                        },
                    }));
                }
            }
        }
    }
}

fn start_server() -> Result<Server, StageError> {
    let mut cmd = super::worker::worker_command()?;
    cmd.arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // The server outlives the stage (and the scheduler thread) that started it: spawned
    // from the long-lived spawner thread, it dies with effectc and only with effectc.
    let mut child = crate::process::spawn(cmd)
        .map_err(|e| StageError::environment(format!("cannot start the tensor worker: {e}")))?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    Ok(Server {
        child,
        stdin,
        stdout,
    })
}

/// Sends one batch to the device's server (started on first use) and reads its answer;
/// a cancelled build kills the server (the next build starts a fresh one).
fn run_batch(
    device: &str,
    jobs: &[DiffuseJob],
    ctx: &RunContext,
) -> Result<Vec<WorkerReport>, StageError> {
    let line = serde_json::to_string(&ServeRequest {
        jobs: jobs.to_vec(),
    })
    .map_err(|e| StageError::bug(format!("cannot encode pair jobs: {e}")))?;
    exchange(device, &line, jobs.len(), ctx)
}

/// One CLIP request (`{"clip": job}`) to the device's server, which keeps the CLIP model
/// and the embedded queries loaded beside the diffusion models for the whole build.
pub fn clip(ctx: &RunContext, job: crate::clip::ClipJob) -> Result<WorkerReport, StageError> {
    let device = job.device.clone();
    let line = serde_json::to_string(&serde_json::json!({ "clip": job }))
        .map_err(|e| StageError::bug(format!("cannot encode a CLIP job: {e}")))?;
    let mut reports = exchange(&device, &line, 1, ctx)?;
    Ok(reports.remove(0))
}

/// Writes one request line to the device's server and reads its answer line.
fn exchange(
    device: &str,
    line: &str,
    expected: usize,
    ctx: &RunContext,
) -> Result<Vec<WorkerReport>, StageError> {
    let slot = server_slot(device);
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some(start_server()?);
    }
    let server = slot.as_mut().expect("started");
    let sent = writeln!(server.stdin, "{line}").and_then(|_| server.stdin.flush());
    if let Err(e) = sent {
        *slot = None;
        return Err(StageError::environment(format!(
            "the tensor worker went away: {e}"
        )));
    }
    // Read the answer on a helper thread so a cancel can interrupt the wait.
    let answer = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut text = String::new();
            server.stdout.read_line(&mut text).map(|_| text)
        });
        while !reader.is_finished() {
            if ctx.cancel.load(Ordering::SeqCst) {
                // Unblocks the reader: the worker's stdout closes when it dies.
                // SAFETY: a plain syscall to our own, not yet reaped, child.
                unsafe {
                    libc::kill(server.child.id() as libc::pid_t, libc::SIGKILL);
                }
                let _ = reader.join();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(reader.join().ok().and_then(|r| r.ok()).unwrap_or_default())
    });
    let Some(text) = answer else {
        if let Some(mut s) = slot.take() {
            let _ = s.child.wait();
        }
        return Err(StageError::Cancelled);
    };
    let answer: ServeAnswer = match serde_json::from_str(&text) {
        Ok(a) => a,
        Err(_) if text.trim().is_empty() => {
            if let Some(mut s) = slot.take() {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
            return Err(StageError::environment(
                "the tensor worker died while working (out of memory?)",
            ));
        }
        Err(e) => {
            return Err(StageError::bug(format!(
                "unreadable answer from the tensor worker: {e}"
            )))
        }
    };
    match answer {
        ServeAnswer::Error { error, user: true } => Err(StageError::input(error)),
        ServeAnswer::Error { error, user: false } => Err(StageError::environment(error)),
        ServeAnswer::Reports { reports } if reports.len() != expected => Err(StageError::bug(
            "the tensor worker answered the wrong number of jobs",
        )),
        ServeAnswer::Reports { reports } => Ok(reports),
    }
}
