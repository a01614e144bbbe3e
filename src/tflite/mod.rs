//! A TFLite flatbuffer as one in-memory model, shared by everything that touches the
//! format: export's lowering builds one and writes it, the MediaPipe rewrite
//! (`vision::tflite_rewrite`) and preview's re-sizing (`export::tflite_size`) read one,
//! edit it and write it, and verification reads one.
//!
//! - `model`: the owned tensors, buffers and operators, and the edits they share;
//! - `options`: each operator-options table, read and written in one place (adding an
//!   op with a new table means one variant and its two arms there);
//! - `read` / `write`: flatbuffer bytes to the model and back. Writing is deterministic,
//!   and reading a written file and writing it again gives the same bytes.

mod model;
mod options;
mod read;
mod write;

pub use model::{Model, Op, Quant, SparseDim, Sparsity, Tensor};
pub use options::Options;
pub use read::parse;
pub use tract_tflite::tflite::{
    ActivationFunctionType, BuiltinOperator, BuiltinOptions, Padding, TensorType,
};
pub use write::{aligned_bytes, serialize, SCHEMA_VERSION};

/// What can go wrong reading or writing a TFLite model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not a TFLite flatbuffer: {0}")]
    NotFlatbuffer(String),
    #[error("the TFLite model has no {0}")]
    Missing(&'static str),
    #[error("the TFLite model has {0} subgraphs, expected one")]
    Subgraphs(usize),
    #[error("operator code index {0} out of range")]
    OpcodeIndex(u32),
    #[error("{op}: options of type {options:?} missing")]
    MissingOptions { op: String, options: BuiltinOptions },
    #[error("{op}: options {options:?} are not handled")]
    UnhandledOptions { op: String, options: BuiltinOptions },
    #[error("sparse tensor {tensor:?}: {reason}")]
    Sparse { tensor: String, reason: String },
    #[error("sparse tensor {0:?} cannot be written (only dense tensors are)")]
    SparseWrite(String),
}

/// The operator's schema name (`CONV_2D`), or its number for codes this schema lacks.
pub fn op_name(code: BuiltinOperator) -> String {
    code.variant_name()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("BUILTIN_{}", code.0))
}
