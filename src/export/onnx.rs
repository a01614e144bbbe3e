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

use super::quantize::{
    int8_graph, ActivationType, Calibration, ConvQuant, QParams, QuantError, QuantPlan,
};
use std::collections::BTreeMap;

use crate::ir::{Graph, IrError, Node, Op};

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
    plan: Option<QuantPlan>,
    fp16: bool,
    /// The name consumers of IR value v read.
    read: BTreeMap<String, String>,
    /// The graph output is written under `{v}_raw`, then cast or QDQ'd to its name.
    out_is_wrapped: bool,
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

    /// The grid IR value `v` is stored on (QDQ only).
    fn quantized(&self, v: &str) -> Option<QParams> {
        self.plan
            .as_ref()
            .and_then(|p| p.activations.get(v).copied())
    }

    /// The graph input as the first node reads it: cast to fp16, QDQ'd, or itself.
    fn graph_input(&mut self, input: &str) {
        let readable = if self.fp16 {
            let cast = format!("{input}_fp16");
            let to = vec![attr_int("to", DataType::Float16 as i64)];
            self.nodes.push(node("Cast", &cast, &[input], &[&cast], to));
            cast
        } else if let Some(q) = self.quantized(input) {
            let dq = format!("{input}_dq");
            self.qdq(input, &dq, &q);
            dq
        } else {
            input.to_string()
        };
        self.read.insert(input.to_string(), readable);
    }

    /// The ONNX node (and initializers) of one IR node, and how consumers read it.
    fn node(&mut self, n: &Node, graph_output: &str) {
        let ins: Vec<String> = n.inputs.iter().map(|i| self.read[i].clone()).collect();
        let ins_ref: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        // The name the op computing v writes to.
        let out = if n.name == graph_output && self.out_is_wrapped {
            format!("{}_raw", n.name)
        } else {
            n.name.clone()
        };
        let simple = |ty: &str, attrs| node(ty, &n.name, &ins_ref, &[&out], attrs);
        let onnx = match &n.op {
            Op::Conv2d { .. } => self.conv(n, ins_ref[0], &out),
            Op::Relu => simple("Relu", vec![]),
            Op::Tanh => simple("Tanh", vec![]),
            Op::Sigmoid => simple("Sigmoid", vec![]),
            Op::Add => simple("Add", vec![]),
            Op::ConcatChannels => simple("Concat", vec![attr_int("axis", 1)]),
            Op::UpsampleNearest { factor } => {
                let scales = format!("{}_scales", n.name);
                let f = *factor as f32;
                let init = f32_tensor(&scales, &[4], &[1.0, 1.0, f, f]);
                self.initializers.push(init);
                let attrs = vec![
                    attr_str("coordinate_transformation_mode", "asymmetric"),
                    attr_str("mode", "nearest"),
                    attr_str("nearest_mode", "floor"),
                ];
                node(
                    "Resize",
                    &n.name,
                    &[ins_ref[0], "", &scales],
                    &[&out],
                    attrs,
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
        self.nodes.push(onnx);
        // How consumers read this value.
        let readable = if let Some(q) = self.quantized(&n.name) {
            let dq = if n.name == graph_output && !self.fp16 {
                n.name.clone()
            } else {
                format!("{}_dq", n.name)
            };
            self.qdq(&out, &dq, &q);
            dq
        } else {
            out.clone()
        };
        self.read.insert(n.name.clone(), readable);
    }

    /// A Conv of `x` into `out`; its weight and bias initializers are added first.
    fn conv(&mut self, n: &Node, x: &str, out: &str) -> NodeProto {
        let Op::Conv2d {
            weight,
            weight_shape,
            bias,
            stride,
            pads,
            groups,
        } = &n.op
        else {
            unreachable!("conv of a {:?}", n.op);
        };
        let (w_name, b_name) = (format!("{}_weight", n.name), format!("{}_bias", n.name));
        let o = weight_shape[0];
        let int8 = self
            .plan
            .as_ref()
            .and_then(|p| p.convs.get(&n.name))
            .cloned();
        if let Some(cq) = int8 {
            self.int8_conv_weights(&w_name, &b_name, &cq, weight_shape);
        } else if self.fp16 {
            self.initializers
                .push(f16_tensor(&w_name, weight_shape, weight));
            self.initializers.push(f16_tensor(&b_name, &[o], bias));
        } else {
            self.initializers
                .push(f32_tensor(&w_name, weight_shape, weight));
            self.initializers.push(f32_tensor(&b_name, &[o], bias));
        }
        let attrs = vec![
            attr_ints("dilations", &[1, 1]),
            attr_int("group", *groups as i64),
            attr_ints(
                "kernel_shape",
                &[weight_shape[2] as i64, weight_shape[3] as i64],
            ),
            // ONNX order: [h_begin, w_begin, h_end, w_end] == IR [t, l, b, r].
            attr_ints("pads", &pads.map(|p| p as i64)),
            attr_ints("strides", &[stride[0] as i64, stride[1] as i64]),
        ];
        node("Conv", &n.name, &[x, &w_name, &b_name], &[out], attrs)
    }

    /// Per-output-channel int8 weights and int32 biases, dequantized on axis 0 into
    /// `w_name` and `b_name`.
    fn int8_conv_weights(&mut self, w_name: &str, b_name: &str, cq: &ConvQuant, shape: &[usize]) {
        let o = shape[0];
        let weight = cq.weight.iter().map(|v| *v as u8).collect();
        let bias = cq.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
        let parts = [
            (
                w_name,
                shape,
                DataType::Int8,
                weight,
                &cq.weight_scales,
                vec![0u8; o],
            ),
            (
                b_name,
                &[o][..],
                DataType::Int32,
                bias,
                &cq.bias_scales,
                vec![0u8; 4 * o],
            ),
        ];
        for (name, dims, dtype, data, scales, zero) in parts {
            let q = format!("{name}_quantized");
            let (scale, zp) = (format!("{name}_scale"), format!("{name}_zero_point"));
            self.initializers.push(tensor(&q, dims, dtype, data));
            self.initializers.push(f32_tensor(&scale, &[o], scales));
            self.initializers.push(tensor(&zp, &[o], dtype, zero));
            self.nodes.push(node(
                "DequantizeLinear",
                &format!("{name}_DQ"),
                &[&q, &scale, &zp],
                &[name],
                vec![attr_int("axis", 0)],
            ));
        }
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
    let fp16 = matches!(precision, OnnxPrecision::Fp16);
    let out_is_wrapped = fp16
        || plan
            .as_ref()
            .is_some_and(|p| p.activations.contains_key(&graph.output_name));
    let mut b = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        plan,
        fp16,
        read: BTreeMap::new(),
        out_is_wrapped,
    };
    b.graph_input(&graph.input_name);
    for n in &graph.nodes {
        b.node(n, &graph.output_name);
    }
    if fp16 {
        let last = b.read[&graph.output_name].clone();
        b.nodes.push(node(
            "Cast",
            &format!("{}_fp32", graph.output_name),
            &[&last],
            &[&graph.output_name],
            vec![attr_int("to", DataType::Float as i64)],
        ));
    }
    let model = ModelProto {
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
                shapes[&graph.output_name],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
