//! Errors of the diffusion teacher. `is_user_error` separates what a recipe author fixes
//! (a wrong file, an unsupported config, a bad request) from infrastructure failures.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: tensor `{name}` has shape {actual:?} but the model config needs {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },
    #[error("{path}: unsupported model config: {message}")]
    UnsupportedConfig { path: PathBuf, message: String },
    #[error("LoRA {path}: key `{key}` matches no weight of the UNet or the text encoder")]
    LoraKeyUnmatched { path: PathBuf, key: String },
    #[error("LoRA {path}: {message}")]
    BadLora { path: PathBuf, message: String },
    #[error("invalid pair request: {0}")]
    InvalidRequest(String),
    #[error("torch error: {0}")]
    Torch(#[from] tch::TchError),
}

impl DiffusionError {
    /// True when the user (recipe, model files, request) must fix it; false for failures
    /// of the machine (disk, torch/CUDA) that a retry may cure.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, DiffusionError::Io { .. } | DiffusionError::Torch(_))
    }
}

pub type Result<T> = std::result::Result<T, DiffusionError>;
