//! `crop "face"`: MediaPipe's face detector finds the face, the crop is a square around
//! it turned so the eyes are level, padded by the recipe's margin, at the recipe's size
//! (`imaging::face_crop`). The face mesh (468 points) and the body pose (33 points) are
//! found here too, once per item, and saved in the crop's pixels as `landmarks.json`
//! for the control maps. A photo without a face is skipped, not failed, as is one that is
//! not a whole picture or too small (`png::read_source`).

use super::png::{read_source, write_png};
use crate::imaging::face_crop::{crop_rotated, CropBox, CropLandmarks};
use crate::imaging::face_mesh::{LEFT_EYE, RIGHT_EYE};
use crate::stages::{params_of, Params, RunContext, RunOutput, Stage, StageError};
use crate::vision::{FaceDetector, FaceMesh, PoseEstimator, VisionError};
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// The model inputs of the stage, in `recipe::check::FACE_CROP_MODELS` order.
pub const MODEL_INPUTS: [&str; 4] = [
    "model-face-detector",
    "model-face-landmark",
    "model-pose-detector",
    "model-pose-landmark",
];

/// The reason a photo without a face is skipped.
pub const NO_FACE: &str = "no face found";

/// MediaPipe's face-presence cut-off for the mesh.
const MIN_MESH_PRESENCE: f32 = 0.5;

/// MediaPipe's models, loaded once per build and shared by every item's crop.
#[derive(Default)]
pub struct FaceModels {
    loaded: OnceLock<Result<Loaded, VisionError>>,
}

struct Loaded {
    detector: FaceDetector,
    mesh: FaceMesh,
    pose: PoseEstimator,
}

impl FaceModels {
    fn get(&self, ctx: &RunContext) -> Result<&Loaded, StageError> {
        let paths: Vec<&std::path::Path> = MODEL_INPUTS
            .iter()
            .map(|n| ctx.input(n))
            .collect::<Result<_, _>>()?;
        self.loaded
            .get_or_init(|| {
                let load = || -> Result<Loaded, VisionError> {
                    Ok(Loaded {
                        detector: FaceDetector::load(paths[0])?,
                        mesh: FaceMesh::load(paths[1])?,
                        pose: PoseEstimator::load(paths[2], paths[3])?,
                    })
                };
                load()
            })
            .as_ref()
            .map_err(StageError::from)
    }
}

pub struct FaceCrop {
    pub size_px: u32,
    pub margin: f64,
    pub models: Arc<FaceModels>,
}

/// The centre of a face-mesh eye contour.
fn eye_centre(points: &[[f32; 3]], contour: &[[usize; 2]]) -> [f32; 2] {
    let (mut x, mut y, mut n) = (0.0, 0.0, 0.0);
    for [a, _] in contour {
        x += points[*a][0];
        y += points[*a][1];
        n += 1.0;
    }
    [x / n, y / n]
}

impl Stage for FaceCrop {
    fn kind(&self) -> &'static str {
        "crop-face"
    }
    fn family(&self) -> &'static str {
        "crop"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["image", "landmarks"]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P {
            #[serde(rename = "sources.crop.mode")]
            mode: &'static str,
            #[serde(rename = "sources.crop.size")]
            size: u32,
            #[serde(rename = "sources.crop.margin")]
            margin: f64,
            #[serde(rename = "sources.crop.faces")]
            faces: &'static str,
        }
        params_of(&P {
            mode: "face",
            size: self.size_px,
            margin: self.margin,
            faces: "largest",
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let src = match read_source(ctx.input("image")?, self.size_px)? {
            Ok(src) => src,
            Err(why) => return Ok(RunOutput::skip(why)),
        };
        let models = self.models.get(ctx)?;
        let faces = models.detector.detect(&src)?;
        // The detector sorts by box area: the largest face whose mesh confirms it (as
        // MediaPipe does, landmarks below presence 0.5 are dropped).
        let mut found = None;
        for face in &faces {
            let mesh = models.mesh.landmarks(&src, face)?;
            if mesh.presence >= MIN_MESH_PRESENCE {
                found = Some((face, mesh));
                break;
            }
        }
        let Some((face, mesh)) = found else {
            return Ok(RunOutput::skip(NO_FACE));
        };
        let pose = models.pose.estimate(&src)?;
        // The mesh's eye contours place the eyes better than the detector's keypoints.
        let (right_eye, left_eye) = if mesh.points.len() >= 468 {
            (
                eye_centre(&mesh.points, &RIGHT_EYE),
                eye_centre(&mesh.points, &LEFT_EYE),
            )
        } else {
            (face.keypoints[0], face.keypoints[1])
        };
        let bx = CropBox::around_face(face.bbox, right_eye, left_eye, self.margin as f32);
        let crop = crop_rotated(&src, &bx, self.size_px);
        let landmarks = CropLandmarks::in_crop(
            &bx,
            self.size_px,
            [src.width(), src.height()],
            face.score,
            face.bbox,
            &face.keypoints,
            &mesh.points,
            pose.as_ref().map(|p| p.points.as_slice()),
        );
        let image_path = ctx.out_dir.join("image.png");
        write_png(&crop, &image_path)?;
        let landmarks_path = ctx.out_dir.join("landmarks.json");
        let text = serde_json::to_vec(&landmarks)
            .map_err(|e| StageError::bug(format!("landmarks JSON: {e}")))?;
        std::fs::write(&landmarks_path, text).map_err(|e| StageError::io(&landmarks_path, e))?;
        let mut out = RunOutput::default();
        out.files.insert("image".into(), image_path);
        out.files.insert("landmarks".into(), landmarks_path);
        Ok(out)
    }
}
