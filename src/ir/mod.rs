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
    UpsampleNearest {
        factor: usize,
    },
    /// Sub-pixel upsampling (ESPCN's pixel shuffle) in DCR order, as TFLite's
    /// DEPTH_TO_SPACE, ONNX's DepthToSpace (mode DCR) and Core ML's depth_to_space:
    /// input channel `(dy * block + dx) * C + c` lands on output channel `c` at pixel
    /// `(y * block + dy, x * block + dx)`. Unlike a nearest upsample it gives every
    /// sub-pixel its own learned value, so a decoder can draw patterns locked to the
    /// frame's grid (bricks, studs, halftone dots) inside flat regions.
    DepthToSpace {
        block: usize,
    },
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

// ---------------------------------------------------------------------------------
// Helpers (shape inference, cost, validation). The types above are frozen; these only
// read them.
// ---------------------------------------------------------------------------------

pub mod interp;
pub mod sample;
pub use interp::{eval, Values};

/// A graph that does not make sense: a writer or the interpreter refuses it.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IrError {
    #[error("node `{node}` reads `{input}`, which no earlier node (nor the graph input) produces")]
    UnknownInput { node: String, input: String },
    #[error("two values are named `{0}`: value names must be unique")]
    DuplicateName(String),
    #[error("node `{node}` ({op}) takes {expected} input(s), got {got}")]
    Arity {
        node: String,
        op: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("node `{node}`: {reason}")]
    Shape { node: String, reason: String },
    #[error("graph output `{0}` is not produced by any node")]
    UnknownOutput(String),
    #[error("input has {got} values, the graph's input shape {shape:?} needs {expected}")]
    InputLength {
        got: usize,
        expected: usize,
        shape: [usize; 4],
    },
}

impl Op {
    /// Short name used in reports and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d {
                groups,
                weight_shape,
                ..
            } => {
                if *groups > 1 && *groups == weight_shape[0] && weight_shape[1] == 1 {
                    "DepthwiseConv2d"
                } else {
                    "Conv2d"
                }
            }
            Op::Relu => "Relu",
            Op::Add => "Add",
            Op::ConcatChannels => "ConcatChannels",
            Op::UpsampleNearest { .. } => "UpsampleNearest",
            Op::DepthToSpace { .. } => "DepthToSpace",
            Op::Tanh => "Tanh",
            Op::Sigmoid => "Sigmoid",
        }
    }
}

/// Output size of a strided window along one axis (the usual floor formula).
pub fn conv_out_len(
    in_len: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
) -> Option<usize> {
    let padded = in_len + pad_begin + pad_end;
    if padded < kernel || stride == 0 {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

impl Graph {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Names of the nodes that read `value`.
    pub fn consumers(&self, value: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == value))
            .collect()
    }

    /// Every value's NCHW shape, the graph input first, then nodes in order. Checks the
    /// graph on the way: inputs exist and come earlier, arities, channel and size
    /// agreement, weight and bias lengths.
    pub fn shapes(&self) -> Result<std::collections::BTreeMap<String, [usize; 4]>, IrError> {
        let mut shapes = std::collections::BTreeMap::new();
        shapes.insert(self.input_name.clone(), self.input_shape);
        for node in &self.nodes {
            if shapes.contains_key(&node.name) {
                return Err(IrError::DuplicateName(node.name.clone()));
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for input in &node.inputs {
                let s = shapes.get(input).ok_or_else(|| IrError::UnknownInput {
                    node: node.name.clone(),
                    input: input.clone(),
                })?;
                ins.push(*s);
            }
            let shape = node_output_shape(node, &ins)?;
            shapes.insert(node.name.clone(), shape);
        }
        if !shapes.contains_key(&self.output_name) {
            return Err(IrError::UnknownOutput(self.output_name.clone()));
        }
        Ok(shapes)
    }

    /// Shape of the graph output.
    pub fn output_shape(&self) -> Result<[usize; 4], IrError> {
        let shapes = self.shapes()?;
        Ok(shapes[&self.output_name])
    }

    /// Multiply-accumulates of one forward pass (convs only: the elementwise ops are
    /// noise next to them).
    pub fn macs(&self) -> Result<u64, IrError> {
        let shapes = self.shapes()?;
        let mut macs = 0u64;
        for node in &self.nodes {
            if let Op::Conv2d { weight_shape, .. } = &node.op {
                let out = shapes[&node.name];
                let per_output = (weight_shape[1] * weight_shape[2] * weight_shape[3]) as u64;
                macs += per_output * (out[1] * out[2] * out[3]) as u64;
            }
        }
        Ok(macs)
    }

    /// Learned parameters: conv weights and biases.
    pub fn param_count(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match &n.op {
                Op::Conv2d { weight, bias, .. } => weight.len() + bias.len(),
                _ => 0,
            })
            .sum()
    }

    /// Checks the graph (the same checks as `shapes`).
    pub fn validate(&self) -> Result<(), IrError> {
        self.shapes().map(|_| ())
    }
}

fn arity(node: &Node, ins: &[[usize; 4]], expected: &'static str, ok: bool) -> Result<(), IrError> {
    if ok {
        Ok(())
    } else {
        Err(IrError::Arity {
            node: node.name.clone(),
            op: node.op.kind(),
            expected,
            got: ins.len(),
        })
    }
}

fn node_output_shape(node: &Node, ins: &[[usize; 4]]) -> Result<[usize; 4], IrError> {
    let bad = |reason: String| IrError::Shape {
        node: node.name.clone(),
        reason,
    };
    match &node.op {
        Op::Conv2d {
            weight,
            weight_shape,
            bias,
            stride,
            pads,
            groups,
        } => {
            arity(node, ins, "1", ins.len() == 1)?;
            let x = ins[0];
            let [o, i_per_group, kh, kw] = *weight_shape;
            if *groups == 0 || x[1] % groups != 0 || o % groups != 0 {
                return Err(bad(format!(
                    "groups {groups} does not divide in {} / out {o} channels",
                    x[1]
                )));
            }
            if x[1] / groups != i_per_group {
                return Err(bad(format!(
                    "weight expects {i_per_group} input channels per group, input has {} / {groups}",
                    x[1]
                )));
            }
            if weight.len() != o * i_per_group * kh * kw {
                return Err(bad(format!(
                    "weight has {} values, shape {weight_shape:?} needs {}",
                    weight.len(),
                    o * i_per_group * kh * kw
                )));
            }
            if bias.len() != o {
                return Err(bad(format!(
                    "bias has {} values for {o} output channels",
                    bias.len()
                )));
            }
            let oh = conv_out_len(x[2], kh, stride[0], pads[0], pads[2]).ok_or_else(|| {
                bad(format!(
                    "kernel {kh} / stride {} does not fit height {} + pads",
                    stride[0], x[2]
                ))
            })?;
            let ow = conv_out_len(x[3], kw, stride[1], pads[1], pads[3]).ok_or_else(|| {
                bad(format!(
                    "kernel {kw} / stride {} does not fit width {} + pads",
                    stride[1], x[3]
                ))
            })?;
            Ok([x[0], o, oh, ow])
        }
        Op::Relu | Op::Tanh | Op::Sigmoid => {
            arity(node, ins, "1", ins.len() == 1)?;
            Ok(ins[0])
        }
        Op::Add => {
            arity(node, ins, "2", ins.len() == 2)?;
            if ins[0] != ins[1] {
                return Err(bad(format!("adds shapes {:?} and {:?}", ins[0], ins[1])));
            }
            Ok(ins[0])
        }
        Op::ConcatChannels => {
            arity(node, ins, "at least 1", !ins.is_empty())?;
            let mut out = ins[0];
            for s in &ins[1..] {
                if s[0] != out[0] || s[2] != out[2] || s[3] != out[3] {
                    return Err(bad(format!("concatenates {:?} with {:?}", ins[0], s)));
                }
                out[1] += s[1];
            }
            Ok(out)
        }
        Op::UpsampleNearest { factor } => {
            arity(node, ins, "1", ins.len() == 1)?;
            if *factor == 0 {
                return Err(bad("upsampling factor 0".into()));
            }
            let x = ins[0];
            Ok([x[0], x[1], x[2] * factor, x[3] * factor])
        }
        Op::DepthToSpace { block } => {
            arity(node, ins, "1", ins.len() == 1)?;
            let x = ins[0];
            if *block == 0 || x[1] % (block * block) != 0 {
                return Err(bad(format!(
                    "depth-to-space by {block} needs channels divisible by {}, input has {}",
                    block * block,
                    x[1]
                )));
            }
            Ok([x[0], x[1] / (block * block), x[2] * block, x[3] * block])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::sample::student_like;

    #[test]
    fn student_shapes_macs_and_params() {
        let g = student_like(4, 32, 1);
        let shapes = g.shapes().unwrap();
        assert_eq!(shapes["down1"], [1, 8, 16, 16]);
        assert_eq!(shapes["down2_pw"], [1, 16, 8, 8]);
        assert_eq!(shapes["up1_blur"], [1, 16, 16, 16]);
        assert_eq!(shapes["skip0"], [1, 8, 32, 32]);
        assert_eq!(g.output_shape().unwrap(), [1, 3, 32, 32]);
        // stem: 3*3*3 weights per output, 4 outputs, 32*32 positions.
        let stem_macs = 27 * 4 * 32 * 32;
        assert!(g.macs().unwrap() > stem_macs as u64);
        assert_eq!(
            g.param_count(),
            g.nodes
                .iter()
                .map(|n| match &n.op {
                    Op::Conv2d { weight_shape, .. } =>
                        weight_shape.iter().product::<usize>() + weight_shape[0],
                    _ => 0,
                })
                .sum::<usize>()
        );
    }

    #[test]
    fn bad_graphs_are_refused_with_the_node_named() {
        let mut g = student_like(4, 32, 1);
        g.nodes[3].inputs[0] = "nope".into();
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("down1_relu") && e.contains("nope"), "{e}");
        let mut g = student_like(4, 32, 1);
        if let Op::Conv2d { bias, .. } = &mut g.nodes[0].op {
            bias.pop();
        }
        assert!(matches!(g.validate(), Err(IrError::Shape { .. })));
    }

    #[test]
    fn eval_matches_a_hand_computed_conv_with_asymmetric_pads() {
        // 1x1x2x2 input, 2x2 kernel of ones, pads top 0, left 1, bottom 1, right 0,
        // stride 1: output 2x2.
        let g = Graph {
            input_name: "x".into(),
            input_shape: [1, 1, 2, 2],
            nodes: vec![Node {
                name: "c".into(),
                op: Op::Conv2d {
                    weight: vec![1.0; 4],
                    weight_shape: [1, 1, 2, 2],
                    bias: vec![0.5],
                    stride: [1, 1],
                    pads: [0, 1, 1, 0],
                    groups: 1,
                },
                inputs: vec!["x".into()],
            }],
            output_name: "c".into(),
        };
        let v = eval(&g, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        // Padded (rows: x, then zeros; cols: zero, then x):
        // [0 1 2; 0 3 4; 0 0 0] -> windows: [0+1+0+3, 1+2+3+4, 0+3+0+0, 3+4+0+0]
        assert_eq!(v.get("c").unwrap(), &[4.5, 10.5, 3.5, 7.5]);
    }

    #[test]
    fn upsample_and_concat() {
        let g = Graph {
            input_name: "x".into(),
            input_shape: [1, 1, 1, 2],
            nodes: vec![
                Node {
                    name: "u".into(),
                    op: Op::UpsampleNearest { factor: 2 },
                    inputs: vec!["x".into()],
                },
                Node {
                    name: "ux".into(),
                    op: Op::UpsampleNearest { factor: 1 },
                    inputs: vec!["u".into()],
                },
                Node {
                    name: "c".into(),
                    op: Op::ConcatChannels,
                    inputs: vec!["u".into(), "ux".into()],
                },
            ],
            output_name: "c".into(),
        };
        let v = eval(&g, &[1.0, 2.0]).unwrap();
        assert_eq!(
            v.get("u").unwrap(),
            &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]
        );
        assert_eq!(v.shapes["c"], [1, 2, 2, 4]);
        assert_eq!(v.get("c").unwrap().len(), 16);
    }

    #[test]
    fn depth_to_space_is_dcr() {
        // 4 channels of one pixel, 2 channels of a 1x2 image: channel (dy*2+dx)*C + c.
        let g = Graph {
            input_name: "x".into(),
            input_shape: [1, 8, 1, 1],
            nodes: vec![Node {
                name: "d".into(),
                op: Op::DepthToSpace { block: 2 },
                inputs: vec!["x".into()],
            }],
            output_name: "d".into(),
        };
        let v = eval(&g, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).unwrap();
        assert_eq!(v.shapes["d"], [1, 2, 2, 2]);
        // Output channel 0 is [[0, 2], [4, 6]], channel 1 [[1, 3], [5, 7]].
        assert_eq!(
            v.get("d").unwrap(),
            &[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
        );
        let bad = Graph {
            input_shape: [1, 6, 1, 1],
            ..g
        };
        assert!(matches!(bad.validate(), Err(IrError::Shape { .. })));
    }
}
