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
                        // The output columns whose input column is inside the row, found
                        // once per tap instead of tested per pixel: the loop below then has
                        // no branch and vectorizes (the same sums, in the same order).
                        let (ox0, ox1) = valid_columns(ow, w, stride[1], kx, pads[1]);
                        if ox0 == ox1 {
                            continue;
                        }
                        for oy in 0..oh {
                            let iy = (oy * stride[0] + ky) as isize - pads[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let row = &xplane[iy as usize * w..(iy as usize + 1) * w];
                            let orow = &mut plane[oy * ow + ox0..oy * ow + ox1];
                            let ix0 = ox0 * stride[1] + kx - pads[1];
                            if stride[1] == 1 {
                                for (o, x) in orow.iter_mut().zip(&row[ix0..]) {
                                    *o += wv * x;
                                }
                            } else {
                                for (o, x) in
                                    orow.iter_mut().zip(row[ix0..].iter().step_by(stride[1]))
                                {
                                    *o += wv * x;
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

/// The output columns `ox0..ox1` whose input column `ox * stride + kx - pad` lies in
/// `0..w`.
fn valid_columns(ow: usize, w: usize, stride: usize, kx: usize, pad: usize) -> (usize, usize) {
    // ox * stride + kx >= pad  and  ox * stride + kx < w + pad
    let ox0 = pad.saturating_sub(kx).div_ceil(stride);
    let ox1 = if w + pad > kx {
        (w + pad - kx).div_ceil(stride).min(ow)
    } else {
        0
    };
    (ox0.min(ox1), ox1)
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

#[cfg(test)]
mod conv_tests {
    use super::valid_columns;

    /// The hoisted bounds are exactly the columns the per-pixel test kept.
    #[test]
    fn valid_columns_are_the_ones_inside_the_row() {
        for w in 1usize..12 {
            for stride in 1usize..4 {
                for pad in 0usize..3 {
                    for kx in 0usize..5 {
                        let ow = (w + 2 * pad).saturating_sub(kx.max(1) - 1).div_ceil(stride) + 1;
                        let inside: Vec<usize> = (0..ow)
                            .filter(|ox| {
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                ix >= 0 && ix < w as isize
                            })
                            .collect();
                        let (a, b) = valid_columns(ow, w, stride, kx, pad);
                        assert_eq!(
                            (a..b).collect::<Vec<_>>(),
                            inside,
                            "w {w} s {stride} p {pad} k {kx}"
                        );
                    }
                }
            }
        }
    }
}
