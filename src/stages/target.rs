//! `target:<name>`: writes the student for one phone target as its profile says —
//! ONNX (fp32 or QDQ int8), TFLite (float32 or full-integer int8 with float I/O edges),
//! or a Core ML ML Program (fp16, fp32 or int8 weights; image I/O when the profile's
//! `io` is `image`). int8 targets calibrate activation ranges on training crops
//! (99.99th percentile clipping).

use crate::export::coreml::{write_mlpackage, CoremlOptions, WeightPrecision};
use crate::export::ir::Graph;
use crate::export::onnx::{self, OnnxPrecision};
use crate::export::quantize::{calibrate, ActivationType, Calibration, CalibrationMethod};
use crate::export::tflite::{self, TflitePrecision};
use crate::recipe::TargetSpec;
use crate::stages::{Params, RunContext, RunOutput, Stage, StageError};
use std::path::Path;

pub struct WriteTarget {
    pub target: TargetSpec,
}

pub fn read_ir(path: &Path) -> Result<Graph, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    postcard::from_bytes(&bytes)
        .map_err(|e| StageError::environment(format!("{}: not a student IR: {e}", path.display())))
}

/// NCHW frames from an `.npy` of shape [N, C, H, W], one `Vec` per frame.
pub fn read_frames(path: &Path) -> Result<(Vec<Vec<f32>>, [usize; 4]), StageError> {
    let (shape, data) = crate::bundle::npy::read_f32(path)
        .map_err(|e| StageError::environment(format!("{}: {e}", path.display())))?;
    let [n, c, h, w] = <[usize; 4]>::try_from(shape.as_slice())
        .map_err(|_| StageError::environment(format!("{}: expected 4-D frames", path.display())))?;
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
    let (frames, _) = read_frames(ctx.input("calibration-inputs.npy")?)?;
    let take: Vec<Vec<f32>> = frames.into_iter().take(size.max(1)).collect();
    calibrate(graph, &take, CalibrationMethod::Percentile(99.99))
        .map_err(|e| StageError::environment(format!("calibration: {e}")))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    std::fs::write(path, bytes).map_err(|e| StageError::io(path, e))
}

impl Stage for WriteTarget {
    fn kind(&self) -> &'static str {
        "target"
    }
    /// A target is a folder of files whose names depend on the format (a Core ML
    /// package is many): consumers take all of them (`InputRef::StageAll`), no port.
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        let p = &self.target.profile;
        Params::from([
            ("target.name".into(), p.name.clone()),
            ("target.format".into(), p.format.clone()),
            ("target.quantize".into(), self.target.precision.clone()),
            ("target.io".into(), p.io.clone()),
            (
                "target.calibration-size".into(),
                p.calibration_size.to_string(),
            ),
        ])
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let graph = read_ir(ctx.input("student.ir")?)?;
        let precision = self.target.precision.as_str();
        let format = self.target.profile.format.as_str();
        let cal_size = self.target.profile.calibration_size as usize;
        let mut out = RunOutput::default();
        let fail = |e: &dyn std::fmt::Display| {
            StageError::input(format!("target {}: {e}", self.target.profile.name))
        };
        match format {
            "onnx" => {
                let cal;
                let prec = match precision {
                    "fp32" => OnnxPrecision::Fp32,
                    "fp16" => OnnxPrecision::Fp16,
                    "int8" => {
                        cal = calibration_for(&graph, ctx, cal_size)?;
                        OnnxPrecision::Int8Qdq {
                            calibration: &cal,
                            activations: ActivationType::Int8,
                        }
                    }
                    other => return Err(fail(&format!("no ONNX writer for precision `{other}`"))),
                };
                let bytes = onnx::write(&graph, prec).map_err(|e| fail(&e))?;
                let path = ctx.out_dir.join("model.onnx");
                write(&path, &bytes)?;
                out.files.insert("model.onnx".into(), path);
            }
            "tflite" => {
                let cal;
                let prec = match precision {
                    "fp32" => TflitePrecision::Float32,
                    "int8" => {
                        cal = calibration_for(&graph, ctx, cal_size)?;
                        let p = ctx.out_dir.join("calibration.json");
                        write(&p, &serde_json::to_vec(&cal).unwrap_or_default())?;
                        out.files.insert("calibration.json".into(), p);
                        TflitePrecision::Int8(&cal)
                    }
                    other => {
                        return Err(fail(&format!("no TFLite writer for precision `{other}`")))
                    }
                };
                let files = tflite::write(&graph, prec).map_err(|e| fail(&e))?;
                let shipped = ctx.out_dir.join("model.tflite");
                write(&shipped, &files.shipped)?;
                out.files.insert("model.tflite".into(), shipped);
                if precision == "int8" {
                    let core = ctx.out_dir.join("model.core.tflite");
                    write(&core, &files.core)?;
                    out.files.insert("model.core.tflite".into(), core);
                }
            }
            "mlpackage" => {
                let weights = match precision {
                    "fp16" => WeightPrecision::Fp16,
                    "fp32" => WeightPrecision::Fp32,
                    "int8-weights" => WeightPrecision::Int8,
                    other => {
                        return Err(fail(&format!("no Core ML writer for precision `{other}`")))
                    }
                };
                let image = self.target.profile.io == "image";
                let opts = CoremlOptions {
                    weights,
                    image_input: image,
                    image_output: image,
                    ..CoremlOptions::default()
                };
                let dir = ctx.out_dir.join("model.mlpackage");
                write_mlpackage(&graph, &dir, &opts).map_err(|e| fail(&e))?;
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
            other => return Err(fail(&format!("unknown target format `{other}`"))),
        }
        Ok(out)
    }
}
