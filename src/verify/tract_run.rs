//! Running written artifacts with tract: ONNX (fp32, fp16, QDQ int8) through
//! tract-onnx, TFLite (float32, int8 core) through tract-tflite. Inputs and outputs
//! are always NCHW float32 here; layout changes and int8 I/O quantization happen
//! inside, exactly as the shipped file's edge ops would do them.

use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("tract cannot load the {artifact}: {message}")]
    Load { artifact: String, message: String },
    #[error("tract failed to run the {artifact}: {message}")]
    Run { artifact: String, message: String },
    #[error("{artifact}: input has {got} values, shape {shape:?} needs {expected}")]
    InputLength {
        artifact: String,
        got: usize,
        expected: usize,
        shape: [usize; 4],
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    /// TFLite: NHWC inside, NCHW at this API.
    Nhwc,
}

/// A loaded, optimized, single-threaded tract plan.
pub struct TractModel {
    artifact: String,
    plan: Arc<TypedRunnableModel>,
    layout: Layout,
    input_shape_nchw: [usize; 4],
    input_dt: DatumType,
    /// An int8 TANH / LOGISTIC producing the output, run here as LiteRT runs it.
    tail: Option<Tail>,
}

/// tract requantizes an int8 TANH / LOGISTIC onto its *input's* grid, LiteRT (and
/// NNAPI) onto the output tensor's fixed grid (1/128 or 1/256) through a 256-entry
/// table. So that the verified numbers are LiteRT's, the model handed to tract stops
/// before that last op and this table does it: dequantize, apply, round onto the
/// output tensor's grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Tail {
    sigmoid: bool,
    out_scale: f32,
    out_zero_point: i32,
}

impl Tail {
    pub(crate) fn apply(&self, x: f32) -> f32 {
        let y = if self.sigmoid {
            1.0 / (1.0 + (-x).exp())
        } else {
            x.tanh()
        };
        let q = ((y / self.out_scale).round() as i32 + self.out_zero_point).clamp(-128, 127);
        (q - self.out_zero_point) as f32 * self.out_scale
    }
}

/// The int8 TANH / LOGISTIC that produces the subgraph output, if any: (its output
/// tensor's name, the tail).
pub(crate) fn int8_tail(bytes: &[u8]) -> Option<(String, Tail)> {
    use crate::tflite::{parse, BuiltinOperator, TensorType};
    let desc = parse(bytes).ok()?;
    let out = *desc.outputs.first()?;
    let op = desc.ops.iter().find(|o| o.outputs.contains(&out))?;
    let sigmoid = match op.code {
        BuiltinOperator::TANH => false,
        BuiltinOperator::LOGISTIC => true,
        _ => return None,
    };
    let t = &desc.tensors[out as usize];
    let q = t.quant.as_ref()?;
    if t.dtype != TensorType::INT8 || q.scale.len() != 1 {
        return None;
    }
    Some((
        t.name.clone(),
        Tail {
            sigmoid,
            out_scale: q.scale[0],
            out_zero_point: q.zero_point[0] as i32,
        },
    ))
}

fn load_err(artifact: &str) -> impl Fn(TractError) -> RunError + '_ {
    move |e| RunError::Load {
        artifact: artifact.to_string(),
        message: format!("{e:#}"),
    }
}

impl TractModel {
    pub fn onnx(bytes: &[u8], input_shape_nchw: [usize; 4]) -> Result<Self, RunError> {
        let artifact = "ONNX model";
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .and_then(|m| {
                m.with_input_fact(
                    0,
                    InferenceFact::dt_shape(f32::datum_type(), input_shape_nchw),
                )
            })
            // The output's declared shape follows from the input: a fully convolutional
            // student may be run at another size than the one it was written for.
            .and_then(|m| m.with_output_fact(0, InferenceFact::default()))
            .and_then(|m| m.into_optimized())
            .map_err(load_err(artifact))?;
        Self::from_typed(artifact, model, Layout::Nchw, input_shape_nchw)
    }

    /// A TFLite model with a float32 or int8 input (the int8 core of a shipped file).
    pub fn tflite(bytes: &[u8], input_shape_nchw: [usize; 4]) -> Result<Self, RunError> {
        let artifact = "TFLite model";
        let mut model = tract_tflite::tflite()
            .model_for_read(&mut &bytes[..])
            .map_err(load_err(artifact))?;
        let mut tail = None;
        if let Some((name, t)) = int8_tail(bytes) {
            // Cut before the activation tract would requantize differently.
            if let Some(node) = model.nodes().iter().find(|n| n.name == name) {
                let pre = node.inputs[0];
                model
                    .select_output_outlets(&[pre])
                    .map_err(load_err(artifact))?;
                tail = Some(t);
            }
        }
        let model = model.into_optimized().map_err(load_err(artifact))?;
        let mut m = Self::from_typed(artifact, model, Layout::Nhwc, input_shape_nchw)?;
        m.tail = tail;
        Ok(m)
    }

    fn from_typed(
        artifact: &str,
        model: TypedModel,
        layout: Layout,
        input_shape_nchw: [usize; 4],
    ) -> Result<Self, RunError> {
        let input_dt = model.input_fact(0).map_err(load_err(artifact))?.datum_type;
        let options = RunOptions {
            executor: Some(tract_linalg::multithread::Executor::SingleThread),
            ..Default::default()
        };
        let plan = model
            .into_runnable_with_options(&options)
            .map_err(load_err(artifact))?;
        Ok(TractModel {
            artifact: artifact.to_string(),
            plan,
            layout,
            input_shape_nchw,
            input_dt,
            tail: None,
        })
    }

    pub fn input_datum_type(&self) -> DatumType {
        self.input_dt
    }

    fn make_input(&self, input_nchw: &[f32]) -> Result<Tensor, RunError> {
        let [n, c, h, w] = self.input_shape_nchw;
        let expected = n * c * h * w;
        if input_nchw.len() != expected {
            return Err(RunError::InputLength {
                artifact: self.artifact.clone(),
                got: input_nchw.len(),
                expected,
                shape: self.input_shape_nchw,
            });
        }
        let (data, shape) = match self.layout {
            Layout::Nchw => (input_nchw.to_vec(), vec![n, c, h, w]),
            Layout::Nhwc => (
                nchw_to_nhwc(input_nchw, self.input_shape_nchw),
                vec![n, h, w, c],
            ),
        };
        let run_err = |e: TractError| RunError::Run {
            artifact: self.artifact.clone(),
            message: format!("{e:#}"),
        };
        let tensor = Tensor::from_shape(&shape, &data).map_err(run_err)?;
        if self.input_dt.is_quantized() {
            // The QUANTIZE op of the shipped file, done here: round to nearest, clamp.
            let (zp, scale) = self.input_dt.zp_scale();
            let (lo, hi) = match self.input_dt.unquantized() {
                DatumType::U8 => (0f32, 255f32),
                _ => (-128f32, 127f32),
            };
            let q = quantize_input(&data, zp, scale, lo, hi);
            let mut t = match self.input_dt.unquantized() {
                DatumType::U8 => {
                    Tensor::from_shape(&shape, &q.iter().map(|v| *v as u8).collect::<Vec<_>>())
                }
                _ => Tensor::from_shape(&shape, &q.iter().map(|v| *v as i8).collect::<Vec<_>>()),
            }
            .map_err(run_err)?;
            unsafe { t.set_datum_type(self.input_dt) };
            return Ok(t);
        }
        if self.input_dt != DatumType::F32 {
            return tensor
                .cast_to_dt(self.input_dt)
                .map(|t| t.into_owned())
                .map_err(run_err);
        }
        Ok(tensor)
    }

    /// Runs one NCHW float input; returns the NCHW float output (dequantized, for an
    /// int8 core: the DEQUANTIZE op of the shipped file, done here).
    pub fn run(&self, input_nchw: &[f32]) -> Result<(Vec<f32>, [usize; 4]), RunError> {
        self.run_with_extras(input_nchw)
            .map(|(y, shape, _)| (y, shape))
    }

    /// Like `run`, and also the model's further outputs, each read as one f32 scalar
    /// (the fast fp16 path's per-value peaks).
    pub fn run_with_extras(
        &self,
        input_nchw: &[f32],
    ) -> Result<(Vec<f32>, [usize; 4], Vec<f32>), RunError> {
        let input = self.make_input(input_nchw)?;
        let run_err = |e: TractError| RunError::Run {
            artifact: self.artifact.clone(),
            message: format!("{e:#}"),
        };
        let outputs = self.plan.run(tvec!(input.into_tvalue())).map_err(run_err)?;
        let extras = outputs[1..]
            .iter()
            .map(|t| t.cast_to_scalar::<f32>())
            .collect::<TractResult<Vec<f32>>>()
            .map_err(run_err)?;
        let out = outputs[0].clone().into_tensor();
        let dt = out.datum_type();
        let shape = out.shape().to_vec();
        let values: Vec<f32> = if dt.is_quantized() {
            let (zp, scale) = dt.zp_scale();
            let raw = out
                .cast_to_dt(dt.unquantized())
                .and_then(|t| t.cast_to::<i32>().map(|t| t.into_owned()))
                .map_err(run_err)?;
            let raw = raw
                .try_as_plain_ram()
                .and_then(|r| r.as_slice::<i32>().map(|s| s.to_vec()))
                .map_err(run_err)?;
            let deq = raw.iter().map(|q| (q - zp) as f32 * scale);
            match &self.tail {
                Some(tail) => deq.map(|x| tail.apply(x)).collect(),
                None => deq.collect(),
            }
        } else {
            let f = out.cast_to::<f32>().map_err(run_err)?.into_owned();
            f.try_as_plain_ram()
                .and_then(|r| r.as_slice::<f32>().map(|s| s.to_vec()))
                .map_err(run_err)?
        };
        if shape.len() != 4 {
            return Err(RunError::Run {
                artifact: self.artifact.clone(),
                message: format!("output has rank {}, expected 4", shape.len()),
            });
        }
        Ok(match self.layout {
            Layout::Nchw => (values, [shape[0], shape[1], shape[2], shape[3]], extras),
            Layout::Nhwc => {
                let nhwc = [shape[0], shape[1], shape[2], shape[3]];
                (
                    nhwc_to_nchw(&values, nhwc),
                    [shape[0], shape[3], shape[1], shape[2]],
                    extras,
                )
            }
        })
    }

    /// Median and minimum wall time of `runs` single-threaded forward passes (after
    /// one warm-up), in milliseconds.
    pub fn latency(&self, input_nchw: &[f32], runs: usize) -> Result<Latency, RunError> {
        let input = self.make_input(input_nchw)?.into_tvalue();
        let run_err = |e: TractError| RunError::Run {
            artifact: self.artifact.clone(),
            message: format!("{e:#}"),
        };
        Latency::measure(runs, || {
            self.plan.run(tvec!(input.clone())).map_err(run_err)?;
            Ok(())
        })
    }
}

/// The shipped file's QUANTIZE of the float input: round to nearest, clamp.
pub(crate) fn quantize_input(data: &[f32], zp: i32, scale: f32, lo: f32, hi: f32) -> Vec<f32> {
    data.iter()
        .map(|v| ((v / scale).round() + zp as f32).clamp(lo, hi))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
}

impl Latency {
    /// Median and minimum wall time of `runs` (at least one) calls of `pass`, after one
    /// warm-up call, in milliseconds.
    pub fn measure<E>(runs: usize, mut pass: impl FnMut() -> Result<(), E>) -> Result<Latency, E> {
        pass()?;
        let mut times = Vec::with_capacity(runs.max(1));
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            pass()?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(Latency {
            median_ms: times[times.len() / 2],
            min_ms: times[0],
            runs: times.len(),
        })
    }
}

pub fn nchw_to_nhwc(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((b * h + y) * w + xx) * c + ch] = x[((b * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    out
}

pub fn nhwc_to_nchw(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((b * c + ch) * h + y) * w + xx] = x[((b * h + y) * w + xx) * c + ch];
                }
            }
        }
    }
    out
}
