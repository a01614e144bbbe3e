//! ONNX writer (opset 17): fp32, fp16 (weights and compute, float32 I/O through Cast),
//! and int8 QDQ (QuantizeLinear/DequantizeLinear around per-channel symmetric int8
//! weights, int32 biases and per-tensor activations), encoded with prost through
//! tract-onnx's generated protobuf types.

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::quantize::{int8_graph, ActivationType, Calibration, QParams, QuantError, QuantPlan};
use crate::ir::{Graph, IrError, Node, Op};
use std::collections::BTreeMap;

pub const OPSET: i64 = 17;
/// IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot write ONNX: invalid graph: {0}")]
    Graph(#[from] IrError),
    #[error("cannot write int8 ONNX: {0}")]
    Quant(#[from] QuantError),
}

/// The op types (`Conv`, `Add`...) an ONNX file uses: what a target profile's `ops`
/// allow-list is checked against.
pub fn op_types(bytes: &[u8]) -> Result<std::collections::BTreeSet<String>, prost::DecodeError> {
    let model = tract_onnx::pb::ModelProto::decode(bytes)?;
    Ok(model
        .graph
        .map(|g| g.node.into_iter().map(|n| n.op_type).collect())
        .unwrap_or_default())
}

#[derive(Clone, Copy, Debug)]
pub enum OnnxPrecision<'a> {
    Fp32,
    /// fp16 weights and activations; the model's input and output stay float32.
    Fp16,
    /// QDQ int8: activations stored as `activations` (int8 or uint8) with parameters
    /// from `calibration`.
    Int8Qdq {
        calibration: &'a Calibration,
        activations: ActivationType,
    },
}

fn f16_bits(v: f32) -> u16 {
    tract_onnx::prelude::f16::from_f32(v).to_bits()
}

fn tensor(name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Float,
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn f16_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Float16,
        data.iter()
            .flat_map(|v| f16_bits(*v).to_le_bytes())
            .collect(),
    )
}

pub(crate) fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub(crate) fn node(
    op_type: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op_type.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, elem: DataType, shape: [usize; 4]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(*d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Emits nodes and initializers; knows under which name each IR value can be read.
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Builder {
    fn qparam_initializers(&mut self, prefix: &str, q: &QParams) -> (String, String) {
        let scale = format!("{prefix}_scale");
        let zp = format!("{prefix}_zero_point");
        self.initializers.push(f32_tensor(&scale, &[], &[q.scale]));
        self.initializers.push(match q.dtype {
            ActivationType::Int8 => {
                tensor(&zp, &[], DataType::Int8, vec![q.zero_point as i8 as u8])
            }
            ActivationType::Uint8 => tensor(&zp, &[], DataType::Uint8, vec![q.zero_point as u8]),
        });
        (scale, zp)
    }

    /// QuantizeLinear + DequantizeLinear from `raw` to `out`.
    fn qdq(&mut self, raw: &str, out: &str, q: &QParams) {
        let (scale, zp) = self.qparam_initializers(raw, q);
        let quantized = format!("{raw}_quantized");
        self.nodes.push(node(
            "QuantizeLinear",
            &format!("{raw}_Q"),
            &[raw, &scale, &zp],
            &[&quantized],
            vec![],
        ));
        self.nodes.push(node(
            "DequantizeLinear",
            &format!("{raw}_DQ"),
            &[&quantized, &scale, &zp],
            &[out],
            vec![],
        ));
    }
    /// `name` as a per-output-channel quantized initializer (`raw`, of `dtype`, zero
    /// point 0) dequantized on axis 0.
    fn dequantized_per_channel(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: DataType,
        raw: Vec<u8>,
        scales: &[f32],
    ) {
        let o = dims[0];
        let q = format!("{name}_quantized");
        let scale = format!("{name}_scale");
        let zp = format!("{name}_zero_point");
        let width = if dtype == DataType::Int32 { 4 } else { 1 };
        self.initializers.push(tensor(&q, dims, dtype, raw));
        self.initializers.push(f32_tensor(&scale, &[o], scales));
        self.initializers
            .push(tensor(&zp, &[o], dtype, vec![0u8; width * o]));
        self.nodes.push(node(
            "DequantizeLinear",
            &format!("{name}_DQ"),
            &[&q, &scale, &zp],
            &[name],
            vec![attr_int("axis", 0)],
        ));
    }
}

/// Writes `graph` as an ONNX model (opset 17).
pub fn write(graph: &Graph, precision: OnnxPrecision) -> Result<Vec<u8>, OnnxError> {
    // An int8 graph runs with requantizes in front of some ADD inputs (`int8_graph`).
    let int8;
    let (graph, plan) = match precision {
        OnnxPrecision::Int8Qdq {
            calibration,
            activations,
        } => {
            int8 = int8_graph(graph, calibration)?;
            let plan = QuantPlan::new(&int8.0, &int8.1, activations)?;
            (&int8.0, Some(plan))
        }
        _ => (graph, None),
    };
    let shapes = graph.shapes()?;
    let mut lowering = Lowering {
        graph,
        plan,
        fp16: matches!(precision, OnnxPrecision::Fp16),
        read: BTreeMap::new(),
        b: Builder {
            nodes: Vec::new(),
            initializers: Vec::new(),
        },
    };
    lowering.input();
    for n in &graph.nodes {
        lowering.node(n);
    }
    lowering.cast_output();
    Ok(model_proto(graph, shapes[&graph.output_name], lowering.b).encode_to_vec())
}

/// What lowering the IR's nodes in order shares: the graph, its int8 plan, whether
/// fp16, and under which name each IR value can be read.
struct Lowering<'g> {
    graph: &'g Graph,
    plan: Option<QuantPlan>,
    fp16: bool,
    /// `read[v]`: the name consumers of IR value v read.
    read: BTreeMap<String, String>,
    b: Builder,
}

impl Lowering<'_> {
    /// v's int8 parameters, where v is stored in int8.
    fn quantized(&self, v: &str) -> Option<QParams> {
        self.plan
            .as_ref()
            .and_then(|p| p.activations.get(v).copied())
    }

    /// The name the op computing v writes to: the graph output's gets a `_raw` name
    /// when a Cast or a QDQ follows it.
    fn produce(&self, v: &str) -> String {
        let output = &self.graph.output_name;
        let out_is_wrapped = self.fp16 || self.quantized(output).is_some();
        if v == output && out_is_wrapped {
            format!("{v}_raw")
        } else {
            v.to_string()
        }
    }

    /// The graph input, cast to fp16 or QDQ'd where the model computes so.
    fn input(&mut self) {
        let input = &self.graph.input_name;
        if self.fp16 {
            let cast = format!("{input}_fp16");
            self.b.nodes.push(node(
                "Cast",
                &cast,
                &[input],
                &[&cast],
                vec![attr_int("to", DataType::Float16 as i64)],
            ));
            self.read.insert(input.clone(), cast);
        } else if let Some(q) = self.quantized(input) {
            let dq = format!("{input}_dq");
            self.b.qdq(input, &dq, &q);
            self.read.insert(input.clone(), dq);
        } else {
            self.read.insert(input.clone(), input.clone());
        }
    }

    /// One IR node as its op, then (if quantized) a QDQ its consumers read through.
    fn node(&mut self, n: &Node) {
        let ins: Vec<String> = n.inputs.iter().map(|i| self.read[i].clone()).collect();
        let ins_ref: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let out = self.produce(&n.name);
        self.op(n, &ins_ref, &out);
        // How consumers read this value.
        let readable = if let Some(q) = self.quantized(&n.name) {
            let dq = if n.name == self.graph.output_name && !self.fp16 {
                n.name.clone()
            } else {
                format!("{}_dq", n.name)
            };
            self.b.qdq(&out, &dq, &q);
            dq
        } else {
            out.clone()
        };
        self.read.insert(n.name.clone(), readable);
    }

    /// The ONNX op for `n`, reading `ins` and writing `out`.
    fn op(&mut self, n: &Node, ins: &[&str], out: &str) {
        let simple = |op_type: &str, attribute: Vec<AttributeProto>| {
            node(op_type, &n.name, ins, &[out], attribute)
        };
        let onnx = match &n.op {
            Op::Conv2d {
                weight_shape,
                stride,
                pads,
                groups,
                ..
            } => {
                let (w_name, b_name) = self.conv_params(n);
                node(
                    "Conv",
                    &n.name,
                    &[ins[0], &w_name, &b_name],
                    &[out],
                    vec![
                        attr_ints("dilations", &[1, 1]),
                        attr_int("group", *groups as i64),
                        attr_ints(
                            "kernel_shape",
                            &[weight_shape[2] as i64, weight_shape[3] as i64],
                        ),
                        // ONNX order: [h_begin, w_begin, h_end, w_end] == IR [t, l, b, r].
                        attr_ints("pads", &pads.map(|p| p as i64)),
                        attr_ints("strides", &[stride[0] as i64, stride[1] as i64]),
                    ],
                )
            }
            Op::Relu => simple("Relu", vec![]),
            Op::Tanh => simple("Tanh", vec![]),
            Op::Sigmoid => simple("Sigmoid", vec![]),
            Op::Add => simple("Add", vec![]),
            Op::ConcatChannels => simple("Concat", vec![attr_int("axis", 1)]),
            Op::UpsampleNearest { factor } => {
                let scales = format!("{}_scales", n.name);
                self.b.initializers.push(f32_tensor(
                    &scales,
                    &[4],
                    &[1.0, 1.0, *factor as f32, *factor as f32],
                ));
                node(
                    "Resize",
                    &n.name,
                    &[ins[0], "", &scales],
                    &[out],
                    vec![
                        attr_str("coordinate_transformation_mode", "asymmetric"),
                        attr_str("mode", "nearest"),
                        attr_str("nearest_mode", "floor"),
                    ],
                )
            }
            Op::DepthToSpace { block } => simple(
                "DepthToSpace",
                vec![
                    attr_int("blocksize", *block as i64),
                    attr_str("mode", "DCR"),
                ],
            ),
        };
        self.b.nodes.push(onnx);
    }

    /// A conv's weight and bias initializers (int8 dequantized per channel, fp16 or
    /// fp32); returns their names.
    fn conv_params(&mut self, n: &Node) -> (String, String) {
        let Op::Conv2d {
            weight,
            weight_shape,
            bias,
            ..
        } = &n.op
        else {
            unreachable!("conv_params is called for convs")
        };
        let (w_name, b_name) = (format!("{}_weight", n.name), format!("{}_bias", n.name));
        let o = weight_shape[0];
        if let Some(cq) = self.plan.as_ref().and_then(|p| p.convs.get(&n.name)) {
            // Per-output-channel int8 weights and int32 biases, dequantized on axis 0.
            let w_raw = cq.weight.iter().map(|v| *v as u8).collect();
            let b_raw = cq.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
            let b = &mut self.b;
            b.dequantized_per_channel(
                &w_name,
                weight_shape,
                DataType::Int8,
                w_raw,
                &cq.weight_scales,
            );
            b.dequantized_per_channel(&b_name, &[o], DataType::Int32, b_raw, &cq.bias_scales);
        } else if self.fp16 {
            let b = &mut self.b;
            b.initializers
                .push(f16_tensor(&w_name, weight_shape, weight));
            b.initializers.push(f16_tensor(&b_name, &[o], bias));
        } else {
            let b = &mut self.b;
            b.initializers
                .push(f32_tensor(&w_name, weight_shape, weight));
            b.initializers.push(f32_tensor(&b_name, &[o], bias));
        }
        (w_name, b_name)
    }

    /// fp16 computes in half: the output is cast back to float32.
    fn cast_output(&mut self) {
        if !self.fp16 {
            return;
        }
        let output = &self.graph.output_name;
        let last = self.read[output].clone();
        self.b.nodes.push(node(
            "Cast",
            &format!("{output}_fp32"),
            &[&last],
            &[output],
            vec![attr_int("to", DataType::Float as i64)],
        ));
    }
}

/// The model around the lowered nodes: opset, producer, float32 input and output.
fn model_proto(graph: &Graph, output_shape: [usize; 4], b: Builder) -> ModelProto {
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "effectc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: "effectc_student".into(),
            node: b.nodes,
            initializer: b.initializers,
            input: vec![value_info(
                &graph.input_name,
                DataType::Float,
                graph.input_shape,
            )],
            output: vec![value_info(
                &graph.output_name,
                DataType::Float,
                output_shape,
            )],
            ..Default::default()
        }),
        ..Default::default()
    }
}
