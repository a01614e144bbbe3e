//! `train-teacher` and `distill-student`: the wide teacher learns the pairs; the narrow
//! real-time student learns from it. The work runs in the `effectc-nn` worker process
//! (see docs/design-notes.md); this stage writes its job, relays its progress, and
//! turns its exit into a result. Interrupting it leaves a checkpoint in the cache that
//! the next build of the same key resumes from.

use crate::nn::config::AccordionConfig;
use crate::plan::{Params, Progress, Resource, RunContext, RunOutput, Stage, StageError};
use crate::recipe::{Student, Train};
use crate::train::job::{Hyper, PairFiles, TrainJob, TrainReport};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Teacher,
    Student,
}

pub struct TrainStage {
    pub role: Role,
    pub student: Student,
    pub train: Train,
    /// Item names in input order; each has inputs `{split}/{item}/source|target`.
    pub items: Vec<(String, bool)>,
}

/// The worker binary, next to the running `effectc`.
pub fn worker_path() -> Result<PathBuf, StageError> {
    let exe = std::env::current_exe().map_err(|e| StageError::infra(format!("cannot locate effectc itself: {e}")))?;
    let path = exe.with_file_name("effectc-nn");
    if !path.is_file() {
        return Err(StageError::infra(format!("the tensor worker {} is missing: build it with `cargo build --release` (make setup)", path.display())));
    }
    Ok(path)
}

pub fn input_name(item: &str, holdout: bool, what: &str) -> String {
    format!("{}/{item}/{what}", if holdout { "holdout" } else { "train" })
}

impl TrainStage {
    fn arch(&self) -> AccordionConfig {
        let width = match self.role {
            Role::Teacher => self.student.teacher_width,
            Role::Student => self.student.width,
        };
        AccordionConfig { width: width as i64, blocks: self.student.blocks as i64 }
    }

    fn hyper(&self) -> Hyper {
        let t = &self.train;
        Hyper {
            steps: match self.role {
                Role::Teacher => t.teacher_steps,
                Role::Student => t.student_steps,
            },
            batch: t.batch,
            lr: t.lr,
            l1_weight: t.l1_weight,
            ssim_weight: t.ssim_weight,
            gan_weight: t.gan_weight,
            r1_gamma: t.r1_gamma,
            r1_every: 16,
            feature_weight: 0.1,
            ema_beta: t.ema_beta,
            checkpoint_every: t.checkpoint_every,
            seed: t.seed,
            shift_px: t.shift_px,
        }
    }
}

impl Stage for TrainStage {
    fn kind(&self) -> &'static str {
        match self.role {
            Role::Teacher => "train-teacher",
            Role::Student => "distill-student",
        }
    }
    fn version(&self) -> u32 {
        1
    }
    fn resource(&self) -> Resource {
        Resource::Exclusive
    }
    fn params(&self) -> Params {
        let t = &self.train;
        let mut p = Params::from([
            ("student.blocks".into(), self.student.blocks.to_string()),
            ("student.teacher-width".into(), self.student.teacher_width.to_string()),
            ("train.batch".into(), t.batch.to_string()),
            ("train.lr".into(), format!("{:?}", t.lr)),
            ("train.l1".into(), format!("{:?}", t.l1_weight)),
            ("train.ssim".into(), format!("{:?}", t.ssim_weight)),
            ("train.ema".into(), format!("{:?}", t.ema_beta)),
            ("train.checkpoint-every".into(), t.checkpoint_every.to_string()),
            ("train.seed".into(), t.seed.to_string()),
            ("train.shift-px".into(), t.shift_px.to_string()),
        ]);
        match self.role {
            Role::Teacher => {
                p.insert("train.teacher-steps".into(), t.teacher_steps.to_string());
                p.insert("train.gan".into(), format!("{:?}", t.gan_weight));
                p.insert("train.r1-gamma".into(), format!("{:?}", t.r1_gamma));
            }
            Role::Student => {
                p.insert("student.width".into(), self.student.width.to_string());
                p.insert("train.student-steps".into(), t.student_steps.to_string());
            }
        }
        p
    }

    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let mut pairs = Vec::new();
        for (item, holdout) in &self.items {
            pairs.push(PairFiles {
                name: item.clone(),
                source: ctx.input(&input_name(item, *holdout, "source"))?.to_path_buf(),
                target: ctx.input(&input_name(item, *holdout, "target"))?.to_path_buf(),
                holdout: *holdout,
            });
        }
        let teacher = match self.role {
            Role::Teacher => None,
            Role::Student => Some((ctx.input("teacher-weights")?.to_path_buf(), AccordionConfig { width: self.student.teacher_width as i64, blocks: self.student.blocks as i64 })),
        };
        let job = TrainJob {
            role: match self.role {
                Role::Teacher => "teacher".into(),
                Role::Student => "student".into(),
            },
            arch: self.arch(),
            teacher,
            pairs,
            hyper: self.hyper(),
            device: ctx.device.to_string(),
            checkpoint_dir: ctx.checkpoint_dir.clone(),
            out_dir: ctx.out_dir.join("out"),
        };
        let job_path = ctx.out_dir.join("job.json");
        std::fs::write(&job_path, serde_json::to_vec_pretty(&job).unwrap_or_default()).map_err(|e| StageError::io(&job_path, e))?;
        let mut child = Command::new(worker_path()?)
            .arg("train")
            .arg(&job_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StageError::infra(format!("cannot start the tensor worker: {e}")))?;
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
        let stdout = child.stdout.take();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    if cancel.load(Ordering::SeqCst) {
                        let _ = Command::new("kill").arg("-INT").arg(pid.to_string()).status();
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
            if let Some(stdout) = stdout {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    if let Some(p) = v.get("progress") {
                        let losses = p["losses"].as_object().map(|m| m.iter().filter(|(k, _)| *k != "total").map(|(k, v)| format!("{k} {:.3}", v.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(" ")).unwrap_or_default();
                        progress(Progress { done: p["step"].as_u64().unwrap_or(0), total: p["total_steps"].as_u64().unwrap_or(0), message: format!("{losses} | {:.1} steps/s", p["steps_per_s"].as_f64().unwrap_or(0.0)) });
                    } else if let Some(r) = v.get("report") {
                        report = serde_json::from_value::<TrainReport>(r.clone()).ok();
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
        });
        let status = child.wait().map_err(|e| StageError::infra(format!("tensor worker: {e}")))?;
        let stderr = stderr_thread.join().unwrap_or_default();
        ctx.log.push_str(&stderr);
        match status.code() {
            Some(0) => {}
            Some(130) => return Err(StageError::Cancelled),
            Some(1) => return Err(StageError::user(stderr.trim().to_string())),
            code => return Err(StageError::infra(format!("tensor worker failed ({}): {}", code.map(|c| c.to_string()).unwrap_or_else(|| "killed".into()), stderr.trim()))),
        }
        let report = report.ok_or_else(|| StageError::infra("the tensor worker ended without a report"))?;
        let mut out = RunOutput { metrics: report.metrics, ..Default::default() };
        for (name, path) in report.files {
            let name = if name == "weights" { "weights.safetensors".to_string() } else { name };
            out.files.insert(name, path);
        }
        Ok(out)
    }
}
