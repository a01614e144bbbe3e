//! One MediaPipe `.tflite` model, rewritten (`tflite_rewrite`) and run by tract on the
//! CPU, single-threaded: raw NHWC float input in, the raw float outputs out in the
//! model's order. The pre- and post-processing lives in `face` and `pose`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_tflite::internal::tract_core::runtime::RunOptions;
use tract_tflite::prelude::*;

use super::tflite_rewrite::{self, RewriteStats};
use super::VisionError;

pub struct TfliteModel {
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    /// The square input side (every MediaPipe model here takes [1, S, S, 3]).
    pub size: usize,
    pub stats: RewriteStats,
}

impl std::fmt::Debug for TfliteModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TfliteModel({})", self.path.display())
    }
}

impl TfliteModel {
    pub fn load(path: &Path) -> Result<Self, VisionError> {
        let bytes = std::fs::read(path).map_err(|source| VisionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, &bytes)
    }

    /// `path` only names the model in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, VisionError> {
        let bad = |message: String| VisionError::Model {
            path: path.to_owned(),
            message,
        };
        let (rewritten, stats) = tflite_rewrite::rewrite(bytes).map_err(|e| bad(e.to_string()))?;
        let model = tract_tflite::tflite()
            .model_for_read(&mut &rewritten[..])
            .map_err(|e| bad(format!("tract cannot load the rewritten graph: {e:#}")))?;
        let fact = model.input_fact(0).map_err(|e| bad(format!("{e:#}")))?;
        let shape: Vec<usize> = fact
            .shape
            .as_concrete()
            .ok_or_else(|| bad("the input shape is not concrete".into()))?
            .to_vec();
        let size = match shape.as_slice() {
            [1, h, w, 3] if h == w => *h,
            other => return Err(bad(format!("input shape {other:?}, expected [1, S, S, 3]"))),
        };
        let model = model
            .into_optimized()
            .map_err(|e| bad(format!("tract cannot optimize it: {e:#}")))?;
        let options = RunOptions {
            executor: Some(tract_linalg::multithread::Executor::SingleThread),
            ..Default::default()
        };
        let plan = model
            .into_runnable_with_options(&options)
            .map_err(|e| bad(format!("tract cannot plan it: {e:#}")))?;
        Ok(TfliteModel {
            path: path.to_owned(),
            plan,
            size,
            stats,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs on one NHWC float image of `size`² × 3 values; returns every output flattened.
    pub fn run(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, VisionError> {
        let fail = |message: String| VisionError::Run {
            path: self.path.clone(),
            message,
        };
        let s = self.size;
        if input.len() != s * s * 3 {
            return Err(fail(format!(
                "input has {} values, expected {}",
                input.len(),
                s * s * 3
            )));
        }
        let tensor =
            Tensor::from_shape(&[1, s, s, 3], input).map_err(|e| fail(format!("{e:#}")))?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| fail(format!("{e:#}")))?;
        outputs
            .iter()
            .map(|t| {
                let t = t
                    .cast_to::<f32>()
                    .map_err(|e| fail(format!("{e:#}")))?
                    .into_owned();
                t.try_as_plain_ram()
                    .and_then(|r| r.as_slice::<f32>().map(|s| s.to_vec()))
                    .map_err(|e| fail(format!("{e:#}")))
            })
            .collect()
    }
}
