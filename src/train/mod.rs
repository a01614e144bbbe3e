//! Training the wide teacher on the pairs, then distilling the real-time student from it.
//!
//! Runs inside the `effectc-nn` worker (the only process that loads libtorch). Every
//! per-step random choice (batch, flips, shifts, colour jitter) comes from a hash of
//! (seed, step), and the whole state (weights, EMA, discriminator, Adam moments, loss
//! history) is checkpointed, so an interrupted run resumes to byte-identical weights on CPU.

mod checkpoint;
mod data;
pub mod job;
mod loops;
pub mod memory;
mod metrics;
pub mod plot;
mod samples;

pub use checkpoint::load_generator;
pub use data::load_png;
pub use data::to_image;
pub use job::{ExportJob, Hyper, LrSchedule, PairFiles, TrainJob, TrainProgress, WorkerReport};

use data::{load_data, Data};
use job::Role;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tch::Device;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training diverged at step {step}: loss term `{term}` is {value} (the last good checkpoint is kept; lower `lr` in the recipe's `train` block)")]
    Diverged { step: u32, term: String, value: f64 },
    #[error("cancelled at step {step} (checkpoint saved; the next build resumes from it)")]
    Cancelled { step: u32 },
    #[error("{path}: {what}")]
    BadInput { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("libtorch: {}", .0.to_string().lines().next().unwrap_or(""))]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Device(String),
    /// A step that cannot fit, found before it runs, or an allocation libtorch was refused.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
}

impl TrainError {
    /// The recipe's or the data's fault (fix and rebuild) rather than the machine's.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            TrainError::Diverged { .. } | TrainError::BadInput { .. } | TrainError::Device(_)
        )
    }
}

pub fn parse_device(text: &str) -> Result<Device, TrainError> {
    let device = crate::nn::DeviceSpec::parse(text)
        .map_err(TrainError::Device)?
        .to_tch();
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count() as usize;
        if n >= count {
            return Err(TrainError::Device(format!(
                "device cuda:{n} asked for, but libtorch sees {count} CUDA device(s)"
            )));
        }
    }
    Ok(device)
}

struct Trainer<'a> {
    job: &'a TrainJob,
    device: Device,
    data: Data,
    started: Instant,
    start_step: u32,
    /// Tests only: the largest micro-batch, whatever memory says (to check that
    /// accumulated micro-batches train like one pass).
    micro_batch_cap: Option<u32>,
}

/// Trains what `job` asks for; see the module comment.
pub fn run(
    job: &TrainJob,
    progress: &mut dyn FnMut(&TrainProgress),
    cancel: &AtomicBool,
) -> Result<WorkerReport, TrainError> {
    run_capped(job, progress, cancel, None)
}

fn run_capped(
    job: &TrainJob,
    progress: &mut dyn FnMut(&TrainProgress),
    cancel: &AtomicBool,
    micro_batch_cap: Option<u32>,
) -> Result<WorkerReport, TrainError> {
    let device = parse_device(&job.device)?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(job.hyper.seed as i64);
    let data = load_data(&job.pairs, device)?;
    std::fs::create_dir_all(&job.checkpoint_dir).map_err(|source| TrainError::Io {
        path: job.checkpoint_dir.clone(),
        source,
    })?;
    std::fs::create_dir_all(&job.out_dir).map_err(|source| TrainError::Io {
        path: job.out_dir.clone(),
        source,
    })?;
    let t = Trainer {
        job,
        device,
        data,
        started: Instant::now(),
        start_step: 0,
        micro_batch_cap,
    };
    // libtorch reports a refused allocation (RLIMIT_AS, a full card) by panicking
    // through tch: caught here, so it reads as memory, not as a bug in effectc.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job.role {
        Role::Teacher => t.teacher(progress, cancel),
        Role::Student => t.student(progress, cancel),
    }));
    let refused = |text: &str| {
        TrainError::OutOfMemory(format!(
            "libtorch could not allocate: {}",
            text.lines().next().unwrap_or("")
        ))
    };
    match result {
        Ok(Err(TrainError::Torch(e))) if is_allocation_failure(&e.to_string()) => {
            Err(refused(&e.to_string()))
        }
        Ok(r) => r,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if is_allocation_failure(&text) {
                Err(refused(&text))
            } else {
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// libtorch's words for a refused allocation (CPU allocator, CUDA caching allocator).
fn is_allocation_failure(text: &str) -> bool {
    text.contains("can't allocate memory")
        || text.contains("not enough memory")
        || text.contains("out of memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{brick, synthetic};
    use crate::nn::AccordionConfig;
    use std::path::Path;
    use std::sync::atomic::Ordering;
    use tch::Tensor;

    /// libtorch shares one CPU thread pool per process: two trainings at once can split
    /// work differently and round differently. Byte-identity holds per process (as in
    /// the worker), so these tests train one at a time.
    static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        TORCH.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tiny brick pairs at 32 px, 2 of 8 held out.
    fn pairs(dir: &Path) -> Vec<PairFiles> {
        (0..8)
            .map(|i| {
                let src = synthetic::synthetic_portrait(5, i, 32);
                let tgt = brick::brick_mosaic(
                    &src,
                    &brick::BrickStyle {
                        stud_px: 4,
                        ..Default::default()
                    },
                );
                let (s, t) = (dir.join(format!("s{i}.png")), dir.join(format!("t{i}.png")));
                src.save(&s).unwrap();
                tgt.save(&t).unwrap();
                PairFiles {
                    name: format!("p{i}"),
                    source: s,
                    target: t,
                    holdout: i >= 6,
                }
            })
            .collect()
    }

    fn job(dir: &Path, steps: u32, lr: f64) -> TrainJob {
        TrainJob {
            role: Role::Teacher,
            arch: AccordionConfig {
                width: 8,
                blocks: 1,
            },
            teacher: None,
            pairs: pairs(dir),
            hyper: Hyper {
                steps,
                batch: 2,
                lr,
                // Cosine: a resumed run must land on the same schedule.
                lr_schedule: LrSchedule::Cosine,
                beta1: 0.9,
                l1_weight: 1.0,
                ssim_weight: 0.5,
                gan_weight: 0.05,
                // The discriminator starts at step 7: a resume at step 8 crosses it.
                gan_start: 0.5,
                r1_gamma: 1.0,
                r1_every: 4,
                feature_weight: 1.0,
                ema_beta: 0.99,
                checkpoint_every: 5,
                seed: 9,
                shift_px: 2,
                flip: true,
                jitter: 0.05,
            },
            device: "cpu".into(),
            checkpoint_dir: dir.join("ckpt"),
            out_dir: dir.join("out"),
        }
    }

    #[test]
    fn an_interrupted_run_resumes_to_byte_identical_weights() {
        let _one_at_a_time = serial();
        let whole = tempfile::tempdir().unwrap();
        let j = job(whole.path(), 14, 0.002);
        run(&j, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let reference = std::fs::read(j.out_dir.join("weights.safetensors")).unwrap();

        let split = tempfile::tempdir().unwrap();
        let j2 = job(split.path(), 14, 0.002);
        let cancel = AtomicBool::new(false);
        let err = run(
            &j2,
            &mut |p| {
                if p.step == 8 {
                    cancel.store(true, Ordering::SeqCst)
                }
            },
            &cancel,
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Cancelled { step: 8 }), "{err}");
        assert!(
            j2.checkpoint_dir.join("checkpoint.safetensors").is_file(),
            "cancel leaves a checkpoint"
        );
        run(&j2, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let resumed = std::fs::read(j2.out_dir.join("weights.safetensors")).unwrap();
        assert!(
            resumed == reference,
            "resumed weights differ from an uninterrupted run"
        );
        let csv = std::fs::read_to_string(j2.out_dir.join("loss.csv")).unwrap();
        assert_eq!(
            csv.lines().count(),
            15,
            "the loss history survives the interruption"
        );
    }

    /// Every tensor of two weight files, as (name, values).
    fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
        let mut all = Tensor::read_safetensors(path).unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter()
            .map(|(n, t)| (n, Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()))
            .collect()
    }

    /// The largest difference between two runs' weights, relative to the weights' scale.
    fn relative_difference(a: &Path, b: &Path) -> f64 {
        let (a, b) = (weights(a), weights(b));
        assert_eq!(a.len(), b.len());
        let (mut diff, mut scale) = (0f64, 0f64);
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            for (x, y) in va.iter().zip(vb) {
                diff = diff.max((x - y).abs() as f64);
                scale = scale.max(x.abs() as f64);
            }
        }
        diff / scale
    }

    /// A batch that does not fit trains as micro-batches whose gradients accumulate: the
    /// same step as one pass, up to float summation order (teacher with the
    /// discriminator and lazy R1, then the student distilled from it).
    #[test]
    fn accumulated_micro_batches_train_like_one_pass() {
        let _one_at_a_time = serial();
        let dir = tempfile::tempdir().unwrap();
        let train = |name: &str, role: Role, cap: Option<u32>, teacher: Option<PathBuf>| {
            let mut j = job(&dir.path().join(name), 10, 0.002);
            j.hyper.batch = 4;
            j.role = role;
            j.teacher = teacher.map(|w| {
                (
                    w,
                    AccordionConfig {
                        width: 8,
                        blocks: 1,
                    },
                )
            });
            if role == Role::Student {
                j.arch.width = 4;
            }
            let mut micro = Vec::new();
            run_capped(
                &j,
                &mut |p| micro.extend(p.memory.as_ref().map(|m| m.micro_batch)),
                &AtomicBool::new(false),
                cap,
            )
            .unwrap();
            assert_eq!(micro, [cap.unwrap_or(4)], "the plan the run announced");
            j.out_dir.join("weights.safetensors")
        };
        for d in ["t1", "t4", "s1", "s4"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let whole = train("t4", Role::Teacher, None, None);
        let micro = train("t1", Role::Teacher, Some(1), None);
        let teacher_diff = relative_difference(&whole, &micro);
        let student_whole = train("s4", Role::Student, None, Some(whole.clone()));
        let student_micro = train("s1", Role::Student, Some(1), Some(whole));
        let student_diff = relative_difference(&student_whole, &student_micro);
        // Ten Adam steps (gan from step 5, R1 at step 8): float rounding only (measured
        // 1e-7 for both; before the student's feature normalisers were the batch's, its
        // micro-batches differed by 4e-3, as much as another batch size does).
        eprintln!("relative difference: teacher {teacher_diff:e}, student {student_diff:e}");
        assert!(
            teacher_diff < 1e-3,
            "teacher weights differ by {teacher_diff:e}"
        );
        assert!(
            student_diff < 1e-3,
            "student weights differ by {student_diff:e}"
        );
        // The losses reported per step are the batch's, whatever the split.
        let losses = |name: &str| {
            let csv = std::fs::read_to_string(dir.path().join(name).join("out/loss.csv")).unwrap();
            csv.lines()
                .skip(1)
                .flat_map(|l| {
                    l.split(',')
                        .skip(1)
                        .map(|v| v.parse::<f64>().unwrap())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<f64>>()
        };
        for (a, b) in [("t4", "t1"), ("s4", "s1")] {
            for (x, y) in losses(a).iter().zip(losses(b)) {
                assert!(
                    (x - y).abs() <= 1e-3 * x.abs().max(1e-2),
                    "{a} vs {b}: loss {x} vs {y}"
                );
            }
        }
        // The bound tells a real difference apart: batch 2 instead of 4 is far beyond it.
        std::fs::create_dir_all(dir.path().join("t2")).unwrap();
        let mut j = job(&dir.path().join("t2"), 10, 0.002);
        j.hyper.batch = 2;
        run(&j, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let other = relative_difference(&micro, &j.out_dir.join("weights.safetensors"));
        assert!(other > 1e-3, "batch 2 vs 4 differ by only {other:e}");
    }

    #[test]
    fn the_discriminator_runs_only_from_gan_start() {
        let _one_at_a_time = serial();
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), 14, 0.002);
        run(&j, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let csv = std::fs::read_to_string(j.out_dir.join("loss.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let d = header.iter().position(|c| *c == "d").unwrap();
        let d_loss: Vec<f64> = lines
            .map(|l| l.split(',').nth(d).unwrap().parse().unwrap())
            .collect();
        assert_eq!(d_loss.len(), 14);
        assert!(d_loss[..7].iter().all(|v| *v == 0.0), "{d_loss:?}");
        assert!(d_loss[7..].iter().all(|v| *v > 0.0), "{d_loss:?}");
    }

    #[test]
    fn a_diverging_lr_stops_with_the_step_and_term_and_keeps_the_checkpoint() {
        let _one_at_a_time = serial();
        let dir = tempfile::tempdir().unwrap();
        // lr 500 overflows at step 1 here (lr 5 and 50 only saturate the tanh).
        let mut j = job(dir.path(), 40, 500.0);
        j.hyper.checkpoint_every = 1;
        let err = run(&j, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
        let TrainError::Diverged { step, ref term, .. } = err else {
            panic!("expected divergence, got {err}")
        };
        assert!(step >= 1, "diverged at step {step}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("step {step}")) && msg.contains(term.as_str()),
            "{msg}"
        );
        assert!(
            j.checkpoint_dir.join("checkpoint.safetensors").is_file(),
            "the last good checkpoint is kept"
        );
        assert!(
            !j.out_dir.join("weights.safetensors").exists(),
            "no weights from a diverged run"
        );
    }

    #[test]
    fn the_default_student_fits_the_phone_budget() {
        let macs = crate::nn::accordion::macs(
            AccordionConfig {
                width: 32,
                blocks: 6,
            },
            512,
            512,
        );
        assert!(
            macs <= 5_000_000_000,
            "width 32 costs {macs} MACs at 512x512"
        );
    }
}
