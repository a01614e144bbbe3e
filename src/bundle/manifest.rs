//! The bundle's `manifest.json`, typed: written by the bundle stage, read by `release`
//! and rendered by the report, so the three cannot drift apart. Measurements of the
//! building machine (latency) are not in it: they live in `measurements.json` beside the
//! tarball, so two builders of one commit publish the same bytes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub effect: String,
    pub version: Option<String>,
    pub recipe_digest: String,
    /// Path in the bundle → SHA-256 (hex).
    pub files: BTreeMap<String, String>,
    pub student: StudentSummary,
    pub teacher: TeacherSummary,
    /// Target name → what was shipped and how it verified.
    pub targets: BTreeMap<String, TargetSummary>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StudentSummary {
    pub width: u32,
    pub blocks: u32,
    pub params: Option<u64>,
    pub macs_512: Option<u64>,
    /// PSNR against the teacher's output on the holdout.
    pub psnr_db: Option<f64>,
    /// PSNR against the pairs' targets on the holdout.
    pub psnr_vs_target_db: Option<f64>,
    pub ssim: Option<f64>,
    pub flicker_ratio: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TeacherSummary {
    pub width: u32,
    pub psnr_db: Option<f64>,
    pub identity_psnr_db: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    /// The shipped model, a path in the bundle.
    pub file: String,
    pub format: String,
    pub precision: String,
    /// PSNR of the shipped model against the trained student, on the holdout.
    pub psnr_db: Option<f64>,
    pub ssim: Option<f64>,
    pub max_abs: Option<f64>,
    pub size_bytes: Option<u64>,
    pub verified: bool,
    pub golden: Vec<GoldenPair>,
}

/// One golden frame: an input and the output the shipped model must give for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoldenPair {
    pub input: String,
    pub output: String,
}
