//! Decoding written CoreML files back into the IR, with a structural check: CoreML
//! does not run on Linux, so verification reads what was written (coreml-proto's own
//! generated types and the blob-file parser), rebuilds the graph and runs that.
//!
//! Checked on the way: specification version and opset, model description vs program
//! I/O, every op's declared output dtype and shape vs shape inference, weight blobs
//! (sentinel, alignment, size vs declared shape and dtype), fp16 weights finite, int8
//! dequantization parameters sane.

use std::collections::BTreeMap;
use std::path::Path;

use coreml_proto::proto::mil_spec::{
    self, argument, tensor_value, value, value_type, DataType, Value,
};
use coreml_proto::proto::{
    self, activation_params, convolution_layer_params, feature_type, model, neural_network_layer,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::blob::{BlobFile, BlobType};
use super::{
    f16_decode, PixelRange, WeightPrecision, MLPROGRAM_SPEC_VERSION, NEURALNETWORK_SPEC_VERSION,
};
use crate::ir::{Graph, Node, Op};

#[derive(Debug, thiserror::Error)]
pub enum CoremlReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a CoreML model: {reason}")]
    Decode { path: String, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructuralCheck {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// A CoreML file read back.
#[derive(Clone, Debug)]
pub struct DecodedCoreml {
    pub graph: Graph,
    /// "mlprogram" or "neuralnetwork".
    pub format: &'static str,
    pub specification_version: i32,
    pub weight_precision: WeightPrecision,
    /// Image input: net = pixel * scale + bias, as written in the model.
    pub input_pixel_map: Option<PixelRange>,
    /// Image output: pixel = net * scale + bias, as written in the model.
    pub output_pixel_map: Option<PixelRange>,
    /// The feature names of the model description: what an app passes to `prediction`.
    pub input_feature: String,
    pub output_feature: String,
    pub checks: Vec<StructuralCheck>,
}

impl DecodedCoreml {
    pub fn structurally_sound(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
    pub fn failed_checks(&self) -> Vec<&StructuralCheck> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }
}

struct Checks(Vec<StructuralCheck>);
impl Checks {
    fn add(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.0.push(StructuralCheck {
            name: name.into(),
            passed,
            detail: detail.into(),
        });
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, CoremlReadError> {
    std::fs::read(path).map_err(|source| CoremlReadError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a `.mlpackage` directory.
pub fn read_mlpackage(dir: &Path) -> Result<DecodedCoreml, CoremlReadError> {
    let manifest_path = dir.join("Manifest.json");
    let manifest = read_file(&manifest_path)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| CoremlReadError::Decode {
            path: manifest_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let root_id = manifest
        .get("rootModelIdentifier")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let root_path = manifest
        .get("itemInfoEntries")
        .and_then(|e| e.get(root_id))
        .and_then(|e| e.get("path"))
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_string();
    let data = dir.join("Data");
    let model_path = data.join(&root_path);
    let model = read_file(&model_path)?;
    let weights_path = data.join("com.apple.CoreML/weights/weight.bin");
    let weights = if weights_path.exists() {
        Some(read_file(&weights_path)?)
    } else {
        None
    };
    let mut decoded = decode(
        &model,
        weights.as_deref(),
        &model_path.display().to_string(),
    )?;
    decoded.checks.insert(
        0,
        StructuralCheck {
            name: "manifest".into(),
            passed: root_path == "com.apple.CoreML/model.mlmodel",
            detail: format!("root model item `{root_id}` at `{root_path}`"),
        },
    );
    Ok(decoded)
}

/// Reads a NeuralNetwork `.mlmodel` (or an ML Program spec without weights file).
pub fn read_mlmodel(bytes: &[u8]) -> Result<DecodedCoreml, CoremlReadError> {
    decode(bytes, None, "<mlmodel>")
}

fn decode(
    model_bytes: &[u8],
    weights: Option<&[u8]>,
    path: &str,
) -> Result<DecodedCoreml, CoremlReadError> {
    let bad = |reason: String| CoremlReadError::Decode {
        path: path.to_string(),
        reason,
    };
    let model = proto::Model::decode(model_bytes).map_err(|e| bad(e.to_string()))?;
    let description = model
        .description
        .clone()
        .ok_or_else(|| bad("no model description".into()))?;
    match &model.r#type {
        Some(model::Type::MlProgram(program)) => {
            decode_program(&model, &description, program, weights, path)
        }
        Some(model::Type::NeuralNetwork(nn)) => {
            decode_neural_network(&model, &description, nn, path)
        }
        _ => Err(bad("neither an ML Program nor a NeuralNetwork".into())),
    }
}

/// (name, shape, is image) of a feature.
fn feature_info(f: &proto::FeatureDescription) -> (String, Vec<usize>, bool) {
    match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(feature_type::Type::ImageType(i)) => (
            f.name.clone(),
            vec![1, 3, i.height as usize, i.width as usize],
            true,
        ),
        Some(feature_type::Type::MultiArrayType(a)) => (
            f.name.clone(),
            a.shape.iter().map(|d| *d as usize).collect(),
            false,
        ),
        _ => (f.name.clone(), vec![], false),
    }
}

/// A constant tensor read from a `Value`.
#[derive(Clone, Debug)]
struct Const {
    dtype: DataType,
    shape: Vec<usize>,
    values: Vec<f32>,
    strings: Vec<String>,
}

fn tensor_type_of(v: &Option<mil_spec::ValueType>) -> Option<(DataType, Vec<usize>)> {
    match v.as_ref()?.r#type.as_ref()? {
        value_type::Type::TensorType(t) => {
            let dtype = DataType::try_from(t.data_type).ok()?;
            let shape = t
                .dimensions
                .iter()
                .map(|d| match d.dimension {
                    Some(mil_spec::dimension::Dimension::Constant(c)) => Some(c.size as usize),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some((dtype, shape))
        }
        _ => None,
    }
}

fn read_value(
    v: &Value,
    blobs: Option<&BlobFile>,
    checks: &mut Checks,
    what: &str,
) -> Result<Const, String> {
    let (dtype, shape) =
        tensor_type_of(&v.r#type).ok_or_else(|| format!("{what}: value without a tensor type"))?;
    let count: usize = shape.iter().product();
    let (values, strings) = match &v.value {
        Some(value::Value::ImmediateValue(iv)) => match &iv.value {
            Some(value::immediate_value::Value::Tensor(t)) => match &t.value {
                Some(tensor_value::Value::Floats(f)) => (f.values.clone(), vec![]),
                Some(tensor_value::Value::Ints(i)) => {
                    (i.values.iter().map(|v| *v as f32).collect(), vec![])
                }
                Some(tensor_value::Value::Bools(b)) => {
                    (b.values.iter().map(|v| *v as u8 as f32).collect(), vec![])
                }
                Some(tensor_value::Value::Strings(s)) => (vec![], s.values.clone()),
                Some(tensor_value::Value::Bytes(b)) => match dtype {
                    DataType::Float16 => (f16_decode(&b.values), vec![]),
                    DataType::Int8 => (b.values.iter().map(|v| *v as i8 as f32).collect(), vec![]),
                    DataType::Uint8 => (b.values.iter().map(|v| *v as f32).collect(), vec![]),
                    other => return Err(format!("{what}: bytes for {other:?}")),
                },
                _ => return Err(format!("{what}: unsupported immediate")),
            },
            _ => return Err(format!("{what}: non-tensor immediate")),
        },
        Some(value::Value::BlobFileValue(bf)) => {
            let blobs = blobs.ok_or_else(|| {
                format!(
                    "{what}: refers to {} but the package has no weight file",
                    bf.file_name
                )
            })?;
            let (bt, data) = blobs.blob(bf.offset).map_err(|e| format!("{what}: {e}"))?;
            let expected_bt = match dtype {
                DataType::Float16 => BlobType::Float16,
                DataType::Float32 => BlobType::Float32,
                DataType::Int8 => BlobType::Int8,
                DataType::Uint8 => BlobType::UInt8,
                other => return Err(format!("{what}: {other:?} cannot live in a blob")),
            };
            checks.add(
                "weight blob",
                bt == expected_bt
                    && data.len() == count * bt.element_bytes()
                    && bf.file_name == super::WEIGHT_FILE,
                format!(
                    "{what}: {} at offset {} ({bt:?}, {} bytes for shape {shape:?})",
                    bf.file_name,
                    bf.offset,
                    data.len()
                ),
            );
            let values = match bt {
                BlobType::Float16 => f16_decode(data),
                BlobType::Float32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                BlobType::Int8 => data.iter().map(|v| *v as i8 as f32).collect(),
                BlobType::UInt8 => data.iter().map(|v| *v as f32).collect(),
            };
            (values, vec![])
        }
        None => return Err(format!("{what}: empty value")),
    };
    if strings.is_empty() && values.len() != count {
        return Err(format!(
            "{what}: {} values for shape {shape:?}",
            values.len()
        ));
    }
    Ok(Const {
        dtype,
        shape,
        values,
        strings,
    })
}

/// What a MIL name holds while decoding.
#[derive(Clone, Debug)]
enum Held {
    Const(Const),
    /// A tensor equal to `scale * ir + bias` (`ir` an IR value name), with the dtype
    /// the program declared.
    Flow {
        ir: String,
        scale: f32,
        bias: f32,
        dtype: DataType,
    },
}

/// The graph's edges as the model description and `main` declare them.
struct ProgramIo {
    in_name: String,
    input_shape: [usize; 4],
    in_image: bool,
    out_name: String,
    out_shape: Vec<usize>,
    out_image: bool,
}

fn decode_program(
    model: &proto::Model,
    description: &proto::ModelDescription,
    program: &mil_spec::Program,
    weights: Option<&[u8]>,
    path: &str,
) -> Result<DecodedCoreml, CoremlReadError> {
    let bad = |reason: String| CoremlReadError::Decode {
        path: path.to_string(),
        reason,
    };
    let mut checks = Checks(Vec::new());
    checks.add(
        "specification version",
        model.specification_version == MLPROGRAM_SPEC_VERSION,
        format!(
            "{} (iOS 16 is {MLPROGRAM_SPEC_VERSION})",
            model.specification_version
        ),
    );
    let blobs = match weights {
        Some(w) => {
            let f = BlobFile::parse(w).map_err(|e| bad(e.to_string()))?;
            let detail = format!("{} blobs, {} bytes", f.count, w.len());
            checks.add("weight file", w.len() % 64 == 0, detail);
            Some(f)
        }
        None => None,
    };
    let main = program
        .functions
        .get("main")
        .ok_or_else(|| bad("no `main` function".into()))?;
    checks.add(
        "opset",
        main.opset == super::MLPROGRAM_OPSET,
        main.opset.clone(),
    );
    let block = main
        .block_specializations
        .get(&main.opset)
        .ok_or_else(|| bad(format!("no block for opset {}", main.opset)))?;
    let io = program_io(main, block, description, &mut checks, path)?;
    let mut decoder = ProgramDecoder {
        path,
        blobs,
        checks,
        held: BTreeMap::new(),
        ir_input: io.in_name.clone(),
        nodes: Vec::new(),
        declared: Vec::new(),
        input_pixel_map: None,
        weight_precision: WeightPrecision::Fp32,
    };
    let input = Held::Flow {
        ir: io.in_name.clone(),
        scale: 1.0,
        bias: 0.0,
        dtype: DataType::Float32,
    };
    decoder.held.insert(main.inputs[0].name.clone(), input);
    for op in &block.operations {
        decoder.operation(op)?;
    }
    decoder.finish(model, &block.outputs[0], io)
}

/// The one input and one output, checked against `main`'s declared input.
fn program_io(
    main: &mil_spec::Function,
    block: &mil_spec::Block,
    description: &proto::ModelDescription,
    checks: &mut Checks,
    path: &str,
) -> Result<ProgramIo, CoremlReadError> {
    let unsupported = |reason: String| CoremlReadError::Unsupported {
        path: path.to_string(),
        reason,
    };
    if main.inputs.len() != 1
        || description.input.len() != 1
        || description.output.len() != 1
        || block.outputs.len() != 1
    {
        return Err(unsupported(
            "the IR has exactly one input and one output".into(),
        ));
    }
    let (in_name, in_shape, in_image) = feature_info(&description.input[0]);
    let (out_name, out_shape, out_image) = feature_info(&description.output[0]);
    let func_in = &main.inputs[0];
    let func_in_type = tensor_type_of(&func_in.r#type);
    checks.add(
        "input type",
        func_in.name == in_name && func_in_type == Some((DataType::Float32, in_shape.clone())),
        format!(
            "description {in_name} {in_shape:?} (image: {in_image}), program {} {func_in_type:?}",
            func_in.name
        ),
    );
    let [n, c, h, w] = in_shape[..] else {
        return Err(unsupported(format!("input shape {in_shape:?} is not NCHW")));
    };
    Ok(ProgramIo {
        in_name,
        input_shape: [n, c, h, w],
        in_image,
        out_name,
        out_shape,
        out_image,
    })
}

/// The MIL names an operation's parameter `param` binds.
fn arg_names(op: &mil_spec::Operation, param: &str) -> Vec<String> {
    op.inputs
        .get(param)
        .map(|a| {
            a.arguments
                .iter()
                .filter_map(|b| match &b.binding {
                    Some(argument::binding::Binding::Name(n)) => Some(n.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The state shared while a program's operations are decoded, one by one, into IR
/// nodes.
struct ProgramDecoder<'a> {
    path: &'a str,
    blobs: Option<BlobFile<'a>>,
    checks: Checks,
    /// What each MIL name holds.
    held: BTreeMap<String, Held>,
    /// The IR name of the graph input.
    ir_input: String,
    nodes: Vec<Node>,
    /// Each IR op's declared output (name, dtype, shape), checked once shapes are known.
    declared: Vec<(String, DataType, Vec<usize>)>,
    input_pixel_map: Option<PixelRange>,
    weight_precision: WeightPrecision,
}

impl ProgramDecoder<'_> {
    fn bad(&self, reason: String) -> CoremlReadError {
        CoremlReadError::Decode {
            path: self.path.to_string(),
            reason,
        }
    }

    fn unsupported(&self, reason: String) -> CoremlReadError {
        CoremlReadError::Unsupported {
            path: self.path.to_string(),
            reason,
        }
    }

    fn operation(&mut self, op: &mil_spec::Operation) -> Result<(), CoremlReadError> {
        let out = op
            .outputs
            .first()
            .ok_or_else(|| self.bad(format!("`{}` op without output", op.r#type)))?;
        match op.r#type.as_str() {
            "const" => self.constant(op, &out.name),
            "constexpr_affine_dequantize" => self.dequantize(op, &out.name),
            "cast" => self.cast(op, out),
            "mul" | "add" if self.is_affine(op) => self.affine(op, &out.name),
            _ => self.compute(op, out),
        }
    }

    /// Parameter `param` of `op` (output `out`), which must be a constant.
    fn get_const(
        &self,
        op: &mil_spec::Operation,
        out: &str,
        param: &str,
    ) -> Result<Const, CoremlReadError> {
        let names = arg_names(op, param);
        match names.first().and_then(|n| self.held.get(n)) {
            Some(Held::Const(c)) => Ok(c.clone()),
            _ => Err(self.bad(format!(
                "`{}` {out}: parameter `{param}` is not a constant",
                op.r#type
            ))),
        }
    }

    /// The IR value an op input reads; an affine map on it is only allowed on the
    /// graph input (the image pre-processing), which it records.
    fn flow(
        &mut self,
        op: &mil_spec::Operation,
        out: &str,
        name: &str,
    ) -> Result<String, CoremlReadError> {
        let Some(Held::Flow {
            ir, scale, bias, ..
        }) = self.held.get(name)
        else {
            return Err(self.bad(format!(
                "`{}` {out}: input `{name}` is not a tensor computed earlier",
                op.r#type
            )));
        };
        let (ir, scale, bias) = (ir.clone(), *scale, *bias);
        if scale != 1.0 || bias != 0.0 {
            if ir != self.ir_input {
                let reason = format!("an affine map on `{ir}` inside the network");
                return Err(self.unsupported(reason));
            }
            self.input_pixel_map = Some(PixelRange { scale, bias });
        }
        Ok(ir)
    }

    fn constant(&mut self, op: &mil_spec::Operation, out: &str) -> Result<(), CoremlReadError> {
        let v = op
            .attributes
            .get("val")
            .ok_or_else(|| self.bad(format!("const {out} without val")))?;
        let c =
            read_value(v, self.blobs.as_ref(), &mut self.checks, out).map_err(|e| self.bad(e))?;
        self.held.insert(out.to_string(), Held::Const(c));
        Ok(())
    }

    /// int8 weights dequantized at load: held as the constant they become.
    fn dequantize(&mut self, op: &mil_spec::Operation, out: &str) -> Result<(), CoremlReadError> {
        let attr = |k: &str| -> Result<Const, CoremlReadError> {
            let v = op
                .attributes
                .get(k)
                .ok_or_else(|| self.bad(format!("{out}: no `{k}`")))?;
            // Its blobs are not listed among the checks.
            let mut unlisted = Checks(Vec::new());
            read_value(v, self.blobs.as_ref(), &mut unlisted, &format!("{out}.{k}"))
                .map_err(|e| self.bad(e))
        };
        let (data, zp, scale, axis) = (
            attr("quantized_data")?,
            attr("zero_point")?,
            attr("scale")?,
            attr("axis")?,
        );
        let axis = axis.values.first().copied().unwrap_or(0.0) as usize;
        let channels = data.shape.get(axis).copied().unwrap_or(1);
        let sane = scale.values.iter().all(|s| s.is_finite() && *s > 0.0)
            && (scale.values.len() == 1 || scale.values.len() == channels)
            && (zp.values.len() == 1 || zp.values.len() == channels)
            && matches!(data.dtype, DataType::Int8 | DataType::Uint8);
        let detail = format!(
            "{out}: {:?} {:?}, {} scales",
            data.dtype,
            data.shape,
            scale.values.len()
        );
        self.checks.add("int8 weights", sane, detail);
        let values = dequantized(&data, &zp, &scale, axis, channels);
        self.weight_precision = WeightPrecision::Int8;
        let c = Const {
            dtype: scale.dtype,
            shape: data.shape,
            values,
            strings: vec![],
        };
        self.held.insert(out.to_string(), Held::Const(c));
        Ok(())
    }

    /// A cast keeps the value (and its affine map) and changes its dtype.
    fn cast(
        &mut self,
        op: &mil_spec::Operation,
        out: &mil_spec::NamedValueType,
    ) -> Result<(), CoremlReadError> {
        let x = arg_names(op, "x").first().cloned().unwrap_or_default();
        let dtype = self.get_const(op, &out.name, "dtype")?;
        let dtype = dtype.strings.first().cloned().unwrap_or_default();
        let Some(Held::Flow {
            ir, scale, bias, ..
        }) = self.held.get(&x)
        else {
            return Err(self.bad(format!("cast {}: input `{x}` unknown", out.name)));
        };
        let dt = match dtype.as_str() {
            "fp16" => DataType::Float16,
            "fp32" => DataType::Float32,
            other => return Err(self.unsupported(format!("cast to {other}"))),
        };
        let flow = Held::Flow {
            ir: ir.clone(),
            scale: *scale,
            bias: *bias,
            dtype: dt,
        };
        let out_dtype = tensor_type_of(&out.r#type).map(|t| t.0);
        let detail = format!("cast {} -> {dtype}", out.name);
        self.checks
            .add("op output type", out_dtype == Some(dt), detail);
        self.held.insert(out.name.clone(), flow);
        Ok(())
    }

    /// An affine step: a tensor and a scalar constant.
    fn is_affine(&self, op: &mil_spec::Operation) -> bool {
        let y = arg_names(op, "y");
        matches!(y.first().and_then(|n| self.held.get(n)), Some(Held::Const(c)) if c.values.len() == 1)
    }

    /// `x * k` or `x + k`: folded into the affine map `x` carries.
    fn affine(&mut self, op: &mil_spec::Operation, out: &str) -> Result<(), CoremlReadError> {
        let x = arg_names(op, "x").first().cloned().unwrap_or_default();
        let k = self.get_const(op, out, "y")?.values[0];
        let Some(Held::Flow {
            ir,
            scale,
            bias,
            dtype,
        }) = self.held.get(&x)
        else {
            return Err(self.bad(format!("{} {out}: input `{x}` unknown", op.r#type)));
        };
        let (scale, bias) = if op.r#type == "mul" {
            (scale * k, bias * k)
        } else {
            (*scale, bias + k)
        };
        let flow = Held::Flow {
            ir: ir.clone(),
            scale,
            bias,
            dtype: *dtype,
        };
        self.held.insert(out.to_string(), flow);
        Ok(())
    }

    /// An op with an IR equivalent: one IR node, reading the values its inputs hold.
    fn compute(
        &mut self,
        op: &mil_spec::Operation,
        out: &mil_spec::NamedValueType,
    ) -> Result<(), CoremlReadError> {
        let ty = op.r#type.as_str();
        let ir_op = self.ir_op(op, &out.name)?;
        let params: &[&str] = match ty {
            "conv"
            | "relu"
            | "tanh"
            | "sigmoid"
            | "upsample_nearest_neighbor"
            | "depth_to_space" => &["x"],
            "add" => &["x", "y"],
            _ => &["values"],
        };
        let mut inputs = Vec::new();
        let mut in_dtype = None;
        for p in params {
            for n in arg_names(op, p) {
                if let Some(Held::Flow { dtype, .. }) = self.held.get(&n) {
                    in_dtype = Some(*dtype);
                }
                inputs.push(self.flow(op, &out.name, &n)?);
            }
        }
        let dtype = in_dtype.unwrap_or(DataType::Float32);
        let out_type = tensor_type_of(&out.r#type);
        if let Some((dt, shape)) = out_type.clone() {
            self.declared.push((out.name.clone(), dt, shape));
        }
        let declared = out_type.as_ref().map(|t| t.0);
        let detail = format!(
            "{ty} {}: declared {declared:?}, computes {dtype:?}",
            out.name
        );
        self.checks
            .add("op output type", declared == Some(dtype), detail);
        self.nodes.push(Node {
            name: out.name.clone(),
            op: ir_op,
            inputs,
        });
        let flow = Held::Flow {
            ir: out.name.clone(),
            scale: 1.0,
            bias: 0.0,
            dtype,
        };
        self.held.insert(out.name.clone(), flow);
        Ok(())
    }

    /// The IR op of a MIL op, from its constant parameters.
    fn ir_op(&mut self, op: &mil_spec::Operation, out: &str) -> Result<Op, CoremlReadError> {
        let scalar = |param: &str| -> Result<f32, CoremlReadError> {
            Ok(self.get_const(op, out, param)?.values[0])
        };
        Ok(match op.r#type.as_str() {
            "conv" => return self.conv(op, out),
            "relu" => Op::Relu,
            "tanh" => Op::Tanh,
            "sigmoid" => Op::Sigmoid,
            "add" => Op::Add,
            "concat" => {
                let axis = self.get_const(op, out, "axis")?;
                let axis = axis.values.first().copied().unwrap_or(-1.0);
                if axis != 1.0 && axis != -3.0 {
                    return Err(self.unsupported(format!("concat {out} on axis {axis}")));
                }
                Op::ConcatChannels
            }
            "upsample_nearest_neighbor" => {
                let fh = scalar("scale_factor_height")?;
                let fw = scalar("scale_factor_width")?;
                if fh != fw || fh.fract() != 0.0 || fh < 1.0 {
                    return Err(self.unsupported(format!("upsample {out} by {fh} x {fw}")));
                }
                Op::UpsampleNearest {
                    factor: fh as usize,
                }
            }
            "depth_to_space" => {
                let bs = scalar("block_size")?;
                if bs.fract() != 0.0 || bs < 1.0 {
                    return Err(self.unsupported(format!("depth_to_space {out} by {bs}")));
                }
                Op::DepthToSpace { block: bs as usize }
            }
            other => {
                let reason = format!("op `{other}` ({out}) has no IR equivalent");
                return Err(self.unsupported(reason));
            }
        })
    }

    fn conv(&mut self, op: &mil_spec::Operation, out: &str) -> Result<Op, CoremlReadError> {
        let w = self.get_const(op, out, "weight")?;
        let b = self.get_const(op, out, "bias")?;
        let strides = self.get_const(op, out, "strides")?;
        let pad_type = self.get_const(op, out, "pad_type")?;
        let pad_type = pad_type.strings.first().cloned().unwrap_or_default();
        let dil = self.get_const(op, out, "dilations")?;
        let groups = self.get_const(op, out, "groups")?;
        let groups = groups.values.first().copied().unwrap_or(1.0) as usize;
        if dil.values.iter().any(|d| *d != 1.0) {
            let reason = format!("conv {out} with dilations {:?}", dil.values);
            return Err(self.unsupported(reason));
        }
        let pads = match pad_type.as_str() {
            "custom" => {
                let p = self.get_const(op, out, "pad")?.values;
                // MIL [t, b, l, r] → IR [t, l, b, r]
                [p[0] as usize, p[2] as usize, p[1] as usize, p[3] as usize]
            }
            "valid" => [0; 4],
            other => return Err(self.unsupported(format!("conv {out} pad_type {other}"))),
        };
        let [o, i, kh, kw] = w.shape[..] else {
            return Err(self.bad(format!("conv {out} weight shape {:?}", w.shape)));
        };
        let finite = w.values.iter().chain(&b.values).all(|v| v.is_finite());
        let detail = format!("{out}: {} weights, {:?}", w.values.len(), w.dtype);
        self.checks.add("finite weights", finite, detail);
        if self.weight_precision != WeightPrecision::Int8 && w.dtype == DataType::Float16 {
            self.weight_precision = WeightPrecision::Fp16;
        }
        Ok(Op::Conv2d {
            weight: w.values,
            weight_shape: [o, i, kh, kw],
            bias: b.values,
            stride: [strides.values[0] as usize, strides.values[1] as usize],
            pads,
            groups,
        })
    }

    /// The decoded graph, its output's pixel map and the checks on the whole program.
    fn finish(
        mut self,
        model: &proto::Model,
        block_output: &str,
        io: ProgramIo,
    ) -> Result<DecodedCoreml, CoremlReadError> {
        let Some(Held::Flow {
            ir,
            scale,
            bias,
            dtype,
        }) = self.held.get(block_output)
        else {
            return Err(self.bad(format!("block output `{block_output}` is not computed")));
        };
        let (ir_output, out_dtype) = (ir.clone(), *dtype);
        let output_pixel_map = (*scale != 1.0 || *bias != 0.0).then_some(PixelRange {
            scale: *scale,
            bias: *bias,
        });
        let checks = &mut self.checks;
        let out_name = &io.out_name;
        let detail = format!("block {block_output} / description {out_name}");
        checks.add("output name", block_output == out_name, detail);
        let f32_out = out_dtype == DataType::Float32;
        checks.add("output dtype", f32_out, format!("{out_dtype:?}"));
        let input_pixel_map = self.input_pixel_map;
        checks.add(
            "image input has a pixel map",
            io.in_image == input_pixel_map.is_some(),
            format!("image: {}, map: {input_pixel_map:?}", io.in_image),
        );
        checks.add(
            "image output has a pixel map",
            io.out_image == output_pixel_map.is_some(),
            format!("image: {}, map: {output_pixel_map:?}", io.out_image),
        );
        let graph = Graph {
            input_name: self.ir_input.clone(),
            input_shape: io.input_shape,
            nodes: std::mem::take(&mut self.nodes),
            output_name: ir_output,
        };
        let shapes = graph
            .shapes()
            .map_err(|e| self.bad(format!("decoded graph is invalid: {e}")))?;
        self.check_shapes(&shapes, &graph.output_name, &io.out_shape);
        Ok(DecodedCoreml {
            graph,
            format: "mlprogram",
            specification_version: model.specification_version,
            weight_precision: self.weight_precision,
            input_pixel_map,
            output_pixel_map,
            input_feature: io.in_name,
            output_feature: io.out_name,
            checks: self.checks.0,
        })
    }

    /// Each declared op output shape, and the description's output shape, against the
    /// shapes the decoded graph infers.
    fn check_shapes(
        &mut self,
        shapes: &BTreeMap<String, [usize; 4]>,
        output: &str,
        described: &[usize],
    ) {
        for (name, _dt, shape) in &self.declared {
            let inferred = shapes.get(name).map(|s| s.to_vec());
            self.checks.add(
                "op output shape",
                inferred.as_deref() == Some(&shape[..]),
                format!("{name}: declared {shape:?}, inferred {inferred:?}"),
            );
        }
        let out_shape = shapes[output].to_vec();
        self.checks.add(
            "output shape",
            out_shape == described,
            format!("description {described:?}, graph {out_shape:?}"),
        );
    }
}

/// `(q - zero_point) * scale` per channel along `axis`, rounded to the scale's dtype
/// (fp16 here) as the device computes it.
fn dequantized(data: &Const, zp: &Const, scale: &Const, axis: usize, channels: usize) -> Vec<f32> {
    let inner: usize = data.shape[axis + 1..].iter().product();
    data.values
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let c = (i / inner) % channels;
            let s = scale.values[if scale.values.len() == 1 { 0 } else { c }];
            let z = zp.values[if zp.values.len() == 1 { 0 } else { c }];
            let v = (q - z) * s;
            if scale.dtype == DataType::Float16 {
                tract_onnx::prelude::f16::from_f32(v).to_f32()
            } else {
                v
            }
        })
        .collect()
}

fn nn_weights(
    w: &Option<proto::WeightParams>,
    what: &str,
    checks: &mut Checks,
) -> (Vec<f32>, bool) {
    match w {
        Some(w) if !w.float16_value.is_empty() => {
            let v = f16_decode(&w.float16_value);
            checks.add(
                "finite weights",
                v.iter().all(|x| x.is_finite()),
                format!("{what}: {} fp16", v.len()),
            );
            (v, true)
        }
        Some(w) => (w.float_value.clone(), false),
        None => (vec![], false),
    }
}

/// The input's pixel map, from the preprocessing scaler.
fn nn_input_pixel_map(
    nn: &proto::NeuralNetwork,
    in_name: &str,
    checks: &mut Checks,
) -> Option<PixelRange> {
    let mut map = None;
    for p in &nn.preprocessing {
        if let Some(proto::neural_network_preprocessing::Preprocessor::Scaler(s)) = &p.preprocessor
        {
            checks.add(
                "pixel map",
                s.red_bias == s.green_bias
                    && s.green_bias == s.blue_bias
                    && p.feature_name == in_name,
                format!(
                    "scale {} biases r {} g {} b {}",
                    s.channel_scale, s.red_bias, s.green_bias, s.blue_bias
                ),
            );
            map = Some(PixelRange {
                scale: s.channel_scale,
                bias: s.red_bias,
            });
        }
    }
    map
}

/// A convolution layer's IR op, and whether its weights are fp16.
fn nn_conv(
    c: &proto::ConvolutionLayerParams,
    layer: &str,
    checks: &mut Checks,
    path: &str,
) -> Result<(Op, bool), CoremlReadError> {
    let pads = match &c.convolution_padding_type {
        Some(convolution_layer_params::ConvolutionPaddingType::Valid(v)) => {
            let b = v
                .padding_amounts
                .as_ref()
                .map(|p| p.border_amounts.clone())
                .unwrap_or_default();
            if b.len() == 2 {
                [
                    b[0].start_edge_size as usize,
                    b[1].start_edge_size as usize,
                    b[0].end_edge_size as usize,
                    b[1].end_edge_size as usize,
                ]
            } else {
                [0; 4]
            }
        }
        _ => {
            return Err(CoremlReadError::Unsupported {
                path: path.to_string(),
                reason: format!("conv {layer} with SAME padding"),
            })
        }
    };
    let (weight, w16) = nn_weights(&c.weights, layer, checks);
    let (bias, _) = nn_weights(&c.bias, layer, checks);
    let shape = [
        c.output_channels as usize,
        c.kernel_channels as usize,
        c.kernel_size[0] as usize,
        c.kernel_size[1] as usize,
    ];
    checks.add(
        "weight count",
        weight.len() == shape.iter().product::<usize>() && (bias.len() == shape[0] || !c.has_bias),
        format!(
            "{layer}: {} weights for {shape:?}, {} biases",
            weight.len(),
            bias.len()
        ),
    );
    let bias = if c.has_bias {
        bias
    } else {
        vec![0.0; shape[0]]
    };
    let op = Op::Conv2d {
        weight,
        weight_shape: shape,
        bias,
        stride: [c.stride[0] as usize, c.stride[1] as usize],
        pads,
        groups: c.n_groups.max(1) as usize,
    };
    Ok((op, w16))
}

/// The IR op of a layer other than a convolution or an activation.
fn nn_other_op(layer: &proto::NeuralNetworkLayer, path: &str) -> Result<Op, CoremlReadError> {
    let unsupported = |reason: String| CoremlReadError::Unsupported {
        path: path.to_string(),
        reason,
    };
    Ok(match &layer.layer {
        Some(neural_network_layer::Layer::Add(_)) => Op::Add,
        Some(neural_network_layer::Layer::Concat(c)) if !c.sequence_concat => Op::ConcatChannels,
        Some(neural_network_layer::Layer::Upsample(u)) => {
            if u.scaling_factor.len() != 2
                || u.scaling_factor[0] != u.scaling_factor[1]
                || u.mode != 0
            {
                return Err(unsupported(format!(
                    "upsample {} {:?} mode {}",
                    layer.name, u.scaling_factor, u.mode
                )));
            }
            Op::UpsampleNearest {
                factor: u.scaling_factor[0] as usize,
            }
        }
        Some(neural_network_layer::Layer::ReorganizeData(r)) => {
            let depth_to_space =
                proto::reorganize_data_layer_params::ReorganizationType::DepthToSpace as i32;
            if r.mode != depth_to_space || r.block_size < 2 {
                return Err(unsupported(format!(
                    "reorganize {} mode {} block {}",
                    layer.name, r.mode, r.block_size
                )));
            }
            Op::DepthToSpace {
                block: r.block_size as usize,
            }
        }
        other => {
            return Err(unsupported(format!(
                "layer {} ({:?}) has no IR equivalent",
                layer.name,
                other.as_ref().map(|_| "?")
            )))
        }
    })
}

fn decode_neural_network(
    model: &proto::Model,
    description: &proto::ModelDescription,
    nn: &proto::NeuralNetwork,
    path: &str,
) -> Result<DecodedCoreml, CoremlReadError> {
    let bad = |reason: String| CoremlReadError::Decode {
        path: path.to_string(),
        reason,
    };
    let unsupported = |reason: String| CoremlReadError::Unsupported {
        path: path.to_string(),
        reason,
    };
    let mut checks = Checks(Vec::new());
    checks.add(
        "specification version",
        model.specification_version == NEURALNETWORK_SPEC_VERSION,
        format!(
            "{} (iOS 13 is {NEURALNETWORK_SPEC_VERSION})",
            model.specification_version
        ),
    );
    if description.input.len() != 1 || description.output.len() != 1 {
        return Err(unsupported(
            "the IR has exactly one input and one output".into(),
        ));
    }
    let (in_name, in_shape, in_image) = feature_info(&description.input[0]);
    let (out_name, out_shape_desc, out_image) = feature_info(&description.output[0]);
    if in_shape.len() != 4 {
        return Err(unsupported(format!("input shape {in_shape:?} is not NCHW")));
    }
    let input_pixel_map = nn_input_pixel_map(nn, &in_name, &mut checks);
    let mut nodes = Vec::new();
    let mut output_pixel_map = None;
    let mut output_name = out_name.clone();
    let mut fp16 = false;
    for layer in &nn.layers {
        let name = layer
            .output
            .first()
            .cloned()
            .ok_or_else(|| bad(format!("layer {} without output", layer.name)))?;
        let op = match &layer.layer {
            Some(neural_network_layer::Layer::Convolution(c)) => {
                let (op, w16) = nn_conv(c, &layer.name, &mut checks, path)?;
                fp16 |= w16;
                op
            }
            Some(neural_network_layer::Layer::Activation(a)) => match &a.nonlinearity_type {
                Some(activation_params::NonlinearityType::ReLu(_)) => Op::Relu,
                Some(activation_params::NonlinearityType::Tanh(_)) => Op::Tanh,
                Some(activation_params::NonlinearityType::Sigmoid(_)) => Op::Sigmoid,
                // The image output's pixel map: not a node.
                Some(activation_params::NonlinearityType::Linear(l)) if name == out_name => {
                    output_pixel_map = Some(PixelRange {
                        scale: l.alpha,
                        bias: l.beta,
                    });
                    output_name = layer.input.first().cloned().unwrap_or_default();
                    continue;
                }
                other => {
                    return Err(unsupported(format!(
                        "activation {other:?} in {}",
                        layer.name
                    )))
                }
            },
            _ => nn_other_op(layer, path)?,
        };
        nodes.push(Node {
            name,
            op,
            inputs: layer.input.clone(),
        });
    }
    checks.add(
        "image input has a pixel map",
        in_image == input_pixel_map.is_some(),
        format!("image: {in_image}"),
    );
    checks.add(
        "image output has a pixel map",
        out_image == output_pixel_map.is_some(),
        format!("image: {out_image}"),
    );
    let graph = Graph {
        input_name: in_name.clone(),
        input_shape: [in_shape[0], in_shape[1], in_shape[2], in_shape[3]],
        nodes,
        output_name,
    };
    let shapes = graph
        .shapes()
        .map_err(|e| bad(format!("decoded graph is invalid: {e}")))?;
    let out_shape = shapes[&graph.output_name].to_vec();
    checks.add(
        "output shape",
        out_shape == out_shape_desc,
        format!("description {out_shape_desc:?}, graph {out_shape:?}"),
    );
    Ok(DecodedCoreml {
        graph,
        format: "neuralnetwork",
        specification_version: model.specification_version,
        weight_precision: if fp16 {
            WeightPrecision::Fp16
        } else {
            WeightPrecision::Fp32
        },
        input_pixel_map,
        output_pixel_map,
        input_feature: in_name,
        output_feature: out_name,
        checks: checks.0,
    })
}
