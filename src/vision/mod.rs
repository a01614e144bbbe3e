//! MediaPipe's face and pose models (docs/mediapipe.md) run in tract: face detection
//! (short-range BlazeFace), the 468-point face mesh, pose detection and the 33-point
//! full pose landmarks. `tflite_rewrite` turns each shipped flatbuffer into one stock
//! tract-tflite loads; `face` and `pose` do MediaPipe's pre- and post-processing.

use std::path::{Path, PathBuf};

use image::RgbImage;

/// One detected face, in source-image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceDetection {
    pub score: f32,
    /// x0, y0, x1, y1 in source pixels.
    pub bbox: [f32; 4],
    /// MediaPipe order: right eye, left eye, nose tip, mouth centre, right ear tragion,
    /// left ear tragion (the subject's right/left), in source pixels.
    pub keypoints: [[f32; 2]; 6],
}

/// The 468 face-mesh landmarks: x, y in source pixels, z relative depth on the same
/// scale as x (smaller is nearer the camera).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceLandmarks {
    pub points: Vec<[f32; 3]>,
}

/// The 33 full-body pose landmarks: x, y in source pixels, z (same scale as x, hips
/// at 0), visibility in 0..1.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseLandmarks {
    pub points: Vec<[f32; 4]>,
}

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("cannot read the model {path}: {source} (set-up installs it: scripts/mediapipe-models.sh)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the model {path} is not a TFLite model tract can run: {message}")]
    Model { path: PathBuf, message: String },
    #[error("running the model {path} failed: {message}")]
    Run { path: PathBuf, message: String },
}

/// Short-range BlazeFace (128x128 input, faces within ~2 m).
pub struct FaceDetector {
    _private: (),
}

impl FaceDetector {
    pub fn load(path: &Path) -> Result<Self, VisionError> {
        Err(VisionError::Model { path: path.to_owned(), message: "not implemented yet".into() })
    }

    /// All faces above MediaPipe's threshold, sorted by box area, largest first.
    pub fn detect(&self, _img: &RgbImage) -> Result<Vec<FaceDetection>, VisionError> {
        unimplemented!()
    }
}

/// The 468-point face mesh (192x192 crop around a detected face, eyes levelled).
pub struct FaceMesh {
    _private: (),
}

impl FaceMesh {
    pub fn load(path: &Path) -> Result<Self, VisionError> {
        Err(VisionError::Model { path: path.to_owned(), message: "not implemented yet".into() })
    }

    pub fn landmarks(&self, _img: &RgbImage, _face: &FaceDetection) -> Result<FaceLandmarks, VisionError> {
        unimplemented!()
    }
}

/// Pose detection (224x224) then pose_landmark_full (256x256) on the rotated ROI.
pub struct PoseEstimator {
    _private: (),
}

impl PoseEstimator {
    pub fn load(detector: &Path, _landmark: &Path) -> Result<Self, VisionError> {
        Err(VisionError::Model { path: detector.to_owned(), message: "not implemented yet".into() })
    }

    /// The most confident person's landmarks, or None when no person is detected.
    pub fn estimate(&self, _img: &RgbImage) -> Result<Option<PoseLandmarks>, VisionError> {
        unimplemented!()
    }
}
