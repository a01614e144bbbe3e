//! Fast fp16: a Core ML model's fp16 compute, emulated in f32 with the values rounded
//! to fp16 where the device stores them.
//!
//! tract runs a true fp16 ONNX model through emulated half-precision kernels, 50x+
//! slower than fp32 on a CPU. Here the decoded graph is written as an fp32 ONNX
//! model whose weights and biases are the fp16 values (fp16 -> f32 is exact), the
//! input and every op's output pass through `Cast(f16) -> Cast(f32)` (IEEE round to
//! nearest even, fp16 subnormals, overflow to inf: the device's rounding of each stored
//! activation), and each op's largest |value| before rounding is an extra scalar
//! output, for the fp16 range check. What differs from a true fp16 kernel is only
//! inside an op: products and sums accumulate in f32 and round once at the end (the
//! device's own accumulation width is not specified; the exact path accumulates in
//! fp16). `tests` bound the difference.

use prost::Message;
use tract_onnx::pb::{tensor_proto::DataType, AttributeProto, NodeProto, TensorProto};
use tract_onnx::prelude::f16;

use crate::export::onnx::{self, attr_int, OnnxError, OnnxPrecision};
use crate::ir::Graph;

/// Suffix of the extra scalar outputs: `VALUE` + this = max |VALUE| before rounding.
pub const PEAK_SUFFIX: &str = "__peak";
/// Suffix of the graph input's rounded copy (what the first ops read).
pub const INPUT_SUFFIX: &str = "__in";

/// ONNX ops whose output, for fp16 inputs, is already an fp16 value (they move, select
/// or clamp values): nothing to round after them.
const EXACT_ON_FP16: &[&str] = &["Relu", "Concat", "Resize", "DepthToSpace"];

/// An fp32 ONNX model computing `graph` as an fp16 device would store it. Its output 0
/// is the graph's output; with `with_peaks`, outputs 1.. are the largest |value| before
/// rounding of the input and of each rounded value (names: the value + `PEAK_SUFFIX`,
/// in graph order, returned). Values made by `EXACT_ON_FP16` ops are not rounded again
/// and have no peak (theirs is at most their input's).
pub fn emulated_onnx(graph: &Graph, with_peaks: bool) -> Result<(Vec<u8>, Vec<String>), OnnxError> {
    let bytes = onnx::write(graph, OnnxPrecision::Fp32)?;
    let mut model = tract_onnx::pb::ModelProto::decode(&bytes[..])
        .expect("the ONNX writer's own output decodes");
    let g = model
        .graph
        .as_mut()
        .expect("the ONNX writer writes a graph");

    for t in g.initializer.iter_mut() {
        round_initializer(t);
    }
    // Every value the graph computes (its input, each node's output) is read by its
    // consumers only after rounding: the producer writes `V__f32`, casts make `V`.
    let mut nodes = Vec::with_capacity(g.node.len() * 4 + 4);
    let mut peaks = Vec::new();
    // `round(raw, value)`: `value` is `raw` rounded to fp16; records raw's peak.
    let round = |raw: &str, value: &str, nodes: &mut Vec<NodeProto>, peaks: &mut Vec<String>| {
        let half = format!("{value}__f16");
        let abs = format!("{value}__abs");
        let peak = format!("{value}{PEAK_SUFFIX}");
        nodes.push(node(
            "Cast",
            &[raw],
            &half,
            vec![attr_int("to", DataType::Float16 as i64)],
        ));
        nodes.push(node(
            "Cast",
            &[&half],
            value,
            vec![attr_int("to", DataType::Float as i64)],
        ));
        if with_peaks {
            nodes.push(node("Abs", &[raw], &abs, vec![]));
            nodes.push(node(
                "ReduceMax",
                &[&abs],
                &peak,
                vec![attr_int("keepdims", 0)],
            ));
            peaks.push(peak);
        }
    };
    // The graph input keeps its name; nodes read its rounded copy.
    let input = g.input[0].name.clone();
    let input_rounded = format!("{input}{INPUT_SUFFIX}");
    round(&input, &input_rounded, &mut nodes, &mut peaks);
    for mut n in std::mem::take(&mut g.node) {
        for i in n.input.iter_mut() {
            if *i == input {
                *i = input_rounded.clone();
            }
        }
        if EXACT_ON_FP16.contains(&n.op_type.as_str()) {
            nodes.push(n);
            continue;
        }
        let outs = n.output.clone();
        let mut tail = Vec::new();
        for (slot, out) in outs.iter().enumerate() {
            let raw = format!("{out}__f32");
            round(&raw, out, &mut tail, &mut peaks);
            n.output[slot] = raw;
        }
        nodes.push(n);
        nodes.extend(tail);
    }
    g.node = nodes;
    let out_info = g.output[0].clone();
    for p in &peaks {
        g.output.push(tract_onnx::pb::ValueInfoProto {
            name: p.clone(),
            ..Default::default()
        });
    }
    g.output[0] = out_info;
    Ok((model.encode_to_vec(), peaks))
}

/// Float weights, biases and resize scales become their nearest fp16 value (the
/// exact path's fp16 initializers, widened back without loss).
fn round_initializer(t: &mut TensorProto) {
    if t.data_type != DataType::Float as i32 {
        return;
    }
    if !t.raw_data.is_empty() {
        for chunk in t.raw_data.chunks_exact_mut(4) {
            let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            chunk.copy_from_slice(&to_f16(v).to_le_bytes());
        }
    }
    for v in t.float_data.iter_mut() {
        *v = to_f16(*v);
    }
}

/// `v` rounded to the nearest fp16 value, as f32.
pub fn to_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// One ONNX node whose name is its single output's (the writer's builder, one output).
fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    onnx::node(op, &format!("{output}__op"), inputs, &[output], attribute)
}
