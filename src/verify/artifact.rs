//! One call per written artifact: run it on the held-out frames, compare each frame
//! with the reference (the trained model's output), measure size and latency, and
//! return a structured result; `ArtifactCheck`s print as a table.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::export::coreml::{PixelRange, StructuralCheck};
use crate::export::quantize::{layer_table, LayerTable, QuantPlan};
use crate::export::tflite::core_of_shipped;
use crate::ir::Graph;

use super::compare::{compare, Thresholds};
use super::coreml::{CoremlModel, CoremlVerifyError, Fp16Eval};
use super::int8::{Int8Eval, Int8Runner};
use super::tract_run::{Latency, RunError, TractModel};
use crate::export::coreml::{read_mlmodel, read_mlpackage};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Coreml(#[from] CoremlVerifyError),
    #[error("verification needs as many reference outputs as inputs ({inputs} inputs, {references} references)")]
    Counts { inputs: usize, references: usize },
    #[error("cannot size {path}: {source}")]
    Size {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot build the per-layer table: {0}")]
    Table(#[from] crate::export::quantize::QuantError),
}

/// An artifact as written.
#[derive(Clone, Copy, Debug)]
pub enum Artifact<'a> {
    Onnx(&'a [u8]),
    TfliteFloat(&'a [u8]),
    /// The shipped int8 file and its core (int8 I/O) that tract runs; checked to be
    /// the shipped file minus its QUANTIZE / DEQUANTIZE edges.
    TfliteInt8 {
        shipped: &'a [u8],
        core: &'a [u8],
    },
    MlPackage {
        dir: &'a Path,
        contract: PixelRange,
    },
    MlModel {
        bytes: &'a [u8],
        contract: PixelRange,
    },
}

#[derive(Clone, Debug)]
pub struct VerifyOptions<'a> {
    pub thresholds: Thresholds,
    /// Span of the output values (2.0 for a tanh head).
    pub data_range: f64,
    /// Timed forward passes (0: no latency).
    pub latency_runs: usize,
    /// For int8 artifacts: the graph and plan the file was written from, so that a
    /// miss comes with the per-layer table.
    pub int8_source: Option<(&'a Graph, &'a QuantPlan)>,
}

/// Written to `check.json` and read back by the bundle. JSON writes a non-finite
/// measure (the PSNR of identical frames) as `null`, so the measures read `null` back
/// as +infinity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactCheck {
    pub artifact: String,
    pub frames: usize,
    /// Worst frame.
    #[serde(deserialize_with = "null_as_infinity")]
    pub psnr_db: f64,
    #[serde(deserialize_with = "null_as_infinity")]
    pub ssim: f64,
    #[serde(deserialize_with = "null_as_infinity")]
    pub max_abs: f64,
    pub thresholds: Thresholds,
    pub passed: bool,
    pub failures: Vec<String>,
    pub size_bytes: u64,
    /// tract, one thread (for CoreML: the decoded model lowered to ONNX — a proxy).
    pub latency: Option<Latency>,
    pub structural: Vec<StructuralCheck>,
    pub layer_table: Option<LayerTable>,
}

/// Reads a measure that JSON wrote as `null` (it was infinite) as +infinity.
fn null_as_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

fn dir_size(dir: &Path) -> Result<u64, VerifyError> {
    let mut total = 0;
    for e in walkdir::WalkDir::new(dir) {
        let e = e.map_err(|e| VerifyError::Size {
            path: dir.display().to_string(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("directory loop")),
        })?;
        if e.file_type().is_file() {
            total += e
                .metadata()
                .map_err(|err| VerifyError::Size {
                    path: e.path().display().to_string(),
                    source: err.into(),
                })?
                .len();
        }
    }
    Ok(total)
}

/// Runs `artifact` on every input (NCHW, net range) and checks it against the
/// matching reference output.
pub fn verify_artifact(
    name: &str,
    artifact: Artifact,
    input_shape: [usize; 4],
    inputs: &[Vec<f32>],
    references: &[Vec<f32>],
    opts: &VerifyOptions,
) -> Result<ArtifactCheck, VerifyError> {
    if inputs.len() != references.len() {
        return Err(VerifyError::Counts {
            inputs: inputs.len(),
            references: references.len(),
        });
    }
    let mut structural = Vec::new();
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut latency = None;
    let size_bytes;
    match artifact {
        Artifact::Onnx(b) | Artifact::TfliteFloat(b) | Artifact::TfliteInt8 { core: b, .. } => {
            // An int8 core runs through the fast int8 path (identical outputs).
            let model = match artifact {
                Artifact::Onnx(_) => Int8Runner::Tract(TractModel::onnx(b, input_shape)?),
                Artifact::TfliteInt8 { .. } => Int8Runner::load(b, input_shape, Int8Eval::Fast)?,
                _ => Int8Runner::Tract(TractModel::tflite(b, input_shape)?),
            };
            size_bytes = match artifact {
                Artifact::TfliteInt8 { shipped, core } => {
                    let same = core_of_shipped(shipped).map(|c| c == core);
                    structural.push(StructuralCheck {
                        name: "shipped = verified core + edge ops".into(),
                        passed: matches!(same, Ok(true)),
                        detail: match same {
                            Ok(true) => {
                                "byte-identical after removing QUANTIZE / DEQUANTIZE".into()
                            }
                            Ok(false) => {
                                "the shipped file's core differs from the verified core".into()
                            }
                            Err(e) => e.to_string(),
                        },
                    });
                    shipped.len() as u64
                }
                _ => b.len() as u64,
            };
            for input in inputs {
                outputs.push(model.run(input)?);
            }
            if opts.latency_runs > 0 {
                if let Some(first) = inputs.first() {
                    latency = Some(model.latency(first, opts.latency_runs)?);
                }
            }
        }
        Artifact::MlPackage { .. } | Artifact::MlModel { .. } => {
            let mut lowered = None;
            // Decoded and loaded once, run on every frame.
            let (decoded, contract) = match artifact {
                Artifact::MlPackage { dir, contract } => (
                    read_mlpackage(dir).map_err(CoremlVerifyError::from)?,
                    contract,
                ),
                Artifact::MlModel { bytes, contract } => (
                    read_mlmodel(bytes).map_err(CoremlVerifyError::from)?,
                    contract,
                ),
                _ => unreachable!("CoreML arm"),
            };
            let shape = decoded.graph.input_shape;
            let model = CoremlModel::load(decoded, shape, Fp16Eval::default())?;
            for input in inputs {
                let run = model.run(input, contract)?;
                // Decoding checks are the same for every frame; the fp16 range check
                // is per frame: keep every failure, and the first frame's passes.
                for c in &run.checks {
                    if !c.passed || structural.len() < run.checks.len() {
                        structural.push(c.clone());
                    }
                }
                outputs.push((run.output_nchw, run.output_shape));
                lowered.get_or_insert((run.lowered_onnx, run.decoded.graph.input_shape));
            }
            size_bytes = match artifact {
                Artifact::MlPackage { dir, .. } => dir_size(dir)?,
                Artifact::MlModel { bytes, .. } => bytes.len() as u64,
                _ => 0,
            };
            if let (Some((onnx, shape)), Some(first), true) =
                (&lowered, inputs.first(), opts.latency_runs > 0)
            {
                latency = Some(TractModel::onnx(onnx, *shape)?.latency(first, opts.latency_runs)?);
            }
        }
    }
    let mut check = ArtifactCheck {
        artifact: name.to_string(),
        frames: inputs.len(),
        psnr_db: f64::INFINITY,
        ssim: 1.0,
        max_abs: 0.0,
        thresholds: opts.thresholds.clone(),
        passed: true,
        failures: Vec::new(),
        size_bytes,
        latency,
        structural,
        layer_table: None,
    };
    for (i, ((out, shape), reference)) in outputs.iter().zip(references).enumerate() {
        let c = compare(out, reference, *shape, opts.data_range, &opts.thresholds);
        check.psnr_db = check.psnr_db.min(c.psnr_db);
        check.ssim = check.ssim.min(c.ssim);
        check.max_abs = check.max_abs.max(c.max_abs);
        for f in c.failures {
            check.failures.push(format!("frame {i}: {f}"));
        }
    }
    for s in check.structural.iter().filter(|s| !s.passed) {
        check
            .failures
            .push(format!("structure: {} — {}", s.name, s.detail));
    }
    check.passed = check.failures.is_empty();
    if !check.passed {
        if let Some((graph, plan)) = opts.int8_source {
            check.layer_table = Some(layer_table(graph, plan, inputs)?);
        }
    }
    Ok(check)
}

/// A table of checks, one row per artifact, then each miss's reasons and per-layer
/// table.
pub struct ChecksTable<'a>(pub &'a [ArtifactCheck]);

impl fmt::Display for ChecksTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:>6} {:>9} {:>8} {:>9} {:>9} {:>11} {:>10}  result",
            "artifact", "frames", "PSNR dB", "SSIM", "max-abs", "min dB", "size", "ms/frame"
        )?;
        for c in self.0 {
            writeln!(
                f,
                "{:<28} {:>6} {:>9.2} {:>8.4} {:>9.5} {:>9.1} {:>11} {:>10}  {}",
                c.artifact,
                c.frames,
                c.psnr_db,
                c.ssim,
                c.max_abs,
                c.thresholds.min_psnr_db,
                c.size_bytes,
                c.latency
                    .map(|l| format!("{:.3}", l.median_ms))
                    .unwrap_or_else(|| "-".into()),
                if c.passed { "pass" } else { "MISS" }
            )?;
        }
        for c in self.0.iter().filter(|c| !c.passed) {
            writeln!(f, "\n{} missed:", c.artifact)?;
            for reason in &c.failures {
                writeln!(f, "  - {reason}")?;
            }
            if let Some(t) = &c.layer_table {
                writeln!(f, "  per-layer int8 error (worst: {}):\n{t}", t.worst_layer)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::coreml::{write_mlpackage, CoremlOptions};
    use crate::export::onnx::{self, OnnxPrecision};
    use crate::export::quantize::{calibrate, ActivationType, CalibrationMethod};
    use crate::export::tflite::{self, TflitePrecision};
    use crate::ir::interp::eval;
    use crate::ir::sample::{image_like, student_like};

    /// Every artifact of one graph through the same call; the table shows them all,
    /// and a badly calibrated int8 file is a MISS with its per-layer table.
    #[test]
    fn all_artifacts_verify_and_a_bad_int8_misses_with_its_table() {
        let g = student_like(8, 64, 31);
        let frames: Vec<Vec<f32>> = (0..2).map(|s| image_like(g.input_shape, 300 + s)).collect();
        let refs: Vec<Vec<f32>> = frames
            .iter()
            .map(|x| eval(&g, x).unwrap().data.remove("out").unwrap())
            .collect();
        let calib: Vec<Vec<f32>> = (0..4).map(|s| image_like(g.input_shape, 400 + s)).collect();
        let good = calibrate(&g, &calib, CalibrationMethod::Percentile(99.99)).unwrap();
        let dark: Vec<Vec<f32>> = calib
            .iter()
            .map(|x| x.iter().map(|v| v * 0.01).collect())
            .collect();
        let bad = calibrate(&g, &dark, CalibrationMethod::MinMax).unwrap();
        let good_plan = QuantPlan::new(&g, &good, ActivationType::Int8).unwrap();
        let bad_plan = QuantPlan::new(&g, &bad, ActivationType::Int8).unwrap();

        let onnx32 = onnx::write(&g, OnnxPrecision::Fp32).unwrap();
        let onnx8 = onnx::write(
            &g,
            OnnxPrecision::Int8Qdq {
                calibration: &good,
                activations: ActivationType::Uint8,
            },
        )
        .unwrap();
        let tfl32 = tflite::write(&g, TflitePrecision::Float32).unwrap();
        let tfl8 = tflite::write(&g, TflitePrecision::Int8(&good)).unwrap();
        let tfl8_bad = tflite::write(&g, TflitePrecision::Int8(&bad)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("s.mlpackage");
        write_mlpackage(&g, &pkg, &CoremlOptions::default()).unwrap();

        fn opts<'a>(t: Thresholds, src: Option<(&'a Graph, &'a QuantPlan)>) -> VerifyOptions<'a> {
            VerifyOptions {
                thresholds: t,
                data_range: 2.0,
                latency_runs: 5,
                int8_source: src,
            }
        }
        let checks = vec![
            verify_artifact(
                "onnx fp32",
                Artifact::Onnx(&onnx32),
                g.input_shape,
                &frames,
                &refs,
                &opts(Thresholds::fp32(), None),
            )
            .unwrap(),
            verify_artifact(
                "onnx int8 qdq",
                Artifact::Onnx(&onnx8),
                g.input_shape,
                &frames,
                &refs,
                &opts(Thresholds::int8(), Some((&g, &good_plan))),
            )
            .unwrap(),
            verify_artifact(
                "tflite float32",
                Artifact::TfliteFloat(&tfl32.shipped),
                g.input_shape,
                &frames,
                &refs,
                &opts(Thresholds::fp32(), None),
            )
            .unwrap(),
            verify_artifact(
                "tflite int8",
                Artifact::TfliteInt8 {
                    shipped: &tfl8.shipped,
                    core: &tfl8.core,
                },
                g.input_shape,
                &frames,
                &refs,
                &opts(Thresholds::int8(), Some((&g, &good_plan))),
            )
            .unwrap(),
            verify_artifact(
                "coreml mlpackage fp16",
                Artifact::MlPackage {
                    dir: &pkg,
                    contract: PixelRange::default(),
                },
                g.input_shape,
                &frames,
                &refs,
                &opts(Thresholds::fp16(), None),
            )
            .unwrap(),
            verify_artifact(
                "tflite int8 (bad calib)",
                Artifact::TfliteInt8 {
                    shipped: &tfl8_bad.shipped,
                    core: &tfl8_bad.core,
                },
                g.input_shape,
                &frames,
                &refs,
                &opts(Thresholds::int8(), Some((&g, &bad_plan))),
            )
            .unwrap(),
        ];
        let table = ChecksTable(&checks).to_string();
        eprintln!("{table}");
        for c in &checks[..5] {
            assert!(c.passed, "{}: {:?}", c.artifact, c.failures);
            assert!(c.latency.unwrap().median_ms > 0.0 && c.size_bytes > 0);
        }
        let miss = &checks[5];
        assert!(!miss.passed);
        let t = miss.layer_table.as_ref().unwrap();
        assert!(table.contains("MISS") && table.contains(&format!("worst: {}", t.worst_layer)));
        // A shipped file whose core is not the verified one is a structural miss.
        let swapped = verify_artifact(
            "tflite int8 (swapped core)",
            Artifact::TfliteInt8 {
                shipped: &tfl8_bad.shipped,
                core: &tfl8.core,
            },
            g.input_shape,
            &frames,
            &refs,
            &opts(Thresholds::int8(), None),
        )
        .unwrap();
        assert!(!swapped.passed && swapped.failures.iter().any(|f| f.contains("shipped")));
    }
}

/// Writes sample artifacts and the reference input/output for checking with other
/// runtimes by hand (onnxruntime, LiteRT, coremltools):
/// `EFFECTC_DUMP_DIR=/tmp/x cargo test --lib dump_samples -- --ignored`.
#[cfg(test)]
mod dump {
    use crate::bundle::npy;
    use crate::export::coreml::{write_mlmodel, write_mlpackage, CoremlOptions, WeightPrecision};
    use crate::export::onnx::{self, OnnxPrecision};
    use crate::export::quantize::{calibrate, ActivationType, CalibrationMethod};
    use crate::export::tflite::{self, TflitePrecision};
    use crate::ir::interp::eval;
    use crate::ir::sample::{image_like, student_like};

    #[test]
    #[ignore]
    fn dump_samples() {
        let dir = std::path::PathBuf::from(
            std::env::var("EFFECTC_DUMP_DIR").expect("set EFFECTC_DUMP_DIR"),
        );
        std::fs::create_dir_all(&dir).unwrap();
        let g = student_like(8, 64, 31);
        let input = image_like(g.input_shape, 300);
        let reference = eval(&g, &input).unwrap().data.remove("out").unwrap();
        npy::write_f32(&dir.join("input.npy"), &g.input_shape, &input).unwrap();
        npy::write_f32(
            &dir.join("reference.npy"),
            &g.output_shape().unwrap(),
            &reference,
        )
        .unwrap();
        let calib: Vec<Vec<f32>> = (0..4).map(|s| image_like(g.input_shape, 400 + s)).collect();
        let c = calibrate(&g, &calib, CalibrationMethod::Percentile(99.99)).unwrap();
        std::fs::write(
            dir.join("fp32.onnx"),
            onnx::write(&g, OnnxPrecision::Fp32).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("fp16.onnx"),
            onnx::write(&g, OnnxPrecision::Fp16).unwrap(),
        )
        .unwrap();
        for (a, n) in [
            (ActivationType::Int8, "qdq_s8.onnx"),
            (ActivationType::Uint8, "qdq_u8.onnx"),
        ] {
            let b = onnx::write(
                &g,
                OnnxPrecision::Int8Qdq {
                    calibration: &c,
                    activations: a,
                },
            )
            .unwrap();
            std::fs::write(dir.join(n), b).unwrap();
        }
        std::fs::write(
            dir.join("float32.tflite"),
            tflite::write(&g, TflitePrecision::Float32).unwrap().shipped,
        )
        .unwrap();
        let t8 = tflite::write(&g, TflitePrecision::Int8(&c)).unwrap();
        std::fs::write(dir.join("int8.tflite"), t8.shipped).unwrap();
        std::fs::write(dir.join("int8_core.tflite"), t8.core).unwrap();
        write_mlpackage(&g, &dir.join("fp16.mlpackage"), &CoremlOptions::default()).unwrap();
        let img = CoremlOptions {
            image_input: true,
            image_output: true,
            weights: WeightPrecision::Int8,
            ..Default::default()
        };
        write_mlpackage(&g, &dir.join("int8_image.mlpackage"), &img).unwrap();
        std::fs::write(
            dir.join("fp16_nn.mlmodel"),
            write_mlmodel(
                &g,
                &CoremlOptions {
                    image_input: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .unwrap();
    }
}
