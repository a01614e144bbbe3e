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
}

/// What a finished job made: its measurements and its files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Output name → file in the job's out_dir.
    pub files: BTreeMap<String, PathBuf>,
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
