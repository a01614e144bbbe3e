//! Calibration and int8 quantization shared by the ONNX (QDQ) and TFLite writers.
//!
//! - `calibrate` runs the reference interpreter over caller-given inputs and records
//!   each value's range (min/max, percentile clipping, or an MSE search).
//! - `QuantPlan` turns ranges into per-tensor activation parameters and per-channel
//!   symmetric weights. Values that must share parameters for the runtimes (both
//!   inputs and the output of an ADD; RELU, RESIZE and CONCAT in and out) are merged
//!   into one group whose range is the union of its members' ranges.
//! - `layer_table` simulates the int8 graph in Rust and reports, per layer, how far
//!   its dequantized activation is from fp32, so a person sees which layer hurts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ir::interp::{eval, eval_with_hook};
use crate::ir::{Graph, IrError, Node, Op};

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("invalid graph: {0}")]
    Graph(#[from] IrError),
    #[error("calibration needs at least one input, got none")]
    NoInputs,
    #[error("calibration has no range for value `{0}`: it was made for another graph")]
    MissingRange(String),
    #[error("activation range of `{value}` is not finite ({lo}, {hi}): the graph overflows on the calibration inputs")]
    NonFinite { value: String, lo: f32, hi: f32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum CalibrationMethod {
    /// Observed min and max.
    MinMax,
    /// Clip both tails at this percentile (e.g. 99.99).
    Percentile(f64),
    /// Pick the clipping range minimising the expected int8 quantization MSE.
    Mse,
}

/// Per-value activation ranges (always containing 0) measured on calibration inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub method: CalibrationMethod,
    pub input_count: usize,
    pub ranges: BTreeMap<String, (f32, f32)>,
}

const HISTOGRAM_BINS: usize = 2048;

/// Measures every value's range over `inputs` (NCHW, each of the graph's input size).
pub fn calibrate(
    graph: &Graph,
    inputs: &[Vec<f32>],
    method: CalibrationMethod,
) -> Result<Calibration, QuantError> {
    if inputs.is_empty() {
        return Err(QuantError::NoInputs);
    }
    // Pass 1: min/max.
    let mut minmax: BTreeMap<String, (f32, f32)> = BTreeMap::new();
    for input in inputs {
        let values = eval(graph, input)?;
        for (name, data) in &values.data {
            let e = minmax
                .entry(name.clone())
                .or_insert((f32::INFINITY, f32::NEG_INFINITY));
            for v in data {
                e.0 = e.0.min(*v);
                e.1 = e.1.max(*v);
            }
        }
    }
    for (name, (lo, hi)) in &minmax {
        if !lo.is_finite() || !hi.is_finite() {
            return Err(QuantError::NonFinite {
                value: name.clone(),
                lo: *lo,
                hi: *hi,
            });
        }
    }
    let ranges = match method {
        CalibrationMethod::MinMax => minmax
            .iter()
            .map(|(k, (lo, hi))| (k.clone(), (lo.min(0.0), hi.max(0.0))))
            .collect(),
        CalibrationMethod::Percentile(_) | CalibrationMethod::Mse => {
            // Pass 2: histograms over the observed span.
            let mut hists: BTreeMap<String, Vec<u64>> = minmax
                .keys()
                .map(|k| (k.clone(), vec![0u64; HISTOGRAM_BINS]))
                .collect();
            for input in inputs {
                let values = eval(graph, input)?;
                for (name, data) in &values.data {
                    let (lo, hi) = minmax[name];
                    let hist = hists.get_mut(name).expect("histogram per value");
                    let span = (hi - lo).max(f32::MIN_POSITIVE);
                    for v in data {
                        let bin = (((v - lo) / span) * HISTOGRAM_BINS as f32) as usize;
                        hist[bin.min(HISTOGRAM_BINS - 1)] += 1;
                    }
                }
            }
            minmax
                .iter()
                .map(|(name, &(lo, hi))| {
                    let hist = &hists[name];
                    let (clo, chi) = match method {
                        CalibrationMethod::Percentile(p) => percentile_range(hist, lo, hi, p),
                        _ => mse_range(hist, lo, hi),
                    };
                    (name.clone(), (clo.min(0.0), chi.max(0.0)))
                })
                .collect()
        }
    };
    Ok(Calibration {
        method,
        input_count: inputs.len(),
        ranges,
    })
}

fn bin_center(lo: f32, hi: f32, bin: usize) -> f32 {
    lo + (hi - lo) * (bin as f32 + 0.5) / HISTOGRAM_BINS as f32
}

fn percentile_range(hist: &[u64], lo: f32, hi: f32, percentile: f64) -> (f32, f32) {
    let total: u64 = hist.iter().sum();
    let tail = ((100.0 - percentile.clamp(50.0, 100.0)) / 100.0 * total as f64) as u64;
    let (mut acc, mut lo_bin) = (0u64, 0usize);
    for (i, c) in hist.iter().enumerate() {
        acc += c;
        if acc > tail {
            lo_bin = i;
            break;
        }
    }
    let (mut acc, mut hi_bin) = (0u64, hist.len() - 1);
    for (i, c) in hist.iter().enumerate().rev() {
        acc += c;
        if acc > tail {
            hi_bin = i;
            break;
        }
    }
    let step = (hi - lo) / HISTOGRAM_BINS as f32;
    // Bin edges, so that 100% gives back the observed min and max.
    (lo + step * lo_bin as f32, lo + step * (hi_bin + 1) as f32)
}

/// Expected squared error of quantizing the histogram to 256 levels over [clo, chi].
fn quantization_mse(hist: &[u64], lo: f32, hi: f32, clo: f32, chi: f32) -> f64 {
    let step = ((chi - clo) / 255.0).max(f32::MIN_POSITIVE) as f64;
    let rounding = step * step / 12.0;
    hist.iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| {
            let v = bin_center(lo, hi, i) as f64;
            let clipped = v.clamp(clo as f64, chi as f64);
            let e = if clipped != v {
                (v - clipped).powi(2)
            } else {
                rounding
            };
            e * *c as f64
        })
        .sum()
}

fn mse_range(hist: &[u64], lo: f32, hi: f32) -> (f32, f32) {
    let (lo0, hi0) = (lo.min(0.0), hi.max(0.0));
    let mut best = (quantization_mse(hist, lo, hi, lo0, hi0), lo0, hi0);
    for i in 1..=80 {
        let shrink = 1.0 - i as f32 * 0.01;
        let (clo, chi) = (lo0 * shrink, hi0 * shrink);
        let e = quantization_mse(hist, lo, hi, clo, chi);
        if e < best.0 {
            best = (e, clo, chi);
        }
    }
    (best.1, best.2)
}

/// Storage type of quantized activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivationType {
    Int8,
    Uint8,
}

impl ActivationType {
    pub fn qmin(self) -> i32 {
        match self {
            ActivationType::Int8 => -128,
            ActivationType::Uint8 => 0,
        }
    }
    pub fn qmax(self) -> i32 {
        self.qmin() + 255
    }
}

/// Affine per-tensor quantization: real = scale * (q - zero_point).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
    pub dtype: ActivationType,
}

impl QParams {
    /// Parameters whose grid covers [lo, hi] (0 included, so that zero — padding,
    /// ReLU — is exact).
    pub fn from_range(lo: f32, hi: f32, dtype: ActivationType) -> QParams {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let (qmin, qmax) = (dtype.qmin(), dtype.qmax());
        let scale = ((hi - lo) / (qmax - qmin) as f32).max(1e-8);
        let zero_point = ((qmin as f32 - lo / scale).round() as i32).clamp(qmin, qmax);
        QParams {
            scale,
            zero_point,
            dtype,
        }
    }
    pub fn quantize(&self, v: f32) -> i32 {
        ((v / self.scale).round() as i32 + self.zero_point)
            .clamp(self.dtype.qmin(), self.dtype.qmax())
    }
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }
    pub fn fake_quantize(&self, v: f32) -> f32 {
        self.dequantize(self.quantize(v))
    }
    /// Real values the grid represents.
    pub fn representable(&self) -> (f32, f32) {
        (
            self.dequantize(self.dtype.qmin()),
            self.dequantize(self.dtype.qmax()),
        )
    }
    /// Same grid stored in the other type (int8 zero point + 128 = uint8 zero point).
    pub fn with_dtype(&self, dtype: ActivationType) -> QParams {
        let zero_point = self.zero_point - self.dtype.qmin() + dtype.qmin();
        QParams {
            scale: self.scale,
            zero_point,
            dtype,
        }
    }
}

/// Per-output-channel symmetric int8 weights and int32 biases of one conv.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvQuant {
    /// OIHW, in [-127, 127].
    pub weight: Vec<i8>,
    pub weight_scales: Vec<f32>,
    /// bias / (input_scale * weight_scale[c]), rounded.
    pub bias: Vec<i32>,
    pub bias_scales: Vec<f32>,
}

/// Everything a writer needs to emit an int8 graph.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantPlan {
    /// Parameters of every value stored in int8 (graph input included). Conv outputs
    /// fused into a following ReLU are absent: they never exist in int8.
    pub activations: BTreeMap<String, QParams>,
    pub convs: BTreeMap<String, ConvQuant>,
    /// Convs whose output goes only to one ReLU: written as one op with a fused ReLU.
    pub fused_relu: BTreeMap<String, String>,
}

/// Fixed output grids the runtimes demand (NNAPI: TANH int8 out 1/128 zp 0, LOGISTIC
/// out 1/256 zp -128).
fn fixed_output(op: &Op, dtype: ActivationType) -> Option<QParams> {
    let (scale, zp_i8) = match op {
        Op::Tanh => (1.0 / 128.0, 0),
        Op::Sigmoid => (1.0 / 256.0, -128),
        _ => return None,
    };
    Some(
        QParams {
            scale,
            zero_point: zp_i8,
            dtype: ActivationType::Int8,
        }
        .with_dtype(dtype),
    )
}

/// Conv nodes whose single consumer is a ReLU (and that are not the graph output):
/// conv name → relu name.
pub fn fusable_conv_relu(graph: &Graph) -> BTreeMap<String, String> {
    let mut fused = BTreeMap::new();
    for node in &graph.nodes {
        if !matches!(node.op, Op::Conv2d { .. }) || node.name == graph.output_name {
            continue;
        }
        let consumers = graph.consumers(&node.name);
        if consumers.len() == 1 && consumers[0].op == Op::Relu && consumers[0].inputs.len() == 1 {
            fused.insert(node.name.clone(), consumers[0].name.clone());
        }
    }
    fused
}

struct UnionFind(Vec<usize>);
impl UnionFind {
    fn find(&mut self, i: usize) -> usize {
        let mut r = i;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut j = i;
        while self.0[j] != r {
            let next = self.0[j];
            self.0[j] = r;
            j = next;
        }
        r
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// Values that share one set of parameters, as union-find roots: `names[i]` (the graph
/// input, then every node) belongs to group `roots[i]`.
struct SharedGroups<'g> {
    names: Vec<&'g str>,
    roots: Vec<usize>,
}

impl<'g> SharedGroups<'g> {
    fn of(graph: &'g Graph, fused_relu: &BTreeMap<String, String>) -> SharedGroups<'g> {
        let mut names: Vec<&str> = vec![graph.input_name.as_str()];
        names.extend(graph.nodes.iter().map(|n| n.name.as_str()));
        let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut uf = UnionFind((0..names.len()).collect());
        for node in &graph.nodes {
            let out = index[node.name.as_str()];
            match &node.op {
                Op::Add
                | Op::ConcatChannels
                | Op::UpsampleNearest { .. }
                | Op::DepthToSpace { .. } => {
                    for i in &node.inputs {
                        uf.union(index[i.as_str()], out);
                    }
                }
                Op::Relu => {
                    let input = &node.inputs[0];
                    if !fused_relu.contains_key(input) {
                        uf.union(index[input.as_str()], out);
                    }
                }
                _ => {}
            }
        }
        let roots = (0..names.len()).map(|i| uf.find(i)).collect();
        SharedGroups { names, roots }
    }

    /// Each group's range: the union of its members' ranges (a conv output fused into
    /// its ReLU is never stored and does not count), clipped where the group is read
    /// only by a TANH or LOGISTIC (`saturation_bound`).
    fn ranges(
        &self,
        graph: &Graph,
        calibration: &Calibration,
        fused_relu: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<usize, (f32, f32)>, QuantError> {
        let mut ranges: BTreeMap<usize, (f32, f32)> = BTreeMap::new();
        for (name, root) in self.names.iter().zip(&self.roots) {
            if fused_relu.contains_key(*name) {
                continue;
            }
            let r = calibration
                .ranges
                .get(*name)
                .ok_or_else(|| QuantError::MissingRange(name.to_string()))?;
            let e = ranges.entry(*root).or_insert((0.0, 0.0));
            *e = (e.0.min(r.0), e.1.max(r.1));
        }
        for (root, range) in ranges.iter_mut() {
            if let Some(bound) = self.saturation_bound(graph, calibration, *root) {
                *range = (range.0.max(-bound), range.1.min(bound));
            }
        }
        Ok(ranges)
    }

    /// Where every reader outside the group is a TANH (or every one a LOGISTIC), the
    /// grid need not reach far past where the squash saturates: beyond 3.12 a TANH is
    /// within half of its int8 output step (1/128) of ±1, beyond 6.24 a LOGISTIC within
    /// half of 1/256 of 0 or 1. A sharp net's pre-tanh sum reaches ±20 or more; on a
    /// grid that wide the linear part near 0 had a step of 0.2 (about 30 dB).
    ///
    /// An ADD in the group has its inputs clipped too, before they are summed: the
    /// bound leaves room for every input but the widest (`input → output` colour path
    /// beside the wide conv), so a clipped wide input plus the others still saturates.
    fn saturation_bound(
        &self,
        graph: &Graph,
        calibration: &Calibration,
        root: usize,
    ) -> Option<f32> {
        let members: Vec<&str> = self
            .names
            .iter()
            .zip(&self.roots)
            .filter(|(_, r)| **r == root)
            .map(|(n, _)| *n)
            .collect();
        if members.contains(&graph.output_name.as_str()) {
            return None;
        }
        let readers: Vec<&Op> = members
            .iter()
            .flat_map(|m| graph.consumers(m))
            .filter(|n| !members.contains(&n.name.as_str()))
            .map(|n| &n.op)
            .collect();
        let saturation = match readers.first()? {
            Op::Tanh => 3.12,
            Op::Sigmoid => 6.24,
            _ => return None,
        };
        if readers.iter().any(|op| *op != readers[0]) {
            return None;
        }
        let magnitude = |v: &String| {
            calibration
                .ranges
                .get(v)
                .map_or(f32::INFINITY, |(lo, hi)| lo.abs().max(hi.abs()))
        };
        let mut room = 0f32;
        for node in members.iter().filter_map(|m| graph.node(m)) {
            if node.op == Op::Add {
                let m: Vec<f32> = node.inputs.iter().map(magnitude).collect();
                let widest = m.iter().copied().fold(0.0, f32::max);
                room = room.max(m.iter().sum::<f32>() - widest);
            }
        }
        Some(saturation + room)
    }
}

/// The graph an int8 runtime runs, and its calibration: `graph` with an identity
/// requantize (a 1x1 depthwise conv of weight 1) in front of every ADD input that other
/// ops read too and whose own range is under half its ADD group's.
///
/// The runtimes' ADD takes its inputs on the output's grid (tract refuses two grids),
/// so a skip from a narrow ReLU (the stem's [0, 2]) added to a wide decoder level
/// ([0, 10]) would be stored with a handful of levels for every op that reads it. The
/// requantize moves the ADD's copy onto the wide grid and leaves the value its own.
/// Every target runs a depthwise conv; it costs one MAC per element, and the float
/// result is unchanged.
pub fn int8_graph(
    graph: &Graph,
    calibration: &Calibration,
) -> Result<(Graph, Calibration), QuantError> {
    graph.validate()?;
    let range = |name: &str| {
        calibration
            .ranges
            .get(name)
            .copied()
            .ok_or_else(|| QuantError::MissingRange(name.to_string()))
    };
    let fused_relu = fusable_conv_relu(graph);
    let groups = SharedGroups::of(graph, &fused_relu);
    let group_range = groups.ranges(graph, calibration, &fused_relu)?;
    let root_of: BTreeMap<&str, usize> = groups
        .names
        .iter()
        .zip(&groups.roots)
        .map(|(n, r)| (*n, *r))
        .collect();
    let shapes = graph.shapes()?;
    let mut out = graph.clone();
    out.nodes.clear();
    let mut ranges = calibration.ranges.clone();
    for node in &graph.nodes {
        let mut node = node.clone();
        if node.op == Op::Add {
            for input in node.inputs.iter_mut() {
                let (lo, hi) = range(input)?;
                let (glo, ghi) = group_range[&root_of[input.as_str()]];
                let shared = graph.consumers(input).len() > 1;
                if !shared || (hi - lo) * 2.0 >= ghi - glo {
                    continue;
                }
                let channels = shapes[input.as_str()][1];
                let name = format!("{}.requantize", input);
                out.nodes.push(Node {
                    name: name.clone(),
                    op: Op::Conv2d {
                        weight: vec![1.0; channels],
                        weight_shape: [channels, 1, 1, 1],
                        bias: vec![0.0; channels],
                        stride: [1, 1],
                        pads: [0, 0, 0, 0],
                        groups: channels,
                    },
                    inputs: vec![input.clone()],
                });
                ranges.insert(name.clone(), (lo, hi));
                *input = name;
            }
        }
        out.nodes.push(node);
    }
    Ok((
        out,
        Calibration {
            ranges,
            ..calibration.clone()
        },
    ))
}

impl QuantPlan {
    pub fn new(
        graph: &Graph,
        calibration: &Calibration,
        dtype: ActivationType,
    ) -> Result<QuantPlan, QuantError> {
        graph.validate()?;
        let fused_relu = fusable_conv_relu(graph);
        let groups = SharedGroups::of(graph, &fused_relu);
        let group_range = groups.ranges(graph, calibration, &fused_relu)?;
        let SharedGroups { names, roots } = groups;
        // A fixed grid (tanh, sigmoid outputs) wins over the group's range.
        let mut group_fixed: BTreeMap<usize, QParams> = BTreeMap::new();
        for (name, root) in names.iter().zip(&roots) {
            if let Some(fixed) = graph.node(name).and_then(|n| fixed_output(&n.op, dtype)) {
                group_fixed.insert(*root, fixed);
            }
        }
        let mut activations = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            if fused_relu.contains_key(*name) {
                continue;
            }
            let root = roots[i];
            let q = group_fixed.get(&root).copied().unwrap_or_else(|| {
                let (lo, hi) = group_range[&root];
                QParams::from_range(lo, hi, dtype)
            });
            activations.insert(name.to_string(), q);
        }
        let mut convs = BTreeMap::new();
        for node in &graph.nodes {
            if let Op::Conv2d {
                weight,
                weight_shape,
                bias,
                ..
            } = &node.op
            {
                let input_scale = activations[node.inputs[0].as_str()].scale;
                convs.insert(
                    node.name.clone(),
                    quantize_conv(weight, *weight_shape, bias, input_scale),
                );
            }
        }
        Ok(QuantPlan {
            activations,
            convs,
            fused_relu,
        })
    }

    /// Parameters of the int8 tensor that holds `value` in a written file: a conv fused
    /// with its ReLU writes the ReLU's parameters.
    pub fn stored_params(&self, value: &str) -> Option<QParams> {
        match self.fused_relu.get(value) {
            Some(relu) => self.activations.get(relu).copied(),
            None => self.activations.get(value).copied(),
        }
    }

    /// The graph with every weight and bias replaced by its dequantized int8/int32
    /// value: what an int8 runtime multiplies with.
    pub fn dequantized_weights(&self, graph: &Graph) -> Graph {
        let mut g = graph.clone();
        for node in &mut g.nodes {
            if let (
                Op::Conv2d {
                    weight,
                    weight_shape,
                    bias,
                    ..
                },
                Some(q),
            ) = (&mut node.op, self.convs.get(&node.name))
            {
                let per_channel = weight_shape[1] * weight_shape[2] * weight_shape[3];
                for (i, w) in weight.iter_mut().enumerate() {
                    *w = q.weight[i] as f32 * q.weight_scales[i / per_channel];
                }
                for (c, b) in bias.iter_mut().enumerate() {
                    *b = q.bias[c] as f32 * q.bias_scales[c];
                }
            }
        }
        g
    }

    /// Runs the graph as an int8 runtime would, in Rust: int8 weights, int32 biases,
    /// every stored activation rounded to its grid. Returns every value, dequantized.
    pub fn simulate(
        &self,
        graph: &Graph,
        input_nchw: &[f32],
    ) -> Result<crate::ir::interp::Values, QuantError> {
        let dq = self.dequantized_weights(graph);
        Ok(eval_with_hook(&dq, input_nchw, |name, data| {
            if let Some(q) = self.activations.get(name) {
                data.iter_mut().for_each(|v| *v = q.fake_quantize(*v));
            }
        })?)
    }
}

/// Per-output-channel symmetric int8 (range [-127, 127], zero point 0, as TFLite and
/// NNAPI require) and int32 bias at scale input_scale * weight_scale.
pub fn quantize_conv(
    weight: &[f32],
    weight_shape: [usize; 4],
    bias: &[f32],
    input_scale: f32,
) -> ConvQuant {
    let out_ch = weight_shape[0];
    let per_channel = weight_shape[1] * weight_shape[2] * weight_shape[3];
    let mut q = Vec::with_capacity(weight.len());
    let mut weight_scales = Vec::with_capacity(out_ch);
    let mut bias_q = Vec::with_capacity(out_ch);
    let mut bias_scales = Vec::with_capacity(out_ch);
    for c in 0..out_ch {
        let w = &weight[c * per_channel..(c + 1) * per_channel];
        let absmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Keep the bias representable in int32 even for an all-zero channel.
        let min_scale = bias[c].abs() / (input_scale * i32::MAX as f32 * 0.5);
        let scale = (absmax / 127.0).max(min_scale).max(1e-12);
        weight_scales.push(scale);
        q.extend(
            w.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
        let bscale = input_scale * scale;
        bias_scales.push(bscale);
        bias_q.push(
            (bias[c] as f64 / bscale as f64)
                .round()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32,
        );
    }
    ConvQuant {
        weight: q,
        weight_scales,
        bias: bias_q,
        bias_scales,
    }
}

/// One row of the per-layer error table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerError {
    pub name: String,
    pub op: String,
    /// The int8 pipeline up to and including this layer vs fp32, in dB over the fp32
    /// activation's range.
    pub psnr_db: f64,
    /// This layer alone: fp32 inputs, int8 weights, its own output grid.
    pub local_psnr_db: f64,
    /// Observed fp32 range of the activation.
    pub fp32_range: (f32, f32),
    /// Range its int8 grid can represent.
    pub int8_range: (f32, f32),
    /// Fraction of fp32 values outside the int8 grid (clipped).
    pub clipped_fraction: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerTable {
    pub rows: Vec<LayerError>,
    /// The layer whose own quantization loses the most (lowest local PSNR).
    pub worst_layer: String,
}

impl fmt::Display for LayerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<20} {:<16} {:>10} {:>10} {:>23} {:>23} {:>8}",
            "layer", "op", "PSNR dB", "local dB", "fp32 range", "int8 range", "clipped"
        )?;
        for r in &self.rows {
            let mark = if r.name == self.worst_layer {
                "  <- worst"
            } else {
                ""
            };
            writeln!(
                f,
                "{:<20} {:<16} {:>10.2} {:>10.2} {:>23} {:>23} {:>7.2}%{}",
                r.name,
                r.op,
                r.psnr_db,
                r.local_psnr_db,
                format!("[{:.3}, {:.3}]", r.fp32_range.0, r.fp32_range.1),
                format!("[{:.3}, {:.3}]", r.int8_range.0, r.int8_range.1),
                r.clipped_fraction * 100.0,
                mark
            )?;
        }
        Ok(())
    }
}

fn psnr_over_range(se: f64, count: usize, range: f64) -> f64 {
    if se == 0.0 {
        return f64::INFINITY;
    }
    let mse = se / count.max(1) as f64;
    10.0 * (range.max(1e-12).powi(2) / mse).log10()
}

/// Per-layer error of the int8 plan against fp32, over `inputs`.
pub fn layer_table(
    graph: &Graph,
    plan: &QuantPlan,
    inputs: &[Vec<f32>],
) -> Result<LayerTable, QuantError> {
    if inputs.is_empty() {
        return Err(QuantError::NoInputs);
    }
    let dq_graph = plan.dequantized_weights(graph);
    #[derive(Default)]
    struct Acc {
        se: f64,
        local_se: f64,
        count: usize,
        clipped: usize,
        lo: f32,
        hi: f32,
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for input in inputs {
        let reference = eval(graph, input)?;
        let simulated = plan.simulate(graph, input)?;
        for (node, dq_node) in graph.nodes.iter().zip(&dq_graph.nodes) {
            let fp = &reference.data[&node.name];
            let sim = &simulated.data[&node.name];
            let local = local_output(dq_node, &reference, plan)?;
            let grid = plan.stored_params(&node.name);
            let fused = plan.fused_relu.contains_key(&node.name);
            let a = acc.entry(node.name.clone()).or_insert(Acc {
                lo: f32::INFINITY,
                hi: f32::NEG_INFINITY,
                ..Default::default()
            });
            for ((f, s), l) in fp.iter().zip(sim).zip(&local) {
                a.se += ((f - s) as f64).powi(2);
                a.local_se += ((f - l) as f64).powi(2);
                a.lo = a.lo.min(*f);
                a.hi = a.hi.max(*f);
                if let Some(q) = grid {
                    let (rlo, rhi) = q.representable();
                    // A conv fused with its ReLU: negatives are the ReLU's job, not clipping.
                    let rlo = if fused { f32::NEG_INFINITY } else { rlo };
                    // Half a step of slack: rounding, not clipping.
                    if *f < rlo - q.scale * 0.5 || *f > rhi + q.scale * 0.5 {
                        a.clipped += 1;
                    }
                }
            }
            a.count += fp.len();
        }
    }
    let mut rows = Vec::new();
    for node in &graph.nodes {
        let a = &acc[&node.name];
        let range = (a.hi - a.lo) as f64;
        let grid = plan.stored_params(&node.name);
        rows.push(LayerError {
            name: node.name.clone(),
            op: node.op.kind().to_string(),
            psnr_db: psnr_over_range(a.se, a.count, range),
            local_psnr_db: psnr_over_range(a.local_se, a.count, range),
            fp32_range: (a.lo, a.hi),
            int8_range: grid
                .map(|q| q.representable())
                .unwrap_or((f32::NAN, f32::NAN)),
            clipped_fraction: a.clipped as f64 / a.count.max(1) as f64,
        });
    }
    let worst_layer = rows
        .iter()
        .min_by(|a, b| a.local_psnr_db.total_cmp(&b.local_psnr_db))
        .map(|r| r.name.clone())
        .unwrap_or_default();
    Ok(LayerTable { rows, worst_layer })
}

/// One node evaluated on fp32 inputs with int8 weights, its output rounded to the
/// grid it is stored on (a conv fused into a ReLU is rounded after the ReLU's max).
fn local_output(
    dq_node: &Node,
    reference: &crate::ir::interp::Values,
    plan: &QuantPlan,
) -> Result<Vec<f32>, QuantError> {
    let ins: Vec<&[f32]> = dq_node
        .inputs
        .iter()
        .map(|i| reference.data[i].as_slice())
        .collect();
    let mut out: Vec<f32> = match &dq_node.op {
        Op::Add => ins[0].iter().zip(ins[1]).map(|(a, b)| a + b).collect(),
        Op::ConcatChannels => ins.concat(),
        _ => {
            let shape = reference.shapes[&dq_node.inputs[0]];
            let one = Graph {
                input_name: dq_node.inputs[0].clone(),
                input_shape: shape,
                nodes: vec![dq_node.clone()],
                output_name: dq_node.name.clone(),
            };
            let mut values = eval(&one, ins[0])?;
            values.data.remove(&dq_node.name).unwrap_or_default()
        }
    };
    if let Some(q) = plan.stored_params(&dq_node.name) {
        let relu = plan.fused_relu.contains_key(&dq_node.name);
        out.iter_mut().for_each(|v| {
            // A fused conv's int8 tensor is the ReLU output; compare the conv's own
            // value where the ReLU lets it through.
            let x = if relu && *v < 0.0 {
                *v
            } else {
                q.fake_quantize(*v)
            };
            *v = x
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::sample::{image_like, narrow_skip};

    fn calibrated(g: &Graph) -> Calibration {
        let frames: Vec<Vec<f32>> = (0..3).map(|s| image_like(g.input_shape, s)).collect();
        calibrate(g, &frames, CalibrationMethod::MinMax).unwrap()
    }

    /// RMS distance between `value` in fp32 and in the simulated int8 graph.
    fn int8_error(g: &Graph, cal: &Calibration, value: &str) -> f32 {
        let plan = QuantPlan::new(g, cal, ActivationType::Int8).unwrap();
        let x = image_like(g.input_shape, 9);
        let exact = eval(g, &x).unwrap().data.remove(value).unwrap();
        let sim = plan.simulate(g, &x).unwrap().data.remove(value).unwrap();
        let se: f32 = exact.iter().zip(&sim).map(|(a, b)| (a - b) * (a - b)).sum();
        (se / exact.len() as f32).sqrt()
    }

    #[test]
    fn a_narrow_shared_add_input_keeps_its_own_grid() {
        let g = narrow_skip(4, 8, 1);
        let cal = calibrated(&g);
        let (g8, cal8) = int8_graph(&g, &cal).unwrap();

        // One requantize, in front of the ADD only; `down` still reads the ReLU.
        let added: Vec<&str> = g8
            .nodes
            .iter()
            .filter(|n| g.node(&n.name).is_none())
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(added, ["stem.relu.requantize"]);
        assert_eq!(g8.node("sum").unwrap().inputs[1], "stem.relu.requantize");
        assert_eq!(g8.node("down").unwrap().inputs[0], "stem.relu");
        // The float graph computes the same thing.
        let x = image_like(g.input_shape, 4);
        assert_eq!(
            eval(&g, &x).unwrap().data["out"],
            eval(&g8, &x).unwrap().data["out"]
        );

        // The ReLU's grid is its own range, not the sum's.
        let plan = QuantPlan::new(&g8, &cal8, ActivationType::Int8).unwrap();
        let (lo, hi) = cal.ranges["stem.relu"];
        let relu = plan.activations["stem.relu"].scale;
        assert!(relu <= (hi - lo) / 255.0 * 1.01, "stem.relu scale {relu}");
        let sum = plan.activations["sum"].scale;
        assert!(relu * 4.0 < sum, "stem.relu scale {relu}, sum {sum}");
        // ... so the conv that reads it sees it about as finely as fp32: several times
        // closer than with the one-grid plan.
        let (before, after) = (int8_error(&g, &cal, "down"), int8_error(&g8, &cal8, "down"));
        assert!(after * 4.0 < before, "down: rms {before} -> {after}");
    }

    #[test]
    fn adds_of_like_ranges_are_left_alone() {
        let g = crate::ir::sample::student_like(4, 8, 3);
        let cal = calibrated(&g);
        let mut wide = cal.clone();
        // Every value as wide as the widest: no input is narrow.
        let span = wide
            .ranges
            .values()
            .fold((0f32, 0f32), |a, r| (a.0.min(r.0), a.1.max(r.1)));
        wide.ranges.values_mut().for_each(|r| *r = span);
        let (g8, _) = int8_graph(&g, &wide).unwrap();
        assert_eq!(g8, g);
    }

    #[test]
    fn a_wide_sum_read_only_by_tanh_is_clipped_where_tanh_saturates() {
        // A sharp net: the pre-tanh sum spans about ±70, nearly all of it from `mix`.
        let mut g = narrow_skip(4, 8, 2);
        for name in ["mix"] {
            let node = g.nodes.iter_mut().find(|n| n.name == name).unwrap();
            if let Op::Conv2d { weight, .. } = &mut node.op {
                weight.iter_mut().for_each(|w| *w *= 8.0);
            }
        }
        let cal = calibrated(&g);
        let (lo, hi) = cal.ranges["pre"];
        assert!(hi - lo > 40.0, "pre spans {lo}..{hi}");
        let (g8, cal8) = int8_graph(&g, &cal).unwrap();
        let plan = QuantPlan::new(&g8, &cal8, ActivationType::Int8).unwrap();
        let (plo, phi) = plan.activations["pre"].representable();
        let room = cal.ranges["mix2"].0.abs().max(cal.ranges["mix2"].1.abs());
        assert!(
            plo >= -3.2 - room && phi <= 3.2 + room,
            "pre grid {plo}..{phi}, room {room}"
        );
        // Where the tanh is not saturated the output keeps int8's precision:
        // on the ±70 grid (step 0.6) it would be about 0.15.
        let rms = int8_error(&g8, &cal8, "out");
        assert!(rms < 0.03, "output rms {rms}");
    }
}
