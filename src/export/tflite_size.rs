//! A TFLite file re-declared for another input size (what `effectc preview --size`
//! runs): the student is fully convolutional, so only the activation shapes, the
//! shapes its RESHAPEs name and the sizes of its nearest resizes change.

use crate::tflite::{parse, serialize, BuiltinOperator, Model, ModelError, Options};

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
    let mut model = parse(bytes)?;
    let input = *model.inputs.first().ok_or(ResizeError::NoInput)?;
    let in_shape = model.tensors[input as usize].shape.clone();
    if in_shape.len() != 4 {
        return Err(ResizeError::NotNhwc(in_shape));
    }
    let (built_h, built_w) = (in_shape[1] as usize, in_shape[2] as usize);
    if (built_h, built_w) == (size, size) {
        return Ok(bytes.to_vec());
    }
    let grid = Grid {
        built_h,
        built_w,
        size,
    };
    let spatial = spatial_dims(&model);
    for (t, dims) in model.tensors.iter_mut().zip(&spatial) {
        if let Some((dh, dw)) = *dims {
            t.shape[dh] = grid.scale(t.shape[dh], built_h)?;
            t.shape[dw] = grid.scale(t.shape[dw], built_w)?;
        }
    }
    pad_outputs(&mut model)?;
    reshape_targets(&mut model);
    resize_sizes(&mut model, &grid)?;
    Ok(serialize(&model)?)
}

/// The size the model was built at and the one asked for.
struct Grid {
    built_h: usize,
    built_w: usize,
    size: usize,
}

impl Grid {
    /// A `d`-pixel extent of an axis built at `built` pixels, at the new size.
    fn scale(&self, d: i32, built: usize) -> Result<i32, ResizeError> {
        let v = d as usize * self.size;
        if v % built != 0 {
            return Err(ResizeError::OffGrid {
                built_w: self.built_w,
                built_h: self.built_h,
                size: self.size,
                map: d,
                multiple: built / gcd(built, d as usize),
            });
        }
        Ok((v / built) as i32)
    }
}

/// Per tensor, which dims of a 4-D activation are height and width (`None`: not
/// scaled here). The writer's tensors are NHWC, except inside its depth-to-space
/// (RESHAPE → TRANSPOSE → RESHAPE): the split [H, W, b, C/b] feeding the TRANSPOSE,
/// and its output [H, b, W, C/b].
fn spatial_dims(model: &Model) -> Vec<Option<(usize, usize)>> {
    let code_of = |t: i32, produced: bool| {
        model
            .ops
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
    (0..model.tensors.len() as i32)
        .map(|i| {
            let t = &model.tensors[i as usize];
            // Activations have no buffer; weights (which do) keep their shapes.
            if t.buffer != 0 || t.shape.len() != 4 {
                return None;
            }
            // A PAD's output is its input plus the pads (`pad_outputs`).
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
        .collect()
}

/// Each PAD's output: its (re-sized) input plus the pads.
fn pad_outputs(model: &mut Model) -> Result<(), ResizeError> {
    for k in 0..model.ops.len() {
        let op = &model.ops[k];
        if op.code != BuiltinOperator::PAD || op.inputs.len() < 2 {
            continue;
        }
        let input = model.tensors[op.inputs[0] as usize].shape.clone();
        let pads = &model.buffers[model.tensors[op.inputs[1] as usize].buffer as usize];
        let pads: Vec<i32> = pads
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if pads.len() != 2 * input.len() {
            return Err(ResizeError::PadRank);
        }
        let out = op.outputs[0] as usize;
        model.tensors[out].shape = (0..input.len())
            .map(|d| input[d] + pads[2 * d] + pads[2 * d + 1])
            .collect();
    }
    Ok(())
}

/// A RESHAPE's target shape (option and operand) is its output's new shape.
fn reshape_targets(model: &mut Model) {
    for k in 0..model.ops.len() {
        if model.ops[k].code != BuiltinOperator::RESHAPE {
            continue;
        }
        let out = model.tensors[model.ops[k].outputs[0] as usize]
            .shape
            .clone();
        if let Options::Reshape { new_shape } = &mut model.ops[k].options {
            *new_shape = Some(out.clone());
        }
        if let Some(&operand) = model.ops[k].inputs.get(1) {
            let b = model.tensors[operand as usize].buffer as usize;
            if b != 0 {
                model.buffers[b] = out.iter().flat_map(|d| d.to_le_bytes()).collect();
            }
        }
    }
}

/// The size operand of each nearest resize, scaled.
fn resize_sizes(model: &mut Model, grid: &Grid) -> Result<(), ResizeError> {
    let buffers: Vec<u32> = model
        .ops
        .iter()
        .filter(|o| o.code == BuiltinOperator::RESIZE_NEAREST_NEIGHBOR)
        .filter_map(|o| o.inputs.get(1))
        .map(|&i| model.tensors[i as usize].buffer)
        .collect();
    for b in buffers {
        let buf = &mut model.buffers[b as usize];
        if buf.len() != 8 {
            return Err(ResizeError::ResizeOperand);
        }
        for (k, built) in [(0usize, grid.built_h), (1, grid.built_w)] {
            let d = i32::from_le_bytes(buf[k * 4..k * 4 + 4].try_into().unwrap_or([0; 4]));
            buf[k * 4..k * 4 + 4].copy_from_slice(&grid.scale(d, built)?.to_le_bytes());
        }
    }
    Ok(())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}
