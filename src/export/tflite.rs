//! TFLite flatbuffer writer for Android / NNAPI, NHWC: the IR lowered into a
//! `crate::tflite::Model`, which writes the bytes.
//!
//! - `Float32`: float tensors throughout.
//! - `Int8`: full-integer core (per-channel symmetric int8 weights, per-tensor int8
//!   activations from calibration, int32 biases) with float I/O through QUANTIZE at the
//!   input and DEQUANTIZE at the output.
//!
//! Only ops the NNAPI delegate accepts: CONV_2D, DEPTHWISE_CONV_2D (ReLU fused when a
//! conv feeds only a ReLU), ADD, RELU, RESIZE_NEAREST_NEIGHBOR, PAD, CONCATENATION,
//! TANH, LOGISTIC (+ QUANTIZE / DEQUANTIZE at the edges).
//!
//! tract-tflite cannot run QUANTIZE / DEQUANTIZE, so the int8 model is written twice
//! from one model: the *core* (int8 in, int8 out) that tract verifies, and the
//! *shipped* file = the same tensors, buffers and ops plus the two edge ops and two
//! float tensors appended. `core_of_shipped` reads a shipped file back, strips the
//! edges and re-serializes: it must give the verified core byte for byte.

use super::quantize::{ActivationType, Calibration, QParams, QuantError, QuantPlan};
use crate::ir::{Graph, IrError, Op};
use crate::tflite::{
    self as tfl, parse, serialize, ActivationFunctionType, BuiltinOperator, BuiltinOptions, Model,
    ModelError, Options, Padding, Quant, Tensor, TensorType,
};

#[derive(Debug, thiserror::Error)]
pub enum TfliteError {
    #[error("cannot write TFLite: invalid graph: {0}")]
    Graph(#[from] IrError),
    #[error("cannot write int8 TFLite: {0}")]
    Quant(#[from] QuantError),
    #[error("cannot write TFLite: batch {0} (the exported graph must have batch 1)")]
    Batch(usize),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("not a shipped int8 file this writer made: {0}")]
    NotShipped(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub enum TflitePrecision<'a> {
    Float32,
    Int8(&'a Calibration),
}

/// The int8 files: `shipped` goes on the phone, `core` is what tract verifies.
/// For `Float32`, both are the same bytes.
#[derive(Clone, Debug)]
pub struct TfliteFiles {
    pub shipped: Vec<u8>,
    pub core: Vec<u8>,
}

/// The builtin operator names (`CONV_2D`, `ADD`...) a TFLite file uses: what a target
/// profile's `ops` allow-list is checked against.
pub fn op_names(bytes: &[u8]) -> Result<std::collections::BTreeSet<String>, TfliteError> {
    Ok(parse(bytes)?
        .ops
        .iter()
        .map(|op| tfl::op_name(op.code))
        .collect())
}

/// The verified core inside a shipped int8 file: the QUANTIZE / DEQUANTIZE edge ops
/// and their float tensors (the last two tensors) removed, re-serialized.
pub fn core_of_shipped(shipped: &[u8]) -> Result<Vec<u8>, TfliteError> {
    let mut desc = parse(shipped)?;
    let (Some(first), Some(last)) = (desc.ops.first(), desc.ops.last()) else {
        return Err(TfliteError::NotShipped("no operators"));
    };
    if first.code != BuiltinOperator::QUANTIZE || last.code != BuiltinOperator::DEQUANTIZE {
        return Err(TfliteError::NotShipped(
            "a shipped int8 file starts with QUANTIZE and ends with DEQUANTIZE",
        ));
    }
    let (core_in, core_out) = (first.outputs[0], last.inputs[0]);
    let n = desc.tensors.len() as i32;
    if desc.inputs != [n - 2] || desc.outputs != [n - 1] {
        return Err(TfliteError::NotShipped(
            "edge tensors are not the last two tensors",
        ));
    }
    desc.ops.remove(0);
    desc.ops.pop();
    desc.tensors.truncate(desc.tensors.len() - 2);
    desc.inputs = vec![core_in];
    desc.outputs = vec![core_out];
    desc.description = desc.description.replace(SHIPPED_SUFFIX, CORE_SUFFIX);
    Ok(serialize(&desc)?)
}

const CORE_SUFFIX: &str = " (int8 core: int8 I/O, verified)";
const SHIPPED_SUFFIX: &str = " (int8, float I/O)";

// ---------------------------------------------------------------------------------
// Lowering the IR.
// ---------------------------------------------------------------------------------

/// How TFLite expresses one axis of the IR's explicit padding.
#[derive(Clone, Copy, Debug, PartialEq)]
enum AxisPadding {
    Same,
    Valid,
    /// Explicit (begin, end) pad, then a VALID conv.
    Explicit(usize, usize),
}

fn axis_padding(
    in_len: usize,
    kernel: usize,
    stride: usize,
    begin: usize,
    out_len: usize,
) -> AxisPadding {
    let out_same = in_len.div_ceil(stride);
    let total_same = ((out_same - 1) * stride + kernel).saturating_sub(in_len);
    if out_len == out_same && begin == total_same / 2 {
        return AxisPadding::Same;
    }
    let out_valid = if in_len >= kernel {
        (in_len - kernel) / stride + 1
    } else {
        0
    };
    if begin == 0 && out_len == out_valid {
        return AxisPadding::Valid;
    }
    // The end pad the output actually reads (the IR may pad rows no window reaches).
    let end = ((out_len - 1) * stride + kernel).saturating_sub(in_len + begin);
    AxisPadding::Explicit(begin, end)
}

struct Lowering<'a> {
    model: Model,
    plan: Option<&'a QuantPlan>,
    /// IR value → tensor index holding it.
    tensor_of: std::collections::BTreeMap<String, i32>,
}

impl Lowering<'_> {
    fn act_dtype(&self) -> TensorType {
        if self.plan.is_some() {
            TensorType::INT8
        } else {
            TensorType::FLOAT32
        }
    }

    fn act_quant(q: Option<QParams>) -> Option<Quant> {
        q.map(|q| Quant {
            scale: vec![q.scale],
            zero_point: vec![q.zero_point as i64],
            quantized_dimension: 0,
        })
    }

    fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: TensorType,
        data: Option<Vec<u8>>,
        quant: Option<Quant>,
    ) -> i32 {
        let shape = shape.iter().map(|d| *d as i32).collect();
        self.model
            .add_tensor(name.to_string(), shape, dtype, data, quant)
    }

    /// An activation tensor (NHWC) for IR value `value` stored on `params`' grid.
    fn activation(&mut self, name: &str, nchw: [usize; 4], params: Option<QParams>) -> i32 {
        let [n, c, h, w] = nchw;
        let dtype = self.act_dtype();
        self.add_tensor(name, &[n, h, w, c], dtype, None, Self::act_quant(params))
    }

    fn op(&mut self, code: BuiltinOperator, inputs: Vec<i32>, outputs: Vec<i32>, options: Options) {
        // Op versions: the int8 kernels' first version (float uses 1).
        let version = if self.plan.is_none() {
            1
        } else {
            match code {
                BuiltinOperator::CONV_2D | BuiltinOperator::DEPTHWISE_CONV_2D => 3,
                BuiltinOperator::QUANTIZE | BuiltinOperator::DEQUANTIZE => 2,
                // RESHAPE's first version already covers int8 (it only moves bytes).
                BuiltinOperator::RESHAPE => 1,
                _ => 2,
            }
        };
        self.model.ops.push(tfl::Op {
            code,
            version,
            inputs,
            outputs,
            options,
        });
    }
}

/// The fused activation of a conv that writes its ReLU's output.
fn fused_activation(relu: bool) -> ActivationFunctionType {
    if relu {
        ActivationFunctionType::RELU
    } else {
        ActivationFunctionType::NONE
    }
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: impl IntoIterator<Item = i32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Builds the model description: for int8, the core (int8 I/O).
fn lower(graph: &Graph, plan: Option<&QuantPlan>) -> Result<Model, TfliteError> {
    let shapes = graph.shapes()?;
    if graph.input_shape[0] != 1 {
        return Err(TfliteError::Batch(graph.input_shape[0]));
    }
    let fused: std::collections::BTreeMap<String, String> =
        super::quantize::fusable_conv_relu(graph);
    let fused_relus: std::collections::BTreeSet<&String> = fused.values().collect();
    let mut l = Lowering {
        model: Model::new(String::new(), Some("main".into())),
        plan,
        tensor_of: Default::default(),
    };
    let params = |v: &str| plan.and_then(|p| p.activations.get(v).copied());

    let input = l.activation(
        &graph.input_name,
        graph.input_shape,
        params(&graph.input_name),
    );
    l.tensor_of.insert(graph.input_name.clone(), input);
    l.model.inputs = vec![input];

    for node in &graph.nodes {
        if fused_relus.contains(&node.name) {
            // Written by its conv.
            continue;
        }
        // The value this op's output tensor holds (a fused conv writes its ReLU's).
        let (out_value, relu) = match fused.get(&node.name) {
            Some(r) => (r.clone(), true),
            None => (node.name.clone(), false),
        };
        let out_shape = shapes[&out_value];
        let ins: Vec<i32> = node.inputs.iter().map(|i| l.tensor_of[i]).collect();
        let out_params = match &node.op {
            _ if plan.is_none() => None,
            _ => params(&out_value),
        };
        let out = l.activation(&out_value, out_shape, out_params);
        match &node.op {
            Op::Conv2d {
                weight,
                weight_shape,
                bias,
                stride,
                pads,
                groups,
            } => {
                let in_shape = shapes[&node.inputs[0]];
                let [o, cpg, kh, kw] = *weight_shape;
                let ph = axis_padding(in_shape[2], kh, stride[0], pads[0], out_shape[2]);
                let pw = axis_padding(in_shape[3], kw, stride[1], pads[1], out_shape[3]);
                let (x, padding) = match (ph, pw) {
                    (AxisPadding::Same, AxisPadding::Same) => (ins[0], Padding::SAME),
                    (AxisPadding::Valid, AxisPadding::Valid) => (ins[0], Padding::VALID),
                    _ => {
                        let (t, b) = match ph {
                            AxisPadding::Explicit(t, b) => (t, b),
                            AxisPadding::Valid => (0, 0),
                            AxisPadding::Same => {
                                let total = ((out_shape[2] - 1) * stride[0] + kh)
                                    .saturating_sub(in_shape[2]);
                                (total / 2, total - total / 2)
                            }
                        };
                        let (le, r) = match pw {
                            AxisPadding::Explicit(le, r) => (le, r),
                            AxisPadding::Valid => (0, 0),
                            AxisPadding::Same => {
                                let total = ((out_shape[3] - 1) * stride[1] + kw)
                                    .saturating_sub(in_shape[3]);
                                (total / 2, total - total / 2)
                            }
                        };
                        let paddings = l.add_tensor(
                            &format!("{}_paddings", node.name),
                            &[4, 2],
                            TensorType::INT32,
                            Some(i32_bytes([
                                0, 0, t as i32, b as i32, le as i32, r as i32, 0, 0,
                            ])),
                            None,
                        );
                        let padded_shape =
                            [1, in_shape[1], in_shape[2] + t + b, in_shape[3] + le + r];
                        // PAD keeps its input's grid (LiteRT pads int8 with the zero point).
                        let padded = l.activation(
                            &format!("{}_padded", node.name),
                            padded_shape,
                            params(&node.inputs[0]),
                        );
                        l.op(
                            BuiltinOperator::PAD,
                            vec![ins[0], paddings],
                            vec![padded],
                            Options::Empty(BuiltinOptions::PadOptions),
                        );
                        (padded, Padding::VALID)
                    }
                };
                let depthwise = *groups > 1 && *groups == in_shape[1] && cpg == 1;
                if *groups != 1 && !depthwise {
                    return Err(TfliteError::Graph(IrError::Shape {
                        node: node.name.clone(),
                        reason: format!(
                            "grouped conv (groups {groups}) is neither dense nor depthwise: TFLite has no op for it"
                        ),
                    }));
                }
                // OIHW → OHWI (dense) or 1HW(C*m) (depthwise).
                let (w_shape, w_index): (
                    Vec<usize>,
                    Box<dyn Fn(usize, usize, usize, usize) -> usize>,
                ) = if depthwise {
                    (
                        vec![1, kh, kw, o],
                        Box::new(move |oc, _ic, y, xx| (y * kw + xx) * o + oc),
                    )
                } else {
                    (
                        vec![o, kh, kw, cpg],
                        Box::new(move |oc, ic, y, xx| ((oc * kh + y) * kw + xx) * cpg + ic),
                    )
                };
                let count = o * cpg * kh * kw;
                let q_axis = if depthwise { 3 } else { 0 };
                let (w_tensor, b_tensor) =
                    if let Some(cq) = plan.and_then(|p| p.convs.get(&node.name)) {
                        let mut data = vec![0u8; count];
                        for oc in 0..o {
                            for ic in 0..cpg {
                                for y in 0..kh {
                                    for xx in 0..kw {
                                        data[w_index(oc, ic, y, xx)] =
                                            cq.weight[((oc * cpg + ic) * kh + y) * kw + xx] as u8;
                                    }
                                }
                            }
                        }
                        let wq = Quant {
                            scale: cq.weight_scales.clone(),
                            zero_point: vec![0; o],
                            quantized_dimension: q_axis,
                        };
                        let w = l.add_tensor(
                            &format!("{}_weight", node.name),
                            &w_shape,
                            TensorType::INT8,
                            Some(data),
                            Some(wq),
                        );
                        let bq = Quant {
                            scale: cq.bias_scales.clone(),
                            zero_point: vec![0; o],
                            quantized_dimension: 0,
                        };
                        let b = l.add_tensor(
                            &format!("{}_bias", node.name),
                            &[o],
                            TensorType::INT32,
                            Some(i32_bytes(cq.bias.iter().copied())),
                            Some(bq),
                        );
                        (w, b)
                    } else {
                        let mut data = vec![0f32; count];
                        for oc in 0..o {
                            for ic in 0..cpg {
                                for y in 0..kh {
                                    for xx in 0..kw {
                                        data[w_index(oc, ic, y, xx)] =
                                            weight[((oc * cpg + ic) * kh + y) * kw + xx];
                                    }
                                }
                            }
                        }
                        let w = l.add_tensor(
                            &format!("{}_weight", node.name),
                            &w_shape,
                            TensorType::FLOAT32,
                            Some(f32_bytes(data)),
                            None,
                        );
                        let b = l.add_tensor(
                            &format!("{}_bias", node.name),
                            &[o],
                            TensorType::FLOAT32,
                            Some(f32_bytes(bias.iter().copied())),
                            None,
                        );
                        (w, b)
                    };
                let (stride_h, stride_w) = (stride[0] as i32, stride[1] as i32);
                if depthwise {
                    l.op(
                        BuiltinOperator::DEPTHWISE_CONV_2D,
                        vec![x, w_tensor, b_tensor],
                        vec![out],
                        Options::Depthwise {
                            padding,
                            stride_h,
                            stride_w,
                            depth_multiplier: 1,
                            act: fused_activation(relu),
                            dilation_h: 1,
                            dilation_w: 1,
                        },
                    );
                } else {
                    l.op(
                        BuiltinOperator::CONV_2D,
                        vec![x, w_tensor, b_tensor],
                        vec![out],
                        Options::Conv2D {
                            padding,
                            stride_h,
                            stride_w,
                            act: fused_activation(relu),
                            dilation_h: 1,
                            dilation_w: 1,
                        },
                    );
                }
            }
            Op::Relu => l.op(BuiltinOperator::RELU, ins, vec![out], Options::None),
            Op::Tanh => l.op(BuiltinOperator::TANH, ins, vec![out], Options::None),
            Op::Sigmoid => l.op(BuiltinOperator::LOGISTIC, ins, vec![out], Options::None),
            Op::Add => l.op(
                BuiltinOperator::ADD,
                ins,
                vec![out],
                Options::Add {
                    act: ActivationFunctionType::NONE,
                    pot_scale_int16: true,
                },
            ),
            Op::ConcatChannels => l.op(
                BuiltinOperator::CONCATENATION,
                ins,
                vec![out],
                Options::Concat {
                    axis: 3,
                    act: ActivationFunctionType::NONE,
                },
            ),
            Op::UpsampleNearest { .. } => {
                let size = l.add_tensor(
                    &format!("{}_size", node.name),
                    &[2],
                    TensorType::INT32,
                    Some(i32_bytes([out_shape[2] as i32, out_shape[3] as i32])),
                    None,
                );
                l.op(
                    BuiltinOperator::RESIZE_NEAREST_NEIGHBOR,
                    vec![ins[0], size],
                    vec![out],
                    Options::ResizeNearest {
                        align_corners: false,
                        half_pixel_centers: false,
                    },
                );
            }
            Op::DepthToSpace { block } => {
                // NNAPI runs DEPTH_TO_SPACE, but tract (our verifier) does not read it:
                // write the same permutation as RESHAPE → TRANSPOSE → RESHAPE, 4-D
                // throughout, which both run. NHWC [1, H, W, b*b*C] is [H, W, b, b*C]
                // with the row offset outermost (DCR); swapping W and the row offset
                // gives [H, b, W, b*C], which is [1, H*b, W*b, C].
                let [_, c_in, h, w] = shapes[&node.inputs[0]];
                let (b, q) = (*block, params(&node.inputs[0]));
                // The two intermediate tensors keep the input's grid (a permutation).
                let intermediate = |l: &mut Lowering, what: &str, shape: &[usize]| {
                    let dtype = l.act_dtype();
                    let name = format!("{}_{what}", node.name);
                    l.add_tensor(&name, shape, dtype, None, Lowering::act_quant(q))
                };
                let reshape = |l: &mut Lowering, input: i32, to: &[usize], output: i32| {
                    let to_i32: Vec<i32> = to.iter().map(|d| *d as i32).collect();
                    let shape = l.add_tensor(
                        &format!("{}_shape{}", node.name, l.model.tensors.len()),
                        &[to.len()],
                        TensorType::INT32,
                        Some(i32_bytes(to_i32.iter().copied())),
                        None,
                    );
                    l.op(
                        BuiltinOperator::RESHAPE,
                        vec![input, shape],
                        vec![output],
                        Options::Reshape {
                            new_shape: Some(to_i32),
                        },
                    );
                };
                let split = [h, w, b, c_in / b];
                let split_t = intermediate(&mut l, "split", &split);
                reshape(&mut l, ins[0], &split, split_t);
                let perm = l.add_tensor(
                    &format!("{}_perm", node.name),
                    &[4],
                    TensorType::INT32,
                    Some(i32_bytes([0, 2, 1, 3])),
                    None,
                );
                let swapped_t = intermediate(&mut l, "swapped", &[h, b, w, c_in / b]);
                l.op(
                    BuiltinOperator::TRANSPOSE,
                    vec![split_t, perm],
                    vec![swapped_t],
                    Options::Empty(BuiltinOptions::TransposeOptions),
                );
                let [_, c, oh, ow] = out_shape;
                reshape(&mut l, swapped_t, &[1, oh, ow, c], out);
            }
        }
        l.tensor_of.insert(out_value, out);
    }
    let output = l.tensor_of[&graph.output_name];
    l.model.outputs = vec![output];
    Ok(l.model)
}

/// Writes `graph` as TFLite.
pub fn write(graph: &Graph, precision: TflitePrecision) -> Result<TfliteFiles, TfliteError> {
    match precision {
        TflitePrecision::Float32 => {
            let mut desc = lower(graph, None)?;
            desc.description = "effectc student (float32)".into();
            let bytes = serialize(&desc)?;
            Ok(TfliteFiles {
                shipped: bytes.clone(),
                core: bytes,
            })
        }
        TflitePrecision::Int8(calibration) => {
            let plan = QuantPlan::new(graph, calibration, ActivationType::Int8)?;
            let mut core = lower(graph, Some(&plan))?;
            core.description = format!("effectc student{CORE_SUFFIX}");
            let core_bytes = serialize(&core)?;
            // Shipped = the core + float edge tensors (appended last) + QUANTIZE first
            // and DEQUANTIZE last.
            let mut shipped = core.clone();
            shipped.description = format!("effectc student{SHIPPED_SUFFIX}");
            let (core_in, core_out) = (core.inputs[0], core.outputs[0]);
            let float_of = |t: &Tensor, name: String| Tensor {
                name,
                dtype: TensorType::FLOAT32,
                quant: None,
                buffer: 0,
                shape: t.shape.clone(),
                sparsity: None,
            };
            let fin = float_of(
                &core.tensors[core_in as usize],
                format!("{}_float", core.tensors[core_in as usize].name),
            );
            let fout = float_of(
                &core.tensors[core_out as usize],
                format!("{}_float", core.tensors[core_out as usize].name),
            );
            shipped.tensors.push(fin);
            shipped.tensors.push(fout);
            let n = shipped.tensors.len() as i32;
            let (fin, fout) = (n - 2, n - 1);
            shipped.ops.insert(
                0,
                tfl::Op {
                    code: BuiltinOperator::QUANTIZE,
                    version: 2,
                    inputs: vec![fin],
                    outputs: vec![core_in],
                    options: Options::Empty(BuiltinOptions::QuantizeOptions),
                },
            );
            shipped.ops.push(tfl::Op {
                code: BuiltinOperator::DEQUANTIZE,
                version: 2,
                inputs: vec![core_out],
                outputs: vec![fout],
                options: Options::Empty(BuiltinOptions::DequantizeOptions),
            });
            shipped.inputs = vec![fin];
            shipped.outputs = vec![fout];
            Ok(TfliteFiles {
                shipped: serialize(&shipped)?,
                core: core_bytes,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_modes() {
        // k3 s1 p1: SAME. k3 s2 p1 on even input: TFLite SAME pads (0, 1), PyTorch (1, 0).
        assert_eq!(axis_padding(32, 3, 1, 1, 32), AxisPadding::Same);
        assert_eq!(axis_padding(32, 3, 2, 1, 16), AxisPadding::Explicit(1, 0));
        assert_eq!(axis_padding(32, 1, 1, 0, 32), AxisPadding::Same);
        assert_eq!(axis_padding(32, 3, 1, 0, 30), AxisPadding::Valid);
        assert_eq!(axis_padding(16, 4, 1, 1, 16), AxisPadding::Same);
        assert_eq!(axis_padding(16, 4, 1, 2, 16), AxisPadding::Explicit(2, 1));
    }
}
