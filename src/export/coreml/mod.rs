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

pub use mlprogram::{mlprogram_files, write_mlpackage, MlPackageFiles};
pub use neuralnetwork::write_mlmodel;
pub use read::{read_mlmodel, read_mlpackage, DecodedCoreml, StructuralCheck};

use super::ir::IrError;

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
fn check_identifiers(graph: &super::ir::Graph) -> Result<(), CoremlError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::interp::eval;
    use crate::export::sample::{image_like, sigmoid_head, student_like};
    use crate::verify::compare::{compare, Thresholds};
    use crate::verify::coreml::{run_mlmodel, run_mlpackage};

    /// An image-like input on the 8-bit pixel grid, as camera frames are.
    fn pixel_input(shape: [usize; 4], seed: u64) -> Vec<f32> {
        let r = PixelRange::default();
        image_like(shape, seed)
            .iter()
            .map(|x| ((x - r.bias) / r.scale).round() * r.scale + r.bias)
            .collect()
    }

    fn reference(g: &crate::export::ir::Graph, input: &[f32]) -> Vec<f32> {
        eval(g, input).unwrap().data.remove(&g.output_name).unwrap()
    }

    #[test]
    fn mlpackage_fp16_round_trips_and_passes_the_fp16_bar() {
        let g = student_like(4, 32, 21);
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("student.mlpackage");
        let files = write_mlpackage(&g, &pkg, &CoremlOptions::default()).unwrap();
        assert!(pkg.join("Manifest.json").is_file());
        assert!(pkg.join("Data/com.apple.CoreML/model.mlmodel").is_file());
        assert_eq!(
            std::fs::read(pkg.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap(),
            files.weights
        );
        // Same graph, same bytes (maps are encoded in key order).
        assert_eq!(
            mlprogram_files(&g, &CoremlOptions::default()).unwrap(),
            files
        );
        let input = image_like(g.input_shape, 6);
        let run = run_mlpackage(&pkg, &input, PixelRange::default()).unwrap();
        assert!(
            run.structurally_sound(),
            "{:#?}",
            run.checks.iter().filter(|c| !c.passed).collect::<Vec<_>>()
        );
        assert_eq!(run.decoded.format, "mlprogram");
        assert_eq!(run.decoded.weight_precision, WeightPrecision::Fp16);
        assert_eq!(run.decoded.graph.param_count(), g.param_count());
        let c = compare(
            &run.output_nchw,
            &reference(&g, &input),
            run.output_shape,
            2.0,
            &Thresholds::fp16(),
        );
        eprintln!(
            "coreml mlpackage fp16: {:.1} dB ssim {:.5}, model {} + weights {} bytes, {} checks",
            c.psnr_db,
            c.ssim,
            files.model.len(),
            files.weights.len(),
            run.checks.len()
        );
        assert!(c.passed, "{c:?}");
    }

    #[test]
    fn mlpackage_image_io_and_int8_weights() {
        let g = student_like(4, 32, 22);
        let input = pixel_input(g.input_shape, 7);
        let dir = tempfile::tempdir().unwrap();
        let opts = CoremlOptions {
            image_input: true,
            image_output: true,
            weights: WeightPrecision::Int8,
            ..Default::default()
        };
        let pkg = dir.path().join("student_int8.mlpackage");
        write_mlpackage(&g, &pkg, &opts).unwrap();
        let run = run_mlpackage(&pkg, &input, PixelRange::default()).unwrap();
        assert!(
            run.structurally_sound(),
            "{:#?}",
            run.checks.iter().filter(|c| !c.passed).collect::<Vec<_>>()
        );
        assert_eq!(run.decoded.weight_precision, WeightPrecision::Int8);
        let map = run.decoded.input_pixel_map.unwrap();
        assert!((map.scale * 255.0 + map.bias - 1.0).abs() < 1e-6 && map.bias == -1.0);
        let c = compare(
            &run.output_nchw,
            &reference(&g, &input),
            run.output_shape,
            2.0,
            &Thresholds::int8(),
        );
        eprintln!(
            "coreml mlpackage int8 weights + image io: {:.1} dB",
            c.psnr_db
        );
        assert!(c.passed, "{c:?}");
        // A wrong pixel map in the model is caught against the app's contract.
        let wrong = CoremlOptions {
            pixel_range: PixelRange {
                scale: 1.0 / 255.0,
                bias: 0.0,
            },
            ..opts
        };
        let pkg2 = dir.path().join("wrong.mlpackage");
        write_mlpackage(&g, &pkg2, &wrong).unwrap();
        let run = run_mlpackage(&pkg2, &input, PixelRange::default()).unwrap();
        let c = compare(
            &run.output_nchw,
            &reference(&g, &input),
            run.output_shape,
            2.0,
            &Thresholds::int8(),
        );
        assert!(!c.passed, "{c:?}");
    }

    #[test]
    fn neuralnetwork_mlmodel_fp16_and_fp32() {
        let g = student_like(4, 32, 23);
        let input = pixel_input(g.input_shape, 8);
        for (weights, t) in [
            (WeightPrecision::Fp16, Thresholds::fp16()),
            (WeightPrecision::Fp32, Thresholds::fp32()),
        ] {
            let image_output = weights == WeightPrecision::Fp16;
            let opts = CoremlOptions {
                weights,
                image_input: true,
                image_output,
                ..Default::default()
            };
            let bytes = write_mlmodel(&g, &opts).unwrap();
            assert_eq!(bytes, write_mlmodel(&g, &opts).unwrap());
            let run = run_mlmodel(&bytes, &input, PixelRange::default()).unwrap();
            assert!(run.structurally_sound(), "{:#?}", run.checks);
            assert_eq!(run.decoded.specification_version, 4);
            assert_eq!(run.decoded.output_pixel_map.is_some(), image_output);
            let c = compare(
                &run.output_nchw,
                &reference(&g, &input),
                run.output_shape,
                2.0,
                &t,
            );
            eprintln!(
                "coreml mlmodel {weights:?}: {:.1} dB, {} bytes",
                c.psnr_db,
                bytes.len()
            );
            assert!(c.passed, "{weights:?}: {c:?}");
        }
        let sig = sigmoid_head(4, 16, 2);
        let sig_in = image_like(sig.input_shape, 1);
        let bytes = write_mlmodel(&sig, &CoremlOptions::default()).unwrap();
        let run = run_mlmodel(&bytes, &sig_in, PixelRange::default()).unwrap();
        assert!(run.structurally_sound(), "{:#?}", run.checks);
        let c = compare(
            &run.output_nchw,
            &reference(&sig, &sig_in),
            run.output_shape,
            1.0,
            &Thresholds::fp16(),
        );
        assert!(c.passed, "{c:?}");
        assert!(matches!(
            write_mlmodel(
                &g,
                &CoremlOptions {
                    weights: WeightPrecision::Int8,
                    ..Default::default()
                }
            ),
            Err(CoremlError::Unsupported(_))
        ));
    }

    #[test]
    fn corrupt_weight_blob_is_refused() {
        let g = student_like(4, 32, 24);
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("s.mlpackage");
        write_mlpackage(&g, &pkg, &CoremlOptions::default()).unwrap();
        let wpath = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
        let mut w = std::fs::read(&wpath).unwrap();
        w[64] ^= 0xFF; // first blob's sentinel
        std::fs::write(&wpath, &w).unwrap();
        let e = read_mlpackage(&pkg).unwrap_err().to_string();
        assert!(e.contains("sentinel"), "{e}");
    }
}
