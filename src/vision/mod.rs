//! MediaPipe's face and pose models (docs/mediapipe.md) run in tract: face detection
//! (short-range BlazeFace), the 468-point face mesh, pose detection and the 33-point
//! full pose landmarks. `tflite_rewrite` turns each shipped flatbuffer into one stock
//! tract-tflite loads; `face` and `pose` do MediaPipe's pre- and post-processing.

pub mod face;
pub mod model;
pub mod pose;
pub mod roi;
pub mod ssd;
pub mod tflite_rewrite;

use std::path::PathBuf;

pub use face::{FaceDetector, FaceMesh};
pub use pose::{PoseDetection, PoseEstimator};

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
    /// The model's face-presence probability (MediaPipe drops the landmarks below 0.5).
    pub presence: f32,
}

/// The 33 full-body pose landmarks: x, y in source pixels, z (same scale as x, hips
/// at 0), visibility in 0..1.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseLandmarks {
    pub points: Vec<[f32; 4]>,
    /// The model's pose-presence probability (≥ 0.5, or `estimate` returns None).
    pub presence: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(
        "cannot read the model {path}: {source} (set-up installs it: scripts/mediapipe-models.sh)"
    )]
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
