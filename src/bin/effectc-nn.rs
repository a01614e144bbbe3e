//! The tensor worker: the only effectc process that loads libtorch. A stage writes a job
//! (JSON) and runs `effectc-nn train|export JOB.json` (pairs go through `serve`); progress comes back as JSON lines on
//! stdout (`{"progress": ...}`), then `{"report": ...}`. Exit codes: 0 done, 1 the
//! recipe's or data's fault, 3 the machine's (out of memory included: a step that
//! cannot fit is refused before it runs), 130 cancelled (SIGINT/SIGTERM: a checkpoint
//! is saved first).

use effectc::protocol::{ServeAnswer, ServeRequest, WorkerLine};
use effectc::train::{self, TrainError, TrainJob};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    ensure_malloc_settings();
    // effectc sets the parent-death signal; this also covers systems without it.
    effectc::process::exit_when_orphaned();
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 2 && args[1] == "serve" {
        serve();
        return;
    }
    if args.len() != 3 || !["train", "export"].contains(&args[1].as_str()) {
        eprintln!("usage: effectc-nn train|export JOB.json | effectc-nn serve");
        std::process::exit(2);
    }
    if args[1] == "export" {
        let job: train::ExportJob = read_job(&args[2]);
        match effectc::export::student::export_student(&job) {
            Ok(report) => print_line(&WorkerLine::Report(report)),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(if e.is_user_error() { 1 } else { 3 });
            }
        }
        return;
    }
    let job: TrainJob = read_job(&args[2]);
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    let mut last = Instant::now();
    let mut progress = |p: &train::TrainProgress| {
        // At most ~4 lines a second, and always the last step and the memory plan.
        if last.elapsed().as_millis() >= 250 || p.step == p.total_steps || p.memory.is_some() {
            last = Instant::now();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", line_text(&WorkerLine::Progress(p.clone())));
            let _ = out.flush();
        }
    };
    match train::run(&job, &mut progress, &cancel) {
        Ok(report) => print_line(&WorkerLine::Report(report)),
        Err(e) => {
            eprintln!("{e}");
            let code = match e {
                TrainError::Cancelled { .. } => 130,
                ref e if e.is_user_error() => 1,
                _ => 3,
            };
            std::process::exit(code);
        }
    }
}

fn line_text(line: &WorkerLine) -> String {
    serde_json::to_string(line).expect("protocol lines are plain data")
}

fn print_line(line: &WorkerLine) {
    println!("{}", line_text(line));
}

/// Reads a job file; a bad one is a usage error (exit 2).
fn read_job<T: serde::de::DeserializeOwned>(path: &str) -> T {
    match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(j) => j,
        Err(e) => {
            eprintln!("effectc-nn: cannot read job {path}: {e}");
            std::process::exit(2);
        }
    }
}

fn tch_device(text: &str) -> Result<tch::Device, String> {
    Ok(effectc::nn::DeviceSpec::parse(text)?.to_tch())
}

/// `effectc-nn serve`: a long-lived pair generator. Each stdin line is
/// `{"jobs": [DiffuseJob...]}` (one batch) or `{"clip": ClipJob}`; each answer one stdout line,
/// `{"reports": [...]}` or `{"error": "...", "user": bool}`. Models stay loaded between
/// batches. Ends at EOF (its build ended).
fn serve() {
    use std::io::BufRead;
    type Batch = ServeRequest<effectc::diffusion::job::DiffuseJob>;
    /// A batch of pairs, or one CLIP request (`{"clip": ClipJob}`).
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Request {
        Clip { clip: effectc::clip::ClipJob },
        Pairs(Batch),
    }
    let mut worker = effectc::diffusion::job::Worker::default();
    let mut clip = effectc::clip::ClipWorker::default();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(e) => ServeAnswer::Error {
                error: format!("bad request: {e}"),
                user: false,
            },
            Ok(Request::Clip { clip: job }) => match tch_device(&job.device) {
                Err(e) => ServeAnswer::Error {
                    error: e,
                    user: true,
                },
                Ok(device) => match clip.run(&job, device) {
                    Ok(report) => ServeAnswer::Reports {
                        reports: vec![report],
                    },
                    Err(e) => ServeAnswer::Error {
                        error: e.to_string(),
                        user: e.is_user_error(),
                    },
                },
            },
            Ok(Request::Pairs(batch)) => {
                let device = batch
                    .jobs
                    .first()
                    .map(|j| tch_device(&j.device))
                    .unwrap_or(Ok(tch::Device::Cpu));
                match device {
                    Err(e) => ServeAnswer::Error {
                        error: e,
                        user: true,
                    },
                    Ok(device) => match worker.run(&batch.jobs, device) {
                        Ok(reports) => ServeAnswer::Reports { reports },
                        Err(e) => ServeAnswer::Error {
                            error: e.to_string(),
                            user: e.is_user_error(),
                        },
                    },
                }
            }
        };
        let mut out = std::io::stdout().lock();
        let text = serde_json::to_string(&answer).expect("protocol lines are plain data");
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}

/// glibc reads its malloc settings at process start: when started without the worker's
/// (see `stages::worker::WORKER_MALLOC_ENV`), set them and execute again. `effectc`
/// always passes them, so this only costs a manual or benchmark run one exec.
fn ensure_malloc_settings() {
    use effectc::stages::worker::WORKER_MALLOC_ENV;
    use std::os::unix::process::CommandExt;
    if WORKER_MALLOC_ENV
        .iter()
        .all(|(k, v)| std::env::var(k).as_deref() == Ok(*v))
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(WORKER_MALLOC_ENV.iter().copied())
        .exec();
    eprintln!(
        "effectc-nn: could not re-execute with the allocator settings ({err}); going on without"
    );
}
