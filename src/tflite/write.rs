//! `Model` → flatbuffer bytes. Deterministic: the same model gives the same bytes, and
//! the order in which tables are built is part of those bytes (kept as the export
//! writer has always built them, so shipped files do not change).

use flatbuffers::{FlatBufferBuilder, Push, PushAlignment, WIPOffset};
use tract_tflite::tflite::{self, BuiltinOperator};

use super::{Model, ModelError, Tensor};

/// TFLite schema version.
pub const SCHEMA_VERSION: u32 = 3;

type Fb<'fb> = FlatBufferBuilder<'fb>;

/// Bumps the builder's alignment to 16 so that weight buffers can be 16-aligned
/// (TFLite's converter aligns them so; kernels read them in place).
struct Align16;
impl Push for Align16 {
    type Output = Align16;
    unsafe fn push(&self, _dst: &mut [u8], _written_len: usize) {}
    fn size() -> usize {
        0
    }
    fn alignment() -> PushAlignment {
        PushAlignment::new(16)
    }
}

/// `data` as a byte vector that starts on a 16-byte boundary of the finished file.
pub fn aligned_bytes<'fb>(
    fb: &mut Fb<'fb>,
    data: &[u8],
) -> WIPOffset<flatbuffers::Vector<'fb, u8>> {
    fb.push(Align16);
    // The builder writes back to front: pad so that the data ends (and so, the buffer
    // being a multiple of 16 long, starts) on a 16-byte boundary.
    let pad = (16 - data.len() % 16) % 16;
    for _ in 0..pad {
        fb.push(0u8);
    }
    fb.create_vector(data)
}

/// The model's bytes. Sparse tensors cannot be written.
pub fn serialize(model: &Model) -> Result<Vec<u8>, ModelError> {
    if let Some(t) = model.tensors.iter().find(|t| t.sparsity.is_some()) {
        return Err(ModelError::SparseWrite(t.name.clone()));
    }
    let mut fb = FlatBufferBuilder::new();
    // Operator codes: unique (code, version), in order of first use.
    let mut codes: Vec<(BuiltinOperator, i32)> = Vec::new();
    for op in &model.ops {
        if !codes.contains(&(op.code, op.version)) {
            codes.push((op.code, op.version));
        }
    }
    let buffers: Vec<_> = model.buffers.iter().map(|d| buffer(&mut fb, d)).collect();
    let tensors: Vec<_> = model.tensors.iter().map(|t| tensor(&mut fb, t)).collect();
    let operators = operators(&mut fb, model, &codes);
    let operator_codes: Vec<_> = codes.iter().map(|c| operator_code(&mut fb, *c)).collect();
    let tensors = fb.create_vector(&tensors);
    let sg_inputs = fb.create_vector(&model.inputs);
    let sg_outputs = fb.create_vector(&model.outputs);
    let operators = fb.create_vector(&operators);
    let sg_name = model.subgraph_name.as_deref().map(|n| fb.create_string(n));
    let subgraph = tflite::SubGraph::create(
        &mut fb,
        &tflite::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(sg_inputs),
            outputs: Some(sg_outputs),
            operators: Some(operators),
            name: sg_name,
        },
    );
    let subgraphs = fb.create_vector(&[subgraph]);
    let operator_codes = fb.create_vector(&operator_codes);
    let buffers = fb.create_vector(&buffers);
    let description = fb.create_string(&model.description);
    let root = tflite::Model::create(
        &mut fb,
        &tflite::ModelArgs {
            version: SCHEMA_VERSION,
            operator_codes: Some(operator_codes),
            subgraphs: Some(subgraphs),
            description: Some(description),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    tflite::finish_model_buffer(&mut fb, root);
    Ok(fb.finished_data().to_vec())
}

fn buffer<'fb>(fb: &mut Fb<'fb>, data: &[u8]) -> WIPOffset<tflite::Buffer<'fb>> {
    let data = (!data.is_empty()).then(|| aligned_bytes(fb, data));
    tflite::Buffer::create(
        fb,
        &tflite::BufferArgs {
            data,
            ..Default::default()
        },
    )
}

fn tensor<'fb>(fb: &mut Fb<'fb>, t: &Tensor) -> WIPOffset<tflite::Tensor<'fb>> {
    let shape = fb.create_vector(&t.shape);
    let name = fb.create_string(&t.name);
    let quantization = t.quant.as_ref().map(|q| {
        let scale = fb.create_vector(&q.scale);
        let zero_point = fb.create_vector(&q.zero_point);
        tflite::QuantizationParameters::create(
            fb,
            &tflite::QuantizationParametersArgs {
                scale: Some(scale),
                zero_point: Some(zero_point),
                quantized_dimension: q.quantized_dimension,
                ..Default::default()
            },
        )
    });
    tflite::Tensor::create(
        fb,
        &tflite::TensorArgs {
            shape: Some(shape),
            type_: t.dtype,
            buffer: t.buffer,
            name: Some(name),
            quantization,
            ..Default::default()
        },
    )
}

fn operators<'fb>(
    fb: &mut Fb<'fb>,
    model: &Model,
    codes: &[(BuiltinOperator, i32)],
) -> Vec<WIPOffset<tflite::Operator<'fb>>> {
    model
        .ops
        .iter()
        .map(|op| {
            let opcode_index = codes
                .iter()
                .position(|c| *c == (op.code, op.version))
                .unwrap_or(0) as u32;
            let inputs = fb.create_vector(&op.inputs);
            let outputs = fb.create_vector(&op.outputs);
            let (builtin_options_type, builtin_options) = op.options.write(fb);
            tflite::Operator::create(
                fb,
                &tflite::OperatorArgs {
                    opcode_index,
                    inputs: Some(inputs),
                    outputs: Some(outputs),
                    builtin_options_type,
                    builtin_options,
                    ..Default::default()
                },
            )
        })
        .collect()
}

fn operator_code<'fb>(
    fb: &mut Fb<'fb>,
    (code, version): (BuiltinOperator, i32),
) -> WIPOffset<tflite::OperatorCode<'fb>> {
    // Codes < 127 also go in the deprecated int8 field, which older runtimes read.
    let deprecated = if code.0 < 127 { code.0 as i8 } else { 127 };
    tflite::OperatorCode::create(
        fb,
        &tflite::OperatorCodeArgs {
            deprecated_builtin_code: deprecated,
            custom_code: None,
            version,
            builtin_code: code,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ActivationFunctionType, BuiltinOptions, Op, Options, Padding};
    use super::*;
    use tract_tflite::tflite::TensorType;

    /// A model with a constant, a quantized tensor and one operator per kind of options
    /// table reads back into itself, and writes again to the same bytes.
    #[test]
    fn a_model_round_trips_through_its_bytes() {
        let mut m = Model::new("round trip".into(), Some("main".into()));
        let x = m.add_tensor(
            "x".into(),
            vec![1, 4, 4, 2],
            TensorType::FLOAT32,
            None,
            None,
        );
        let w = m.add_tensor(
            "w".into(),
            vec![2, 1, 1, 2],
            TensorType::FLOAT32,
            Some(vec![7; 16]),
            None,
        );
        let q = Some(super::super::Quant {
            scale: vec![0.5],
            zero_point: vec![3],
            quantized_dimension: 0,
        });
        let y = m.add_tensor("y".into(), vec![1, 4, 4, 2], TensorType::INT8, None, q);
        let op = |code, options| Op {
            code,
            version: 1,
            inputs: vec![x, w],
            outputs: vec![y],
            options,
        };
        m.ops = vec![
            op(
                BuiltinOperator::CONV_2D,
                Options::Conv2D {
                    padding: Padding::SAME,
                    stride_h: 1,
                    stride_w: 2,
                    act: ActivationFunctionType::RELU6,
                    dilation_h: 1,
                    dilation_w: 3,
                },
            ),
            op(
                BuiltinOperator::ADD,
                Options::Add {
                    act: ActivationFunctionType::NONE,
                    pot_scale_int16: false,
                },
            ),
            op(
                BuiltinOperator::RESHAPE,
                Options::Reshape {
                    new_shape: Some(vec![1, 32]),
                },
            ),
            op(
                BuiltinOperator::PAD,
                Options::Empty(BuiltinOptions::PadOptions),
            ),
            op(BuiltinOperator::RELU, Options::None),
        ];
        m.inputs = vec![x];
        m.outputs = vec![y];
        let bytes = serialize(&m).unwrap();
        assert_eq!(parse(&bytes).unwrap(), m);
        assert!(serialize(&parse(&bytes).unwrap()).unwrap() == bytes);
    }

    #[test]
    fn dropping_unused_tensors_renumbers_them_and_their_buffers() {
        let mut m = Model::new(String::new(), None);
        let a = m.add_tensor(
            "a".into(),
            vec![1],
            TensorType::INT32,
            Some(vec![1; 4]),
            None,
        );
        let unused = m.add_tensor(
            "unused".into(),
            vec![1],
            TensorType::INT32,
            Some(vec![2; 4]),
            None,
        );
        let b = m.add_tensor(
            "b".into(),
            vec![1],
            TensorType::INT32,
            Some(vec![3; 4]),
            None,
        );
        let c = m.add_tensor("c".into(), vec![1], TensorType::INT32, None, None);
        assert_eq!(unused, 1);
        m.ops.push(Op {
            code: BuiltinOperator::ADD,
            version: 1,
            inputs: vec![a, b],
            outputs: vec![c],
            options: Options::None,
        });
        m.outputs = vec![c];
        m.drop_unused_tensors();
        let names: Vec<&str> = m.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            (m.ops[0].inputs.clone(), m.ops[0].outputs.clone()),
            (vec![0, 1], vec![2])
        );
        assert_eq!(m.buffers, vec![vec![], vec![1; 4], vec![3; 4]]);
        assert_eq!(m.data(1), Some(&[3u8; 4][..]));
        assert_eq!(m.data(2), None);
    }
}
