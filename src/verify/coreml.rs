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

/// How an fp16 (or int8-weight) Core ML model's fp16 compute is evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fp16Eval {
    /// f32 compute, every stored value rounded to fp16 (`verify::fp16`): about the
    /// fp32 model's cost.
    #[default]
    Emulated,
    /// True fp16 ONNX through tract's half-precision kernels (50x+ slower): the
    /// reference the emulation is tested against.
    Exact,
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
    let shape = decoded.graph.input_shape;
    CoremlModel::load(decoded, shape, Fp16Eval::default())?.run(input_nchw, contract)
}

/// A decoded Core ML model, lowered and loaded once, to run on many inputs.
pub struct CoremlModel {
    pub decoded: DecodedCoreml,
    model: TractModel,
    /// The ONNX model tract runs.
    pub lowered_onnx: Vec<u8>,
    eval: Fp16Eval,
    range_check: bool,
    /// The emulated model's peak outputs, in order (`fp16::PEAK_SUFFIX` names).
    peak_names: Vec<String>,
}

impl CoremlModel {
    /// Loads `decoded` to run on inputs of `input_shape` (NCHW; the student is fully
    /// convolutional, so another size than the built one is allowed).
    pub fn load(
        decoded: DecodedCoreml,
        input_shape: [usize; 4],
        eval: Fp16Eval,
    ) -> Result<CoremlModel, CoremlVerifyError> {
        Self::load_with_range_check(decoded, input_shape, eval, true)
    }

    /// `load`; with `range_check` false (a preview), no fp16 activation range is
    /// measured, so no time is spent on it.
    pub fn load_with_range_check(
        mut decoded: DecodedCoreml,
        input_shape: [usize; 4],
        eval: Fp16Eval,
        range_check: bool,
    ) -> Result<CoremlModel, CoremlVerifyError> {
        decoded.graph.input_shape = input_shape;
        let peaks = range_check && decoded.weight_precision != WeightPrecision::Fp32;
        let mut peak_names = Vec::new();
        let graph = &decoded.graph;
        let lowered_onnx = match (decoded.weight_precision, eval) {
            (WeightPrecision::Fp32, _) => onnx::write(graph, OnnxPrecision::Fp32)?,
            (_, Fp16Eval::Emulated) => {
                let (bytes, names) = super::fp16::emulated_onnx(graph, peaks)?;
                peak_names = names;
                bytes
            }
            (_, Fp16Eval::Exact) => onnx::write(graph, OnnxPrecision::Fp16)?,
        };
        let model = TractModel::onnx(&lowered_onnx, input_shape)?;
        Ok(CoremlModel {
            decoded,
            model,
            lowered_onnx,
            eval,
            range_check: peaks,
            peak_names,
        })
    }

    pub fn input_pixel_map(&self) -> Option<PixelRange> {
        self.decoded.input_pixel_map
    }

    pub fn output_pixel_map(&self) -> Option<PixelRange> {
        self.decoded.output_pixel_map
    }

    /// Runs the net on `net_input` (already through the model's pixel map): its
    /// output, shape, and for fp16 compute the largest |activation| and where.
    pub fn run_net(
        &self,
        net_input: &[f32],
    ) -> Result<(Vec<f32>, [usize; 4], Option<(String, f32)>), CoremlVerifyError> {
        let (out, shape, extras) = self.model.run_with_extras(net_input)?;
        if !self.range_check {
            return Ok((out, shape, None));
        }
        let peak = match self.eval {
            Fp16Eval::Emulated => {
                let names = self.peak_names.iter().map(|n| {
                    let value = n.strip_suffix(super::fp16::PEAK_SUFFIX).unwrap_or(n);
                    // The rounded input's peak is the input's.
                    let value = value
                        .strip_suffix(super::fp16::INPUT_SUFFIX)
                        .unwrap_or(value);
                    value.to_string()
                });
                // NaN counts as the worst.
                names.zip(extras).fold(
                    (String::new(), 0f32),
                    |a, b| if !(b.1 <= a.1) { b } else { a },
                )
            }
            Fp16Eval::Exact => {
                let values = crate::ir::eval(&self.decoded.graph, net_input)?;
                values
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().fold(0f32, |m, x| m.max(x.abs()))))
                    .fold((String::new(), 0f32), |a, b| if b.1 > a.1 { b } else { a })
            }
        };
        Ok((out, shape, Some(peak)))
    }

    /// One verification run: `input_nchw` in the net's range, `contract` how the app
    /// maps pixels to it.
    pub fn run(
        &self,
        input_nchw: &[f32],
        contract: PixelRange,
    ) -> Result<CoremlRun, CoremlVerifyError> {
        let decoded = &self.decoded;
        // What the app feeds (pixels, if the model takes an image) and what the
        // model's own pre-processing makes of it.
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
        let (out, output_shape, peak) = self.run_net(&net_input)?;
        let output_nchw = match decoded.output_pixel_map {
            Some(map) => out
                .iter()
                .map(|y| (y * map.scale + map.bias) * contract.scale + contract.bias)
                .collect(),
            None => out,
        };
        let mut checks = decoded.checks.clone();
        if let Some((worst, peak)) = peak {
            // fp16 compute: no activation may leave the fp16 range on this input.
            checks.push(StructuralCheck {
                name: "fp16 activation range".into(),
                passed: peak.is_finite() && peak < FP16_MAX,
                detail: format!(
                    "largest |activation| {peak:.3} at `{worst}` (fp16 max {FP16_MAX})"
                ),
            });
        }
        Ok(CoremlRun {
            output_nchw,
            output_shape,
            decoded: decoded.clone(),
            lowered_onnx: self.lowered_onnx.clone(),
            checks,
        })
    }
}
