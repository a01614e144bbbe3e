//! `target:<name>`: writes the student for one phone target as its profile says —
//! ONNX (fp32 or QDQ int8), TFLite (float32 or full-integer int8 with float I/O edges),
//! or a Core ML ML Program (fp16, fp32 or int8 weights; image I/O when the profile's
//! `io` is `image`). int8 targets calibrate activation ranges on training crops
//! (99.99th percentile clipping).

use crate::export::coreml::{mlprogram_files, write_package_files, CoremlOptions, WeightPrecision};
use crate::export::onnx::{self, OnnxPrecision};
use crate::export::quantize::{calibrate, ActivationType, Calibration, CalibrationMethod};
use crate::export::tflite::{self, TflitePrecision};
use crate::ir::Graph;
use crate::recipe::{Precision, TargetFormat, TargetIo, TargetSpec};
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;

pub struct WriteTarget {
    pub target: TargetSpec,
}

impl WriteTarget {
    /// Refuses a model that uses an op the profile's device does not run, naming it,
    /// before anything is written.
    fn check_ops(&self, used: &BTreeSet<String>) -> Result<(), StageError> {
        let p = &self.target.profile;
        let refused: Vec<&str> = used
            .iter()
            .filter(|op| !p.ops.iter().any(|a| a == *op))
            .map(String::as_str)
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(StageError::input(format!(
            "target {}: the model needs {} `{}`, which {} does not allow (its `ops`: {})",
            p.name,
            if refused.len() == 1 { "op" } else { "ops" },
            refused.join("`, `"),
            p.file.name,
            p.ops.join(" ")
        )))
    }
}

pub fn read_ir(path: &Path) -> Result<Graph, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    postcard::from_bytes(&bytes)
        .map_err(|e| StageError::bug(format!("{}: not a student IR: {e}", path.display())))
}

/// A `.mlpackage` folder a target stage wrote, rebuilt at `dir` from its files (the
/// target stage's outputs under `model.mlpackage/`, wired to the all-outputs `port` for
/// `key`): the verify and bundle stages read the package this one way.
pub fn assemble_mlpackage(
    ctx: &RunContext,
    port: InputPort,
    key: &str,
    dir: &Path,
) -> Result<(), StageError> {
    for (output, path) in ctx.outputs_of(port, key)? {
        if let Some(rel) = output.strip_prefix("model.mlpackage/") {
            let dest = dir.join(rel);
            std::fs::create_dir_all(dest.parent().unwrap_or(dir))
                .map_err(|e| StageError::io(&dest, e))?;
            std::fs::copy(path, &dest).map_err(|e| StageError::io(&dest, e))?;
        }
    }
    Ok(())
}

/// NCHW frames from an `.npy` of shape [N, C, H, W], one `Vec` per frame.
pub fn read_frames(path: &Path) -> Result<(Vec<Vec<f32>>, [usize; 4]), StageError> {
    let (shape, data) = crate::bundle::npy::read_f32(path)
        .map_err(|e| StageError::environment(format!("{}: {e}", path.display())))?;
    let [n, c, h, w] = <[usize; 4]>::try_from(shape.as_slice())
        .map_err(|_| StageError::bug(format!("{}: expected 4-D frames", path.display())))?;
    let per = c * h * w;
    Ok((
        (0..n)
            .map(|i| data[i * per..(i + 1) * per].to_vec())
            .collect(),
        [1, c, h, w],
    ))
}

pub fn calibration_for(
    graph: &Graph,
    ctx: &RunContext,
    size: usize,
) -> Result<Calibration, StageError> {
    let (frames, _) = read_frames(ctx.input(CALIBRATION_INPUTS.pattern)?)?;
    let take: Vec<Vec<f32>> = frames.into_iter().take(size.max(1)).collect();
    calibrate(graph, &take, CalibrationMethod::Percentile(99.99))
        .map_err(|e| StageError::environment(format!("calibration: {e}")))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    std::fs::write(path, bytes).map_err(|e| StageError::io(path, e))
}

/// The student's IR and the frames that calibrate its quantization (the export's outputs).
pub const STUDENT_IR: InputPort = InputPort::required("student.ir");
pub const CALIBRATION_INPUTS: InputPort = InputPort::required("calibration-inputs.npy");

impl Stage for WriteTarget {
    fn kind(&self) -> &'static str {
        "target"
    }
    /// A target is a folder of files whose names depend on the format (a Core ML
    /// package is many): consumers take all of them (`InputRef::StageAll`), no port.
    fn outputs(&self) -> &'static [&'static str] {
        &[]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[STUDENT_IR, CALIBRATION_INPUTS]
    }
    fn version(&self) -> u32 {
        // 2: the profile's `ops` allow-list is enforced (and part of the key).
        // 3 (int8 only): requantizes in front of narrow shared ADD inputs (`int8_graph`).
        if self.target.precision == Precision::Int8 {
            3
        } else {
            2
        }
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P<'a> {
            name: &'a str,
            format: &'static str,
            quantize: &'static str,
            io: &'static str,
            ops: &'a [String],
            #[serde(rename = "calibration-size")]
            calibration_size: u32,
        }
        let p = &self.target.profile;
        params_of(&serde_json::json!({ "target": P {
            name: &p.name,
            format: p.format.name(),
            quantize: self.target.precision.name(),
            io: p.io.name(),
            ops: &p.ops,
            calibration_size: p.calibration_size,
        }}))
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let graph = read_ir(ctx.input(STUDENT_IR.pattern)?)?;
        let precision = self.target.precision;
        let cal_size = self.target.profile.calibration_size as usize;
        let mut out = RunOutput::default();
        let fail = |e: &dyn std::fmt::Display| {
            StageError::input(format!("target {}: {e}", self.target.profile.name))
        };
        // Precisions were matched to the format's writers when the profile was read.
        let unsupported = || {
            StageError::bug(format!(
                "target {}: no {} writer for {precision}",
                self.target.profile.name, self.target.profile.format
            ))
        };
        match self.target.profile.format {
            TargetFormat::Onnx => {
                let cal;
                let prec = match precision {
                    Precision::Fp32 => OnnxPrecision::Fp32,
                    Precision::Fp16 => OnnxPrecision::Fp16,
                    Precision::Int8 => {
                        cal = calibration_for(&graph, ctx, cal_size)?;
                        OnnxPrecision::Int8Qdq {
                            calibration: &cal,
                            activations: ActivationType::Int8,
                        }
                    }
                    Precision::Int8Weights => return Err(unsupported()),
                };
                let bytes = onnx::write(&graph, prec).map_err(|e| fail(&e))?;
                let ops = onnx::op_types(&bytes)
                    .map_err(|e| StageError::bug(format!("the ONNX writer's own output: {e}")))?;
                self.check_ops(&ops)?;
                let path = ctx.out_dir.join("model.onnx");
                write(&path, &bytes)?;
                out.files.insert("model.onnx".into(), path);
            }
            TargetFormat::Tflite => {
                let cal = match precision {
                    Precision::Int8 => Some(calibration_for(&graph, ctx, cal_size)?),
                    _ => None,
                };
                let prec = match (precision, &cal) {
                    (Precision::Fp32, _) => TflitePrecision::Float32,
                    (Precision::Int8, Some(cal)) => TflitePrecision::Int8(cal),
                    _ => return Err(unsupported()),
                };
                let files = tflite::write(&graph, prec).map_err(|e| fail(&e))?;
                let ops =
                    tflite::op_names(&files.shipped).map_err(|e| StageError::bug(e.to_string()))?;
                self.check_ops(&ops)?;
                if let Some(cal) = &cal {
                    let p = ctx.out_dir.join("calibration.json");
                    write(&p, &serde_json::to_vec(cal).unwrap_or_default())?;
                    out.files.insert("calibration.json".into(), p);
                }
                let shipped = ctx.out_dir.join("model.tflite");
                write(&shipped, &files.shipped)?;
                out.files.insert("model.tflite".into(), shipped);
                if precision == Precision::Int8 {
                    let core = ctx.out_dir.join("model.core.tflite");
                    write(&core, &files.core)?;
                    out.files.insert("model.core.tflite".into(), core);
                }
            }
            TargetFormat::Mlpackage => {
                let weights = match precision {
                    Precision::Fp16 => WeightPrecision::Fp16,
                    Precision::Fp32 => WeightPrecision::Fp32,
                    Precision::Int8Weights => WeightPrecision::Int8,
                    Precision::Int8 => return Err(unsupported()),
                };
                let image = self.target.profile.io == TargetIo::Image;
                let opts = CoremlOptions {
                    weights,
                    image_input: image,
                    image_output: image,
                    ..CoremlOptions::default()
                };
                let files = mlprogram_files(&graph, &opts).map_err(|e| fail(&e))?;
                self.check_ops(&files.op_types)?;
                let dir = ctx.out_dir.join("model.mlpackage");
                write_package_files(&files, &dir).map_err(|e| fail(&e))?;
                for e in walkdir::WalkDir::new(&dir)
                    .sort_by_file_name()
                    .into_iter()
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_file())
                {
                    let rel = e
                        .path()
                        .strip_prefix(ctx.out_dir)
                        .unwrap_or(e.path())
                        .to_string_lossy()
                        .replace('\\', "/");
                    out.files.insert(rel, e.path().to_path_buf());
                }
            }
        }
        Ok(out)
    }
}
