//! Pose: MediaPipe's `pose_detection_cpu.pbtxt` (224×224 letterbox in [-1, 1], 2254
//! anchors on strides 8/16/32/32/32, scales 224, sigmoid scores ≥ 0.5, weighted NMS at IoU
//! 0.3), `pose_detection_to_roi.pbtxt` (centre at keypoint 0, the hips; side twice the
//! distance to keypoint 1; rotated so 0 → 1 points up; × 1.25) and
//! `pose_landmark_by_roi_cpu.pbtxt` (256×256 in [0, 1]; 39 × 5 values of which the first
//! 33 are the body; presence output ≥ 0.5; visibility = sigmoid; x, y refined on the
//! 64×64×39 heatmap as `RefineLandmarksFromHeatmapCalculator` does, kernel 7).

use std::f32::consts::FRAC_PI_2;
use std::path::Path;

use image::RgbImage;

use super::model::TfliteModel;
use super::roi::{rotation_between, Border, Range, Roi};
use super::ssd::{self, Anchor, AnchorOptions, DecodeOptions};
use super::{PoseLandmarks, VisionError};

const DETECTOR_ANCHORS: AnchorOptions = AnchorOptions {
    input_size: 224,
    strides: &[8, 16, 32, 32, 32],
    anchors_per_layer: 2,
    offset: 0.5,
};
const DETECTOR_DECODE: DecodeOptions = DecodeOptions {
    num_coords: 12,
    num_keypoints: 4,
    scale: 224.0,
    score_clipping: 100.0,
    min_score: 0.5,
};
const NMS_IOU: f32 = 0.3;
const ROI_SCALE: f32 = 1.25;
const MODEL_POINTS: usize = 39;
const BODY_POINTS: usize = 33;
const MIN_PRESENCE: f32 = 0.5;
const HEATMAP_SIZE: usize = 64;
const HEATMAP_KERNEL: usize = 7;
const MIN_CONFIDENCE_TO_REFINE: f32 = 0.5;

/// MediaPipe's `RefineLandmarksFromHeatMap`: each landmark (x, y normalised to the
/// model input) moves to the sigmoid-weighted mean cell of the 7×7 heatmap window
/// around it, when that window's best confidence is at least 0.5.
fn refine_from_heatmap(xy: &mut [[f32; 2]], heatmap: &[f32]) {
    let (size, channels) = (HEATMAP_SIZE as i64, xy.len());
    let offset = (HEATMAP_KERNEL as i64 - 1) / 2;
    for (lm, p) in xy.iter_mut().enumerate() {
        // C++ int conversion: truncation toward zero.
        let (col, row) = ((p[0] * size as f32) as i64, (p[1] * size as f32) as i64);
        if col < 0 || col >= size || row < 0 || row >= size {
            continue;
        }
        let (mut sum, mut wc, mut wr, mut best) = (0f32, 0f32, 0f32, 0f32);
        for r in (row - offset).max(0)..(row + offset + 1).min(size) {
            for c in (col - offset).max(0)..(col + offset + 1).min(size) {
                let conf = ssd::sigmoid(heatmap[((r * size + c) as usize) * channels + lm]);
                sum += conf;
                best = best.max(conf);
                wc += c as f32 * conf;
                wr += r as f32 * conf;
            }
        }
        if best >= MIN_CONFIDENCE_TO_REFINE && sum > 0.0 {
            *p = [wc / size as f32 / sum, wr / size as f32 / sum];
        }
    }
}

/// Pose detection (224x224) then pose_landmark_full (256x256) on the rotated ROI.
pub struct PoseEstimator {
    detector: TfliteModel,
    landmark: TfliteModel,
    anchors: Vec<Anchor>,
}

/// The person found by the detector, in source pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseDetection {
    pub score: f32,
    pub bbox: [f32; 4],
    /// Hips centre, full-body circle point, shoulders centre, upper-body circle point.
    pub keypoints: [[f32; 2]; 4],
}

impl PoseEstimator {
    pub fn load(detector: &Path, landmark: &Path) -> Result<Self, VisionError> {
        let detector = TfliteModel::load(detector)?;
        let landmark = TfliteModel::load(landmark)?;
        for (m, size) in [(&detector, 224), (&landmark, 256)] {
            if m.size != size {
                return Err(VisionError::Model {
                    path: m.path().to_owned(),
                    message: format!(
                        "input is {0}x{0}, expected {size}x{size}: is this the right model?",
                        m.size
                    ),
                });
            }
        }
        Ok(PoseEstimator {
            detector,
            landmark,
            anchors: ssd::anchors(&DETECTOR_ANCHORS),
        })
    }

    /// The most confident person found by the detector, if any.
    pub fn detect(&self, img: &RgbImage) -> Result<Option<PoseDetection>, VisionError> {
        super::face::non_empty(&self.detector, img)?;
        let roi = Roi::letterbox(img.width(), img.height());
        let input = roi.sample(img, 224, Border::Zero, Range::MinusOneToOne);
        let out = self.detector.run(&input)?;
        let raw =
            ssd::decode(&out[0], &out[1], &self.anchors, &DETECTOR_DECODE).map_err(|message| {
                VisionError::Run {
                    path: self.detector.path().to_owned(),
                    message,
                }
            })?;
        Ok(ssd::weighted_nms(raw, NMS_IOU).into_iter().next().map(|d| {
            let [x0, y0] = roi.to_image(d.bbox[0], d.bbox[1]);
            let [x1, y1] = roi.to_image(d.bbox[2], d.bbox[3]);
            let mut keypoints = [[0.0; 2]; 4];
            for (k, p) in keypoints.iter_mut().zip(&d.keypoints) {
                *k = roi.to_image(p[0], p[1]);
            }
            PoseDetection {
                score: d.score,
                bbox: [x0, y0, x1, y1],
                keypoints,
            }
        }))
    }

    /// The landmark model's region for a detection (`AlignmentPointsRectsCalculator`).
    pub fn landmark_roi(det: &PoseDetection) -> Roi {
        let [c, e] = [det.keypoints[0], det.keypoints[1]];
        let side = 2.0 * ((e[0] - c[0]).powi(2) + (e[1] - c[1]).powi(2)).sqrt();
        Roi {
            cx: c[0],
            cy: c[1],
            w: side,
            h: side,
            rotation: rotation_between(c, e, FRAC_PI_2),
        }
        .square_long_scaled(ROI_SCALE)
    }

    /// The most confident person's 33 landmarks, or None when the detector finds no
    /// person or the landmark model says none is present.
    pub fn estimate(&self, img: &RgbImage) -> Result<Option<PoseLandmarks>, VisionError> {
        let Some(det) = self.detect(img)? else {
            return Ok(None);
        };
        let roi = Self::landmark_roi(&det);
        let input = roi.sample(img, 256, Border::Replicate, Range::ZeroToOne);
        let out = self.landmark.run(&input)?;
        if out.len() != 5
            || out[0].len() != MODEL_POINTS * 5
            || out[1].len() != 1
            || out[3].len() != HEATMAP_SIZE * HEATMAP_SIZE * MODEL_POINTS
        {
            return Err(VisionError::Run {
                path: self.landmark.path().to_owned(),
                message: "unexpected outputs (expected 195 landmark values, 1 presence, a 64x64x39 heatmap)".into(),
            });
        }
        let presence = out[1][0];
        if presence < MIN_PRESENCE {
            return Ok(None);
        }
        let s = 256.0;
        let mut xy: Vec<[f32; 2]> = out[0]
            .chunks_exact(5)
            .map(|p| [p[0] / s, p[1] / s])
            .collect();
        refine_from_heatmap(&mut xy, &out[3]);
        let points = out[0]
            .chunks_exact(5)
            .zip(&xy)
            .take(BODY_POINTS)
            .map(|(p, &[u, v])| {
                let [x, y] = roi.to_image(u, v);
                [x, y, p[2] / s * roi.w, ssd::sigmoid(p[3])]
            })
            .collect();
        Ok(Some(PoseLandmarks { points, presence }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_refinement_moves_to_the_weighted_peak() {
        let n = HEATMAP_SIZE;
        let mut hm = vec![-20.0f32; n * n * 2];
        // Landmark 0: a sharp peak at cell (col 10, row 20), two cells from the estimate.
        hm[(20 * n + 10) * 2] = 20.0;
        // Landmark 1: no confident cell, left alone.
        let mut xy = [[12.0 / n as f32, 21.0 / n as f32], [0.5, 0.5]];
        refine_from_heatmap(&mut xy, &hm);
        assert!(
            (xy[0][0] - 10.0 / n as f32).abs() < 1e-6 && (xy[0][1] - 20.0 / n as f32).abs() < 1e-6
        );
        assert_eq!(xy[1], [0.5, 0.5]);
    }
}
