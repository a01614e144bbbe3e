//! A plain-Rust reference interpreter for the graph IR: the ground truth every written
//! file is compared against, and the source of per-layer activations for calibration.

use std::collections::BTreeMap;

use crate::ir::{Graph, IrError, Op};

/// Every value of one forward pass (the graph input and each node's output), NCHW.
#[derive(Clone, Debug, Default)]
pub struct Values {
    pub shapes: BTreeMap<String, [usize; 4]>,
    pub data: BTreeMap<String, Vec<f32>>,
}

impl Values {
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.data.get(name).map(|v| v.as_slice())
    }
}

/// Runs `graph` on one NCHW input and returns the outputs of every node.
pub fn eval(graph: &Graph, input_nchw: &[f32]) -> Result<Values, IrError> {
    eval_with_hook(graph, input_nchw, |_, _| {})
}

/// Like `eval`, but `hook(value_name, data)` sees (and may rewrite) every value as soon
/// as it is computed, before any consumer reads it: the quantization simulator rounds
/// activations through it.
pub fn eval_with_hook(
    graph: &Graph,
    input_nchw: &[f32],
    mut hook: impl FnMut(&str, &mut Vec<f32>),
) -> Result<Values, IrError> {
    let shapes = graph.shapes()?;
    let expected = graph.input_shape.iter().product::<usize>();
    if input_nchw.len() != expected {
        return Err(IrError::InputLength {
            got: input_nchw.len(),
            expected,
            shape: graph.input_shape,
        });
    }
    let mut data: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut input = input_nchw.to_vec();
    hook(&graph.input_name, &mut input);
    data.insert(graph.input_name.clone(), input);
    for node in &graph.nodes {
        let in_shapes: Vec<[usize; 4]> = node.inputs.iter().map(|i| shapes[i]).collect();
        let out_shape = shapes[&node.name];
        let ins: Vec<&[f32]> = node.inputs.iter().map(|i| data[i].as_slice()).collect();
        let mut out = match &node.op {
            Op::Conv2d {
                weight,
                weight_shape,
                bias,
                stride,
                pads,
                groups,
            } => conv2d(
                ins[0],
                in_shapes[0],
                weight,
                *weight_shape,
                bias,
                *stride,
                *pads,
                *groups,
                out_shape,
            ),
            Op::Relu => ins[0].iter().map(|v| v.max(0.0)).collect(),
            Op::Tanh => ins[0].iter().map(|v| v.tanh()).collect(),
            Op::Sigmoid => ins[0].iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            Op::Add => ins[0].iter().zip(ins[1]).map(|(a, b)| a + b).collect(),
            Op::ConcatChannels => {
                // NCHW with N == 1 per batch item: channel blocks are contiguous.
                let n = out_shape[0];
                let mut out = Vec::with_capacity(out_shape.iter().product());
                for b in 0..n {
                    for (x, s) in ins.iter().zip(&in_shapes) {
                        let per_item = s[1] * s[2] * s[3];
                        out.extend_from_slice(&x[b * per_item..(b + 1) * per_item]);
                    }
                }
                out
            }
            Op::UpsampleNearest { factor } => upsample_nearest(ins[0], in_shapes[0], *factor),
            Op::DepthToSpace { block } => depth_to_space(ins[0], in_shapes[0], *block),
        };
        hook(&node.name, &mut out);
        data.insert(node.name.clone(), out);
    }
    Ok(Values { shapes, data })
}

#[allow(clippy::too_many_arguments)]
fn conv2d(
    x: &[f32],
    xs: [usize; 4],
    weight: &[f32],
    ws: [usize; 4],
    bias: &[f32],
    stride: [usize; 2],
    pads: [usize; 4],
    groups: usize,
    out_shape: [usize; 4],
) -> Vec<f32> {
    let [n, c_in, h, w] = xs;
    let [c_out, cpg, kh, kw] = ws;
    let [_, _, oh, ow] = out_shape;
    let out_per_group = c_out / groups;
    let mut out = vec![0f32; n * c_out * oh * ow];
    for b in 0..n {
        for oc in 0..c_out {
            let g = oc / out_per_group;
            let plane = &mut out[((b * c_out + oc) * oh) * ow..((b * c_out + oc + 1) * oh) * ow];
            plane.iter_mut().for_each(|v| *v = bias[oc]);
            for icg in 0..cpg {
                let ic = g * cpg + icg;
                let xplane = &x[((b * c_in + ic) * h) * w..((b * c_in + ic + 1) * h) * w];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = weight[((oc * cpg + icg) * kh + ky) * kw + kx];
                        for oy in 0..oh {
                            let iy = (oy * stride[0] + ky) as isize - pads[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let row = &xplane[iy as usize * w..(iy as usize + 1) * w];
                            let orow = &mut plane[oy * ow..(oy + 1) * ow];
                            for (ox, o) in orow.iter_mut().enumerate() {
                                let ix = (ox * stride[1] + kx) as isize - pads[1] as isize;
                                if ix >= 0 && ix < w as isize {
                                    *o += wv * row[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn upsample_nearest(x: &[f32], xs: [usize; 4], factor: usize) -> Vec<f32> {
    let [n, c, h, w] = xs;
    let (oh, ow) = (h * factor, w * factor);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for oy in 0..oh {
            let row = &x[(plane * h + oy / factor) * w..(plane * h + oy / factor + 1) * w];
            for ox in 0..ow {
                out.push(row[ox / factor]);
            }
        }
    }
    out
}

/// DCR depth-to-space (see `Op::DepthToSpace`).
pub fn depth_to_space(x: &[f32], xs: [usize; 4], block: usize) -> Vec<f32> {
    let [n, c_in, h, w] = xs;
    let c = c_in / (block * block);
    let (oh, ow) = (h * block, w * block);
    let mut out = vec![0f32; n * c * oh * ow];
    for b in 0..n {
        for oc in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let ic = ((oy % block) * block + ox % block) * c + oc;
                    out[((b * c + oc) * oh + oy) * ow + ox] =
                        x[((b * c_in + ic) * h + oy / block) * w + ox / block];
                }
            }
        }
    }
    out
}
