//! CoreML writers: the ML Program `.mlpackage` (iOS 16, specification version 7,
//! fp16 weights and compute by default, optional int8 weights through
//! `constexpr_affine_dequantize`) and the older NeuralNetwork `.mlmodel`
//! (specification version 4, fp32 or fp16 weights). Both can take and give images
//! (RGB `ImageFeatureType`) with the affine map from pixels [0, 255] to the net's
//! range written into the model. `read` decodes either back into the IR, for
//! verification on machines without CoreML.

pub mod blob;
pub mod mlprogram;
pub mod neuralnetwork;
pub mod read;

use serde::{Deserialize, Serialize};

pub use mlprogram::{mlprogram_files, write_mlpackage, write_package_files, MlPackageFiles};
pub use neuralnetwork::write_mlmodel;
pub use read::{read_mlmodel, read_mlpackage, DecodedCoreml, StructuralCheck};

use crate::ir::IrError;

/// ML Program specification version (iOS 16 / macOS 13).
pub const MLPROGRAM_SPEC_VERSION: i32 = 7;
/// MIL opset of that specification version.
pub const MLPROGRAM_OPSET: &str = "CoreML6";
/// NeuralNetwork specification version (iOS 13: rank-4 image / exact array mapping).
pub const NEURALNETWORK_SPEC_VERSION: i32 = 4;
/// Where ML Program weights live, as the program names them.
pub const WEIGHT_FILE: &str = "@model_path/weights/weight.bin";

#[derive(Debug, thiserror::Error)]
pub enum CoremlError {
    #[error("cannot write CoreML: invalid graph: {0}")]
    Graph(#[from] IrError),
    #[error("cannot write CoreML: {0}")]
    Unsupported(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightPrecision {
    Fp32,
    /// fp16 weights, fp16 compute (casts at the edges).
    Fp16,
    /// int8 per-output-channel symmetric weights dequantized to fp16 at load
    /// (`constexpr_affine_dequantize`); ML Program only.
    Int8,
}

/// net value = pixel * scale + bias, per channel the same. The default maps [0, 255]
/// onto [-1, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PixelRange {
    pub scale: f32,
    pub bias: f32,
}

impl Default for PixelRange {
    fn default() -> Self {
        PixelRange {
            scale: 2.0 / 255.0,
            bias: -1.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoremlOptions {
    pub weights: WeightPrecision,
    /// RGB image input (else a float32 multi-array).
    pub image_input: bool,
    /// RGB image output (else a float32 multi-array).
    pub image_output: bool,
    pub pixel_range: PixelRange,
    pub short_description: String,
}

impl Default for CoremlOptions {
    fn default() -> Self {
        CoremlOptions {
            weights: WeightPrecision::Fp16,
            image_input: false,
            image_output: false,
            pixel_range: PixelRange::default(),
            short_description: "effectc student".into(),
        }
    }
}

/// A MIL / CoreML identifier for an IR value name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn identifier(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.as_bytes()[0].is_ascii_digit() {
        s.insert(0, '_');
    }
    s
}

/// Checks that the identifiers of a graph's values are distinct.
fn check_identifiers(graph: &crate::ir::Graph) -> Result<(), CoremlError> {
    let mut seen = std::collections::BTreeMap::new();
    for name in std::iter::once(&graph.input_name).chain(graph.nodes.iter().map(|n| &n.name)) {
        if let Some(other) = seen.insert(identifier(name), name.clone()) {
            return Err(CoremlError::Unsupported(format!(
                "values `{other}` and `{name}` both become the identifier `{}`",
                identifier(name)
            )));
        }
    }
    Ok(())
}

pub(crate) fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| {
            tract_onnx::prelude::f16::from_f32(*v)
                .to_bits()
                .to_le_bytes()
        })
        .collect()
}

pub(crate) fn f16_decode(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| tract_onnx::prelude::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect()
}
