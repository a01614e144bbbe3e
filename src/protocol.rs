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
/// `distill-student`) and of target verification (`check.json`). One name per figure,
/// the same in the console, the `--json` events, the manifest and the report; each PSNR
/// names what it is measured against (docs/recipes.md, "What the figures mean").
pub mod metric {
    /// PSNR of the net's output against the pairs' targets on the holdout.
    pub const PSNR_VS_PAIRS_DB: &str = "psnr_vs_pairs_db";
    pub const SSIM: &str = "ssim";
    /// PSNR of the source itself against the targets (output = input): the identity
    /// floor any net must beat.
    pub const IDENTITY_PSNR_DB: &str = "identity_psnr_db";
    /// The student's PSNR against its teacher net's output.
    pub const PSNR_VS_TEACHER_DB: &str = "psnr_vs_teacher_db";
    /// The teacher net's PSNR against the pairs, repeated in the student's report.
    pub const TEACHER_PSNR_VS_PAIRS_DB: &str = "teacher_psnr_vs_pairs_db";
    /// A target's check: PSNR of the shipped model against the trained student.
    pub const PSNR_DB: &str = "psnr_db";
    pub const STEPS_PER_S: &str = "steps_per_s";
    /// The student's size and cost (weights; multiply-adds at 512x512), and how much its
    /// output flickers between neighbouring frames, against the pairs'.
    pub const PARAMS: &str = "params";
    pub const MACS_512: &str = "macs_512";
    pub const FLICKER_RATIO: &str = "flicker_ratio";
    /// A target's check: largest absolute difference, file size, median latency, and
    /// that it was verified.
    pub const MAX_ABS: &str = "max_abs";
    pub const SIZE_BYTES: &str = "size_bytes";
    pub const LATENCY_MS: &str = "latency_ms";
    pub const VERIFIED: &str = "verified";
    /// The identity filter: the pairs it left out of training (summed in the build's
    /// summary) and those it kept.
    pub const DROPPED_PAIRS: &str = "dropped_pairs";
    pub const KEPT: &str = "kept";
    /// The name a training report used for [`PSNR_VS_PAIRS_DB`] before the rename:
    /// records cached by older builds still say it.
    pub const OLD_PSNR_VS_PAIRS_DB: &str = "psnr_db";
    /// Likewise for [`TEACHER_PSNR_VS_PAIRS_DB`].
    pub const OLD_TEACHER_PSNR_VS_PAIRS_DB: &str = "teacher_psnr_db";

    /// The teacher net is counted as not having learned the effect when it beats the
    /// identity floor by less than this.
    pub const TEACHER_MIN_GAIN_DB: f64 = 3.0;
    /// The student is counted as far below its teacher when it trails it by more.
    pub const STUDENT_MAX_GAP_DB: f64 = 3.0;

    /// What a person must be told about a training's figures, in plain words: the
    /// teacher within a few dB of output = input, or the student far below its teacher.
    /// The same sentences in the build's summary and in the report.
    pub fn advice(
        teacher_vs_pairs: Option<f64>,
        identity: Option<f64>,
        student_vs_pairs: Option<f64>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(t), Some(i)) = (teacher_vs_pairs, identity) {
            if t - i < TEACHER_MIN_GAIN_DB {
                out.push(format!(
                    "the teacher did not learn the effect: {:+.1} dB over output = input ({t:.1} dB vs {i:.1} dB against the pairs); more pairs, more steps or a wider teacher",
                    t - i
                ));
            }
        }
        if let (Some(s), Some(t)) = (student_vs_pairs, teacher_vs_pairs) {
            if t - s > STUDENT_MAX_GAP_DB {
                out.push(format!(
                    "the student is far below its teacher: {s:.1} dB vs {t:.1} dB against the pairs ({:+.1} dB); more student steps or a wider student",
                    s - t
                ));
            }
        }
        out
    }

    /// A figure of a training report, under its name or (an older record) its old one.
    pub fn read(m: &serde_json::Value, name: &str) -> Option<f64> {
        let old = match name {
            PSNR_VS_PAIRS_DB => Some(OLD_PSNR_VS_PAIRS_DB),
            TEACHER_PSNR_VS_PAIRS_DB => Some(OLD_TEACHER_PSNR_VS_PAIRS_DB),
            _ => None,
        };
        m.get(name)
            .or_else(|| old.and_then(|o| m.get(o)))
            .and_then(|v| v.as_f64())
    }

    /// Items per pass when the batch did not fit and gradients accumulated (absent when
    /// the batch ran in one pass), and the plan's sentence.
    pub const MICRO_BATCH: &str = "micro_batch";
    pub const MEMORY_PLAN: &str = "memory_plan";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_says_when_the_teacher_did_not_learn_or_the_student_trails_it() {
        let a = metric::advice(Some(19.2), Some(16.8), Some(19.4));
        assert_eq!(
            a,
            ["the teacher did not learn the effect: +2.4 dB over output = input (19.2 dB vs 16.8 dB against the pairs); more pairs, more steps or a wider teacher"]
        );
        let b = metric::advice(Some(26.0), Some(16.0), Some(21.5));
        assert_eq!(
            b,
            ["the student is far below its teacher: 21.5 dB vs 26.0 dB against the pairs (-4.5 dB); more student steps or a wider student"]
        );
        assert!(metric::advice(Some(26.0), Some(16.0), Some(24.0)).is_empty());
        assert!(metric::advice(None, Some(16.0), None).is_empty());
    }

    #[test]
    fn figures_are_read_under_their_name_or_an_older_records_one() {
        let new = serde_json::json!({"psnr_vs_pairs_db": 20.5});
        let old = serde_json::json!({"psnr_db": 19.5, "teacher_psnr_db": 22.0});
        assert_eq!(metric::read(&new, metric::PSNR_VS_PAIRS_DB), Some(20.5));
        assert_eq!(metric::read(&old, metric::PSNR_VS_PAIRS_DB), Some(19.5));
        assert_eq!(
            metric::read(&old, metric::TEACHER_PSNR_VS_PAIRS_DB),
            Some(22.0)
        );
        assert_eq!(metric::read(&new, metric::IDENTITY_PSNR_DB), None);
    }

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
