//! The graph IR every exporter writes from and every verifier reads back into.
//!
//! A straight-line graph of the few ops every phone target runs natively. Layout is
//! NCHW, float32 weights; normalisation is already folded into convs when a graph is
//! built. Values are named by the node that produces them; the graph input is
//! `Graph::input_name`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// 2-D convolution. `weight` is OIHW flattened, shape `[out, in / groups, kh, kw]`.
    /// `pads` are `[top, left, bottom, right]` (asymmetric pads allowed: blur kernels
    /// need them). `groups == in == out` is a depthwise conv.
    Conv2d {
        weight: Vec<f32>,
        weight_shape: [usize; 4],
        bias: Vec<f32>,
        stride: [usize; 2],
        pads: [usize; 4],
        groups: usize,
    },
    Relu,
    /// Elementwise sum of two values of the same shape (residuals, skips).
    Add,
    /// Concatenation along channels.
    ConcatChannels,
    /// Nearest-neighbour upsampling by an integer factor on H and W.
    UpsampleNearest { factor: usize },
    Tanh,
    Sigmoid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub input_name: String,
    /// `[1, channels, height, width]` the graph is exported for.
    pub input_shape: [usize; 4],
    pub nodes: Vec<Node>,
    pub output_name: String,
}

/// Shape `[channels, height, width]` of a value (batch is always 1).
pub type Chw = [usize; 3];

#[derive(Debug, thiserror::Error)]
pub enum IrError {
    #[error("IR node `{node}` reads unknown value `{input}`")]
    UnknownInput { node: String, input: String },
    #[error("IR node `{node}`: {what}")]
    Shape { node: String, what: String },
}

impl Graph {
    /// Infers every value's `[c, h, w]`, in node order (the graph input first).
    pub fn shapes(&self) -> Result<Vec<(String, Chw)>, IrError> {
        let [_, c, h, w] = self.input_shape;
        let mut known: Vec<(String, Chw)> = vec![(self.input_name.clone(), [c, h, w])];
        for n in &self.nodes {
            let get = |name: &str, known: &Vec<(String, Chw)>| known.iter().rev().find(|(k, _)| k == name).map(|(_, s)| *s).ok_or_else(|| IrError::UnknownInput { node: n.name.clone(), input: name.to_string() });
            let first = get(n.inputs.first().map(|s| s.as_str()).unwrap_or(""), &known)?;
            let shape = match &n.op {
                Op::Conv2d { weight_shape, stride, pads, groups, .. } => {
                    let [o, i, kh, kw] = *weight_shape;
                    if i * groups != first[0] {
                        return Err(IrError::Shape { node: n.name.clone(), what: format!("conv expects {} input channels, got {}", i * groups, first[0]) });
                    }
                    let hh = (first[1] + pads[0] + pads[2]).checked_sub(kh).map(|v| v / stride[0] + 1);
                    let ww = (first[2] + pads[1] + pads[3]).checked_sub(kw).map(|v| v / stride[1] + 1);
                    match (hh, ww) {
                        (Some(hh), Some(ww)) => [o, hh, ww],
                        _ => return Err(IrError::Shape { node: n.name.clone(), what: "kernel larger than padded input".into() }),
                    }
                }
                Op::Add => {
                    let second = get(&n.inputs[1], &known)?;
                    if second != first {
                        return Err(IrError::Shape { node: n.name.clone(), what: format!("add of {first:?} and {second:?}") });
                    }
                    first
                }
                Op::ConcatChannels => {
                    let mut c = 0;
                    for i in &n.inputs {
                        let s = get(i, &known)?;
                        c += s[0];
                    }
                    [c, first[1], first[2]]
                }
                Op::UpsampleNearest { factor } => [first[0], first[1] * factor, first[2] * factor],
                Op::Relu | Op::Tanh | Op::Sigmoid => first,
            };
            known.push((n.name.clone(), shape));
        }
        Ok(known)
    }

    /// Multiply-accumulates of one forward pass (convolutions; elementwise ops are free).
    pub fn macs(&self) -> u64 {
        let Ok(shapes) = self.shapes() else { return 0 };
        self.nodes
            .iter()
            .zip(shapes.iter().skip(1))
            .map(|(n, (_, s))| match &n.op {
                Op::Conv2d { weight_shape: [_, i, kh, kw], .. } => (s[0] * s[1] * s[2] * i * kh * kw) as u64,
                _ => 0,
            })
            .sum()
    }

    /// Weights and biases of every conv (fixed blur kernels included).
    pub fn params(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match &n.op {
                Op::Conv2d { weight, bias, .. } => (weight.len() + bias.len()) as u64,
                _ => 0,
            })
            .sum()
    }

    /// A plain Rust reference interpreter (NCHW, batch 1): every node's output, by name.
    /// Slow but obviously right; calibration and tests compare against it.
    pub fn eval(&self, input: &[f32]) -> Result<Vec<(String, Chw, Vec<f32>)>, IrError> {
        let shapes = self.shapes()?;
        let mut values: Vec<(String, Chw, Vec<f32>)> = vec![(self.input_name.clone(), shapes[0].1, input.to_vec())];
        for (n, (_, out_shape)) in self.nodes.iter().zip(shapes.iter().skip(1)) {
            let find = |name: &str| values.iter().rposition(|(k, _, _)| k == name).ok_or_else(|| IrError::UnknownInput { node: n.name.clone(), input: name.to_string() });
            let a = find(&n.inputs[0])?;
            let (in_shape, x) = (values[a].1, &values[a].2);
            let out = match &n.op {
                Op::Conv2d { weight, weight_shape, bias, stride, pads, groups } => conv2d(x, in_shape, weight, *weight_shape, bias, *stride, *pads, *groups, *out_shape),
                Op::Relu => x.iter().map(|v| v.max(0.0)).collect(),
                Op::Tanh => x.iter().map(|v| v.tanh()).collect(),
                Op::Sigmoid => x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
                Op::Add => {
                    let b = find(&n.inputs[1])?;
                    x.iter().zip(&values[b].2).map(|(p, q)| p + q).collect()
                }
                Op::ConcatChannels => {
                    let mut out = Vec::new();
                    for i in &n.inputs {
                        out.extend_from_slice(&values[find(i)?].2);
                    }
                    out
                }
                Op::UpsampleNearest { factor } => {
                    let [c, h, w] = in_shape;
                    let (oh, ow) = (h * factor, w * factor);
                    let mut out = vec![0f32; c * oh * ow];
                    for ch in 0..c {
                        for y in 0..oh {
                            for xx in 0..ow {
                                out[(ch * oh + y) * ow + xx] = x[(ch * h + y / factor) * w + xx / factor];
                            }
                        }
                    }
                    out
                }
            };
            values.push((n.name.clone(), *out_shape, out));
        }
        Ok(values)
    }
}

#[allow(clippy::too_many_arguments)]
fn conv2d(x: &[f32], [_, h, w]: Chw, weight: &[f32], [o, i, kh, kw]: [usize; 4], bias: &[f32], stride: [usize; 2], pads: [usize; 4], groups: usize, [_, oh, ow]: Chw) -> Vec<f32> {
    let out_per_group = o / groups;
    let mut out = vec![0f32; o * oh * ow];
    for oc in 0..o {
        let g = oc / out_per_group;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias.get(oc).copied().unwrap_or(0.0);
                for ic in 0..i {
                    let c = g * i + ic;
                    for ky in 0..kh {
                        let iy = (oy * stride[0] + ky) as isize - pads[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * stride[1] + kx) as isize - pads[1] as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            acc += x[(c * h + iy as usize) * w + ix as usize] * weight[((oc * i + ic) * kh + ky) * kw + kx];
                        }
                    }
                }
                out[(oc * oh + oy) * ow + ox] = acc;
            }
        }
    }
    out
}
