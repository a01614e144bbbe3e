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

use super::quantize::{int8_graph, ActivationType, Calibration, QParams, QuantError, QuantPlan};
use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{Graph, IrError, Node, Op};
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

impl AxisPadding {
    /// The (begin, end) pad an explicit PAD writes for this axis.
    fn pads(self, in_len: usize, kernel: usize, stride: usize, out_len: usize) -> [usize; 2] {
        match self {
            AxisPadding::Explicit(begin, end) => [begin, end],
            AxisPadding::Valid => [0, 0],
            AxisPadding::Same => {
                let total = ((out_len - 1) * stride + kernel).saturating_sub(in_len);
                [total / 2, total - total / 2]
            }
        }
    }
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

/// The model being built, and where each IR value went.
struct Lowering<'a> {
    model: Model,
    plan: Option<&'a QuantPlan>,
    shapes: BTreeMap<String, [usize; 4]>,
    /// IR value → tensor index holding it.
    tensor_of: BTreeMap<String, i32>,
}

/// One IR node as lowered: its input tensors and the tensor it writes (for a conv
/// fused with its ReLU, the ReLU's value).
struct NodeIo<'g> {
    node: &'g Node,
    ins: Vec<i32>,
    out: i32,
    /// NCHW.
    out_shape: [usize; 4],
    relu: bool,
}

/// A conv node's parameters, as the IR holds them.
struct Conv<'g> {
    weight: &'g [f32],
    /// OIHW.
    shape: [usize; 4],
    bias: &'g [f32],
    stride: [usize; 2],
    pads: [usize; 4],
    groups: usize,
}

/// Builds the model: for int8, the core (int8 I/O).
fn lower(graph: &Graph, plan: Option<&QuantPlan>) -> Result<Model, TfliteError> {
    if graph.input_shape[0] != 1 {
        return Err(TfliteError::Batch(graph.input_shape[0]));
    }
    let fused: BTreeMap<String, String> = super::quantize::fusable_conv_relu(graph);
    let fused_relus: BTreeSet<&String> = fused.values().collect();
    let mut l = Lowering {
        model: Model::new(String::new(), Some("main".into())),
        plan,
        shapes: graph.shapes()?,
        tensor_of: Default::default(),
    };
    let input_params = l.params(&graph.input_name);
    let input = l.activation(&graph.input_name, graph.input_shape, input_params);
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
        let out_shape = l.shapes[&out_value];
        let ins = node.inputs.iter().map(|i| l.tensor_of[i]).collect();
        let out_params = l.params(&out_value);
        let out = l.activation(&out_value, out_shape, out_params);
        let io = NodeIo {
            node,
            ins,
            out,
            out_shape,
            relu,
        };
        l.node(&io)?;
        l.tensor_of.insert(out_value, out);
    }
    let output = l.tensor_of[&graph.output_name];
    l.model.outputs = vec![output];
    Ok(l.model)
}

impl Lowering<'_> {
    /// The grid IR value `v` is stored on (int8 only).
    fn params(&self, v: &str) -> Option<QParams> {
        self.plan.and_then(|p| p.activations.get(v).copied())
    }

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

    /// The operators (and constants) of one IR node.
    fn node(&mut self, io: &NodeIo) -> Result<(), TfliteError> {
        let (ins, out) = (io.ins.clone(), vec![io.out]);
        let none = ActivationFunctionType::NONE;
        match &io.node.op {
            Op::Conv2d {
                weight,
                weight_shape,
                bias,
                stride,
                pads,
                groups,
            } => {
                let conv = Conv {
                    weight,
                    shape: *weight_shape,
                    bias,
                    stride: *stride,
                    pads: *pads,
                    groups: *groups,
                };
                self.conv(io, &conv)?;
            }
            Op::Relu => self.op(BuiltinOperator::RELU, ins, out, Options::None),
            Op::Tanh => self.op(BuiltinOperator::TANH, ins, out, Options::None),
            Op::Sigmoid => self.op(BuiltinOperator::LOGISTIC, ins, out, Options::None),
            Op::Add => {
                let options = Options::Add {
                    act: none,
                    pot_scale_int16: true,
                };
                self.op(BuiltinOperator::ADD, ins, out, options);
            }
            Op::ConcatChannels => {
                let options = Options::Concat { axis: 3, act: none };
                self.op(BuiltinOperator::CONCATENATION, ins, out, options);
            }
            Op::UpsampleNearest { .. } => self.upsample(io),
            Op::DepthToSpace { block } => self.depth_to_space(io, *block),
        }
        Ok(())
    }

    /// CONV_2D, or DEPTHWISE_CONV_2D when each group is one channel.
    fn conv(&mut self, io: &NodeIo, c: &Conv) -> Result<(), TfliteError> {
        let in_shape = self.shapes[&io.node.inputs[0]];
        let (x, padding) = self.conv_input(io, c, in_shape);
        let depthwise = c.groups > 1 && c.groups == in_shape[1] && c.shape[1] == 1;
        if c.groups != 1 && !depthwise {
            return Err(TfliteError::Graph(IrError::Shape {
                node: io.node.name.clone(),
                reason: format!(
                    "grouped conv (groups {}) is neither dense nor depthwise: TFLite has no op for it",
                    c.groups
                ),
            }));
        }
        let (w, b) = self.conv_weights(&io.node.name, c, depthwise);
        let (stride_h, stride_w) = (c.stride[0] as i32, c.stride[1] as i32);
        let act = fused_activation(io.relu);
        let (code, options) = if depthwise {
            let options = Options::Depthwise {
                padding,
                stride_h,
                stride_w,
                depth_multiplier: 1,
                act,
                dilation_h: 1,
                dilation_w: 1,
            };
            (BuiltinOperator::DEPTHWISE_CONV_2D, options)
        } else {
            let options = Options::Conv2D {
                padding,
                stride_h,
                stride_w,
                act,
                dilation_h: 1,
                dilation_w: 1,
            };
            (BuiltinOperator::CONV_2D, options)
        };
        self.op(code, vec![x, w, b], vec![io.out], options);
        Ok(())
    }

    /// The conv's input and padding mode: SAME or VALID on the input itself when both
    /// axes allow it, else an explicit PAD, then VALID.
    fn conv_input(&mut self, io: &NodeIo, c: &Conv, in_shape: [usize; 4]) -> (i32, Padding) {
        let [_, _, kh, kw] = c.shape;
        let out = io.out_shape;
        let ph = axis_padding(in_shape[2], kh, c.stride[0], c.pads[0], out[2]);
        let pw = axis_padding(in_shape[3], kw, c.stride[1], c.pads[1], out[3]);
        match (ph, pw) {
            (AxisPadding::Same, AxisPadding::Same) => return (io.ins[0], Padding::SAME),
            (AxisPadding::Valid, AxisPadding::Valid) => return (io.ins[0], Padding::VALID),
            _ => {}
        }
        let [t, b] = ph.pads(in_shape[2], kh, c.stride[0], out[2]);
        let [le, r] = pw.pads(in_shape[3], kw, c.stride[1], out[3]);
        let name = &io.node.name;
        let pads = i32_bytes([0, 0, t as i32, b as i32, le as i32, r as i32, 0, 0]);
        let paddings = self.add_tensor(
            &format!("{name}_paddings"),
            &[4, 2],
            TensorType::INT32,
            Some(pads),
            None,
        );
        let padded_shape = [1, in_shape[1], in_shape[2] + t + b, in_shape[3] + le + r];
        // PAD keeps its input's grid (LiteRT pads int8 with the zero point).
        let grid = self.params(&io.node.inputs[0]);
        let padded = self.activation(&format!("{name}_padded"), padded_shape, grid);
        let options = Options::Empty(BuiltinOptions::PadOptions);
        self.op(
            BuiltinOperator::PAD,
            vec![io.ins[0], paddings],
            vec![padded],
            options,
        );
        (padded, Padding::VALID)
    }

    /// The weight and bias tensors: OIHW → OHWI (dense) or 1HW(C*m) (depthwise);
    /// int8 weights and int32 biases where the plan quantized the conv, else float.
    fn conv_weights(&mut self, name: &str, c: &Conv, depthwise: bool) -> (i32, i32) {
        let [o, cpg, kh, kw] = c.shape;
        let (w_shape, w_index): (Vec<usize>, Box<dyn Fn(usize, usize, usize, usize) -> usize>) =
            if depthwise {
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
        let (w_name, b_name) = (format!("{name}_weight"), format!("{name}_bias"));
        let plan = self.plan;
        let Some(cq) = plan.and_then(|p| p.convs.get(name)) else {
            let data = relayout(c.weight, c.shape, &*w_index);
            let w = self.add_tensor(
                &w_name,
                &w_shape,
                TensorType::FLOAT32,
                Some(f32_bytes(data)),
                None,
            );
            let bias = f32_bytes(c.bias.iter().copied());
            let b = self.add_tensor(&b_name, &[o], TensorType::FLOAT32, Some(bias), None);
            return (w, b);
        };
        let data = relayout(&cq.weight, c.shape, &*w_index);
        let wq = Quant {
            scale: cq.weight_scales.clone(),
            zero_point: vec![0; o],
            quantized_dimension: if depthwise { 3 } else { 0 },
        };
        let data = data.iter().map(|v| *v as u8).collect();
        let w = self.add_tensor(&w_name, &w_shape, TensorType::INT8, Some(data), Some(wq));
        let bq = Quant {
            scale: cq.bias_scales.clone(),
            zero_point: vec![0; o],
            quantized_dimension: 0,
        };
        let bias = i32_bytes(cq.bias.iter().copied());
        let b = self.add_tensor(&b_name, &[o], TensorType::INT32, Some(bias), Some(bq));
        (w, b)
    }

    /// RESIZE_NEAREST_NEIGHBOR to the output's size.
    fn upsample(&mut self, io: &NodeIo) {
        let size = [io.out_shape[2] as i32, io.out_shape[3] as i32];
        let size = self.add_tensor(
            &format!("{}_size", io.node.name),
            &[2],
            TensorType::INT32,
            Some(i32_bytes(size)),
            None,
        );
        let options = Options::ResizeNearest {
            align_corners: false,
            half_pixel_centers: false,
        };
        let code = BuiltinOperator::RESIZE_NEAREST_NEIGHBOR;
        self.op(code, vec![io.ins[0], size], vec![io.out], options);
    }

    /// NNAPI runs DEPTH_TO_SPACE, but tract (our verifier) does not read it: write the
    /// same permutation as RESHAPE → TRANSPOSE → RESHAPE, 4-D throughout, which both
    /// run. NHWC [1, H, W, b*b*C] is [H, W, b, b*C] with the row offset outermost (DCR);
    /// swapping W and the row offset gives [H, b, W, b*C], which is [1, H*b, W*b, C].
    fn depth_to_space(&mut self, io: &NodeIo, b: usize) {
        let name = &io.node.name;
        let [_, c_in, h, w] = self.shapes[&io.node.inputs[0]];
        // The two intermediate tensors keep the input's grid (a permutation).
        let grid = self.params(&io.node.inputs[0]);
        let split = [h, w, b, c_in / b];
        let split_t = self.intermediate(&format!("{name}_split"), &split, grid);
        self.reshape(name, io.ins[0], &split, split_t);
        let perm = i32_bytes([0, 2, 1, 3]);
        let perm = self.add_tensor(
            &format!("{name}_perm"),
            &[4],
            TensorType::INT32,
            Some(perm),
            None,
        );
        let swapped = self.intermediate(&format!("{name}_swapped"), &[h, b, w, c_in / b], grid);
        let transpose = Options::Empty(BuiltinOptions::TransposeOptions);
        self.op(
            BuiltinOperator::TRANSPOSE,
            vec![split_t, perm],
            vec![swapped],
            transpose,
        );
        let [_, c, oh, ow] = io.out_shape;
        self.reshape(name, swapped, &[1, oh, ow, c], io.out);
    }

    /// A computed tensor of any rank on `grid`.
    fn intermediate(&mut self, name: &str, shape: &[usize], grid: Option<QParams>) -> i32 {
        let dtype = self.act_dtype();
        self.add_tensor(name, shape, dtype, None, Self::act_quant(grid))
    }

    /// RESHAPE of `input` into `output` of shape `to` (named in an operand and the options).
    fn reshape(&mut self, node: &str, input: i32, to: &[usize], output: i32) {
        let to_i32: Vec<i32> = to.iter().map(|d| *d as i32).collect();
        let shape = self.add_tensor(
            &format!("{node}_shape{}", self.model.tensors.len()),
            &[to.len()],
            TensorType::INT32,
            Some(i32_bytes(to_i32.iter().copied())),
            None,
        );
        let options = Options::Reshape {
            new_shape: Some(to_i32),
        };
        self.op(
            BuiltinOperator::RESHAPE,
            vec![input, shape],
            vec![output],
            options,
        );
    }
}

/// OIHW `src` in the layout `index` gives each (o, i, y, x).
fn relayout<T: Copy + Default>(
    src: &[T],
    [o, cpg, kh, kw]: [usize; 4],
    index: &dyn Fn(usize, usize, usize, usize) -> usize,
) -> Vec<T> {
    let mut data = vec![T::default(); o * cpg * kh * kw];
    for oc in 0..o {
        for ic in 0..cpg {
            for y in 0..kh {
                for xx in 0..kw {
                    data[index(oc, ic, y, xx)] = src[((oc * cpg + ic) * kh + y) * kw + xx];
                }
            }
        }
    }
    data
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

/// Writes `graph` as TFLite.
pub fn write(graph: &Graph, precision: TflitePrecision) -> Result<TfliteFiles, TfliteError> {
    match precision {
        TflitePrecision::Float32 => {
            let mut model = lower(graph, None)?;
            model.description = "effectc student (float32)".into();
            let bytes = serialize(&model)?;
            Ok(TfliteFiles {
                shipped: bytes.clone(),
                core: bytes,
            })
        }
        TflitePrecision::Int8(calibration) => {
            let (graph, calibration) = int8_graph(graph, calibration)?;
            let plan = QuantPlan::new(&graph, &calibration, ActivationType::Int8)?;
            let mut core = lower(&graph, Some(&plan))?;
            core.description = format!("effectc student{CORE_SUFFIX}");
            Ok(TfliteFiles {
                shipped: serialize(&with_float_edges(&core))?,
                core: serialize(&core)?,
            })
        }
    }
}

/// The shipped int8 model: the core + float edge tensors (appended last) + QUANTIZE
/// first and DEQUANTIZE last.
fn with_float_edges(core: &Model) -> Model {
    let mut shipped = core.clone();
    shipped.description = format!("effectc student{SHIPPED_SUFFIX}");
    let (core_in, core_out) = (core.inputs[0], core.outputs[0]);
    for t in [core_in, core_out] {
        let t = &core.tensors[t as usize];
        shipped.tensors.push(Tensor {
            name: format!("{}_float", t.name),
            dtype: TensorType::FLOAT32,
            quant: None,
            buffer: 0,
            shape: t.shape.clone(),
            sparsity: None,
        });
    }
    let n = shipped.tensors.len() as i32;
    let (fin, fout) = (n - 2, n - 1);
    let edge = |code, inputs, outputs, options| tfl::Op {
        code,
        version: 2,
        inputs,
        outputs,
        options: Options::Empty(options),
    };
    let quantize = edge(
        BuiltinOperator::QUANTIZE,
        vec![fin],
        vec![core_in],
        BuiltinOptions::QuantizeOptions,
    );
    shipped.ops.insert(0, quantize);
    shipped.ops.push(edge(
        BuiltinOperator::DEQUANTIZE,
        vec![core_out],
        vec![fout],
        BuiltinOptions::DequantizeOptions,
    ));
    shipped.inputs = vec![fin];
    shipped.outputs = vec![fout];
    shipped
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
