//! A TFLite file re-declared for another input size (what `effectc preview --size`
//! runs): the student is fully convolutional, so only the activation shapes, the
//! shapes its RESHAPEs name and the sizes of its nearest resizes change.

use crate::tflite::{parse, serialize, BuiltinOperator, ModelError, Options};

/// Why a file cannot be re-declared for another size.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("the model has no input")]
    NoInput,
    #[error("input shape {0:?} is not NHWC")]
    NotNhwc(Vec<i32>),
    #[error("the model was built at {built_w}x{built_h}; {size} is not on its grid (a {map}-pixel feature map would not scale): pick a multiple of {multiple}")]
    OffGrid {
        built_w: usize,
        built_h: usize,
        size: usize,
        map: i32,
        multiple: usize,
    },
    #[error("a PAD's paddings do not match its input's rank")]
    PadRank,
    #[error("a resize size operand is not two int32")]
    ResizeOperand,
}

/// The TFLite model declared for `size`×`size` inputs: every activation tensor's
/// height and width (and the size operand of a nearest resize) scaled by the same
/// factor. The weights, quantization and ops are the file's own.
pub fn tflite_at_size(bytes: &[u8], size: usize) -> Result<Vec<u8>, ResizeError> {
    let mut desc = parse(bytes)?;
    let input = *desc.inputs.first().ok_or(ResizeError::NoInput)?;
    let in_shape = desc.tensors[input as usize].shape.clone();
    if in_shape.len() != 4 {
        return Err(ResizeError::NotNhwc(in_shape));
    }
    let (bh, bw) = (in_shape[1] as usize, in_shape[2] as usize);
    if (bh, bw) == (size, size) {
        return Ok(bytes.to_vec());
    }
    let scale = |d: i32, built: usize| -> Result<i32, ResizeError> {
        let v = d as usize * size;
        if v % built != 0 {
            return Err(ResizeError::OffGrid {
                built_w: bw,
                built_h: bh,
                size,
                map: d,
                multiple: built / gcd(built, d as usize),
            });
        }
        Ok((v / built) as i32)
    };
    // Which dims of a 4-D activation are height and width. The writer's tensors are
    // NHWC, except inside its depth-to-space (RESHAPE → TRANSPOSE → RESHAPE): the split
    // [H, W, b, C/b] feeding the TRANSPOSE, and its output [H, b, W, C/b].
    let code_of = |t: i32, produced: bool| {
        desc.ops
            .iter()
            .find(|o| {
                if produced {
                    o.outputs.contains(&t)
                } else {
                    o.inputs.first() == Some(&t)
                }
            })
            .map(|o| o.code)
    };
    let spatial: Vec<Option<(usize, usize)>> = (0..desc.tensors.len() as i32)
        .map(|i| {
            let t = &desc.tensors[i as usize];
            // Activations have no buffer; weights (which do) keep their shapes.
            if t.buffer != 0 || t.shape.len() != 4 {
                return None;
            }
            // A PAD's output is its input plus the pads (set below).
            if code_of(i, true) == Some(BuiltinOperator::PAD) {
                return None;
            }
            Some(if code_of(i, true) == Some(BuiltinOperator::TRANSPOSE) {
                (0, 2)
            } else if code_of(i, false) == Some(BuiltinOperator::TRANSPOSE) {
                (0, 1)
            } else {
                (1, 2)
            })
        })
        .collect();
    for (t, dims) in desc.tensors.iter_mut().zip(&spatial) {
        if let Some((dh, dw)) = *dims {
            t.shape[dh] = scale(t.shape[dh], bh)?;
            t.shape[dw] = scale(t.shape[dw], bw)?;
        }
    }
    for k in 0..desc.ops.len() {
        let op = &desc.ops[k];
        if op.code != BuiltinOperator::PAD || op.inputs.len() < 2 {
            continue;
        }
        let input = desc.tensors[op.inputs[0] as usize].shape.clone();
        let pads = &desc.buffers[desc.tensors[op.inputs[1] as usize].buffer as usize];
        let pads: Vec<i32> = pads
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if pads.len() != 2 * input.len() {
            return Err(ResizeError::PadRank);
        }
        let out = op.outputs[0] as usize;
        desc.tensors[out].shape = (0..input.len())
            .map(|d| input[d] + pads[2 * d] + pads[2 * d + 1])
            .collect();
    }
    // A RESHAPE's target shape (option and operand) is its output's new shape.
    for k in 0..desc.ops.len() {
        if desc.ops[k].code != BuiltinOperator::RESHAPE {
            continue;
        }
        let out = desc.tensors[desc.ops[k].outputs[0] as usize].shape.clone();
        if let Options::Reshape { new_shape } = &mut desc.ops[k].options {
            *new_shape = Some(out.clone());
        }
        if let Some(&operand) = desc.ops[k].inputs.get(1) {
            let b = desc.tensors[operand as usize].buffer as usize;
            if b != 0 {
                desc.buffers[b] = out.iter().flat_map(|d| d.to_le_bytes()).collect();
            }
        }
    }
    let resize_sizes: Vec<u32> = desc
        .ops
        .iter()
        .filter(|o| o.code == BuiltinOperator::RESIZE_NEAREST_NEIGHBOR)
        .filter_map(|o| o.inputs.get(1))
        .map(|&i| desc.tensors[i as usize].buffer)
        .collect();
    for b in resize_sizes {
        let buf = &mut desc.buffers[b as usize];
        if buf.len() != 8 {
            return Err(ResizeError::ResizeOperand);
        }
        for (k, built) in [(0usize, bh), (1, bw)] {
            let d = i32::from_le_bytes(buf[k * 4..k * 4 + 4].try_into().unwrap_or([0; 4]));
            buf[k * 4..k * 4 + 4].copy_from_slice(&scale(d, built)?.to_le_bytes());
        }
    }
    Ok(serialize(&desc)?)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}
