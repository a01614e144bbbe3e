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
    UpsampleNearest { factor: usize },
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
