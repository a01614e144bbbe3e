//! Rewrites MediaPipe's shipped `.tflite` flatbuffers into equivalent ones stock
//! tract-tflite 0.23 loads. What tract refuses in them (docs/mediapipe.md):
//!
//! - `DEQUANTIZE` of FLOAT16 constants (every weight is stored as fp16): folded into
//!   FLOAT32 constants, exactly as LiteRT computes them once at preparation;
//! - `DENSIFY` of sparse constants (pose detector): folded into dense constants;
//! - `PRELU` (face landmark): `relu(x) + alpha * min(x, 0)` with RELU, MINIMUM, MUL, ADD;
//! - `DEPTH_TO_SPACE` (pose detector): RESHAPE, TRANSPOSE, RESHAPE.
//!
//! The graph is read into owned tensors and operators, rewritten, then written back with
//! only the tensors still in use. Operators the rewrite does not know the options of are
//! refused with their name, rather than copied wrong.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use tract_tflite::internal::f16;
use tract_tflite::tflite::{
    self, ActivationFunctionType, BuiltinOperator, BuiltinOptions, Padding, TensorType,
};

/// What the rewrite did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewriteStats {
    pub dequantize_folded: usize,
    pub densify_folded: usize,
    pub prelu_expanded: usize,
    pub depth_to_space_expanded: usize,
}

#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    shape: Vec<i32>,
    ty: TensorType,
    /// Constant contents (dense, little endian).
    data: Option<Vec<u8>>,
    sparse: Option<Sparsity>,
}

#[derive(Debug, Clone)]
struct Sparsity {
    traversal_order: Vec<i32>,
    block_map: Vec<i32>,
    dims: Vec<SparseDim>,
}

#[derive(Debug, Clone)]
enum SparseDim {
    Dense(usize),
    Csr {
        segments: Vec<usize>,
        indices: Vec<usize>,
    },
}

#[derive(Debug, Clone)]
enum Options {
    None,
    Conv2D {
        padding: Padding,
        stride: (i32, i32),
        act: ActivationFunctionType,
        dilation: (i32, i32),
    },
    Depthwise {
        padding: Padding,
        stride: (i32, i32),
        depth_multiplier: i32,
        act: ActivationFunctionType,
        dilation: (i32, i32),
    },
    Add {
        act: ActivationFunctionType,
    },
    Mul {
        act: ActivationFunctionType,
    },
    Pool {
        padding: Padding,
        stride: (i32, i32),
        filter: (i32, i32),
        act: ActivationFunctionType,
    },
    Reshape {
        new_shape: Option<Vec<i32>>,
    },
    Concat {
        axis: i32,
        act: ActivationFunctionType,
    },
    ResizeBilinear {
        align_corners: bool,
        half_pixel_centers: bool,
    },
    DepthToSpace {
        block: i32,
    },
    /// Option tables without fields (PAD, DEQUANTIZE, DENSIFY, TRANSPOSE, MAXIMUM/MINIMUM).
    Empty(BuiltinOptions),
}

#[derive(Debug, Clone)]
struct Op {
    code: BuiltinOperator,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    options: Options,
}

struct Graph {
    tensors: Vec<Tensor>,
    ops: Vec<Op>,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    name: Option<String>,
}

fn op_name(code: BuiltinOperator) -> String {
    code.variant_name()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("operator {}", code.0))
}

/// Rewrites one model; the error says which operator or tensor could not be handled.
pub fn rewrite(bytes: &[u8]) -> Result<(Vec<u8>, RewriteStats), String> {
    let mut graph = read(bytes)?;
    let stats = transform(&mut graph)?;
    Ok((write(&graph)?, stats))
}

fn read(bytes: &[u8]) -> Result<Graph, String> {
    let model =
        tflite::root_as_model(bytes).map_err(|e| format!("not a TFLite flatbuffer: {e}"))?;
    let subgraphs = model.subgraphs().ok_or("no subgraphs")?;
    if subgraphs.len() != 1 {
        return Err(format!("{} subgraphs, expected one", subgraphs.len()));
    }
    let g = subgraphs.get(0);
    let buffers = model.buffers().ok_or("no buffers")?;
    let codes: Vec<BuiltinOperator> = model
        .operator_codes()
        .ok_or("no operator codes")?
        .iter()
        .map(|c| {
            // Old files only fill the deprecated int8 field.
            let dep = BuiltinOperator(c.deprecated_builtin_code() as i32);
            if c.builtin_code().0 > dep.0 {
                c.builtin_code()
            } else {
                dep
            }
        })
        .collect();

    let mut tensors = Vec::new();
    for t in g.tensors().ok_or("no tensors")?.iter() {
        let name = t.name().unwrap_or("").to_owned();
        if let Some(q) = t.quantization() {
            if q.scale().is_some_and(|s| !s.is_empty()) {
                return Err(format!(
                    "tensor {name:?} is quantized; only float models are handled"
                ));
            }
        }
        let data = buffers
            .get(t.buffer() as usize)
            .data()
            .filter(|d| !d.is_empty())
            .map(|d| d.bytes().to_vec());
        let sparse = match t.sparsity() {
            None => None,
            Some(s) => Some(read_sparsity(&name, &s)?),
        };
        tensors.push(Tensor {
            name,
            shape: t.shape().map(|s| s.iter().collect()).unwrap_or_default(),
            ty: t.type_(),
            data,
            sparse,
        });
    }
    let mut ops = Vec::new();
    for op in g.operators().ok_or("no operators")?.iter() {
        let code = *codes
            .get(op.opcode_index() as usize)
            .ok_or("operator code index out of range")?;
        let options = read_options(&op).map_err(|e| format!("{}: {e}", op_name(code)))?;
        ops.push(Op {
            code,
            inputs: op.inputs().map(|v| v.iter().collect()).unwrap_or_default(),
            outputs: op.outputs().map(|v| v.iter().collect()).unwrap_or_default(),
            options,
        });
    }
    Ok(Graph {
        tensors,
        ops,
        inputs: g.inputs().ok_or("no graph inputs")?.iter().collect(),
        outputs: g.outputs().ok_or("no graph outputs")?.iter().collect(),
        name: g.name().map(str::to_owned),
    })
}

fn read_sparsity(name: &str, s: &tflite::SparsityParameters) -> Result<Sparsity, String> {
    let index_vec = |ty: tflite::SparseIndexVector,
                     i32v: Option<tflite::Int32Vector>,
                     u16v: Option<tflite::Uint16Vector>,
                     u8v: Option<tflite::Uint8Vector>|
     -> Result<Vec<usize>, String> {
        let v: Option<Vec<usize>> = match ty {
            tflite::SparseIndexVector::Int32Vector => i32v
                .and_then(|v| v.values())
                .map(|v| v.iter().map(|x| x as usize).collect()),
            tflite::SparseIndexVector::Uint16Vector => u16v
                .and_then(|v| v.values())
                .map(|v| v.iter().map(|x| x as usize).collect()),
            tflite::SparseIndexVector::Uint8Vector => u8v
                .and_then(|v| v.values())
                .map(|v| v.iter().map(|x| x as usize).collect()),
            _ => None,
        };
        v.ok_or_else(|| format!("sparse tensor {name:?}: missing CSR index vector"))
    };
    let mut dims = Vec::new();
    for d in s
        .dim_metadata()
        .ok_or_else(|| format!("sparse tensor {name:?} without dims"))?
        .iter()
    {
        dims.push(match d.format() {
            tflite::DimensionType::DENSE => SparseDim::Dense(d.dense_size() as usize),
            _ => SparseDim::Csr {
                segments: index_vec(
                    d.array_segments_type(),
                    d.array_segments_as_int_32_vector(),
                    d.array_segments_as_uint_16_vector(),
                    d.array_segments_as_uint_8_vector(),
                )?,
                indices: index_vec(
                    d.array_indices_type(),
                    d.array_indices_as_int_32_vector(),
                    d.array_indices_as_uint_16_vector(),
                    d.array_indices_as_uint_8_vector(),
                )?,
            },
        });
    }
    Ok(Sparsity {
        traversal_order: s
            .traversal_order()
            .map(|v| v.iter().collect())
            .unwrap_or_default(),
        block_map: s
            .block_map()
            .map(|v| v.iter().collect())
            .unwrap_or_default(),
        dims,
    })
}

fn read_options(op: &tflite::Operator) -> Result<Options, String> {
    let ty = op.builtin_options_type();
    let missing = || format!("options of type {ty:?} missing");
    Ok(match ty {
        BuiltinOptions::NONE => Options::None,
        BuiltinOptions::Conv2DOptions => {
            let o = op
                .builtin_options_as_conv_2_doptions()
                .ok_or_else(missing)?;
            Options::Conv2D {
                padding: o.padding(),
                stride: (o.stride_w(), o.stride_h()),
                act: o.fused_activation_function(),
                dilation: (o.dilation_w_factor(), o.dilation_h_factor()),
            }
        }
        BuiltinOptions::DepthwiseConv2DOptions => {
            let o = op
                .builtin_options_as_depthwise_conv_2_doptions()
                .ok_or_else(missing)?;
            Options::Depthwise {
                padding: o.padding(),
                stride: (o.stride_w(), o.stride_h()),
                depth_multiplier: o.depth_multiplier(),
                act: o.fused_activation_function(),
                dilation: (o.dilation_w_factor(), o.dilation_h_factor()),
            }
        }
        BuiltinOptions::AddOptions => {
            let o = op.builtin_options_as_add_options().ok_or_else(missing)?;
            Options::Add {
                act: o.fused_activation_function(),
            }
        }
        BuiltinOptions::MulOptions => {
            let o = op.builtin_options_as_mul_options().ok_or_else(missing)?;
            Options::Mul {
                act: o.fused_activation_function(),
            }
        }
        BuiltinOptions::Pool2DOptions => {
            let o = op
                .builtin_options_as_pool_2_doptions()
                .ok_or_else(missing)?;
            Options::Pool {
                padding: o.padding(),
                stride: (o.stride_w(), o.stride_h()),
                filter: (o.filter_width(), o.filter_height()),
                act: o.fused_activation_function(),
            }
        }
        BuiltinOptions::ReshapeOptions => {
            let o = op
                .builtin_options_as_reshape_options()
                .ok_or_else(missing)?;
            Options::Reshape {
                new_shape: o.new_shape().map(|v| v.iter().collect()),
            }
        }
        BuiltinOptions::ConcatenationOptions => {
            let o = op
                .builtin_options_as_concatenation_options()
                .ok_or_else(missing)?;
            Options::Concat {
                axis: o.axis(),
                act: o.fused_activation_function(),
            }
        }
        BuiltinOptions::ResizeBilinearOptions => {
            let o = op
                .builtin_options_as_resize_bilinear_options()
                .ok_or_else(missing)?;
            Options::ResizeBilinear {
                align_corners: o.align_corners(),
                half_pixel_centers: o.half_pixel_centers(),
            }
        }
        BuiltinOptions::DepthToSpaceOptions => {
            let o = op
                .builtin_options_as_depth_to_space_options()
                .ok_or_else(missing)?;
            Options::DepthToSpace {
                block: o.block_size(),
            }
        }
        BuiltinOptions::PadOptions
        | BuiltinOptions::DequantizeOptions
        | BuiltinOptions::DensifyOptions
        | BuiltinOptions::TransposeOptions
        | BuiltinOptions::MaximumMinimumOptions => Options::Empty(ty),
        other => return Err(format!("options {other:?} are not handled by the rewrite")),
    })
}

fn element_size(ty: TensorType) -> Result<usize, String> {
    Ok(match ty {
        TensorType::FLOAT32 | TensorType::INT32 => 4,
        TensorType::FLOAT16 | TensorType::INT16 => 2,
        TensorType::INT8 | TensorType::UINT8 => 1,
        other => return Err(format!("tensor type {other:?} is not handled")),
    })
}

/// The dense contents of a sparse constant (TFLite's format converter, without block
/// maps: none of these models uses them).
fn densify(t: &Tensor, sp: &Sparsity) -> Result<Vec<u8>, String> {
    let rank = t.shape.len();
    if !sp.block_map.is_empty() || sp.traversal_order != (0..rank as i32).collect::<Vec<_>>() {
        return Err(format!(
            "sparse tensor {:?}: block maps / reordered traversal are not handled",
            t.name
        ));
    }
    if sp.dims.len() != rank {
        return Err(format!(
            "sparse tensor {:?}: {} dims of metadata for rank {rank}",
            t.name,
            sp.dims.len()
        ));
    }
    let esize = element_size(t.ty)?;
    let values = t.data.as_deref().unwrap_or(&[]);
    // (position in the compressed level, row-major index of the dense prefix)
    let mut nodes: Vec<(usize, usize)> = vec![(0, 0)];
    for (level, dim) in sp.dims.iter().enumerate() {
        let size = t.shape[level] as usize;
        let mut next = Vec::new();
        for &(pos, lin) in &nodes {
            match dim {
                SparseDim::Dense(n) => {
                    for j in 0..*n {
                        next.push((pos * n + j, lin * size + j));
                    }
                }
                SparseDim::Csr { segments, indices } => {
                    let (a, b) = (segments.get(pos), segments.get(pos + 1));
                    let (Some(&a), Some(&b)) = (a, b) else {
                        return Err(format!(
                            "sparse tensor {:?}: segment {pos} out of range",
                            t.name
                        ));
                    };
                    for k in a..b {
                        let idx = *indices.get(k).ok_or_else(|| {
                            format!("sparse tensor {:?}: index {k} out of range", t.name)
                        })?;
                        if idx >= size {
                            return Err(format!(
                                "sparse tensor {:?}: index {idx} >= {size}",
                                t.name
                            ));
                        }
                        next.push((k, lin * size + idx));
                    }
                }
            }
        }
        nodes = next;
    }
    let count: usize = t.shape.iter().map(|&d| d as usize).product();
    let mut dense = vec![0u8; count * esize];
    for &(pos, lin) in &nodes {
        let src = values
            .get(pos * esize..(pos + 1) * esize)
            .ok_or_else(|| format!("sparse tensor {:?}: value {pos} out of range", t.name))?;
        dense[lin * esize..(lin + 1) * esize].copy_from_slice(src);
    }
    Ok(dense)
}

fn f16_to_f32_bytes(data: &[u8]) -> Vec<u8> {
    data.chunks_exact(2)
        .flat_map(|c| {
            f16::from_bits(u16::from_le_bytes([c[0], c[1]]))
                .to_f32()
                .to_le_bytes()
        })
        .collect()
}

/// Appends a tensor to the graph and returns its index.
fn add_tensor(
    graph: &mut Graph,
    name: String,
    shape: Vec<i32>,
    ty: TensorType,
    data: Option<Vec<u8>>,
) -> i32 {
    graph.tensors.push(Tensor {
        name,
        shape,
        ty,
        data,
        sparse: None,
    });
    graph.tensors.len() as i32 - 1
}

fn add_const(
    graph: &mut Graph,
    name: String,
    shape: Vec<i32>,
    ty: TensorType,
    data: Vec<u8>,
) -> i32 {
    add_tensor(graph, name, shape, ty, Some(data))
}

/// A computed tensor shaped and typed like `like`.
fn add_activation(graph: &mut Graph, like: i32, name: String) -> i32 {
    let t = &graph.tensors[like as usize];
    let (shape, ty) = (t.shape.clone(), t.ty);
    add_tensor(graph, name, shape, ty, None)
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn transform(graph: &mut Graph) -> Result<RewriteStats, String> {
    let mut stats = RewriteStats::default();
    let old_ops = std::mem::take(&mut graph.ops);
    let mut ops = Vec::with_capacity(old_ops.len());
    for op in old_ops {
        let name = |graph: &Graph, i: usize| graph.tensors[op.outputs[i] as usize].name.clone();
        match op.code {
            BuiltinOperator::DENSIFY => {
                let (src, dst) = (op.inputs[0] as usize, op.outputs[0] as usize);
                let t = &graph.tensors[src];
                let sp = t
                    .sparse
                    .as_ref()
                    .ok_or_else(|| format!("DENSIFY of {:?}, which is not sparse", t.name))?;
                if t.data.is_none() {
                    return Err(format!("DENSIFY of {:?}, which is not a constant", t.name));
                }
                let (dense, ty) = (densify(t, sp)?, t.ty);
                graph.tensors[dst].data = Some(dense);
                graph.tensors[dst].ty = ty;
                stats.densify_folded += 1;
            }
            BuiltinOperator::DEQUANTIZE => {
                let (src, dst) = (op.inputs[0] as usize, op.outputs[0] as usize);
                let t = &graph.tensors[src];
                match (&t.data, t.ty, t.sparse.is_some()) {
                    (Some(d), TensorType::FLOAT16, false) => {
                        let f32s = f16_to_f32_bytes(d);
                        graph.tensors[dst].data = Some(f32s);
                        graph.tensors[dst].ty = TensorType::FLOAT32;
                        stats.dequantize_folded += 1;
                    }
                    _ => {
                        return Err(format!(
                            "DEQUANTIZE of {:?} ({:?}) is not an fp16 constant",
                            t.name, t.ty
                        ))
                    }
                }
            }
            BuiltinOperator::PRELU => {
                let (x, alpha, out) = (op.inputs[0], op.inputs[1], op.outputs[0]);
                let base = name(graph, 0);
                let rank = graph.tensors[x as usize].shape.len();
                // Give alpha the input's rank so every broadcast is plain NHWC.
                let a = &mut graph.tensors[alpha as usize];
                while a.shape.len() < rank {
                    a.shape.insert(0, 1);
                }
                let ty = graph.tensors[x as usize].ty;
                let zero = add_const(
                    graph,
                    format!("{base}/prelu_zero"),
                    vec![1],
                    ty,
                    0f32.to_le_bytes().to_vec(),
                );
                let pos = add_activation(graph, out, format!("{base}/prelu_pos"));
                let neg = add_activation(graph, out, format!("{base}/prelu_neg"));
                let scaled = add_activation(graph, out, format!("{base}/prelu_scaled"));
                ops.push(Op {
                    code: BuiltinOperator::RELU,
                    inputs: vec![x],
                    outputs: vec![pos],
                    options: Options::None,
                });
                ops.push(Op {
                    code: BuiltinOperator::MINIMUM,
                    inputs: vec![x, zero],
                    outputs: vec![neg],
                    options: Options::Empty(BuiltinOptions::MaximumMinimumOptions),
                });
                ops.push(Op {
                    code: BuiltinOperator::MUL,
                    inputs: vec![neg, alpha],
                    outputs: vec![scaled],
                    options: Options::Mul {
                        act: ActivationFunctionType::NONE,
                    },
                });
                ops.push(Op {
                    code: BuiltinOperator::ADD,
                    inputs: vec![pos, scaled],
                    outputs: vec![out],
                    options: Options::Add {
                        act: ActivationFunctionType::NONE,
                    },
                });
                stats.prelu_expanded += 1;
            }
            BuiltinOperator::DEPTH_TO_SPACE => {
                let Options::DepthToSpace { block: b } = op.options else {
                    return Err("DEPTH_TO_SPACE without its options".into());
                };
                let (x, out) = (op.inputs[0], op.outputs[0]);
                let base = name(graph, 0);
                let s = graph.tensors[x as usize].shape.clone();
                if s.len() != 4 || s[3] % (b * b) != 0 {
                    return Err(format!("DEPTH_TO_SPACE of shape {s:?} by {b}"));
                }
                let (n, h, w, c) = (s[0], s[1], s[2], s[3] / (b * b));
                let ty = graph.tensors[x as usize].ty;
                // NHWC: out[n, h*b+i, w*b+j, c] = in[n, h, w, (i*b + j)*C' + c].
                let split = vec![n, h, w, b, b, c];
                let moved = vec![n, h, b, w, b, c];
                let split_shape = add_const(
                    graph,
                    format!("{base}/d2s_split"),
                    vec![6],
                    TensorType::INT32,
                    i32_bytes(&split),
                );
                let perm = add_const(
                    graph,
                    format!("{base}/d2s_perm"),
                    vec![6],
                    TensorType::INT32,
                    i32_bytes(&[0, 1, 3, 2, 4, 5]),
                );
                let out_shape = graph.tensors[out as usize].shape.clone();
                let merge_shape = add_const(
                    graph,
                    format!("{base}/d2s_merge"),
                    vec![4],
                    TensorType::INT32,
                    i32_bytes(&out_shape),
                );
                let t_a = add_tensor(graph, format!("{base}/d2s_a"), split.clone(), ty, None);
                let t_b = add_tensor(graph, format!("{base}/d2s_b"), moved, ty, None);
                ops.push(Op {
                    code: BuiltinOperator::RESHAPE,
                    inputs: vec![x, split_shape],
                    outputs: vec![t_a],
                    options: Options::Reshape {
                        new_shape: Some(split),
                    },
                });
                ops.push(Op {
                    code: BuiltinOperator::TRANSPOSE,
                    inputs: vec![t_a, perm],
                    outputs: vec![t_b],
                    options: Options::Empty(BuiltinOptions::TransposeOptions),
                });
                ops.push(Op {
                    code: BuiltinOperator::RESHAPE,
                    inputs: vec![t_b, merge_shape],
                    outputs: vec![out],
                    options: Options::Reshape {
                        new_shape: Some(out_shape),
                    },
                });
                stats.depth_to_space_expanded += 1;
            }
            _ => ops.push(op),
        }
    }
    graph.ops = ops;
    Ok(stats)
}

fn write(graph: &Graph) -> Result<Vec<u8>, String> {
    // Keep only the tensors still in use, renumbered in order.
    let mut used = vec![false; graph.tensors.len()];
    for &i in graph.inputs.iter().chain(&graph.outputs) {
        used[i as usize] = true;
    }
    for op in &graph.ops {
        for &i in op.inputs.iter().chain(&op.outputs) {
            if i >= 0 {
                used[i as usize] = true;
            }
        }
    }
    let mut renumber = vec![-1i32; graph.tensors.len()];
    let mut kept = Vec::new();
    for (i, t) in graph.tensors.iter().enumerate() {
        if used[i] {
            renumber[i] = kept.len() as i32;
            kept.push(t);
        }
    }
    let map = |v: &[i32]| -> Vec<i32> {
        v.iter()
            .map(|&i| if i < 0 { i } else { renumber[i as usize] })
            .collect()
    };

    let mut fb = FlatBufferBuilder::with_capacity(1 << 20);
    let mut buffers = vec![tflite::Buffer::create(
        &mut fb,
        &tflite::BufferArgs {
            data: None,
            ..Default::default()
        },
    )];
    let mut tensors = Vec::new();
    for t in &kept {
        if t.sparse.is_some() {
            return Err(format!(
                "sparse tensor {:?} is still used after the rewrite",
                t.name
            ));
        }
        let buffer = match &t.data {
            Some(d) => {
                // Aligned as TFLite's own writer does.
                let data = crate::export::tflite::aligned_bytes(&mut fb, d);
                buffers.push(tflite::Buffer::create(
                    &mut fb,
                    &tflite::BufferArgs {
                        data: Some(data),
                        ..Default::default()
                    },
                ));
                buffers.len() as u32 - 1
            }
            None => 0,
        };
        let shape = fb.create_vector(&t.shape);
        let name = fb.create_string(&t.name);
        tensors.push(tflite::Tensor::create(
            &mut fb,
            &tflite::TensorArgs {
                shape: Some(shape),
                type_: t.ty,
                buffer,
                name: Some(name),
                ..Default::default()
            },
        ));
    }
    let mut codes: Vec<BuiltinOperator> = Vec::new();
    let mut operators = Vec::new();
    for op in &graph.ops {
        let index = match codes.iter().position(|c| *c == op.code) {
            Some(i) => i,
            None => {
                codes.push(op.code);
                codes.len() - 1
            }
        };
        let (options_type, options) = write_options(&mut fb, &op.options);
        let inputs = fb.create_vector(&map(&op.inputs));
        let outputs = fb.create_vector(&map(&op.outputs));
        operators.push(tflite::Operator::create(
            &mut fb,
            &tflite::OperatorArgs {
                opcode_index: index as u32,
                inputs: Some(inputs),
                outputs: Some(outputs),
                builtin_options_type: options_type,
                builtin_options: options,
                ..Default::default()
            },
        ));
    }
    let tensors = fb.create_vector(&tensors);
    let operators = fb.create_vector(&operators);
    let inputs = fb.create_vector(&map(&graph.inputs));
    let outputs = fb.create_vector(&map(&graph.outputs));
    let name = graph.name.as_deref().map(|n| fb.create_string(n));
    let subgraph = tflite::SubGraph::create(
        &mut fb,
        &tflite::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(inputs),
            outputs: Some(outputs),
            operators: Some(operators),
            name,
        },
    );
    let subgraphs = fb.create_vector(&[subgraph]);
    let codes: Vec<_> = codes
        .iter()
        .map(|code| {
            let deprecated = if code.0 < 127 { code.0 as i8 } else { 127 };
            tflite::OperatorCode::create(
                &mut fb,
                &tflite::OperatorCodeArgs {
                    deprecated_builtin_code: deprecated,
                    custom_code: None,
                    version: 1,
                    builtin_code: *code,
                },
            )
        })
        .collect();
    let codes = fb.create_vector(&codes);
    let buffers = fb.create_vector(&buffers);
    let description = fb.create_string("rewritten by effectc vision::tflite_rewrite");
    let model = tflite::Model::create(
        &mut fb,
        &tflite::ModelArgs {
            version: 3,
            operator_codes: Some(codes),
            subgraphs: Some(subgraphs),
            description: Some(description),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    tflite::finish_model_buffer(&mut fb, model);
    Ok(fb.finished_data().to_vec())
}

fn write_options<'fb>(
    fb: &mut FlatBufferBuilder<'fb>,
    options: &Options,
) -> (
    BuiltinOptions,
    Option<WIPOffset<flatbuffers::UnionWIPOffset>>,
) {
    use tflite::*;
    match options {
        Options::None => (BuiltinOptions::NONE, None),
        Options::Conv2D {
            padding,
            stride,
            act,
            dilation,
        } => {
            let o = Conv2DOptions::create(
                fb,
                &Conv2DOptionsArgs {
                    padding: *padding,
                    stride_w: stride.0,
                    stride_h: stride.1,
                    fused_activation_function: *act,
                    dilation_w_factor: dilation.0,
                    dilation_h_factor: dilation.1,
                },
            );
            (BuiltinOptions::Conv2DOptions, Some(o.as_union_value()))
        }
        Options::Depthwise {
            padding,
            stride,
            depth_multiplier,
            act,
            dilation,
        } => {
            let o = DepthwiseConv2DOptions::create(
                fb,
                &DepthwiseConv2DOptionsArgs {
                    padding: *padding,
                    stride_w: stride.0,
                    stride_h: stride.1,
                    depth_multiplier: *depth_multiplier,
                    fused_activation_function: *act,
                    dilation_w_factor: dilation.0,
                    dilation_h_factor: dilation.1,
                },
            );
            (
                BuiltinOptions::DepthwiseConv2DOptions,
                Some(o.as_union_value()),
            )
        }
        Options::Add { act } => {
            let o = AddOptions::create(
                fb,
                &AddOptionsArgs {
                    fused_activation_function: *act,
                    pot_scale_int16: false,
                },
            );
            (BuiltinOptions::AddOptions, Some(o.as_union_value()))
        }
        Options::Mul { act } => {
            let o = MulOptions::create(
                fb,
                &MulOptionsArgs {
                    fused_activation_function: *act,
                },
            );
            (BuiltinOptions::MulOptions, Some(o.as_union_value()))
        }
        Options::Pool {
            padding,
            stride,
            filter,
            act,
        } => {
            let o = Pool2DOptions::create(
                fb,
                &Pool2DOptionsArgs {
                    padding: *padding,
                    stride_w: stride.0,
                    stride_h: stride.1,
                    filter_width: filter.0,
                    filter_height: filter.1,
                    fused_activation_function: *act,
                },
            );
            (BuiltinOptions::Pool2DOptions, Some(o.as_union_value()))
        }
        Options::Reshape { new_shape } => {
            let new_shape = new_shape.as_ref().map(|s| fb.create_vector(s));
            let o = ReshapeOptions::create(fb, &ReshapeOptionsArgs { new_shape });
            (BuiltinOptions::ReshapeOptions, Some(o.as_union_value()))
        }
        Options::Concat { axis, act } => {
            let o = ConcatenationOptions::create(
                fb,
                &ConcatenationOptionsArgs {
                    axis: *axis,
                    fused_activation_function: *act,
                },
            );
            (
                BuiltinOptions::ConcatenationOptions,
                Some(o.as_union_value()),
            )
        }
        Options::ResizeBilinear {
            align_corners,
            half_pixel_centers,
        } => {
            let o = ResizeBilinearOptions::create(
                fb,
                &ResizeBilinearOptionsArgs {
                    align_corners: *align_corners,
                    half_pixel_centers: *half_pixel_centers,
                },
            );
            (
                BuiltinOptions::ResizeBilinearOptions,
                Some(o.as_union_value()),
            )
        }
        Options::DepthToSpace { block } => {
            let o =
                DepthToSpaceOptions::create(fb, &DepthToSpaceOptionsArgs { block_size: *block });
            (
                BuiltinOptions::DepthToSpaceOptions,
                Some(o.as_union_value()),
            )
        }
        Options::Empty(ty) => {
            // An empty table of the same type.
            let start = fb.start_table();
            let o: WIPOffset<flatbuffers::TableFinishedWIPOffset> = fb.end_table(start);
            (*ty, Some(o.as_union_value()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densify_csr_last_axis() {
        // 2x3, row 0 has values at columns 0 and 2, row 1 at column 1.
        let t = Tensor {
            name: "w".into(),
            shape: vec![2, 3],
            ty: TensorType::INT8,
            data: Some(vec![1, 2, 3]),
            sparse: None,
        };
        let sp = Sparsity {
            traversal_order: vec![0, 1],
            block_map: vec![],
            dims: vec![
                SparseDim::Dense(2),
                SparseDim::Csr {
                    segments: vec![0, 2, 3],
                    indices: vec![0, 2, 1],
                },
            ],
        };
        assert_eq!(densify(&t, &sp).unwrap(), vec![1, 0, 2, 0, 3, 0]);
    }

    #[test]
    fn densify_refuses_block_maps() {
        let t = Tensor {
            name: "w".into(),
            shape: vec![2],
            ty: TensorType::INT8,
            data: Some(vec![1]),
            sparse: None,
        };
        let sp = Sparsity {
            traversal_order: vec![0, 1],
            block_map: vec![0],
            dims: vec![SparseDim::Dense(2)],
        };
        assert!(densify(&t, &sp).unwrap_err().contains("block maps"));
    }

    #[test]
    fn fp16_constants_become_f32() {
        let bytes: Vec<u8> = [1.5f32, -0.25, 65504.0]
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let out = f16_to_f32_bytes(&bytes);
        let vals: Vec<f32> = out
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, vec![1.5, -0.25, 65504.0]);
    }
}
