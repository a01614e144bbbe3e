//! Face detection (short-range BlazeFace) and the 468-point face mesh, with the pre-
//! and post-processing of MediaPipe's graphs:
//! `face_detection_short_range.pbtxt` / `face_detection.pbtxt` (128×128 letterbox in
//! [-1, 1], 896 anchors on strides 8/16/16/16, scales 128, sigmoid scores ≥ 0.5, weighted
//! NMS at IoU 0.3) and `face_landmark_front_cpu` → `face_detection_front_detection_to_roi`
//! (box centre, rotation levelling the eyes, square long side × 1.5) →
//! `face_landmark_cpu` (192×192 in [0, 1], presence = sigmoid(flag) ≥ 0.5).

use std::path::Path;

use image::RgbImage;

use super::model::TfliteModel;
use super::roi::{rotation_between, Border, Range, Roi};
use super::ssd::{self, Anchor, AnchorOptions, DecodeOptions};
use super::{FaceDetection, FaceLandmarks, VisionError};

const DETECTOR_ANCHORS: AnchorOptions = AnchorOptions {
    input_size: 128,
    strides: &[8, 16, 16, 16],
    anchors_per_layer: 2,
    offset: 0.5,
};
const DETECTOR_DECODE: DecodeOptions = DecodeOptions {
    num_coords: 16,
    num_keypoints: 6,
    scale: 128.0,
    score_clipping: 100.0,
    min_score: 0.5,
};
const NMS_IOU: f32 = 0.3;
const MESH_ROI_SCALE: f32 = 1.5;
const MESH_POINTS: usize = 468;

/// Short-range BlazeFace (128x128 input, faces within ~2 m of the camera).
pub struct FaceDetector {
    model: TfliteModel,
    anchors: Vec<Anchor>,
}

fn check_size(model: &TfliteModel, size: usize) -> Result<(), VisionError> {
    if model.size != size {
        return Err(VisionError::Model {
            path: model.path().to_owned(),
            message: format!(
                "input is {0}x{0}, expected {size}x{size}: is this the right model?",
                model.size
            ),
        });
    }
    Ok(())
}

/// An empty image has nothing to sample (and no edge pixel to replicate).
pub(crate) fn non_empty(model: &TfliteModel, img: &RgbImage) -> Result<(), VisionError> {
    if img.width() == 0 || img.height() == 0 {
        return Err(VisionError::Run {
            path: model.path().to_owned(),
            message: "the image is empty (0 pixels)".into(),
        });
    }
    Ok(())
}

impl FaceDetector {
    pub fn load(path: &Path) -> Result<Self, VisionError> {
        let model = TfliteModel::load(path)?;
        check_size(&model, 128)?;
        Ok(FaceDetector {
            model,
            anchors: ssd::anchors(&DETECTOR_ANCHORS),
        })
    }

    /// All faces scoring at least 0.5, sorted by box area, largest first.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<FaceDetection>, VisionError> {
        non_empty(&self.model, img)?;
        let roi = Roi::letterbox(img.width(), img.height());
        let input = roi.sample(img, 128, Border::Zero, Range::MinusOneToOne);
        let out = self.model.run(&input)?;
        let raw =
            ssd::decode(&out[0], &out[1], &self.anchors, &DETECTOR_DECODE).map_err(|message| {
                VisionError::Run {
                    path: self.model.path().to_owned(),
                    message,
                }
            })?;
        let mut faces: Vec<FaceDetection> = ssd::weighted_nms(raw, NMS_IOU)
            .into_iter()
            .map(|d| {
                let [x0, y0] = roi.to_image(d.bbox[0], d.bbox[1]);
                let [x1, y1] = roi.to_image(d.bbox[2], d.bbox[3]);
                let mut keypoints = [[0.0; 2]; 6];
                for (k, p) in keypoints.iter_mut().zip(&d.keypoints) {
                    *k = roi.to_image(p[0], p[1]);
                }
                FaceDetection {
                    score: d.score,
                    bbox: [x0, y0, x1, y1],
                    keypoints,
                }
            })
            .collect();
        let area = |f: &FaceDetection| (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]);
        faces.sort_by(|a, b| area(b).total_cmp(&area(a)));
        Ok(faces)
    }
}

/// The face mesh's region: the detection box's centre, rotated so that the eyes
/// (keypoints 0 → 1) are level, its long side × 1.5, square.
pub fn mesh_roi(face: &FaceDetection) -> Roi {
    let b = face.bbox;
    Roi {
        cx: (b[0] + b[2]) / 2.0,
        cy: (b[1] + b[3]) / 2.0,
        w: b[2] - b[0],
        h: b[3] - b[1],
        rotation: rotation_between(face.keypoints[0], face.keypoints[1], 0.0),
    }
    .square_long_scaled(MESH_ROI_SCALE)
}

/// The 468-point face mesh (192x192 crop around a detected face, eyes levelled).
pub struct FaceMesh {
    model: TfliteModel,
}

impl FaceMesh {
    pub fn load(path: &Path) -> Result<Self, VisionError> {
        let model = TfliteModel::load(path)?;
        check_size(&model, 192)?;
        Ok(FaceMesh { model })
    }

    pub fn landmarks(
        &self,
        img: &RgbImage,
        face: &FaceDetection,
    ) -> Result<FaceLandmarks, VisionError> {
        non_empty(&self.model, img)?;
        let roi = mesh_roi(face);
        let input = roi.sample(img, 192, Border::Replicate, Range::ZeroToOne);
        let out = self.model.run(&input)?;
        if out[0].len() != MESH_POINTS * 3 || out[1].len() != 1 {
            return Err(VisionError::Run {
                path: self.model.path().to_owned(),
                message: format!(
                    "outputs of {} and {} values, expected 1404 and 1",
                    out[0].len(),
                    out[1].len()
                ),
            });
        }
        let s = 192.0;
        let points = out[0]
            .chunks_exact(3)
            .map(|p| {
                let [x, y] = roi.to_image(p[0] / s, p[1] / s);
                [x, y, p[2] / s * roi.w]
            })
            .collect();
        Ok(FaceLandmarks {
            points,
            presence: ssd::sigmoid(out[1][0]),
        })
    }
}
