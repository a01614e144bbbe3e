//! `verify:<name>`: runs the written target with tract on the held-out frames and
//! compares it with the tch student's outputs against the profile's bar (PSNR per
//! precision). Core ML cannot run on Linux: its package is decoded back, checked
//! structurally, lowered and run through tract. A miss fails the build with a table
//! (for int8, with the per-layer table naming the layer that hurts).

use super::target::{read_frames, read_ir};
use crate::export::coreml::read_mlpackage;
use crate::export::coreml::PixelRange;
use crate::export::quantize::{int8_graph, ActivationType, Calibration, QuantPlan};
use crate::protocol::metric;
use crate::recipe::{Precision, TargetFormat, TargetSpec};
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use crate::verify::coreml::{CoremlModel, Fp16Eval};
use crate::verify::int8::{Int8Eval, Int8Runner};
use crate::verify::{
    verify_artifact, Artifact, ChecksTable, Thresholds, TractModel, VerifyOptions,
};
use serde::Serialize;

pub struct VerifyTarget {
    pub target: TargetSpec,
    /// Timed forward passes for the latency figure (median, one thread).
    pub latency_runs: usize,
}

impl VerifyTarget {
    fn min_psnr_db(&self) -> f64 {
        let p = &self.target.profile;
        p.min_psnr_db
            .get(self.target.precision.name())
            .copied()
            .unwrap_or(match self.target.precision {
                Precision::Fp32 => 60.0,
                Precision::Fp16 => 50.0,
                _ => 35.0,
            })
    }
}

/// What a downstream stage reads back of the `check.json` this stage writes (a
/// `verify::ArtifactCheck`, whose own `Deserialize` cannot take it back: JSON writes a
/// non-finite measure, the PSNR of identical frames, as `null`). The wire test below
/// keeps the two in step.
#[derive(Debug, serde::Deserialize)]
pub struct CheckFile {
    pub psnr_db: Option<f64>,
    pub ssim: Option<f64>,
    pub max_abs: Option<f64>,
    pub size_bytes: Option<u64>,
    pub passed: bool,
    pub thresholds: CheckFileThresholds,
    pub latency: Option<crate::verify::Latency>,
}

#[derive(Debug, serde::Deserialize)]
pub struct CheckFileThresholds {
    pub min_psnr_db: Option<f64>,
}

/// `check.json`'s bytes: the check as JSON (one writer, for the wire test too).
fn check_json(check: &crate::verify::ArtifactCheck) -> Vec<u8> {
    serde_json::to_vec_pretty(check).unwrap_or_default()
}

/// The export's held-out frames and the student's own outputs for them.
pub const HOLDOUT_INPUTS: InputPort = InputPort::required("holdout-inputs.npy");
pub const HOLDOUT_REFERENCE: InputPort = InputPort::required("holdout-reference.npy");
/// Every file the target stage wrote, as `model/FILE`.
pub const MODEL: InputPort = InputPort::all_outputs("model");

impl Stage for VerifyTarget {
    fn kind(&self) -> &'static str {
        "verify"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["check.json", "outputs.npy"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[
            super::target::STUDENT_IR,
            HOLDOUT_INPUTS,
            HOLDOUT_REFERENCE,
            MODEL,
        ]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P<'a> {
            #[serde(rename = "target.name")]
            name: &'a str,
            #[serde(rename = "target.format")]
            format: &'static str,
            #[serde(rename = "target.quantize")]
            quantize: &'static str,
            #[serde(rename = "target.min-psnr-db")]
            min_psnr_db: f64,
            #[serde(rename = "latency-runs")]
            latency_runs: usize,
        }
        params_of(&P {
            name: &self.target.profile.name,
            format: self.target.profile.format.name(),
            quantize: self.target.precision.name(),
            min_psnr_db: self.min_psnr_db(),
            latency_runs: self.latency_runs,
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let graph = read_ir(ctx.input(super::target::STUDENT_IR.pattern)?)?;
        let (inputs, shape) = read_frames(ctx.input(HOLDOUT_INPUTS.pattern)?)?;
        let (references, _) = read_frames(ctx.input(HOLDOUT_REFERENCE.pattern)?)?;
        let name = self.target.profile.name.clone();
        let infra =
            |e: &dyn std::fmt::Display| StageError::environment(format!("verify {name}: {e}"));
        let read = |n: &str| {
            std::fs::read(ctx.input(n)?).map_err(|e| StageError::environment(format!("{n}: {e}")))
        };
        let thresholds = Thresholds {
            min_psnr_db: self.min_psnr_db(),
            min_ssim: None,
            max_abs: None,
        };
        let mut opts = VerifyOptions {
            thresholds,
            data_range: 2.0,
            latency_runs: self.latency_runs,
            int8_source: None,
        };
        let plan;
        let int8_ir;
        let (onnx, tflite, core);
        // Rebuild the Core ML package folder from its files.
        let pkg_dir = ctx.out_dir.join("model.mlpackage");
        let (check, sample_outputs) = match self.target.profile.format {
            TargetFormat::Onnx => {
                onnx = read("model/model.onnx")?;
                let model = TractModel::onnx(&onnx, shape).map_err(|e| infra(&e))?;
                let check = verify_artifact(
                    &name,
                    Artifact::Onnx(&onnx),
                    shape,
                    &inputs,
                    &references,
                    &opts,
                )
                .map_err(|e| infra(&e))?;
                (check, run_all(|x| model.run(x), &inputs)?)
            }
            TargetFormat::Tflite => {
                tflite = read("model/model.tflite")?;
                if self.target.precision == Precision::Int8 {
                    core = read("model/model.core.tflite")?;
                    let cal: Calibration = serde_json::from_slice(&read("model/calibration.json")?)
                        .map_err(|e| infra(&e))?;
                    let (graph8, cal8) = int8_graph(&graph, &cal).map_err(|e| infra(&e))?;
                    int8_ir = graph8;
                    plan = QuantPlan::new(&int8_ir, &cal8, ActivationType::Int8)
                        .map_err(|e| infra(&e))?;
                    opts.int8_source = Some((&int8_ir, &plan));
                    let model =
                        Int8Runner::load(&core, shape, Int8Eval::Fast).map_err(|e| infra(&e))?;
                    let check = verify_artifact(
                        &name,
                        Artifact::TfliteInt8 {
                            shipped: &tflite,
                            core: &core,
                        },
                        shape,
                        &inputs,
                        &references,
                        &opts,
                    )
                    .map_err(|e| infra(&e))?;
                    (check, run_all(|x| model.run(x), &inputs)?)
                } else {
                    let model = TractModel::tflite(&tflite, shape).map_err(|e| infra(&e))?;
                    let check = verify_artifact(
                        &name,
                        Artifact::TfliteFloat(&tflite),
                        shape,
                        &inputs,
                        &references,
                        &opts,
                    )
                    .map_err(|e| infra(&e))?;
                    (check, run_all(|x| model.run(x), &inputs)?)
                }
            }
            TargetFormat::Mlpackage => {
                super::target::assemble_mlpackage(ctx, MODEL, "", &pkg_dir)?;
                let contract = PixelRange::default();
                let check = verify_artifact(
                    &name,
                    Artifact::MlPackage {
                        dir: &pkg_dir,
                        contract,
                    },
                    shape,
                    &inputs,
                    &references,
                    &opts,
                )
                .map_err(|e| infra(&e))?;
                // Decoded and loaded once for the contact sheet's frames.
                let decoded = read_mlpackage(&pkg_dir).map_err(|e| infra(&e))?;
                let net_shape = decoded.graph.input_shape;
                let model = CoremlModel::load_with_range_check(
                    decoded,
                    net_shape,
                    Fp16Eval::default(),
                    false,
                )
                .map_err(|e| infra(&e))?;
                let outs = run_all(
                    |x| {
                        model
                            .run(x, contract)
                            .map(|r| (r.output_nchw, r.output_shape))
                    },
                    &inputs,
                )?;
                (check, outs)
            }
        };
        if !check.passed {
            return Err(StageError::input(format!(
                "target {name} missed its bar:\n{}",
                ChecksTable(std::slice::from_ref(&check))
            )));
        }
        let mut out = RunOutput::default();
        let check_path = ctx.out_dir.join("check.json");
        std::fs::write(&check_path, check_json(&check))
            .map_err(|e| StageError::io(&check_path, e))?;
        out.files.insert("check.json".into(), check_path);
        let per = shape[1] * shape[2] * shape[3];
        let flat: Vec<f32> = sample_outputs.iter().flatten().copied().collect();
        let outputs_path = ctx.out_dir.join("outputs.npy");
        crate::bundle::npy::write_f32(
            &outputs_path,
            &[flat.len() / per.max(1), shape[1], shape[2], shape[3]],
            &flat,
        )
        .map_err(|e| infra(&e))?;
        out.files.insert("outputs.npy".into(), outputs_path);
        let m = &mut out.metrics;
        m.insert(
            metric::PSNR_DB.into(),
            serde_json::json!((check.psnr_db * 100.0).round() / 100.0),
        );
        m.insert(
            metric::SSIM.into(),
            serde_json::json!((check.ssim * 10000.0).round() / 10000.0),
        );
        m.insert(
            metric::MAX_ABS.into(),
            serde_json::json!((check.max_abs * 10000.0).round() / 10000.0),
        );
        m.insert(
            metric::SIZE_BYTES.into(),
            serde_json::json!(check.size_bytes),
        );
        if let Some(l) = &check.latency {
            m.insert(
                metric::LATENCY_MS.into(),
                serde_json::json!((l.median_ms * 100.0).round() / 100.0),
            );
        }
        m.insert(metric::VERIFIED.into(), serde_json::json!(true));
        Ok(out)
    }
}

/// The target's outputs on the first frames (for the contact sheet), from a model
/// loaded once.
fn run_all<E: std::fmt::Display>(
    run: impl Fn(&[f32]) -> Result<(Vec<f32>, [usize; 4]), E>,
    inputs: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>, StageError> {
    inputs
        .iter()
        .take(4)
        .map(|x| {
            run(x)
                .map(|(y, _)| y)
                .map_err(|e| StageError::environment(format!("tract: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{ArtifactCheck, Latency};

    /// The bundle reads back what this stage writes, a perfect PSNR (`null`) included.
    #[test]
    fn check_json_reads_back_as_a_check_file() {
        let check = ArtifactCheck {
            artifact: "phone".into(),
            frames: 4,
            psnr_db: f64::INFINITY,
            ssim: 1.0,
            max_abs: 0.0,
            thresholds: Thresholds {
                min_psnr_db: 50.0,
                min_ssim: None,
                max_abs: None,
            },
            passed: true,
            failures: vec![],
            size_bytes: 1234,
            latency: Some(Latency {
                median_ms: 2.5,
                min_ms: 2.0,
                runs: 3,
            }),
            structural: vec![],
            layer_table: None,
        };
        let read: CheckFile = serde_json::from_slice(&check_json(&check)).unwrap();
        assert_eq!(read.psnr_db, None, "an infinite PSNR is written as null");
        assert_eq!(read.ssim, Some(1.0));
        assert_eq!(read.max_abs, Some(0.0));
        assert_eq!(read.size_bytes, Some(1234));
        assert!(read.passed);
        assert_eq!(read.thresholds.min_psnr_db, Some(50.0));
        assert_eq!(read.latency.map(|l| l.median_ms), Some(2.5));
    }
}
