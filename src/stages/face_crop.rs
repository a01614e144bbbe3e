//! `crop "face"`: MediaPipe's face detector finds the face, the crop is a square around
//! it turned so the eyes are level, padded by the recipe's margin, at the recipe's size
//! (`imaging::face_crop`). The face mesh (468 points) and the body pose (33 points) are
//! found here too, once per item, and saved in the crop's pixels as `landmarks.json`
//! for the control maps. A photo without a face is skipped, not failed, as is one that is
//! not a whole picture or too small (`png::read_source`).

use super::png::{read_source, write_png};
use crate::imaging::face_crop::{crop_rotated, CropBox, CropLandmarks};
use crate::imaging::face_mesh::{LEFT_EYE, RIGHT_EYE};
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use crate::vision::{
    FaceDetection, FaceDetector, FaceLandmarks, FaceMesh, PoseEstimator, VisionError,
};
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// The model inputs of the stage, in `recipe::check::FACE_CROP_MODELS` order.
pub const MODEL_PORTS: [InputPort; 4] = [
    InputPort::required("model-face-detector"),
    InputPort::required("model-face-landmark"),
    InputPort::required("model-pose-detector"),
    InputPort::required("model-pose-landmark"),
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
        let paths: Vec<&std::path::Path> = MODEL_PORTS
            .iter()
            .map(|n| ctx.input(n.pattern))
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
    /// `faces="all"`: this item's face, 1 = the largest ([`confirmed_faces`] order, the
    /// order the plan numbered them in); None: the largest face.
    pub face: Option<u32>,
}

/// The faces of `img` whose mesh confirms them (as MediaPipe does, landmarks below
/// presence 0.5 are dropped), largest box first, at most `limit` of them. The plan counts
/// a photo's faces with this (`plan::lower::scan`), and the crop of face k takes the k-th.
pub fn confirmed_faces(
    detector: &FaceDetector,
    mesh: &FaceMesh,
    img: &image::RgbImage,
    limit: usize,
) -> Result<Vec<(FaceDetection, FaceLandmarks)>, VisionError> {
    let mut found = Vec::new();
    for face in detector.detect(img)? {
        if found.len() >= limit {
            break;
        }
        let m = mesh.landmarks(img, &face)?;
        if m.presence >= MIN_MESH_PRESENCE {
            found.push((face, m));
        }
    }
    Ok(found)
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
    fn inputs(&self) -> &'static [InputPort] {
        &[
            super::crop::IMAGE,
            MODEL_PORTS[0],
            MODEL_PORTS[1],
            MODEL_PORTS[2],
            MODEL_PORTS[3],
        ]
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
            // Only with `faces="all"`: a largest-face crop keeps its key.
            #[serde(rename = "sources.crop.face", skip_serializing_if = "Option::is_none")]
            face: Option<u32>,
        }
        params_of(&P {
            mode: "face",
            size: self.size_px,
            margin: self.margin,
            faces: if self.face.is_some() {
                "all"
            } else {
                "largest"
            },
            face: self.face,
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let src = match read_source(ctx.input(super::crop::IMAGE.pattern)?, self.size_px)? {
            Ok(src) => src,
            Err(why) => return Ok(RunOutput::skip(why)),
        };
        let models = self.models.get(ctx)?;
        // Face k of the picture (`faces="all"`), else the largest.
        let want = self.face.unwrap_or(1) as usize;
        let mut found = confirmed_faces(&models.detector, &models.mesh, &src, want)?;
        if found.len() < want {
            return Ok(RunOutput::skip(match self.face {
                Some(k) => format!("face {k} not found"),
                None => NO_FACE.to_string(),
            }));
        }
        let (face, mesh) = found.swap_remove(want - 1);
        let face = &face;
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
