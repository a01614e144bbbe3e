//! Fast int8: the int8 TFLite core evaluated with tract's own integer rounding, its
//! convolutions as f32 matrix products (exact: see below).
//!
//! tract runs an int8 TFLite model through quantized kernels plus a chain of unfused
//! i32 element-wise ops per conv (compensation, scale, zero point, clamp): about 7x
//! the fp32 model's time. Here the same graph (the ops the TFLite writer emits) is
//! interpreted directly on int8 tensors, NHWC, doing at each op exactly what tract does:
//!
//! - CONV_2D: `acc = bias + Σ w·(x − zx)` in integers (padding reads `zx`, i.e. adds
//!   nothing), then tract's requantization: per-channel scale `(ws·xs)/ys` in f32 and
//!   `round_half_even(|acc|·scale)·sign(acc)` in f32 (its `Scale` op), or for one scale
//!   shared by all channels its fixed-point `Scaler` (i64 multiply, shift, half-even);
//!   then `+ zy`, clamp to [-128, 127], and a fused ReLU is `max(q, zy)`.
//!   The sum is an f32 matrix product over im2col patches. f32 adds integers exactly
//!   while every partial sum stays within 2^24, which is checked per layer at load: the
//!   reduction is split into slices whose bound `Σ|w|·max|x − zx|` is ≤ 2^24 (one slice
//!   for every layer of a real student), each slice is converted to i32, and slices and
//!   bias add in i32. DEPTHWISE_CONV_2D sums in i32 directly.
//! - ADD, RELU: dequantize to f32, op, `round_half_even(v / s + z)`, clamp (tract's
//!   generic quantized binary op; inputs and output share one grid, as the writer plans).
//! - CONCATENATION, PAD (with the zero point), RESIZE_NEAREST_NEIGHBOR, RESHAPE,
//!   TRANSPOSE: moves of int8 values.
//! - A TANH / LOGISTIC producing the output: the tail `verify::tract_run` applies
//!   (LiteRT's table), after dequantizing its input.
//!
//! Anything else (another op, a grid the writer would not write) is `Unsupported`, and
//! `Int8Runner::load` falls back to tract. `Int8Eval::Exact` always runs tract: the
//! reference `tests` compare the two bit for bit.

use tract_onnx::prelude::tract_ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2};

use crate::tflite::{
    parse, ActivationFunctionType, BuiltinOperator, Model, Options, Padding, TensorType,
};

use super::tract_run::{
    int8_tail, nchw_to_nhwc, nhwc_to_nchw, quantize_input, Latency, RunError, Tail, TractModel,
};

/// How an int8 TFLite core is evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int8Eval {
    /// This module's interpreter (tract when the file has something it does not run).
    #[default]
    Fast,
    /// tract's quantized kernels: the reference.
    Exact,
}

/// The largest integer every f32 partial sum may reach and still be exact.
pub const F32_EXACT: f64 = (1u64 << 24) as f64;

#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    #[error("{0}")]
    Op(String),
}

/// An int8 core, run fast when it can be, else by tract.
pub enum Int8Runner {
    Fast(FastInt8),
    Tract(TractModel),
}

impl Int8Runner {
    pub fn load(
        bytes: &[u8],
        input_shape_nchw: [usize; 4],
        eval: Int8Eval,
    ) -> Result<Self, RunError> {
        if eval == Int8Eval::Fast {
            if let Ok(m) = FastInt8::load(bytes, input_shape_nchw, F32_EXACT) {
                return Ok(Int8Runner::Fast(m));
            }
        }
        Ok(Int8Runner::Tract(TractModel::tflite(
            bytes,
            input_shape_nchw,
        )?))
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Int8Runner::Fast(_))
    }

    pub fn run(&self, input_nchw: &[f32]) -> Result<(Vec<f32>, [usize; 4]), RunError> {
        match self {
            Int8Runner::Fast(m) => m.run(input_nchw),
            Int8Runner::Tract(m) => m.run(input_nchw),
        }
    }

    pub fn latency(&self, input_nchw: &[f32], runs: usize) -> Result<Latency, RunError> {
        match self {
            Int8Runner::Fast(m) => m.latency(input_nchw, runs),
            Int8Runner::Tract(m) => m.latency(input_nchw, runs),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Q {
    zp: i32,
    scale: f32,
}

/// tract-linalg's fixed-point scaler (`Scaler::new(scale, RoundingPolicy::Even)` and its
/// `Mul<i32>`), which tract uses when one scale covers all output channels.
#[derive(Clone, Copy, Debug)]
struct Scaler {
    mult: Option<i32>,
    shift: isize,
}

impl Scaler {
    fn new(scale: f32) -> Scaler {
        if scale == 0.0 {
            return Scaler {
                mult: None,
                shift: 0,
            };
        }
        let bits = scale.to_bits();
        let exponent = ((bits >> 23) & 0xff) as isize;
        let frac = bits & 0x007f_ffff;
        if frac == 0 {
            Scaler {
                mult: None,
                shift: 127 - exponent,
            }
        } else {
            let half_frac = ((frac | 0x80_0000) << 7) as i32;
            Scaler {
                mult: Some(half_frac),
                shift: 127 - exponent - 1,
            }
        }
    }

    fn apply(&self, x: i32) -> i32 {
        let (val, shift) = match self.mult {
            Some(m) => (m as i64 * x as i64, self.shift + 31),
            None => (x as i64, self.shift),
        };
        if shift > 0 {
            let half: i64 = 1 << (shift - 1);
            let nudge: i64 = ((val.abs() >> shift) & 1) - 1;
            (val.signum() * ((val.abs() + half + nudge) >> shift)) as i32
        } else {
            (val << -shift) as i32
        }
    }
}

enum Requant {
    /// tract's `Scale` op: f32, per output channel.
    PerChannel(Vec<f32>),
    Uniform(Scaler),
}

impl Requant {
    #[inline]
    fn scale(&self, acc: i32, channel: usize) -> i32 {
        match self {
            Requant::PerChannel(s) => {
                let b = acc as f32;
                (rte(b.abs() * s[channel]) * b.signum()) as i32
            }
            Requant::Uniform(s) => s.apply(acc),
        }
    }
}

struct Conv {
    x: usize,
    y: usize,
    /// Input height, width, channels; output height, width, channels.
    ih: usize,
    iw: usize,
    ic: usize,
    oh: usize,
    ow: usize,
    oc: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    /// Top and left padding (what falls outside reads the zero point).
    pad: [usize; 2],
    depthwise: bool,
    /// Dense: [oc, kh*kw*ic] as f32. Depthwise: [kh*kw, oc] as i32 (in `wi`).
    wf: Vec<f32>,
    wi: Vec<i32>,
    bias: Vec<i32>,
    /// Dense: the reduction's slices, each exact in f32.
    slices: Vec<(usize, usize)>,
    zx: i32,
    zy: i32,
    requant: Requant,
    relu: bool,
}

enum Step {
    Conv(Box<Conv>),
    /// Dequantize, add, requantize; all on the grid `q`.
    Add {
        a: usize,
        b: usize,
        y: usize,
        q: Q,
    },
    Relu {
        x: usize,
        y: usize,
        q: Q,
    },
    Concat {
        xs: Vec<usize>,
        y: usize,
    },
    Pad {
        x: usize,
        y: usize,
        pads: [[usize; 2]; 4],
        zp: i8,
    },
    Resize {
        x: usize,
        y: usize,
    },
    Reshape {
        x: usize,
        y: usize,
    },
    Transpose {
        x: usize,
        y: usize,
        perm: [usize; 4],
    },
}

/// An int8 TFLite core, loaded for the fast path.
pub struct FastInt8 {
    shapes: Vec<Vec<usize>>,
    steps: Vec<Step>,
    /// After each step, the tensors no later step (nor the output) reads.
    free_after: Vec<Vec<usize>>,
    input: usize,
    input_q: Q,
    output: usize,
    output_q: Q,
    tail: Option<Tail>,
    input_shape_nchw: [usize; 4],
}

fn unsupported(m: impl Into<String>) -> Unsupported {
    Unsupported::Op(m.into())
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl FastInt8 {
    /// Reads an int8 core (int8 input and output). `exact_limit` is the bound each f32
    /// reduction slice must stay within (`F32_EXACT`; tests lower it to force slices).
    pub fn load(
        bytes: &[u8],
        input_shape_nchw: [usize; 4],
        exact_limit: f64,
    ) -> Result<FastInt8, Unsupported> {
        let desc = parse(bytes).map_err(|e| unsupported(e.to_string()))?;
        let act_q = |t: usize| -> Result<Q, Unsupported> {
            let d = &desc.tensors[t];
            match (&d.quant, d.dtype) {
                (Some(q), TensorType::INT8) if q.scale.len() == 1 => Ok(Q {
                    zp: q.zero_point.first().copied().unwrap_or(0) as i32,
                    scale: q.scale[0],
                }),
                _ => Err(unsupported(format!(
                    "tensor {} is not per-tensor int8",
                    d.name
                ))),
            }
        };
        let shapes: Vec<Vec<usize>> = desc
            .tensors
            .iter()
            .map(|t| t.shape.iter().map(|d| *d as usize).collect())
            .collect();
        let [n, c, h, w] = input_shape_nchw;
        let input = *desc.inputs.first().ok_or_else(|| unsupported("no input"))? as usize;
        if n != 1 || shapes[input] != [1, h, w, c] {
            return Err(unsupported(format!(
                "the file's input is {:?}, asked for NCHW {input_shape_nchw:?}",
                shapes[input]
            )));
        }
        let input_q = act_q(input)?;
        // Stop before an output TANH / LOGISTIC: tract_run's tail does it.
        let tail = int8_tail(bytes);
        let mut output = *desc
            .outputs
            .first()
            .ok_or_else(|| unsupported("no output"))? as usize;
        let mut ops: Vec<_> = desc.ops.iter().collect();
        if let Some((_, _)) = &tail {
            let last = ops
                .iter()
                .position(|o| o.outputs.contains(&(output as i32)))
                .ok_or_else(|| unsupported("no op makes the output"))?;
            output = ops[last].inputs[0] as usize;
            ops.remove(last);
        }
        let output_q = act_q(output)?;
        let mut steps = Vec::new();
        for op in &ops {
            let ins: Vec<usize> = op.inputs.iter().map(|i| *i as usize).collect();
            let y = *op
                .outputs
                .first()
                .ok_or_else(|| unsupported("op without output"))? as usize;
            let same_grid = |ts: &[usize]| -> Result<Q, Unsupported> {
                let q = act_q(ts[0])?;
                for t in ts {
                    if act_q(*t)? != q {
                        return Err(unsupported(format!("{:?} mixes grids", op.code)));
                    }
                }
                Ok(q)
            };
            let step = match op.code {
                BuiltinOperator::CONV_2D | BuiltinOperator::DEPTHWISE_CONV_2D => {
                    Step::Conv(Box::new(conv(&desc, op, &shapes, exact_limit)?))
                }
                BuiltinOperator::ADD => Step::Add {
                    a: ins[0],
                    b: ins[1],
                    y,
                    q: same_grid(&[ins[0], ins[1], y])?,
                },
                BuiltinOperator::RELU => Step::Relu {
                    x: ins[0],
                    y,
                    q: same_grid(&[ins[0], y])?,
                },
                BuiltinOperator::CONCATENATION => {
                    let axis = match op.options {
                        Options::Concat { axis, .. } => axis,
                        _ => -1,
                    };
                    if axis != 3 && axis != -1 {
                        return Err(unsupported("CONCATENATION off the channel axis"));
                    }
                    let mut all = ins.clone();
                    all.push(y);
                    same_grid(&all)?;
                    Step::Concat { xs: ins, y }
                }
                BuiltinOperator::PAD => {
                    let q = same_grid(&[ins[0], y])?;
                    let p = i32s(&desc.buffers[desc.tensors[ins[1]].buffer as usize]);
                    if p.len() != 8 || p.iter().any(|v| *v < 0) {
                        return Err(unsupported("PAD paddings"));
                    }
                    let u = |k: usize| p[k] as usize;
                    Step::Pad {
                        x: ins[0],
                        y,
                        pads: [[u(0), u(1)], [u(2), u(3)], [u(4), u(5)], [u(6), u(7)]],
                        zp: q.zp as i8,
                    }
                }
                BuiltinOperator::RESIZE_NEAREST_NEIGHBOR => {
                    same_grid(&[ins[0], y])?;
                    let (a, b) = (&shapes[ins[0]], &shapes[y]);
                    if b[1] % a[1] != 0 || b[2] % a[2] != 0 || a[3] != b[3] {
                        return Err(unsupported("RESIZE by a non-integer factor"));
                    }
                    Step::Resize { x: ins[0], y }
                }
                BuiltinOperator::RESHAPE => {
                    same_grid(&[ins[0], y])?;
                    let (a, b) = (&shapes[ins[0]], &shapes[y]);
                    if a.iter().product::<usize>() != b.iter().product::<usize>() {
                        return Err(unsupported("RESHAPE changes the element count"));
                    }
                    Step::Reshape { x: ins[0], y }
                }
                BuiltinOperator::TRANSPOSE => {
                    same_grid(&[ins[0], y])?;
                    let p = i32s(&desc.buffers[desc.tensors[ins[1]].buffer as usize]);
                    if p.len() != 4 || shapes[ins[0]].len() != 4 {
                        return Err(unsupported("TRANSPOSE of rank other than 4"));
                    }
                    let perm = [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize];
                    Step::Transpose { x: ins[0], y, perm }
                }
                other => return Err(unsupported(format!("{other:?} is not run here"))),
            };
            steps.push(step);
        }
        // Last reader of each tensor: free it after that step.
        let reads = |s: &Step| -> Vec<usize> {
            match s {
                Step::Conv(c) => vec![c.x],
                Step::Add { a, b, .. } => vec![*a, *b],
                Step::Concat { xs, .. } => xs.clone(),
                Step::Relu { x, .. }
                | Step::Pad { x, .. }
                | Step::Resize { x, .. }
                | Step::Reshape { x, .. }
                | Step::Transpose { x, .. } => vec![*x],
            }
        };
        let mut last_read = vec![None; shapes.len()];
        for (k, s) in steps.iter().enumerate() {
            for t in reads(s) {
                last_read[t] = Some(k);
            }
        }
        let mut free_after = vec![Vec::new(); steps.len()];
        for (t, k) in last_read.iter().enumerate() {
            if let (Some(k), true) = (k, t != output) {
                free_after[*k].push(t);
            }
        }
        Ok(FastInt8 {
            shapes,
            steps,
            free_after,
            input,
            input_q,
            output,
            output_q,
            tail: tail.map(|(_, t)| t),
            input_shape_nchw,
        })
    }

    /// The raw int8 output (NHWC, before the tail) for an int8 NHWC input.
    pub fn run_raw(&self, input: Vec<i8>) -> Vec<i8> {
        let mut vals: Vec<Option<Vec<i8>>> = vec![None; self.shapes.len()];
        vals[self.input] = Some(input);
        for (k, step) in self.steps.iter().enumerate() {
            let get = |t: usize| vals[t].as_deref().expect("ops are in order");
            let (y, out) = match step {
                Step::Conv(c) => (c.y, c.run(get(c.x))),
                Step::Add { a, b, y, q } => {
                    let (s, z) = (q.scale, q.zp as f32);
                    let out = get(*a)
                        .iter()
                        .zip(get(*b))
                        .map(|(a, b)| {
                            let v = (*a as f32 - z) * s + (*b as f32 - z) * s;
                            requant_f32(v / s + z)
                        })
                        .collect();
                    (*y, out)
                }
                Step::Relu { x, y, q } => {
                    let (s, z) = (q.scale, q.zp as f32);
                    let out = get(*x)
                        .iter()
                        .map(|a| requant_f32(((*a as f32 - z) * s).max(0.0) / s + z))
                        .collect();
                    (*y, out)
                }
                Step::Concat { xs, y } => {
                    let shape = &self.shapes[*y];
                    let pixels = shape[..3].iter().product::<usize>();
                    let mut out = Vec::with_capacity(pixels * shape[3]);
                    for p in 0..pixels {
                        for x in xs {
                            let c = self.shapes[*x][3];
                            out.extend_from_slice(&get(*x)[p * c..(p + 1) * c]);
                        }
                    }
                    (*y, out)
                }
                Step::Pad { x, y, pads, zp } => {
                    let (a, b) = (&self.shapes[*x], &self.shapes[*y]);
                    let mut out = vec![*zp; b.iter().product()];
                    let src = get(*x);
                    let row = a[3];
                    for n in 0..a[0] {
                        for h in 0..a[1] {
                            for w in 0..a[2] {
                                let at = |n: usize, h: usize, w: usize, s: &[usize]| {
                                    ((n * s[1] + h) * s[2] + w) * s[3]
                                };
                                let o = at(n + pads[0][0], h + pads[1][0], w + pads[2][0], b)
                                    + pads[3][0];
                                let i = at(n, h, w, a);
                                out[o..o + row].copy_from_slice(&src[i..i + row]);
                            }
                        }
                    }
                    (*y, out)
                }
                Step::Resize { x, y } => {
                    let (a, b) = (&self.shapes[*x], &self.shapes[*y]);
                    let (fh, fw, c) = (b[1] / a[1], b[2] / a[2], a[3]);
                    let src = get(*x);
                    let mut out = Vec::with_capacity(b.iter().product());
                    for oy in 0..b[1] {
                        for ox in 0..b[2] {
                            let i = ((oy / fh) * a[2] + ox / fw) * c;
                            out.extend_from_slice(&src[i..i + c]);
                        }
                    }
                    (*y, out)
                }
                Step::Reshape { x, y } => (*y, get(*x).to_vec()),
                Step::Transpose { x, y, perm } => {
                    let a = &self.shapes[*x];
                    let b = &self.shapes[*y];
                    let strides = [a[1] * a[2] * a[3], a[2] * a[3], a[3], 1];
                    let src = get(*x);
                    let mut out = Vec::with_capacity(src.len());
                    for i0 in 0..b[0] {
                        for i1 in 0..b[1] {
                            for i2 in 0..b[2] {
                                let base = i0 * strides[perm[0]]
                                    + i1 * strides[perm[1]]
                                    + i2 * strides[perm[2]];
                                for i3 in 0..b[3] {
                                    out.push(src[base + i3 * strides[perm[3]]]);
                                }
                            }
                        }
                    }
                    (*y, out)
                }
            };
            vals[y] = Some(out);
            for t in &self.free_after[k] {
                vals[*t] = None;
            }
        }
        vals[self.output].take().expect("the output is computed")
    }

    fn quantized_input(&self, input_nchw: &[f32]) -> Result<Vec<i8>, RunError> {
        let [n, c, h, w] = self.input_shape_nchw;
        let expected = n * c * h * w;
        if input_nchw.len() != expected {
            return Err(RunError::InputLength {
                artifact: "TFLite model".into(),
                got: input_nchw.len(),
                expected,
                shape: self.input_shape_nchw,
            });
        }
        let nhwc = nchw_to_nhwc(input_nchw, self.input_shape_nchw);
        Ok(
            quantize_input(&nhwc, self.input_q.zp, self.input_q.scale, -128.0, 127.0)
                .into_iter()
                .map(|v| v as i8)
                .collect(),
        )
    }

    /// Runs one NCHW float input, fed and read as `TractModel::run` does.
    pub fn run(&self, input_nchw: &[f32]) -> Result<(Vec<f32>, [usize; 4]), RunError> {
        let raw = self.run_raw(self.quantized_input(input_nchw)?);
        let Q { zp, scale } = self.output_q;
        let deq = raw.iter().map(|q| (*q as i32 - zp) as f32 * scale);
        let values: Vec<f32> = match &self.tail {
            Some(t) => deq.map(|x| t.apply(x)).collect(),
            None => deq.collect(),
        };
        let s = &self.shapes[self.output];
        if s.len() != 4 {
            return Err(RunError::Run {
                artifact: "TFLite model".into(),
                message: format!("output has rank {}, expected 4", s.len()),
            });
        }
        let nhwc = [s[0], s[1], s[2], s[3]];
        Ok((nhwc_to_nchw(&values, nhwc), [s[0], s[3], s[1], s[2]]))
    }

    /// Median and minimum of `runs` forward passes after one warm-up, in ms.
    pub fn latency(&self, input_nchw: &[f32], runs: usize) -> Result<Latency, RunError> {
        let q = self.quantized_input(input_nchw)?;
        Latency::measure(runs, || {
            std::hint::black_box(self.run_raw(q.clone()));
            Ok(())
        })
    }

    /// How many dense convs needed more than one f32 slice (for tests).
    pub fn sliced_convs(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Conv(c) if c.slices.len() > 1))
            .count()
    }
}

/// tract's f32 → int8 quantization: round half to even, saturate.
#[inline]
fn requant_f32(v: f32) -> i8 {
    rte(v).clamp(-128.0, 127.0) as i8
}

/// Round half to even, as tract-data's `round_ties_to_even` (adding and taking away
/// 2^23 leaves the nearest integer, ties to even; inlined where `f32::round_ties_even`
/// is a libm call on baseline x86-64).
#[inline]
fn rte(x: f32) -> f32 {
    const TOINT: f32 = 1.0 / f32::EPSILON;
    let u = x.to_bits();
    if (u >> 23) & 0xff >= 0x7f + 23 {
        return x;
    }
    let negative = u >> 31 == 1;
    let y = if negative {
        x - TOINT + TOINT
    } else {
        x + TOINT - TOINT
    };
    match (y == 0.0, negative) {
        (true, true) => -0.0,
        (true, false) => 0.0,
        _ => y,
    }
}

fn conv(
    desc: &Model,
    op: &crate::tflite::Op,
    shapes: &[Vec<usize>],
    exact_limit: f64,
) -> Result<Conv, Unsupported> {
    let (x, wt, bt) = (
        op.inputs[0] as usize,
        op.inputs[1] as usize,
        op.inputs[2] as usize,
    );
    let y = op.outputs[0] as usize;
    let (padding, stride, relu, depthwise) = match op.options {
        Options::Conv2D {
            padding,
            stride_h,
            stride_w,
            act,
            ..
        } => (
            padding,
            [stride_h as usize, stride_w as usize],
            act == ActivationFunctionType::RELU,
            false,
        ),
        Options::Depthwise {
            padding,
            stride_h,
            stride_w,
            depth_multiplier,
            act,
            ..
        } => {
            if depth_multiplier != 1 {
                return Err(unsupported("depth multiplier other than 1"));
            }
            (
                padding,
                [stride_h as usize, stride_w as usize],
                act == ActivationFunctionType::RELU,
                true,
            )
        }
        _ => return Err(unsupported("conv options")),
    };
    let q_of = |t: usize| desc.tensors[t].quant.clone();
    let (xq, yq, wq) = match (q_of(x), q_of(y), q_of(wt)) {
        (Some(a), Some(b), Some(c)) if a.scale.len() == 1 && b.scale.len() == 1 => (a, b, c),
        _ => return Err(unsupported("conv without int8 quantization")),
    };
    if desc.tensors[wt].dtype != TensorType::INT8
        || desc.tensors[bt].dtype != TensorType::INT32
        || wq.zero_point.iter().any(|z| *z != 0)
        || desc.tensors[x].dtype != TensorType::INT8
        || desc.tensors[y].dtype != TensorType::INT8
    {
        return Err(unsupported(
            "conv types other than int8 x, int8 w (symmetric), int32 b",
        ));
    }
    let (xs, ys) = (&shapes[x], &shapes[y]);
    let ws = &shapes[wt];
    let (ih, iw, ic) = (xs[1], xs[2], xs[3]);
    let (oh, ow, oc) = (ys[1], ys[2], ys[3]);
    let (kh, kw) = (ws[1], ws[2]);
    if (depthwise && (ws[0] != 1 || ws[3] != oc || ic != oc))
        || (!depthwise && (ws[0] != oc || ws[3] != ic))
    {
        return Err(unsupported("conv weight shape"));
    }
    // tract's SAME is "same upper": the odd pad at the end.
    let axis = |i: usize, k: usize, s: usize, o: usize| -> Result<usize, Unsupported> {
        let (out, before) = match padding {
            Padding::VALID => ((i.saturating_sub(k)) / s + 1, 0),
            _ => {
                let out = i.div_ceil(s);
                let total = ((out - 1) * s + k).saturating_sub(i);
                (out, total / 2)
            }
        };
        if out != o || i < k && padding == Padding::VALID {
            return Err(unsupported("conv output shape"));
        }
        Ok(before)
    };
    let pad = [axis(ih, kh, stride[0], oh)?, axis(iw, kw, stride[1], ow)?];
    let raw: Vec<i8> = desc.buffers[desc.tensors[wt].buffer as usize]
        .iter()
        .map(|b| *b as i8)
        .collect();
    let bias = i32s(&desc.buffers[desc.tensors[bt].buffer as usize]);
    if raw.len() != oc * kh * kw * if depthwise { 1 } else { ic } || bias.len() != oc {
        return Err(unsupported("conv weight or bias size"));
    }
    let (zx, xscale) = (xq.zero_point[0] as i32, xq.scale[0]);
    let (zy, yscale) = (yq.zero_point[0] as i32, yq.scale[0]);
    // tract: abc = (kscale * xscale) / yscale, in f32; one scale (a scalar, or all equal)
    // takes its fixed-point scaler.
    let abc: Vec<f32> = if wq.scale.len() == 1 {
        vec![wq.scale[0] * xscale / yscale]
    } else if wq.scale.len() == oc {
        wq.scale.iter().map(|k| k * xscale / yscale).collect()
    } else {
        return Err(unsupported("weight scales per channel"));
    };
    let requant = if abc.iter().all(|s| *s == abc[0]) {
        if abc[0] == 1.0 {
            return Err(unsupported("a unit requantization scale"));
        }
        Requant::Uniform(Scaler::new(abc[0]))
    } else {
        Requant::PerChannel(abc)
    };
    let k = kh * kw * ic;
    let (wf, wi, slices) = if depthwise {
        (
            Vec::new(),
            raw.iter().map(|v| *v as i32).collect(),
            Vec::new(),
        )
    } else {
        // Slices of the reduction over which every channel's Σ|w|·max|x − zx| ≤ limit.
        let xmax = (127 - zx).max(zx + 128) as f64;
        let mut slices = Vec::new();
        let mut start = 0;
        let mut sums = vec![0f64; oc];
        for kk in 0..k {
            let over =
                (0..oc).any(|o| (sums[o] + (raw[o * k + kk] as f64).abs()) * xmax > exact_limit);
            if over && kk > start {
                slices.push((start, kk));
                start = kk;
                sums.iter_mut().for_each(|s| *s = 0.0);
            }
            for (o, s) in sums.iter_mut().enumerate() {
                *s += (raw[o * k + kk] as f64).abs();
            }
        }
        slices.push((start, k));
        (raw.iter().map(|v| *v as f32).collect(), Vec::new(), slices)
    };
    Ok(Conv {
        x,
        y,
        ih,
        iw,
        ic,
        oh,
        ow,
        oc,
        kh,
        kw,
        stride,
        pad,
        depthwise,
        wf,
        wi,
        bias,
        slices,
        zx,
        zy,
        requant,
        relu,
    })
}

/// Output rows per im2col tile: about 4 M f32 of patches.
fn tile_rows(ow: usize, k: usize) -> usize {
    ((1 << 22) / (ow * k).max(1)).max(1)
}

impl Conv {
    #[inline]
    fn finish(&self, acc: i32, o: usize) -> i8 {
        let q = (self.requant.scale(acc, o) + self.zy).clamp(-128, 127);
        (if self.relu { q.max(self.zy) } else { q }) as i8
    }

    fn run(&self, x: &[i8]) -> Vec<i8> {
        if self.depthwise {
            self.run_depthwise(x)
        } else {
            self.run_dense(x)
        }
    }

    fn run_depthwise(&self, x: &[i8]) -> Vec<i8> {
        let c = self.oc;
        let mut out = vec![0i8; self.oh * self.ow * c];
        let mut acc = vec![0i32; c];
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                acc.copy_from_slice(&self.bias);
                for ky in 0..self.kh {
                    let iy = (oy * self.stride[0] + ky) as isize - self.pad[0] as isize;
                    if iy < 0 || iy >= self.ih as isize {
                        continue;
                    }
                    for kx in 0..self.kw {
                        let ix = (ox * self.stride[1] + kx) as isize - self.pad[1] as isize;
                        if ix < 0 || ix >= self.iw as isize {
                            continue;
                        }
                        let src = &x[(iy as usize * self.iw + ix as usize) * c..][..c];
                        let w = &self.wi[(ky * self.kw + kx) * c..][..c];
                        for ((a, v), w) in acc.iter_mut().zip(src).zip(w) {
                            *a += (*v as i32 - self.zx) * w;
                        }
                    }
                }
                let dst = &mut out[(oy * self.ow + ox) * c..][..c];
                for (o, (d, a)) in dst.iter_mut().zip(&acc).enumerate() {
                    *d = self.finish(*a, o);
                }
            }
        }
        out
    }

    /// Patches of output rows `r0..r1`: one row of K = (ky, kx, ci) per output pixel,
    /// read from `xf` (x − zx); taps in the padding read 0.
    fn im2col(&self, xf: &[f32], r0: usize, r1: usize, patches: &mut Vec<f32>) {
        let (k, ow, ic) = (self.kh * self.kw * self.ic, self.ow, self.ic);
        patches.clear();
        patches.resize((r1 - r0) * ow * k, 0f32);
        for oy in r0..r1 {
            for ox in 0..ow {
                let row = &mut patches[((oy - r0) * ow + ox) * k..][..k];
                for ky in 0..self.kh {
                    let iy = (oy * self.stride[0] + ky) as isize - self.pad[0] as isize;
                    if iy < 0 || iy >= self.ih as isize {
                        continue;
                    }
                    for kx in 0..self.kw {
                        let ix = (ox * self.stride[1] + kx) as isize - self.pad[1] as isize;
                        if ix < 0 || ix >= self.iw as isize {
                            continue;
                        }
                        let at = (iy as usize * self.iw + ix as usize) * ic;
                        row[(ky * self.kw + kx) * ic..][..ic].copy_from_slice(&xf[at..at + ic]);
                    }
                }
            }
        }
    }

    fn run_dense(&self, x: &[i8]) -> Vec<i8> {
        let (k, oc, ow) = (self.kh * self.kw * self.ic, self.oc, self.ow);
        let mut out = vec![0i8; self.oh * ow * oc];
        let rows = tile_rows(ow, k);
        let w = ArrayView2::from_shape((oc, k), &self.wf).expect("weight shape");
        // x − zx once; the patches copy runs of `ic` values out of it.
        let zx = self.zx as f32;
        let xf: Vec<f32> = x.iter().map(|v| *v as f32 - zx).collect();
        // A 1x1, stride-1, unpadded conv reads its input as the patch matrix.
        let pointwise = self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && (self.oh, self.ow) == (self.ih, self.iw);
        let mut patches = Vec::new();
        let mut c = Vec::new();
        let mut acc = Vec::new();
        let mut r0 = 0;
        while r0 < self.oh {
            let r1 = (r0 + rows).min(self.oh);
            let p = (r1 - r0) * ow;
            if !pointwise {
                self.im2col(&xf, r0, r1, &mut patches);
            }
            let a = if pointwise {
                ArrayView2::from_shape((p, k), &xf[r0 * ow * k..r1 * ow * k])
            } else {
                ArrayView2::from_shape((p, k), &patches[..])
            }
            .expect("patch shape");
            acc.clear();
            acc.resize(p * oc, 0i32);
            for px in acc.chunks_exact_mut(oc) {
                px.copy_from_slice(&self.bias);
            }
            for &(k0, k1) in &self.slices {
                c.clear();
                c.resize(p * oc, 0f32);
                {
                    let mut cv = ArrayViewMut2::from_shape((p, oc), &mut c[..]).expect("c shape");
                    let a = a.slice(tract_onnx::prelude::tract_ndarray::s![.., k0..k1]);
                    let b = w.slice(tract_onnx::prelude::tract_ndarray::s![.., k0..k1]);
                    general_mat_mul(1.0, &a, &b.t(), 0.0, &mut cv);
                }
                // Each slice's sum is an exact integer in f32.
                for (s, v) in acc.iter_mut().zip(&c) {
                    *s += *v as i32;
                }
            }
            let dst = &mut out[r0 * ow * oc..r1 * ow * oc];
            for (d, a) in dst.chunks_exact_mut(oc).zip(acc.chunks_exact(oc)) {
                for (o, (d, a)) in d.iter_mut().zip(a).enumerate() {
                    *d = self.finish(*a, o);
                }
            }
            r0 = r1;
        }
        out
    }
}
