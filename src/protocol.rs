//! The typed protocol between the CLI's stages and the `effectc-nn` tensor worker, and
//! the metric names both sides (and the bundle) use.
//!
//! `effectc-nn train|export JOB.json` writes one [`WorkerLine`] of JSON per stdout line:
//! `{"progress": {...}}` while it works, then `{"report": {...}}`. `effectc-nn serve`
//! reads one [`ServeRequest`] per stdin line and answers one [`ServeAnswer`] per line.
//! The jobs themselves are the plain-data types of their domains (`train::TrainJob`,
//! `train::ExportJob`, `diffusion::job::DiffuseJob`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a training run is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    pub step: u32,
    pub total_steps: u32,
    pub losses: BTreeMap<String, f64>,
    pub steps_per_s: f64,
    /// Sent once, before the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryPlan>,
}

/// What a finished job made: its measurements and its files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Output name → file in the job's out_dir.
    pub files: BTreeMap<String, PathBuf>,
}

/// What a training step needs and what the device has, sent before the first step (in
/// the first progress line):
/// the stage shows it, and names its figures if the kernel kills the worker anyway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// The recipe's batch (the effective batch, always kept).
    pub batch: u32,
    /// Items per pass; below `batch`, gradients accumulate over the passes.
    pub micro_batch: u32,
    /// Estimated bytes for the whole batch in one pass, and for one micro-batch.
    pub needed_bytes: u64,
    pub micro_needed_bytes: u64,
    pub available_bytes: u64,
    /// Which limit `available_bytes` is (free RAM, a cgroup, RLIMIT_AS, a card).
    pub available_source: String,
}

impl MemoryPlan {
    pub fn accumulates(&self) -> bool {
        self.micro_batch < self.batch
    }

    /// "batch 8 as 4 x 2 (accumulated): 11.0 GB needed, 7.0 GB free (free RAM ...)".
    pub fn summary(&self) -> String {
        let how = if !self.accumulates() {
            format!("batch {} in one pass", self.batch)
        } else if self.batch % self.micro_batch == 0 {
            format!(
                "batch {} as {} x {} (accumulated)",
                self.batch,
                self.micro_batch,
                self.batch / self.micro_batch
            )
        } else {
            format!(
                "batch {} as {} micro-batches of at most {} (accumulated)",
                self.batch,
                self.batch.div_ceil(self.micro_batch.max(1)),
                self.micro_batch
            )
        };
        format!(
            "{how}: {} needed, {} free ({})",
            gb(self.needed_bytes as f64),
            gb(self.available_bytes as f64),
            self.available_source
        )
    }
}

/// "12.3 GB" (decimal, as `free -h` users read it, one decimal place).
pub fn gb(bytes: f64) -> String {
    format!("{:.1} GB", bytes / 1e9)
}

/// One stdout line of `effectc-nn train|export`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerLine {
    Progress(TrainProgress),
    Report(WorkerReport),
}

/// One stdin line of `effectc-nn serve`: jobs generated together as one batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServeRequest<J> {
    pub jobs: Vec<J>,
}

/// One stdout line of `effectc-nn serve`: a report per job, or why the batch failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServeAnswer {
    Reports {
        reports: Vec<WorkerReport>,
    },
    Error {
        error: String,
        /// The recipe's or the data's fault rather than the machine's.
        user: bool,
    },
}

/// Metric names of the training reports (`metrics.json` of `train-teacher` and
/// `distill-student`) and of target verification (`check.json`).
pub mod metric {
    /// PSNR of the net's output against the pairs' targets on the holdout.
    pub const PSNR_DB: &str = "psnr_db";
    pub const SSIM: &str = "ssim";
    /// PSNR of the source itself against the targets: the floor any net must beat.
    pub const IDENTITY_PSNR_DB: &str = "identity_psnr_db";
    /// The student's PSNR against its teacher's output.
    pub const PSNR_VS_TEACHER_DB: &str = "psnr_vs_teacher_db";
    /// The teacher's own PSNR, repeated in the student's report.
    pub const TEACHER_PSNR_DB: &str = "teacher_psnr_db";
    pub const STEPS_PER_S: &str = "steps_per_s";
    /// Items per pass when the batch did not fit and gradients accumulated (absent when
    /// the batch ran in one pass), and the plan's sentence.
    pub const MICRO_BATCH: &str = "micro_batch";
    pub const MEMORY_PLAN: &str = "memory_plan";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_keep_their_wire_shape() {
        let p = WorkerLine::Progress(TrainProgress {
            step: 3,
            total_steps: 10,
            losses: BTreeMap::from([("l1".to_string(), 0.5)]),
            steps_per_s: 2.0,
            memory: None,
        });
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.starts_with("{\"progress\":{\"step\":3"), "{text}");
        assert_eq!(serde_json::from_str::<WorkerLine>(&text).unwrap(), p);
        let a: ServeAnswer = serde_json::from_str(r#"{"error":"no GPU","user":true}"#).unwrap();
        assert_eq!(
            a,
            ServeAnswer::Error {
                error: "no GPU".into(),
                user: true
            }
        );
        let r: ServeAnswer =
            serde_json::from_str(r#"{"reports":[{"metrics":{},"files":{}}]}"#).unwrap();
        assert_eq!(
            r,
            ServeAnswer::Reports {
                reports: vec![WorkerReport::default()]
            }
        );
    }
}
