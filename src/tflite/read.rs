//! Flatbuffer bytes → `Model`.

use tract_tflite::tflite::{self, BuiltinOperator};

use super::{Model, ModelError, Op, Options, Quant, SparseDim, Sparsity, Tensor};

/// Reads a one-subgraph TFLite file into its model.
pub fn parse(bytes: &[u8]) -> Result<Model, ModelError> {
    let model =
        tflite::root_as_model(bytes).map_err(|e| ModelError::NotFlatbuffer(e.to_string()))?;
    let subgraphs = model.subgraphs().ok_or(ModelError::Missing("subgraphs"))?;
    if subgraphs.len() != 1 {
        return Err(ModelError::Subgraphs(subgraphs.len()));
    }
    let sg = subgraphs.get(0);
    let buffers = model
        .buffers()
        .ok_or(ModelError::Missing("buffers"))?
        .iter()
        .map(|b| b.data().map(|d| d.bytes().to_vec()).unwrap_or_default())
        .collect();
    let tensors = sg
        .tensors()
        .ok_or(ModelError::Missing("tensors"))?
        .iter()
        .map(|t| read_tensor(&t))
        .collect::<Result<_, _>>()?;
    let codes = operator_codes(&model)?;
    let mut ops = Vec::new();
    for op in sg.operators().ok_or(ModelError::Missing("operators"))? {
        let (code, version) = *codes
            .get(op.opcode_index() as usize)
            .ok_or(ModelError::OpcodeIndex(op.opcode_index()))?;
        ops.push(Op {
            code,
            version,
            inputs: op.inputs().map(|v| v.iter().collect()).unwrap_or_default(),
            outputs: op.outputs().map(|v| v.iter().collect()).unwrap_or_default(),
            options: Options::read(&op, code)?,
        });
    }
    Ok(Model {
        description: model.description().unwrap_or_default().to_string(),
        subgraph_name: sg.name().map(str::to_owned),
        tensors,
        buffers,
        ops,
        inputs: sg.inputs().map(|v| v.iter().collect()).unwrap_or_default(),
        outputs: sg.outputs().map(|v| v.iter().collect()).unwrap_or_default(),
    })
}

/// (code, version) per operator-code index.
fn operator_codes(model: &tflite::Model) -> Result<Vec<(BuiltinOperator, i32)>, ModelError> {
    let codes = model
        .operator_codes()
        .ok_or(ModelError::Missing("operator codes"))?;
    Ok(codes
        .iter()
        .map(|c| {
            // Old files only fill the deprecated int8 field.
            let deprecated = BuiltinOperator(c.deprecated_builtin_code() as i32);
            let code = if c.builtin_code().0 > deprecated.0 {
                c.builtin_code()
            } else {
                deprecated
            };
            (code, c.version())
        })
        .collect())
}

fn read_tensor(t: &tflite::Tensor) -> Result<Tensor, ModelError> {
    let name = t.name().unwrap_or_default().to_string();
    // A quantization table without scales (converters write empty ones) is none.
    let quant = t.quantization().and_then(|q| {
        let scale: Vec<f32> = q.scale()?.iter().collect();
        (!scale.is_empty()).then(|| Quant {
            scale,
            zero_point: q
                .zero_point()
                .map(|z| z.iter().collect())
                .unwrap_or_default(),
            quantized_dimension: q.quantized_dimension(),
        })
    });
    let sparsity = match t.sparsity() {
        None => None,
        Some(s) => Some(read_sparsity(&name, &s)?),
    };
    Ok(Tensor {
        shape: t.shape().map(|s| s.iter().collect()).unwrap_or_default(),
        dtype: t.type_(),
        buffer: t.buffer(),
        quant,
        sparsity,
        name,
    })
}

fn read_sparsity(name: &str, s: &tflite::SparsityParameters) -> Result<Sparsity, ModelError> {
    let bad = |reason: &str| ModelError::Sparse {
        tensor: name.to_owned(),
        reason: reason.to_owned(),
    };
    let index_vec = |ty: tflite::SparseIndexVector,
                     i32v: Option<tflite::Int32Vector>,
                     u16v: Option<tflite::Uint16Vector>,
                     u8v: Option<tflite::Uint8Vector>|
     -> Result<Vec<usize>, ModelError> {
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
        v.ok_or_else(|| bad("missing CSR index vector"))
    };
    let mut dims = Vec::new();
    for d in s.dim_metadata().ok_or_else(|| bad("no dims"))?.iter() {
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
    let ints = |v: Option<flatbuffers::Vector<i32>>| v.map(|v| v.iter().collect());
    Ok(Sparsity {
        traversal_order: ints(s.traversal_order()).unwrap_or_default(),
        block_map: ints(s.block_map()).unwrap_or_default(),
        dims,
    })
}
