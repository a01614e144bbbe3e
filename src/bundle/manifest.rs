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
    /// PSNR against the pairs' targets on the holdout.
    pub psnr_vs_pairs_db: Option<f64>,
    /// PSNR against the teacher net's output on the holdout.
    pub psnr_vs_teacher_db: Option<f64>,
    pub ssim: Option<f64>,
    pub flicker_ratio: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TeacherSummary {
    pub width: u32,
    /// The teacher net's PSNR against the pairs' targets on the holdout.
    pub psnr_vs_pairs_db: Option<f64>,
    /// Output = input against the pairs' targets: the floor a net must beat.
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
    /// The profile's bar for this precision (minimum PSNR vs the student).
    #[serde(default)]
    pub min_psnr_db: Option<f64>,
    pub ssim: Option<f64>,
    pub max_abs: Option<f64>,
    pub size_bytes: Option<u64>,
    pub verified: bool,
    /// What the app feeds the shipped model and reads back, read from the file itself.
    #[serde(default)]
    pub input: Option<TensorSpec>,
    #[serde(default)]
    pub output: Option<TensorSpec>,
    /// Golden frames in this target's own layout, dtype and range (`input`/`output`).
    pub golden: Vec<GoldenPair>,
}

/// One edge of a shipped model, as the runtime on the phone sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The name the runtime knows it by (TFLite tensor, Core ML feature, ONNX value).
    pub name: String,
    /// `tensor` (a multi-dimensional array) or `image` (a Core ML image: a CVPixelBuffer).
    pub kind: String,
    /// In the order of `layout`.
    pub shape: Vec<usize>,
    /// `NHWC`, `NCHW`, or `HWC` for an image (and its golden frames).
    pub layout: String,
    /// numpy's name: `float32`, `int8`, `uint8`.
    pub dtype: String,
    /// The values it holds: `[-1, 1]` for the net's floats, `[0, 255]` for pixels.
    pub range: [f64; 2],
    /// Channel order.
    pub colour: String,
    /// For an integer tensor: real = (q - zero_point) * scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub scale: f64,
    pub zero_point: i64,
}

impl TensorSpec {
    /// The layout's letters against `shape`, e.g. (`1`, `256`, `256`, `3`) for NHWC: the
    /// (height, width, channels) of a frame.
    pub fn hwc(&self) -> Option<(usize, usize, usize)> {
        let at = |c: char| self.layout.find(c).and_then(|i| self.shape.get(i)).copied();
        Some((at('H')?, at('W')?, at('C')?))
    }
}

/// One golden frame: an input and the output the shipped model must give for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoldenPair {
    pub input: String,
    pub output: String,
}
