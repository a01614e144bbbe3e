//! `control:PREPROCESSOR`: the control image a ControlNet reads, drawn from the cropped
//! source without any model (canny, softedge), saved as a PNG a person can open.

use super::png::{read_rgb, write_png};
use crate::diffusion::control_image::{canny, gray_to_rgb, softedge, CannyParams, SoftEdgeParams};
use crate::stages::{params_of, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;

/// The preprocessors effectc can draw so far. Pose and face mesh need their detectors.
pub const BUILT_PREPROCESSORS: &[&str] = &["canny", "softedge"];

pub struct ControlMap {
    pub preprocessor: String,
}

impl Stage for ControlMap {
    fn kind(&self) -> &'static str {
        "control"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["control"]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        // The parameters themselves, so changing a default re-draws the maps.
        #[derive(Serialize)]
        struct Canny {
            low: f32,
            high: f32,
            blur: f32,
        }
        #[derive(Serialize)]
        struct SoftEdge {
            sigmas: Vec<f32>,
            gain: f32,
        }
        let mut doc = serde_json::json!({ "preprocessor": self.preprocessor });
        match self.preprocessor.as_str() {
            "canny" => {
                let c = CannyParams::default();
                doc["canny"] = serde_json::json!(Canny {
                    low: c.low_threshold,
                    high: c.high_threshold,
                    blur: c.blur_sigma,
                });
            }
            "softedge" => {
                let s = SoftEdgeParams::default();
                doc["softedge"] = serde_json::json!(SoftEdge {
                    sigmas: s.sigmas,
                    gain: s.gain,
                });
            }
            _ => {}
        }
        params_of(&doc)
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let src = read_rgb(ctx.input("image")?)?;
        let map = match self.preprocessor.as_str() {
            "canny" => canny(&src, &CannyParams::default()),
            "softedge" => softedge(&src, &SoftEdgeParams::default()),
            other => {
                return Err(StageError::input(format!(
                    "the `{other}` preprocessor is not built yet"
                )))
            }
        };
        let path = ctx.out_dir.join("control.png");
        write_png(&gray_to_rgb(&map), &path)?;
        let mut out = RunOutput::default();
        out.files.insert("control".into(), path);
        Ok(out)
    }
}
