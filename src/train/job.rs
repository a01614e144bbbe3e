//! The training job and its report: what a stage sends to the `effectc-nn` worker and
//! gets back. Plain data with no libtorch in sight, so the CLI links without libtorch.

use crate::nn::AccordionConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One pair of the dataset: PNGs at the training resolution.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairFiles {
    pub name: String,
    pub source: PathBuf,
    pub target: PathBuf,
    pub holdout: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hyper {
    pub steps: u32,
    pub batch: u32,
    /// Peak learning rate; `lr_schedule` says how it moves over the run.
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    /// Adam's first-moment decay for the generator/student (the discriminator keeps 0,
    /// as StyleGAN2 does: it chases a moving target).
    pub beta1: f64,
    pub l1_weight: f64,
    pub ssim_weight: f64,
    pub gan_weight: f64,
    /// Fraction of `steps` trained on reconstruction alone before the discriminator and
    /// the adversarial term switch on: a GAN on a net that has not learned the mapping
    /// yet only fights it.
    pub gan_start: f64,
    pub r1_gamma: f64,
    pub r1_every: u32,
    pub feature_weight: f64,
    pub ema_beta: f64,
    pub checkpoint_every: u32,
    pub seed: u64,
    /// Largest random shift in pixels (the same for source and target).
    pub shift_px: u32,
    /// Random horizontal flips of source and target.
    pub flip: bool,
    /// Largest random gain/offset, the same for source and target.
    pub jitter: f64,
}

pub use crate::protocol::{TrainProgress, WorkerReport};
pub use crate::recipe::LrSchedule;

impl Hyper {
    /// The learning rate for `step` (0-based) of `steps`. A pure function of the step,
    /// so a resumed run follows exactly the schedule an uninterrupted one did.
    pub fn lr_at(&self, step: u32) -> f64 {
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let t = step as f64 / self.steps.max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Which of the two nets a training job trains: the wide teacher on the pairs, or the
/// real-time student distilled from it. On the wire as `teacher`/`student`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Teacher,
    Student,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Teacher => "teacher",
            Role::Student => "student",
        }
    }
}

/// What the worker is asked to do (written as JSON by the stage, read by `effectc-nn`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainJob {
    pub role: Role,
    pub arch: AccordionConfig,
    /// For the student: the trained teacher's weights and architecture.
    pub teacher: Option<(PathBuf, AccordionConfig)>,
    pub pairs: Vec<PairFiles>,
    pub hyper: Hyper,
    pub device: String,
    pub checkpoint_dir: PathBuf,
    pub out_dir: PathBuf,
}

/// Lowering the trained student for export: the IR, the held-out frames with the tch
/// student's outputs (the references every target is verified against, and the golden
/// frames of the bundle), and calibration frames.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportJob {
    pub weights: PathBuf,
    pub arch: AccordionConfig,
    /// The teacher net's weights and shape: its outputs on the held-out frames are the
    /// bundle's contact sheet's "teacher" column.
    #[serde(default)]
    pub teacher: Option<(PathBuf, AccordionConfig)>,
    pub resolution_px: u32,
    pub holdout: Vec<PathBuf>,
    pub calibration: Vec<PathBuf>,
    pub device: String,
    pub out_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn a_role_is_its_name_on_the_wire() {
        for role in [Role::Teacher, Role::Student] {
            let wire = serde_json::to_string(&role).unwrap();
            assert_eq!(wire, format!("\"{}\"", role.name()));
            assert_eq!(serde_json::from_str::<Role>(&wire).unwrap(), role);
        }
        assert!(serde_json::from_str::<Role>("\"Teacher\"").is_err());
    }
}
