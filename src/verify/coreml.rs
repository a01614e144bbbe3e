//! CoreML verification without CoreML: decode the written file back into the IR
//! (`export::coreml::read`), lower that to ONNX in the precision the device computes in
//! (fp16 for fp16 / int8-weight models), run it with tract, and map the image I/O
//! through the pixel maps *written in the model*, against the pixel contract the
//! caller expects — so a wrong scale or bias in the file shows up as a miss.

use std::path::Path;

use crate::export::coreml::read::CoremlReadError;
use crate::export::coreml::{
    read_mlmodel, read_mlpackage, DecodedCoreml, PixelRange, StructuralCheck, WeightPrecision,
};
use crate::export::onnx::{self, OnnxError, OnnxPrecision};

use super::tract_run::{RunError, TractModel};

/// Largest finite fp16 value.
pub const FP16_MAX: f32 = 65504.0;

#[derive(Debug, thiserror::Error)]
pub enum CoremlVerifyError {
    #[error(transparent)]
    Read(#[from] CoremlReadError),
    #[error("cannot lower the decoded CoreML model to ONNX: {0}")]
    Lower(#[from] OnnxError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("reference interpreter failed on the decoded model: {0}")]
    Eval(#[from] crate::ir::IrError),
}

#[derive(Clone, Debug)]
pub struct CoremlRun {
    /// NCHW output in the net's range (image outputs mapped back through the contract).
    pub output_nchw: Vec<f32>,
    pub output_shape: [usize; 4],
    pub decoded: DecodedCoreml,
    /// The ONNX model tract ran (time it with `TractModel::onnx` for a latency proxy).
    pub lowered_onnx: Vec<u8>,
    /// Structural checks plus the fp16 activation-range check on this input.
    pub checks: Vec<StructuralCheck>,
}

impl CoremlRun {
    pub fn structurally_sound(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// Verifies a `.mlpackage`: `input_nchw` in the net's range; `contract` is how the
/// app maps pixels to that range (used only when the model takes or gives images).
pub fn run_mlpackage(
    dir: &Path,
    input_nchw: &[f32],
    contract: PixelRange,
) -> Result<CoremlRun, CoremlVerifyError> {
    run_decoded(read_mlpackage(dir)?, input_nchw, contract)
}

/// Verifies a NeuralNetwork `.mlmodel`'s bytes.
pub fn run_mlmodel(
    bytes: &[u8],
    input_nchw: &[f32],
    contract: PixelRange,
) -> Result<CoremlRun, CoremlVerifyError> {
    run_decoded(read_mlmodel(bytes)?, input_nchw, contract)
}

pub fn run_decoded(
    decoded: DecodedCoreml,
    input_nchw: &[f32],
    contract: PixelRange,
) -> Result<CoremlRun, CoremlVerifyError> {
    let graph = &decoded.graph;
    // What the app feeds (pixels, if the model takes an image) and what the model's
    // own pre-processing makes of it.
    let net_input: Vec<f32> = match decoded.input_pixel_map {
        Some(map) => input_nchw
            .iter()
            .map(|x| {
                let pixel = ((x - contract.bias) / contract.scale)
                    .round()
                    .clamp(0.0, 255.0);
                pixel * map.scale + map.bias
            })
            .collect(),
        None => input_nchw.to_vec(),
    };
    let precision = match decoded.weight_precision {
        WeightPrecision::Fp32 => OnnxPrecision::Fp32,
        WeightPrecision::Fp16 | WeightPrecision::Int8 => OnnxPrecision::Fp16,
    };
    let lowered_onnx = onnx::write(graph, precision)?;
    let model = TractModel::onnx(&lowered_onnx, graph.input_shape)?;
    let (out, output_shape) = model.run(&net_input)?;
    let output_nchw = match decoded.output_pixel_map {
        Some(map) => out
            .iter()
            .map(|y| (y * map.scale + map.bias) * contract.scale + contract.bias)
            .collect(),
        None => out,
    };
    let mut checks = decoded.checks.clone();
    if decoded.weight_precision != WeightPrecision::Fp32 {
        // fp16 compute: no activation may leave the fp16 range on this input.
        let values = crate::ir::eval(graph, &net_input)?;
        let (worst, peak) = values
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().fold(0f32, |m, x| m.max(x.abs()))))
            .fold((String::new(), 0f32), |a, b| if b.1 > a.1 { b } else { a });
        checks.push(StructuralCheck {
            name: "fp16 activation range".into(),
            passed: peak.is_finite() && peak < FP16_MAX,
            detail: format!("largest |activation| {peak:.3} at `{worst}` (fp16 max {FP16_MAX})"),
        });
    }
    Ok(CoremlRun {
        output_nchw,
        output_shape,
        decoded,
        lowered_onnx,
        checks,
    })
}
