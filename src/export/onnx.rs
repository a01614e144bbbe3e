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
use crate::ir::{Graph, IrError, Op};

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
    let mut b = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
    };

    // `read[v]`: the name consumers of IR value v read. `produce(v)`: the name the op
    // computing v writes to.
    let mut read: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let quantized = |v: &str| plan.as_ref().and_then(|p| p.activations.get(v).copied());
    let out_is_wrapped = fp16 || quantized(&graph.output_name).is_some();
    let produce = |v: &str| -> String {
        if v == graph.output_name && out_is_wrapped {
            format!("{v}_raw")
        } else {
            v.to_string()
        }
    };

    // Graph input.
    let input = &graph.input_name;
    if fp16 {
        let cast = format!("{input}_fp16");
        b.nodes.push(node(
            "Cast",
            &cast,
            &[input],
            &[&cast],
            vec![attr_int("to", DataType::Float16 as i64)],
        ));
        read.insert(input.clone(), cast);
    } else if let Some(q) = quantized(input) {
        let dq = format!("{input}_dq");
        b.qdq(input, &dq, &q);
        read.insert(input.clone(), dq);
    } else {
        read.insert(input.clone(), input.clone());
    }

    for n in &graph.nodes {
        let ins: Vec<String> = n.inputs.iter().map(|i| read[i].clone()).collect();
        let ins_ref: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let out = produce(&n.name);
        match &n.op {
            Op::Conv2d {
                weight,
                weight_shape,
                bias,
                stride,
                pads,
                groups,
            } => {
                let (w_name, b_name) = (format!("{}_weight", n.name), format!("{}_bias", n.name));
                let o = weight_shape[0];
                if let Some(cq) = plan.as_ref().and_then(|p| p.convs.get(&n.name)) {
                    // Per-output-channel int8 weights and int32 biases, dequantized on axis 0.
                    let wq = format!("{w_name}_quantized");
                    b.initializers.push(tensor(
                        &wq,
                        weight_shape,
                        DataType::Int8,
                        cq.weight.iter().map(|v| *v as u8).collect(),
                    ));
                    b.initializers.push(f32_tensor(
                        &format!("{w_name}_scale"),
                        &[o],
                        &cq.weight_scales,
                    ));
                    b.initializers.push(tensor(
                        &format!("{w_name}_zero_point"),
                        &[o],
                        DataType::Int8,
                        vec![0u8; o],
                    ));
                    b.nodes.push(node(
                        "DequantizeLinear",
                        &format!("{w_name}_DQ"),
                        &[
                            &wq,
                            &format!("{w_name}_scale"),
                            &format!("{w_name}_zero_point"),
                        ],
                        &[&w_name],
                        vec![attr_int("axis", 0)],
                    ));
                    let bq = format!("{b_name}_quantized");
                    b.initializers.push(tensor(
                        &bq,
                        &[o],
                        DataType::Int32,
                        cq.bias.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ));
                    b.initializers.push(f32_tensor(
                        &format!("{b_name}_scale"),
                        &[o],
                        &cq.bias_scales,
                    ));
                    b.initializers.push(tensor(
                        &format!("{b_name}_zero_point"),
                        &[o],
                        DataType::Int32,
                        vec![0u8; 4 * o],
                    ));
                    b.nodes.push(node(
                        "DequantizeLinear",
                        &format!("{b_name}_DQ"),
                        &[
                            &bq,
                            &format!("{b_name}_scale"),
                            &format!("{b_name}_zero_point"),
                        ],
                        &[&b_name],
                        vec![attr_int("axis", 0)],
                    ));
                } else if fp16 {
                    b.initializers
                        .push(f16_tensor(&w_name, weight_shape, weight));
                    b.initializers.push(f16_tensor(&b_name, &[o], bias));
                } else {
                    b.initializers
                        .push(f32_tensor(&w_name, weight_shape, weight));
                    b.initializers.push(f32_tensor(&b_name, &[o], bias));
                }
                b.nodes.push(node(
                    "Conv",
                    &n.name,
                    &[ins_ref[0], &w_name, &b_name],
                    &[&out],
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
                ));
            }
            Op::Relu => b
                .nodes
                .push(node("Relu", &n.name, &ins_ref, &[&out], vec![])),
            Op::Tanh => b
                .nodes
                .push(node("Tanh", &n.name, &ins_ref, &[&out], vec![])),
            Op::Sigmoid => b
                .nodes
                .push(node("Sigmoid", &n.name, &ins_ref, &[&out], vec![])),
            Op::Add => b
                .nodes
                .push(node("Add", &n.name, &ins_ref, &[&out], vec![])),
            Op::ConcatChannels => b.nodes.push(node(
                "Concat",
                &n.name,
                &ins_ref,
                &[&out],
                vec![attr_int("axis", 1)],
            )),
            Op::UpsampleNearest { factor } => {
                let scales = format!("{}_scales", n.name);
                b.initializers.push(f32_tensor(
                    &scales,
                    &[4],
                    &[1.0, 1.0, *factor as f32, *factor as f32],
                ));
                b.nodes.push(node(
                    "Resize",
                    &n.name,
                    &[ins_ref[0], "", &scales],
                    &[&out],
                    vec![
                        attr_str("coordinate_transformation_mode", "asymmetric"),
                        attr_str("mode", "nearest"),
                        attr_str("nearest_mode", "floor"),
                    ],
                ));
            }
            Op::DepthToSpace { block } => b.nodes.push(node(
                "DepthToSpace",
                &n.name,
                &ins_ref,
                &[&out],
                vec![
                    attr_int("blocksize", *block as i64),
                    attr_str("mode", "DCR"),
                ],
            )),
        }
        // How consumers read this value.
        let readable = if let Some(q) = quantized(&n.name) {
            let dq = if n.name == graph.output_name && !fp16 {
                n.name.clone()
            } else {
                format!("{}_dq", n.name)
            };
            b.qdq(&out, &dq, &q);
            dq
        } else {
            out.clone()
        };
        read.insert(n.name.clone(), readable);
    }
    if fp16 {
        let last = read[&graph.output_name].clone();
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
