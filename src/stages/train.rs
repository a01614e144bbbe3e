//! `train-teacher` and `distill-student`: the wide teacher learns the pairs; the narrow
//! real-time student learns from it. The work runs in the `effectc-nn` worker process
//! (see docs/design-notes.md); this stage writes its job, relays its progress, and
//! turns its exit into a result. Interrupting it leaves a checkpoint in the cache that
//! the next build of the same key resumes from.

use crate::nn::config::AccordionConfig;
use crate::recipe::{Student, Train};
use crate::stages::{
    params_of, InputPort, Params, Resource, RunContext, RunOutput, Stage, StageError,
};
use crate::train::job::{Hyper, PairFiles, Role, TrainJob};
use serde::Serialize;

pub struct TrainStage {
    pub role: Role,
    pub student: Student,
    pub train: Train,
    /// Item names in input order; each has inputs `{split}/{item}/source|target`.
    pub items: Vec<(String, bool)>,
}

pub fn input_name(item: &str, holdout: bool, what: &str) -> String {
    format!(
        "{}/{item}/{what}",
        if holdout { "holdout" } else { "train" }
    )
}

/// Each item's crop and pair ([`input_name`]): a skipped item's are absent. The pairs the
/// identity filter dropped; the teacher's weights (the student's distillation only).
pub const PAIR_FILES: [InputPort; 4] = [
    InputPort::optional("train/*/source"),
    InputPort::optional("train/*/target"),
    InputPort::optional("holdout/*/source"),
    InputPort::optional("holdout/*/target"),
];
pub const DROPPED: InputPort = super::identity::DROPPED;
pub const TEACHER_WEIGHTS: InputPort = InputPort::required("teacher-weights");

impl TrainStage {
    fn arch(&self) -> AccordionConfig {
        let width = match self.role {
            Role::Teacher => self.student.teacher_width,
            Role::Student => self.student.width,
        };
        AccordionConfig {
            width: width as i64,
            blocks: self.student.blocks as i64,
        }
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
            lr_schedule: t.lr_schedule,
            beta1: t.beta1,
            l1_weight: t.l1_weight,
            ssim_weight: t.ssim_weight,
            gan_weight: t.gan_weight,
            gan_start: t.gan_start,
            r1_gamma: t.r1_gamma,
            r1_every: 16,
            feature_weight: t.feature_weight,
            ema_beta: t.ema_beta,
            checkpoint_every: t.checkpoint_every,
            seed: t.seed,
            shift_px: t.shift_px,
            flip: t.flip,
            jitter: t.jitter,
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
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "metrics.json",
            "weights.safetensors",
            "loss.csv",
            "loss.png",
            "samples.png",
        ]
    }
    fn inputs(&self) -> &'static [InputPort] {
        match self.role {
            Role::Teacher => &[
                PAIR_FILES[0],
                PAIR_FILES[1],
                PAIR_FILES[2],
                PAIR_FILES[3],
                DROPPED,
            ],
            Role::Student => &[
                PAIR_FILES[0],
                PAIR_FILES[1],
                PAIR_FILES[2],
                PAIR_FILES[3],
                DROPPED,
                TEACHER_WEIGHTS,
            ],
        }
    }
    fn version(&self) -> u32 {
        // 2: in-place Adam/EMA kernels (different rounding than version 1).
        // 3: sub-pixel (depth-to-space) decoder; checkpoints of 2 do not fit it.
        // 4: the input → output colour path (`skip` weights), and `gan-start`.
        // 5: the full-resolution `fine` block and learned gains (flat tones, ink lines).
        5
    }
    fn resource(&self) -> Resource {
        Resource::Exclusive
    }
    fn params(&self) -> Params {
        /// What both trainings depend on; the role adds its own below.
        #[derive(Serialize)]
        struct Common {
            batch: u32,
            lr: f64,
            #[serde(rename = "lr-schedule")]
            lr_schedule: &'static str,
            beta1: f64,
            l1: f64,
            ssim: f64,
            ema: f64,
            #[serde(rename = "checkpoint-every")]
            checkpoint_every: u32,
            seed: u64,
            #[serde(rename = "shift-px")]
            shift_px: u32,
            flip: bool,
            jitter: f64,
        }
        #[derive(Serialize)]
        struct Teacher {
            #[serde(rename = "teacher-steps")]
            steps: u32,
            gan: f64,
            #[serde(rename = "gan-start")]
            gan_start: f64,
            #[serde(rename = "r1-gamma")]
            r1_gamma: f64,
        }
        #[derive(Serialize)]
        struct Student {
            #[serde(rename = "student-steps")]
            steps: u32,
            features: f64,
        }
        let t = &self.train;
        let common = Common {
            batch: t.batch,
            lr: t.lr,
            lr_schedule: t.lr_schedule.name(),
            beta1: t.beta1,
            l1: t.l1_weight,
            ssim: t.ssim_weight,
            ema: t.ema_beta,
            checkpoint_every: t.checkpoint_every,
            seed: t.seed,
            shift_px: t.shift_px,
            flip: t.flip,
            jitter: t.jitter,
        };
        let s = &self.student;
        let (student, role) = match self.role {
            Role::Teacher => (
                serde_json::json!({"blocks": s.blocks, "teacher-width": s.teacher_width}),
                serde_json::to_value(Teacher {
                    steps: t.teacher_steps,
                    gan: t.gan_weight,
                    gan_start: t.gan_start,
                    r1_gamma: t.r1_gamma,
                }),
            ),
            Role::Student => (
                serde_json::json!({"blocks": s.blocks, "teacher-width": s.teacher_width, "width": s.width}),
                serde_json::to_value(Student {
                    steps: t.student_steps,
                    features: t.feature_weight,
                }),
            ),
        };
        let mut train = serde_json::to_value(common).expect("plain data");
        if let (Some(train), Ok(serde_json::Value::Object(role))) = (train.as_object_mut(), role) {
            train.extend(role);
        }
        params_of(&serde_json::json!({"student": student, "train": train}))
    }

    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        // Pairs the identity filter dropped are left out of the dataset.
        let dropped = super::identity::dropped_items(ctx)?;
        let mut pairs = Vec::new();
        for (item, holdout) in &self.items {
            if dropped.contains(item) {
                continue;
            }
            // A skipped item (no face) has neither crop nor pair: train without it.
            let source = ctx.optional_input(&input_name(item, *holdout, "source"))?;
            let target = ctx.optional_input(&input_name(item, *holdout, "target"))?;
            let (Some(source), Some(target)) = (source, target) else {
                continue;
            };
            pairs.push(PairFiles {
                name: item.clone(),
                source: source.to_path_buf(),
                target: target.to_path_buf(),
                holdout: *holdout,
            });
        }
        if !pairs.is_empty() && pairs.iter().all(|p| p.holdout) && !dropped.is_empty() {
            return Err(StageError::input(format!(
                "the identity filter dropped every training pair ({} dropped): lower `identity min-similarity`, or see out/<effect>/identity-filter-identity.json",
                dropped.len()
            )));
        }
        if pairs.is_empty() && !dropped.is_empty() {
            return Err(StageError::input(format!(
                "the identity filter dropped every pair ({}): lower `identity min-similarity`",
                dropped.len()
            )));
        }
        if pairs.is_empty() {
            return Err(StageError::input(
                "every item was skipped (see the build's skipped items): nothing to train on",
            ));
        }
        let teacher = match self.role {
            Role::Teacher => None,
            Role::Student => Some((
                ctx.input(TEACHER_WEIGHTS.pattern)?.to_path_buf(),
                AccordionConfig {
                    width: self.student.teacher_width as i64,
                    blocks: self.student.blocks as i64,
                },
            )),
        };
        let job = TrainJob {
            role: self.role,
            arch: self.arch(),
            teacher,
            pairs,
            hyper: self.hyper(),
            device: ctx.device.to_string(),
            checkpoint_dir: ctx.checkpoint_dir.clone(),
            out_dir: ctx.out_dir.join("out"),
        };
        let report = super::worker::run_worker(
            ctx,
            "train",
            &serde_json::to_value(&job).unwrap_or_default(),
        )?;
        // The metrics also travel as a file, for the bundle's manifest.
        let metrics_path = ctx.out_dir.join("metrics.json");
        std::fs::write(
            &metrics_path,
            serde_json::to_vec_pretty(&report.metrics).unwrap_or_default(),
        )
        .map_err(|e| StageError::io(&metrics_path, e))?;
        let mut out = RunOutput {
            metrics: report.metrics,
            ..Default::default()
        };
        out.files.insert("metrics.json".into(), metrics_path);
        for (name, path) in report.files {
            let name = if name == "weights" {
                "weights.safetensors".to_string()
            } else {
                name
            };
            out.files.insert(name, path);
        }
        Ok(out)
    }
}
