//! TFLite flatbuffer writer for Android / NNAPI, NHWC.
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
//! from one description: the *core* (int8 in, int8 out) that tract verifies, and the
//! *shipped* file = the same tensors, buffers and ops plus the two edge ops and two
//! float tensors appended. `core_of_shipped` reads a shipped file back, strips the
//! edges and re-serializes: it must give the verified core byte for byte.

use flatbuffers::{FlatBufferBuilder, Push, PushAlignment, WIPOffset};
use tract_tflite::tflite::{
    self, ActivationFunctionType, AddOptions, AddOptionsArgs, BuiltinOptions, ConcatenationOptions,
    ConcatenationOptionsArgs, Conv2DOptions, Conv2DOptionsArgs, DepthwiseConv2DOptions,
    DepthwiseConv2DOptionsArgs, DequantizeOptions, DequantizeOptionsArgs, PadOptions,
    PadOptionsArgs, Padding, QuantizeOptions, QuantizeOptionsArgs, ReshapeOptions,
    ReshapeOptionsArgs, ResizeNearestNeighborOptions, ResizeNearestNeighborOptionsArgs,
    TransposeOptions, TransposeOptionsArgs,
};
pub use tract_tflite::tflite::{BuiltinOperator, TensorType};

use super::quantize::{int8_graph, ActivationType, Calibration, QParams, QuantError, QuantPlan};
use crate::ir::{Graph, IrError, Op};

/// TFLite schema version.
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum TfliteError {
    #[error("cannot write TFLite: invalid graph: {0}")]
    Graph(#[from] IrError),
    #[error("cannot write int8 TFLite: {0}")]
    Quant(#[from] QuantError),
    #[error("cannot write TFLite: batch {0} (the exported graph must have batch 1)")]
    Batch(usize),
    #[error("not a TFLite file this writer made: {0}")]
    Read(String),
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

// ---------------------------------------------------------------------------------
// A small description of a TFLite model: written by `serialize`, read back by `parse`.
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct QuantDesc {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub quantized_dimension: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    pub name: String,
    pub shape: Vec<i32>,
    pub dtype: TensorType,
    /// 0: no data (the schema's empty sentinel buffer).
    pub buffer: u32,
    pub quant: Option<QuantDesc>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OptionsDesc {
    None,
    Conv2D {
        padding: Padding,
        stride_h: i32,
        stride_w: i32,
        relu: bool,
    },
    Depthwise {
        padding: Padding,
        stride_h: i32,
        stride_w: i32,
        depth_multiplier: i32,
        relu: bool,
    },
    Add,
    Concat {
        axis: i32,
    },
    ResizeNearest,
    Pad,
    Quantize,
    Dequantize,
    Reshape {
        new_shape: Vec<i32>,
    },
    Transpose,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpDesc {
    pub code: BuiltinOperator,
    pub version: i32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: OptionsDesc,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelDesc {
    pub description: String,
    pub tensors: Vec<TensorDesc>,
    /// Index 0 is the empty sentinel.
    pub buffers: Vec<Vec<u8>>,
    pub ops: Vec<OpDesc>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
}

/// Bumps the builder's alignment to 16 so that weight buffers can be 16-aligned
/// (TFLite's converter aligns them so; kernels read them in place).
struct Align16;
impl Push for Align16 {
    type Output = Align16;
    unsafe fn push(&self, _dst: &mut [u8], _written_len: usize) {}
    fn size() -> usize {
        0
    }
    fn alignment() -> PushAlignment {
        PushAlignment::new(16)
    }
}

/// `data` as a byte vector that starts on a 16-byte boundary of the finished file.
pub fn aligned_bytes<'fb>(
    fb: &mut FlatBufferBuilder<'fb>,
    data: &[u8],
) -> WIPOffset<flatbuffers::Vector<'fb, u8>> {
    fb.push(Align16);
    // The builder writes back to front: pad so that the data ends (and so, the buffer
    // being a multiple of 16 long, starts) on a 16-byte boundary.
    let pad = (16 - data.len() % 16) % 16;
    for _ in 0..pad {
        fb.push(0u8);
    }
    fb.create_vector(data)
}

/// Deterministic: the same description gives the same bytes.
pub fn serialize(desc: &ModelDesc) -> Vec<u8> {
    let mut fb = FlatBufferBuilder::new();
    // Operator codes: unique (code, version), in order of first use.
    let mut codes: Vec<(BuiltinOperator, i32)> = Vec::new();
    for op in &desc.ops {
        if !codes.contains(&(op.code, op.version)) {
            codes.push((op.code, op.version));
        }
    }
    let buffers: Vec<_> = desc
        .buffers
        .iter()
        .map(|data| {
            let data = if data.is_empty() {
                None
            } else {
                Some(aligned_bytes(&mut fb, data))
            };
            tflite::Buffer::create(
                &mut fb,
                &tflite::BufferArgs {
                    data,
                    ..Default::default()
                },
            )
        })
        .collect();
    let tensors: Vec<_> = desc
        .tensors
        .iter()
        .map(|t| {
            let shape = fb.create_vector(&t.shape);
            let name = fb.create_string(&t.name);
            let quantization = t.quant.as_ref().map(|q| {
                let scale = fb.create_vector(&q.scale);
                let zero_point = fb.create_vector(&q.zero_point);
                tflite::QuantizationParameters::create(
                    &mut fb,
                    &tflite::QuantizationParametersArgs {
                        scale: Some(scale),
                        zero_point: Some(zero_point),
                        quantized_dimension: q.quantized_dimension,
                        ..Default::default()
                    },
                )
            });
            tflite::Tensor::create(
                &mut fb,
                &tflite::TensorArgs {
                    shape: Some(shape),
                    type_: t.dtype,
                    buffer: t.buffer,
                    name: Some(name),
                    quantization,
                    ..Default::default()
                },
            )
        })
        .collect();
    let operators: Vec<_> = desc
        .ops
        .iter()
        .map(|op| {
            let opcode_index = codes
                .iter()
                .position(|c| *c == (op.code, op.version))
                .unwrap_or(0) as u32;
            let inputs = fb.create_vector(&op.inputs);
            let outputs = fb.create_vector(&op.outputs);
            let act = |relu: bool| {
                if relu {
                    ActivationFunctionType::RELU
                } else {
                    ActivationFunctionType::NONE
                }
            };
            let (builtin_options_type, builtin_options) = match &op.options {
                OptionsDesc::None => (BuiltinOptions::NONE, None),
                OptionsDesc::Conv2D {
                    padding,
                    stride_h,
                    stride_w,
                    relu,
                } => (
                    BuiltinOptions::Conv2DOptions,
                    Some(
                        Conv2DOptions::create(
                            &mut fb,
                            &Conv2DOptionsArgs {
                                padding: *padding,
                                stride_w: *stride_w,
                                stride_h: *stride_h,
                                fused_activation_function: act(*relu),
                                dilation_w_factor: 1,
                                dilation_h_factor: 1,
                                ..Default::default()
                            },
                        )
                        .as_union_value(),
                    ),
                ),
                OptionsDesc::Depthwise {
                    padding,
                    stride_h,
                    stride_w,
                    depth_multiplier,
                    relu,
                } => (
                    BuiltinOptions::DepthwiseConv2DOptions,
                    Some(
                        DepthwiseConv2DOptions::create(
                            &mut fb,
                            &DepthwiseConv2DOptionsArgs {
                                padding: *padding,
                                stride_w: *stride_w,
                                stride_h: *stride_h,
                                depth_multiplier: *depth_multiplier,
                                fused_activation_function: act(*relu),
                                dilation_w_factor: 1,
                                dilation_h_factor: 1,
                            },
                        )
                        .as_union_value(),
                    ),
                ),
                OptionsDesc::Add => (
                    BuiltinOptions::AddOptions,
                    Some(
                        AddOptions::create(
                            &mut fb,
                            &AddOptionsArgs {
                                fused_activation_function: ActivationFunctionType::NONE,
                                ..Default::default()
                            },
                        )
                        .as_union_value(),
                    ),
                ),
                OptionsDesc::Concat { axis } => (
                    BuiltinOptions::ConcatenationOptions,
                    Some(
                        ConcatenationOptions::create(
                            &mut fb,
                            &ConcatenationOptionsArgs {
                                axis: *axis,
                                fused_activation_function: ActivationFunctionType::NONE,
                            },
                        )
                        .as_union_value(),
                    ),
                ),
                OptionsDesc::ResizeNearest => (
                    BuiltinOptions::ResizeNearestNeighborOptions,
                    Some(
                        ResizeNearestNeighborOptions::create(
                            &mut fb,
                            &ResizeNearestNeighborOptionsArgs {
                                align_corners: false,
                                half_pixel_centers: false,
                            },
                        )
                        .as_union_value(),
                    ),
                ),
                OptionsDesc::Pad => (
                    BuiltinOptions::PadOptions,
                    Some(PadOptions::create(&mut fb, &PadOptionsArgs {}).as_union_value()),
                ),
                OptionsDesc::Quantize => (
                    BuiltinOptions::QuantizeOptions,
                    Some(
                        QuantizeOptions::create(&mut fb, &QuantizeOptionsArgs {}).as_union_value(),
                    ),
                ),
                OptionsDesc::Dequantize => (
                    BuiltinOptions::DequantizeOptions,
                    Some(
                        DequantizeOptions::create(&mut fb, &DequantizeOptionsArgs {})
                            .as_union_value(),
                    ),
                ),
                OptionsDesc::Reshape { new_shape } => {
                    let new_shape = fb.create_vector(new_shape);
                    (
                        BuiltinOptions::ReshapeOptions,
                        Some(
                            ReshapeOptions::create(
                                &mut fb,
                                &ReshapeOptionsArgs {
                                    new_shape: Some(new_shape),
                                },
                            )
                            .as_union_value(),
                        ),
                    )
                }
                OptionsDesc::Transpose => (
                    BuiltinOptions::TransposeOptions,
                    Some(
                        TransposeOptions::create(&mut fb, &TransposeOptionsArgs {})
                            .as_union_value(),
                    ),
                ),
            };
            tflite::Operator::create(
                &mut fb,
                &tflite::OperatorArgs {
                    opcode_index,
                    inputs: Some(inputs),
                    outputs: Some(outputs),
                    builtin_options_type,
                    builtin_options,
                    ..Default::default()
                },
            )
        })
        .collect();
    let operator_codes: Vec<_> = codes
        .iter()
        .map(|(code, version)| {
            // Codes < 127 also go in the deprecated int8 field, which older runtimes read.
            let deprecated = if code.0 < 127 { code.0 as i8 } else { 127 };
            tflite::OperatorCode::create(
                &mut fb,
                &tflite::OperatorCodeArgs {
                    deprecated_builtin_code: deprecated,
                    custom_code: None,
                    version: *version,
                    builtin_code: *code,
                },
            )
        })
        .collect();
    let tensors = fb.create_vector(&tensors);
    let sg_inputs = fb.create_vector(&desc.inputs);
    let sg_outputs = fb.create_vector(&desc.outputs);
    let operators = fb.create_vector(&operators);
    let sg_name = fb.create_string("main");
    let subgraph = tflite::SubGraph::create(
        &mut fb,
        &tflite::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(sg_inputs),
            outputs: Some(sg_outputs),
            operators: Some(operators),
            name: Some(sg_name),
            ..Default::default()
        },
    );
    let subgraphs = fb.create_vector(&[subgraph]);
    let operator_codes = fb.create_vector(&operator_codes);
    let buffers = fb.create_vector(&buffers);
    let description = fb.create_string(&desc.description);
    let model = tflite::Model::create(
        &mut fb,
        &tflite::ModelArgs {
            version: SCHEMA_VERSION,
            operator_codes: Some(operator_codes),
            subgraphs: Some(subgraphs),
            description: Some(description),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    tflite::finish_model_buffer(&mut fb, model);
    fb.finished_data().to_vec()
}

/// The builtin operator names (`CONV_2D`, `ADD`...) a TFLite file uses: what a target
/// profile's `ops` allow-list is checked against.
pub fn op_names(bytes: &[u8]) -> Result<std::collections::BTreeSet<String>, TfliteError> {
    Ok(parse(bytes)?
        .ops
        .iter()
        .map(|op| {
            op.code
                .variant_name()
                .map(String::from)
                .unwrap_or_else(|| format!("BUILTIN_{}", op.code.0))
        })
        .collect())
}

/// Reads a file `serialize` wrote back into its description.
pub fn parse(bytes: &[u8]) -> Result<ModelDesc, TfliteError> {
    let bad = |m: &str| TfliteError::Read(m.to_string());
    let model = tflite::root_as_model(bytes).map_err(|e| TfliteError::Read(e.to_string()))?;
    let codes: Vec<(BuiltinOperator, i32)> = model
        .operator_codes()
        .ok_or_else(|| bad("no operator codes"))?
        .iter()
        .map(|c| (c.builtin_code(), c.version()))
        .collect();
    let buffers: Vec<Vec<u8>> = model
        .buffers()
        .ok_or_else(|| bad("no buffers"))?
        .iter()
        .map(|b| b.data().map(|d| d.bytes().to_vec()).unwrap_or_default())
        .collect();
    let subgraphs = model.subgraphs().ok_or_else(|| bad("no subgraphs"))?;
    if subgraphs.len() != 1 {
        return Err(bad("expected exactly one subgraph"));
    }
    let sg = subgraphs.get(0);
    let tensors = sg
        .tensors()
        .ok_or_else(|| bad("no tensors"))?
        .iter()
        .map(|t| TensorDesc {
            name: t.name().unwrap_or_default().to_string(),
            shape: t.shape().map(|s| s.iter().collect()).unwrap_or_default(),
            dtype: t.type_(),
            buffer: t.buffer(),
            quant: t.quantization().and_then(|q| {
                Some(QuantDesc {
                    scale: q.scale()?.iter().collect(),
                    zero_point: q.zero_point()?.iter().collect(),
                    quantized_dimension: q.quantized_dimension(),
                })
            }),
        })
        .collect();
    let mut ops = Vec::new();
    for op in sg.operators().ok_or_else(|| bad("no operators"))? {
        let (code, version) = *codes
            .get(op.opcode_index() as usize)
            .ok_or_else(|| bad("opcode index out of range"))?;
        let relu = |a: ActivationFunctionType| a == ActivationFunctionType::RELU;
        let options = match op.builtin_options_type() {
            BuiltinOptions::NONE => OptionsDesc::None,
            BuiltinOptions::Conv2DOptions => {
                let o = op
                    .builtin_options_as_conv_2_doptions()
                    .ok_or_else(|| bad("conv options"))?;
                OptionsDesc::Conv2D {
                    padding: o.padding(),
                    stride_h: o.stride_h(),
                    stride_w: o.stride_w(),
                    relu: relu(o.fused_activation_function()),
                }
            }
            BuiltinOptions::DepthwiseConv2DOptions => {
                let o = op
                    .builtin_options_as_depthwise_conv_2_doptions()
                    .ok_or_else(|| bad("depthwise options"))?;
                OptionsDesc::Depthwise {
                    padding: o.padding(),
                    stride_h: o.stride_h(),
                    stride_w: o.stride_w(),
                    depth_multiplier: o.depth_multiplier(),
                    relu: relu(o.fused_activation_function()),
                }
            }
            BuiltinOptions::AddOptions => OptionsDesc::Add,
            BuiltinOptions::ConcatenationOptions => OptionsDesc::Concat {
                axis: op
                    .builtin_options_as_concatenation_options()
                    .ok_or_else(|| bad("concat options"))?
                    .axis(),
            },
            BuiltinOptions::ResizeNearestNeighborOptions => OptionsDesc::ResizeNearest,
            BuiltinOptions::PadOptions => OptionsDesc::Pad,
            BuiltinOptions::QuantizeOptions => OptionsDesc::Quantize,
            BuiltinOptions::DequantizeOptions => OptionsDesc::Dequantize,
            BuiltinOptions::ReshapeOptions => OptionsDesc::Reshape {
                new_shape: op
                    .builtin_options_as_reshape_options()
                    .and_then(|o| o.new_shape())
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
            },
            BuiltinOptions::TransposeOptions => OptionsDesc::Transpose,
            other => {
                return Err(TfliteError::Read(format!(
                    "unexpected options type {other:?}"
                )))
            }
        };
        ops.push(OpDesc {
            code,
            version,
            inputs: op.inputs().map(|v| v.iter().collect()).unwrap_or_default(),
            outputs: op.outputs().map(|v| v.iter().collect()).unwrap_or_default(),
            options,
        });
    }
    Ok(ModelDesc {
        description: model.description().unwrap_or_default().to_string(),
        tensors,
        buffers,
        ops,
        inputs: sg.inputs().map(|v| v.iter().collect()).unwrap_or_default(),
        outputs: sg.outputs().map(|v| v.iter().collect()).unwrap_or_default(),
    })
}

/// The verified core inside a shipped int8 file: the QUANTIZE / DEQUANTIZE edge ops
/// and their float tensors (the last two tensors) removed, re-serialized.
pub fn core_of_shipped(shipped: &[u8]) -> Result<Vec<u8>, TfliteError> {
    let mut desc = parse(shipped)?;
    let first = desc
        .ops
        .first()
        .ok_or_else(|| TfliteError::Read("no operators".into()))?;
    let last = desc
        .ops
        .last()
        .ok_or_else(|| TfliteError::Read("no operators".into()))?;
    if first.code != BuiltinOperator::QUANTIZE || last.code != BuiltinOperator::DEQUANTIZE {
        return Err(TfliteError::Read(
            "a shipped int8 file starts with QUANTIZE and ends with DEQUANTIZE".into(),
        ));
    }
    let (core_in, core_out) = (first.outputs[0], last.inputs[0]);
    let n = desc.tensors.len() as i32;
    if desc.inputs != [n - 2] || desc.outputs != [n - 1] {
        return Err(TfliteError::Read(
            "edge tensors are not the last two tensors".into(),
        ));
    }
    desc.ops.remove(0);
    desc.ops.pop();
    desc.tensors.truncate(desc.tensors.len() - 2);
    desc.inputs = vec![core_in];
    desc.outputs = vec![core_out];
    desc.description = desc.description.replace(SHIPPED_SUFFIX, CORE_SUFFIX);
    Ok(serialize(&desc))
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
    desc: ModelDesc,
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

    fn act_quant(q: Option<QParams>) -> Option<QuantDesc> {
        q.map(|q| QuantDesc {
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
        quant: Option<QuantDesc>,
    ) -> i32 {
        let buffer = match data {
            Some(d) => {
                self.desc.buffers.push(d);
                (self.desc.buffers.len() - 1) as u32
            }
            None => 0,
        };
        self.desc.tensors.push(TensorDesc {
            name: name.to_string(),
            shape: shape.iter().map(|d| *d as i32).collect(),
            dtype,
            buffer,
            quant,
        });
        (self.desc.tensors.len() - 1) as i32
    }

    /// An activation tensor (NHWC) for IR value `value` stored on `params`' grid.
    fn activation(&mut self, name: &str, nchw: [usize; 4], params: Option<QParams>) -> i32 {
        let [n, c, h, w] = nchw;
        let dtype = self.act_dtype();
        self.add_tensor(name, &[n, h, w, c], dtype, None, Self::act_quant(params))
    }

    fn op(
        &mut self,
        code: BuiltinOperator,
        inputs: Vec<i32>,
        outputs: Vec<i32>,
        options: OptionsDesc,
    ) {
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
        self.desc.ops.push(OpDesc {
            code,
            version,
            inputs,
            outputs,
            options,
        });
    }
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: impl IntoIterator<Item = i32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Builds the model description: for int8, the core (int8 I/O).
fn lower(graph: &Graph, plan: Option<&QuantPlan>) -> Result<ModelDesc, TfliteError> {
    let shapes = graph.shapes()?;
    if graph.input_shape[0] != 1 {
        return Err(TfliteError::Batch(graph.input_shape[0]));
    }
    let fused: std::collections::BTreeMap<String, String> =
        super::quantize::fusable_conv_relu(graph);
    let fused_relus: std::collections::BTreeSet<&String> = fused.values().collect();
    let desc = ModelDesc {
        description: String::new(),
        tensors: Vec::new(),
        buffers: vec![Vec::new()],
        ops: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let mut l = Lowering {
        desc,
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
    l.desc.inputs = vec![input];

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
                            OptionsDesc::Pad,
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
                        let wq = QuantDesc {
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
                        let bq = QuantDesc {
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
                        OptionsDesc::Depthwise {
                            padding,
                            stride_h,
                            stride_w,
                            depth_multiplier: 1,
                            relu,
                        },
                    );
                } else {
                    l.op(
                        BuiltinOperator::CONV_2D,
                        vec![x, w_tensor, b_tensor],
                        vec![out],
                        OptionsDesc::Conv2D {
                            padding,
                            stride_h,
                            stride_w,
                            relu,
                        },
                    );
                }
            }
            Op::Relu => l.op(BuiltinOperator::RELU, ins, vec![out], OptionsDesc::None),
            Op::Tanh => l.op(BuiltinOperator::TANH, ins, vec![out], OptionsDesc::None),
            Op::Sigmoid => l.op(BuiltinOperator::LOGISTIC, ins, vec![out], OptionsDesc::None),
            Op::Add => l.op(BuiltinOperator::ADD, ins, vec![out], OptionsDesc::Add),
            Op::ConcatChannels => l.op(
                BuiltinOperator::CONCATENATION,
                ins,
                vec![out],
                OptionsDesc::Concat { axis: 3 },
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
                    OptionsDesc::ResizeNearest,
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
                        &format!("{}_shape{}", node.name, l.desc.tensors.len()),
                        &[to.len()],
                        TensorType::INT32,
                        Some(i32_bytes(to_i32.iter().copied())),
                        None,
                    );
                    l.op(
                        BuiltinOperator::RESHAPE,
                        vec![input, shape],
                        vec![output],
                        OptionsDesc::Reshape { new_shape: to_i32 },
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
                    OptionsDesc::Transpose,
                );
                let [_, c, oh, ow] = out_shape;
                reshape(&mut l, swapped_t, &[1, oh, ow, c], out);
            }
        }
        l.tensor_of.insert(out_value, out);
    }
    let output = l.tensor_of[&graph.output_name];
    l.desc.outputs = vec![output];
    Ok(l.desc)
}

/// Writes `graph` as TFLite.
pub fn write(graph: &Graph, precision: TflitePrecision) -> Result<TfliteFiles, TfliteError> {
    match precision {
        TflitePrecision::Float32 => {
            let mut desc = lower(graph, None)?;
            desc.description = "effectc student (float32)".into();
            let bytes = serialize(&desc);
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
            let core_bytes = serialize(&core);
            // Shipped = the core + float edge tensors (appended last) + QUANTIZE first
            // and DEQUANTIZE last.
            let mut shipped = core.clone();
            shipped.description = format!("effectc student{SHIPPED_SUFFIX}");
            let (core_in, core_out) = (core.inputs[0], core.outputs[0]);
            let float_of = |t: &TensorDesc, name: String| TensorDesc {
                name,
                dtype: TensorType::FLOAT32,
                quant: None,
                buffer: 0,
                shape: t.shape.clone(),
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
                OpDesc {
                    code: BuiltinOperator::QUANTIZE,
                    version: 2,
                    inputs: vec![fin],
                    outputs: vec![core_in],
                    options: OptionsDesc::Quantize,
                },
            );
            shipped.ops.push(OpDesc {
                code: BuiltinOperator::DEQUANTIZE,
                version: 2,
                inputs: vec![core_out],
                outputs: vec![fout],
                options: OptionsDesc::Dequantize,
            });
            shipped.inputs = vec![fin];
            shipped.outputs = vec![fout];
            Ok(TfliteFiles {
                shipped: serialize(&shipped),
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
