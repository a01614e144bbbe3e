//! Rewrites MediaPipe's shipped `.tflite` flatbuffers into equivalent ones stock
//! tract-tflite 0.23 loads. What tract refuses in them (docs/mediapipe.md):
//!
//! - `DEQUANTIZE` of FLOAT16 constants (every weight is stored as fp16): folded into
//!   FLOAT32 constants, exactly as LiteRT computes them once at preparation;
//! - `DENSIFY` of sparse constants (pose detector): folded into dense constants;
//! - `PRELU` (face landmark): `relu(x) + alpha * min(x, 0)` with RELU, MINIMUM, MUL, ADD;
//! - `DEPTH_TO_SPACE` (pose detector): RESHAPE, TRANSPOSE, RESHAPE.
//!
//! The file is read into a `crate::tflite::Model`, its operators rewritten, and written
//! back with only the tensors still in use. Operators whose options the model does not
//! know are refused with their name (by `crate::tflite`), rather than copied wrong.

use tract_tflite::internal::f16;

use crate::tflite::{
    parse, serialize, ActivationFunctionType, BuiltinOperator, BuiltinOptions, Model, ModelError,
    Op, Options, SparseDim, Sparsity, Tensor, TensorType,
};

/// What the rewrite did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewriteStats {
    pub dequantize_folded: usize,
    pub densify_folded: usize,
    pub prelu_expanded: usize,
    pub depth_to_space_expanded: usize,
}

/// Why a model cannot be rewritten: which operator or tensor could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("tensor {0:?} is quantized; only float models are handled")]
    Quantized(String),
    #[error("tensor type {0:?} is not handled")]
    TensorType(TensorType),
    #[error("DENSIFY of {0:?}, which is not a sparse constant")]
    NotSparseConstant(String),
    #[error("DEQUANTIZE of {0:?} ({1:?}) is not an fp16 constant")]
    NotFp16Constant(String, TensorType),
    #[error("{0} without its options")]
    NoOptions(&'static str),
    #[error("DEPTH_TO_SPACE of shape {shape:?} by {block}")]
    DepthToSpaceShape { shape: Vec<i32>, block: i32 },
}

fn sparse(t: &Tensor, reason: String) -> RewriteError {
    RewriteError::Model(ModelError::Sparse {
        tensor: t.name.clone(),
        reason,
    })
}

/// Rewrites one model.
pub fn rewrite(bytes: &[u8]) -> Result<(Vec<u8>, RewriteStats), RewriteError> {
    let mut model = parse(bytes)?;
    if let Some(t) = model.tensors.iter().find(|t| t.quant.is_some()) {
        return Err(RewriteError::Quantized(t.name.clone()));
    }
    let stats = transform(&mut model)?;
    model.drop_unused_tensors();
    // Version 1 for every operator code, and ADD without power-of-two int16 scaling
    // (meaningless for float), as this rewrite has always written them.
    for op in &mut model.ops {
        op.version = 1;
        if let Options::Add {
            pot_scale_int16, ..
        } = &mut op.options
        {
            *pot_scale_int16 = false;
        }
    }
    model.description = "rewritten by effectc vision::tflite_rewrite".into();
    Ok((serialize(&model)?, stats))
}

fn element_size(ty: TensorType) -> Result<usize, RewriteError> {
    Ok(match ty {
        TensorType::FLOAT32 | TensorType::INT32 => 4,
        TensorType::FLOAT16 | TensorType::INT16 => 2,
        TensorType::INT8 | TensorType::UINT8 => 1,
        other => return Err(RewriteError::TensorType(other)),
    })
}

/// The dense contents of a sparse constant whose stored values are `values` (TFLite's
/// format converter, without block maps: none of these models uses them).
fn densify(t: &Tensor, sp: &Sparsity, values: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let rank = t.shape.len();
    if !sp.block_map.is_empty() || sp.traversal_order != (0..rank as i32).collect::<Vec<_>>() {
        let reason = "block maps / reordered traversal are not handled";
        return Err(sparse(t, reason.into()));
    }
    if sp.dims.len() != rank {
        let reason = format!("{} dims of metadata for rank {rank}", sp.dims.len());
        return Err(sparse(t, reason));
    }
    let esize = element_size(t.dtype)?;
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
                        return Err(sparse(t, format!("segment {pos} out of range")));
                    };
                    for k in a..b {
                        let idx = *indices
                            .get(k)
                            .ok_or_else(|| sparse(t, format!("index {k} out of range")))?;
                        if idx >= size {
                            return Err(sparse(t, format!("index {idx} >= {size}")));
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
            .ok_or_else(|| sparse(t, format!("value {pos} out of range")))?;
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

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A computed tensor shaped and typed like `like`.
fn add_activation(model: &mut Model, like: i32, name: String) -> i32 {
    let t = &model.tensors[like as usize];
    let (shape, dtype) = (t.shape.clone(), t.dtype);
    model.add_tensor(name, shape, dtype, None, None)
}

fn add_i32_const(model: &mut Model, name: String, values: &[i32]) -> i32 {
    let shape = vec![values.len() as i32];
    model.add_tensor(
        name,
        shape,
        TensorType::INT32,
        Some(i32_bytes(values)),
        None,
    )
}

fn op(code: BuiltinOperator, inputs: Vec<i32>, outputs: Vec<i32>, options: Options) -> Op {
    Op {
        code,
        version: 1,
        inputs,
        outputs,
        options,
    }
}

/// Each operator tract refuses replaced: folded into a constant, or expanded into
/// operators it runs.
fn transform(model: &mut Model) -> Result<RewriteStats, RewriteError> {
    let mut stats = RewriteStats::default();
    let mut ops = Vec::with_capacity(model.ops.len());
    for op in std::mem::take(&mut model.ops) {
        match op.code {
            BuiltinOperator::DENSIFY => {
                fold_densify(model, &op)?;
                stats.densify_folded += 1;
            }
            BuiltinOperator::DEQUANTIZE => {
                fold_dequantize(model, &op)?;
                stats.dequantize_folded += 1;
            }
            BuiltinOperator::PRELU => {
                ops.extend(expand_prelu(model, &op));
                stats.prelu_expanded += 1;
            }
            BuiltinOperator::DEPTH_TO_SPACE => {
                ops.extend(expand_depth_to_space(model, &op)?);
                stats.depth_to_space_expanded += 1;
            }
            _ => ops.push(op),
        }
    }
    model.ops = ops;
    Ok(stats)
}

/// DENSIFY of a sparse constant: its output becomes the dense constant.
fn fold_densify(model: &mut Model, op: &Op) -> Result<(), RewriteError> {
    let (src, dst) = (op.inputs[0], op.outputs[0]);
    let t = &model.tensors[src as usize];
    let (Some(sp), Some(values)) = (&t.sparsity, model.data(src)) else {
        return Err(RewriteError::NotSparseConstant(t.name.clone()));
    };
    let (dense, dtype) = (densify(t, sp, values)?, t.dtype);
    model.set_data(dst, dense);
    model.tensors[dst as usize].dtype = dtype;
    Ok(())
}

/// DEQUANTIZE of an fp16 constant: its output becomes the f32 constant.
fn fold_dequantize(model: &mut Model, op: &Op) -> Result<(), RewriteError> {
    let (src, dst) = (op.inputs[0], op.outputs[0]);
    let t = &model.tensors[src as usize];
    match (model.data(src), t.dtype, t.sparsity.is_some()) {
        (Some(d), TensorType::FLOAT16, false) => {
            let f32s = f16_to_f32_bytes(d);
            model.set_data(dst, f32s);
            model.tensors[dst as usize].dtype = TensorType::FLOAT32;
            Ok(())
        }
        _ => Err(RewriteError::NotFp16Constant(t.name.clone(), t.dtype)),
    }
}

/// PRELU(x, alpha) = relu(x) + alpha * min(x, 0).
fn expand_prelu(model: &mut Model, op: &Op) -> [Op; 4] {
    let (x, alpha, out) = (op.inputs[0], op.inputs[1], op.outputs[0]);
    let base = model.tensors[out as usize].name.clone();
    let rank = model.tensors[x as usize].shape.len();
    // Give alpha the input's rank so every broadcast is plain NHWC.
    let a = &mut model.tensors[alpha as usize];
    while a.shape.len() < rank {
        a.shape.insert(0, 1);
    }
    let dtype = model.tensors[x as usize].dtype;
    let zero = 0f32.to_le_bytes().to_vec();
    let zero = model.add_tensor(
        format!("{base}/prelu_zero"),
        vec![1],
        dtype,
        Some(zero),
        None,
    );
    let pos = add_activation(model, out, format!("{base}/prelu_pos"));
    let neg = add_activation(model, out, format!("{base}/prelu_neg"));
    let scaled = add_activation(model, out, format!("{base}/prelu_scaled"));
    let none = ActivationFunctionType::NONE;
    let min = Options::Empty(BuiltinOptions::MaximumMinimumOptions);
    [
        self::op(BuiltinOperator::RELU, vec![x], vec![pos], Options::None),
        self::op(BuiltinOperator::MINIMUM, vec![x, zero], vec![neg], min),
        self::op(
            BuiltinOperator::MUL,
            vec![neg, alpha],
            vec![scaled],
            Options::Mul { act: none },
        ),
        self::op(
            BuiltinOperator::ADD,
            vec![pos, scaled],
            vec![out],
            Options::Add {
                act: none,
                pot_scale_int16: false,
            },
        ),
    ]
}

/// DEPTH_TO_SPACE as RESHAPE → TRANSPOSE → RESHAPE.
fn expand_depth_to_space(model: &mut Model, op: &Op) -> Result<[Op; 3], RewriteError> {
    let Options::DepthToSpace { block: b } = op.options else {
        return Err(RewriteError::NoOptions("DEPTH_TO_SPACE"));
    };
    let (x, out) = (op.inputs[0], op.outputs[0]);
    let base = model.tensors[out as usize].name.clone();
    let s = model.tensors[x as usize].shape.clone();
    if s.len() != 4 || s[3] % (b * b) != 0 {
        return Err(RewriteError::DepthToSpaceShape { shape: s, block: b });
    }
    let (n, h, w, c) = (s[0], s[1], s[2], s[3] / (b * b));
    let dtype = model.tensors[x as usize].dtype;
    // NHWC: out[n, h*b+i, w*b+j, c] = in[n, h, w, (i*b + j)*C' + c].
    let split = vec![n, h, w, b, b, c];
    let moved = vec![n, h, b, w, b, c];
    let split_shape = add_i32_const(model, format!("{base}/d2s_split"), &split);
    let perm = add_i32_const(model, format!("{base}/d2s_perm"), &[0, 1, 3, 2, 4, 5]);
    let out_shape = model.tensors[out as usize].shape.clone();
    let merge_shape = add_i32_const(model, format!("{base}/d2s_merge"), &out_shape);
    let t_a = model.add_tensor(format!("{base}/d2s_a"), split.clone(), dtype, None, None);
    let t_b = model.add_tensor(format!("{base}/d2s_b"), moved, dtype, None, None);
    let reshape = |new_shape| Options::Reshape {
        new_shape: Some(new_shape),
    };
    let transpose = Options::Empty(BuiltinOptions::TransposeOptions);
    Ok([
        self::op(
            BuiltinOperator::RESHAPE,
            vec![x, split_shape],
            vec![t_a],
            reshape(split),
        ),
        self::op(
            BuiltinOperator::TRANSPOSE,
            vec![t_a, perm],
            vec![t_b],
            transpose,
        ),
        self::op(
            BuiltinOperator::RESHAPE,
            vec![t_b, merge_shape],
            vec![out],
            reshape(out_shape),
        ),
    ])
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
            dtype: TensorType::INT8,
            buffer: 1,
            quant: None,
            sparsity: None,
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
        assert_eq!(
            densify(&t, &sp, &[1, 2, 3]).unwrap(),
            vec![1, 0, 2, 0, 3, 0]
        );
    }

    #[test]
    fn densify_refuses_block_maps() {
        let t = Tensor {
            name: "w".into(),
            shape: vec![2],
            dtype: TensorType::INT8,
            buffer: 1,
            quant: None,
            sparsity: None,
        };
        let sp = Sparsity {
            traversal_order: vec![0, 1],
            block_map: vec![0],
            dims: vec![SparseDim::Dense(2)],
        };
        let err = densify(&t, &sp, &[1]).unwrap_err().to_string();
        assert!(err.contains("block maps"), "{err}");
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
