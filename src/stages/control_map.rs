//! `control:PREPROCESSOR`: the control image a ControlNet reads, saved as a PNG a person
//! can open: drawn from the cropped source (canny, softedge), or from the landmarks the
//! face crop found (openpose-full, mediapipe-face), so no model runs twice.

use super::png::{read_rgb, write_png};
use crate::diffusion::control_image::{canny, gray_to_rgb, softedge, CannyParams, SoftEdgeParams};
use crate::imaging::face_crop::CropLandmarks;
use crate::imaging::{face_mesh, openpose};
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;

/// The preprocessors effectc can draw.
pub const BUILT_PREPROCESSORS: &[&str] = &["canny", "softedge", "openpose-full", "mediapipe-face"];

/// The preprocessors drawn from the face crop's landmarks (input `landmarks`).
pub const FROM_LANDMARKS: &[&str] = &["openpose-full", "mediapipe-face"];

/// Reads the face crop's `landmarks.json`.
fn read_landmarks(ctx: &RunContext) -> Result<CropLandmarks, StageError> {
    let path = ctx.input(LANDMARKS.pattern)?;
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        StageError::bug(format!(
            "{}: not the face crop's landmarks: {e}",
            path.display()
        ))
    })
}

pub struct ControlMap {
    pub preprocessor: String,
}

/// The crop the map is drawn from.
pub const IMAGE: InputPort = InputPort::required("image");
/// The crop's face landmarks, for the preprocessors in [`FROM_LANDMARKS`].
pub const LANDMARKS: InputPort = InputPort::optional("landmarks");

impl Stage for ControlMap {
    fn kind(&self) -> &'static str {
        "control"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["control"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[IMAGE, LANDMARKS]
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
        let map = match self.preprocessor.as_str() {
            "canny" => gray_to_rgb(&canny(&read_rgb(ctx.input(IMAGE.pattern)?)?, &CannyParams::default())),
            "softedge" => gray_to_rgb(&softedge(
                &read_rgb(ctx.input(IMAGE.pattern)?)?,
                &SoftEdgeParams::default(),
            )),
            "openpose-full" => {
                let lm = read_landmarks(ctx)?;
                // MediaPipe's (x, y, z, visibility) → the (x, y, visibility) the mapping reads.
                let pose: Vec<[f32; 3]> = lm
                    .pose
                    .iter()
                    .flatten()
                    .map(|p| [p[0], p[1], p[3]])
                    .collect();
                let body = openpose::coco18_from_mediapipe_pose(&pose);
                let face = openpose::dlib68_from_mediapipe_mesh(&lm.face_mesh);
                openpose::draw_openpose(lm.size, lm.size, &body, Some(&face))
            }
            "mediapipe-face" => {
                let lm = read_landmarks(ctx)?;
                let points: Vec<[f32; 2]> = lm.face_mesh.iter().map(|p| [p[0], p[1]]).collect();
                face_mesh::draw_face_mesh(lm.size, lm.size, &points)
            }
            other => {
                return Err(StageError::bug(format!(
                    "the `{other}` preprocessor is not built (the planner lets only built ones through)"
                )))
            }
        };
        let path = ctx.out_dir.join("control.png");
        write_png(&map, &path)?;
        let mut out = RunOutput::default();
        out.files.insert("control".into(), path);
        Ok(out)
    }
}
