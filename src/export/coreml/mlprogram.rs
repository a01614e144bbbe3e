//! ML Program `.mlpackage` writer.
//!
//! The program is `main(input) -> output`: [image: mul + add, pixels → net range]
//! → cast to fp16 → one MIL op per IR node → cast to fp32 → [image: mul + add, net
//! range → pixels]. Weights go to `weights/weight.bin`; every small parameter is a
//! named `const` op, as coremltools writes them.
//!
//! coreml-proto's generated MIL types keep maps in `HashMap`s, whose encoding order is
//! random. The messages that carry maps (Model, Program, Function, Block, Operation)
//! are mirrored here with `BTreeMap`s — same field numbers, so the same wire format —
//! so that the same graph always gives the same bytes. Reading uses coreml-proto's own
//! types.

use std::collections::BTreeMap;
use std::path::Path;

use coreml_proto::proto::mil_spec::{
    argument, dimension, tensor_value, value, value_type, Argument, DataType, Dimension,
    NamedValueType, TensorType, TensorValue, Value, ValueType,
};
use coreml_proto::proto::{
    array_feature_type, feature_type, image_feature_type, ArrayFeatureType, FeatureDescription,
    FeatureType, ImageFeatureType, Metadata, ModelDescription,
};
use prost::Message;

use super::blob::{BlobType, BlobWriter};
use super::{
    check_identifiers, f16_bytes, identifier, CoremlError, CoremlOptions, WeightPrecision,
};
use super::{MLPROGRAM_OPSET, MLPROGRAM_SPEC_VERSION, WEIGHT_FILE};
use crate::export::quantize::quantize_conv;
use crate::ir::{Graph, Op};

#[derive(Clone, PartialEq, Message)]
pub(crate) struct MirrorOperation {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(btree_map = "string, message", tag = "2")]
    pub inputs: BTreeMap<String, Argument>,
    #[prost(message, repeated, tag = "3")]
    pub outputs: Vec<NamedValueType>,
    #[prost(btree_map = "string, message", tag = "5")]
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct MirrorBlock {
    #[prost(string, repeated, tag = "2")]
    pub outputs: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub operations: Vec<MirrorOperation>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct MirrorFunction {
    #[prost(message, repeated, tag = "1")]
    pub inputs: Vec<NamedValueType>,
    #[prost(string, tag = "2")]
    pub opset: String,
    #[prost(btree_map = "string, message", tag = "3")]
    pub block_specializations: BTreeMap<String, MirrorBlock>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct MirrorProgram {
    #[prost(int64, tag = "1")]
    pub version: i64,
    #[prost(btree_map = "string, message", tag = "2")]
    pub functions: BTreeMap<String, MirrorFunction>,
}

/// `Model` with only the fields an ML Program uses (`mlProgram` is field 502 of the
/// model-type oneof).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct MirrorModel {
    #[prost(int32, tag = "1")]
    pub specification_version: i32,
    #[prost(message, optional, tag = "2")]
    pub description: Option<ModelDescription>,
    #[prost(message, optional, tag = "502")]
    pub ml_program: Option<MirrorProgram>,
}

pub(crate) fn tensor_type(dtype: DataType, shape: &[usize]) -> ValueType {
    ValueType {
        r#type: Some(value_type::Type::TensorType(TensorType {
            data_type: dtype as i32,
            rank: shape.len() as i64,
            dimensions: shape
                .iter()
                .map(|d| Dimension {
                    dimension: Some(dimension::Dimension::Constant(
                        dimension::ConstantDimension { size: *d as u64 },
                    )),
                })
                .collect(),
            attributes: Default::default(),
        })),
    }
}

fn immediate(dtype: DataType, shape: &[usize], v: tensor_value::Value) -> Value {
    Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(dtype, shape)),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            value: Some(value::immediate_value::Value::Tensor(TensorValue {
                value: Some(v),
            })),
        })),
    }
}

pub(crate) fn string_value(s: &str) -> Value {
    immediate(
        DataType::String,
        &[],
        tensor_value::Value::Strings(tensor_value::RepeatedStrings {
            values: vec![s.into()],
        }),
    )
}

fn ints_value(v: &[i32], shape: &[usize]) -> Value {
    immediate(
        DataType::Int32,
        shape,
        tensor_value::Value::Ints(tensor_value::RepeatedInts { values: v.to_vec() }),
    )
}

fn floats_value(v: &[f32], shape: &[usize]) -> Value {
    immediate(
        DataType::Float32,
        shape,
        tensor_value::Value::Floats(tensor_value::RepeatedFloats { values: v.to_vec() }),
    )
}

fn bool_value(b: bool) -> Value {
    immediate(
        DataType::Bool,
        &[],
        tensor_value::Value::Bools(tensor_value::RepeatedBools { values: vec![b] }),
    )
}

/// fp16 / int8 immediates are stored as raw bytes.
fn bytes_value(dtype: DataType, shape: &[usize], bytes: Vec<u8>) -> Value {
    immediate(
        dtype,
        shape,
        tensor_value::Value::Bytes(tensor_value::RepeatedBytes { values: bytes }),
    )
}

fn blob_value(dtype: DataType, shape: &[usize], offset: u64) -> Value {
    Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(dtype, shape)),
        value: Some(value::Value::BlobFileValue(value::BlobFileValue {
            file_name: WEIGHT_FILE.into(),
            offset,
        })),
    }
}

/// Builds the op list.
struct ProgramBuilder {
    ops: Vec<MirrorOperation>,
    blobs: BlobWriter,
}

impl ProgramBuilder {
    fn constant(&mut self, name: &str, val: Value) -> String {
        let ty = val.r#type.clone();
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), string_value(name));
        attributes.insert("val".to_string(), val);
        self.ops.push(MirrorOperation {
            r#type: "const".into(),
            inputs: BTreeMap::new(),
            outputs: vec![NamedValueType {
                name: name.into(),
                r#type: ty,
            }],
            attributes,
        });
        name.to_string()
    }

    /// Data of 10+ elements goes to the blob file (coremltools' rule), smaller inline.
    fn tensor_const(
        &mut self,
        name: &str,
        dtype: DataType,
        shape: &[usize],
        bytes: Vec<u8>,
    ) -> String {
        let count: usize = shape.iter().product();
        let val = if count >= 10 {
            let blob_type = match dtype {
                DataType::Float16 => BlobType::Float16,
                DataType::Float32 => BlobType::Float32,
                DataType::Int8 => BlobType::Int8,
                _ => BlobType::UInt8,
            };
            blob_value(dtype, shape, self.blobs.add(blob_type, &bytes))
        } else if dtype == DataType::Float32 {
            let floats: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            floats_value(&floats, shape)
        } else {
            bytes_value(dtype, shape, bytes)
        };
        self.constant(name, val)
    }

    fn op(&mut self, ty: &str, name: &str, inputs: &[(&str, Vec<String>)], out_type: ValueType) {
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), string_value(name));
        self.ops.push(MirrorOperation {
            r#type: ty.into(),
            inputs: inputs
                .iter()
                .map(|(param, names)| {
                    let arguments = names
                        .iter()
                        .map(|n| argument::Binding {
                            binding: Some(argument::binding::Binding::Name(n.clone())),
                        })
                        .collect();
                    (param.to_string(), Argument { arguments })
                })
                .collect(),
            outputs: vec![NamedValueType {
                name: name.into(),
                r#type: Some(out_type),
            }],
            attributes,
        });
    }
}

fn feature(name: &str, shape: [usize; 4], image: bool) -> FeatureDescription {
    let ty = if image {
        feature_type::Type::ImageType(ImageFeatureType {
            width: shape[3] as i64,
            height: shape[2] as i64,
            color_space: image_feature_type::ColorSpace::Rgb as i32,
            ..Default::default()
        })
    } else {
        feature_type::Type::MultiArrayType(ArrayFeatureType {
            shape: shape.iter().map(|d| *d as i64).collect(),
            data_type: array_feature_type::ArrayDataType::Float32 as i32,
            ..Default::default()
        })
    };
    FeatureDescription {
        name: name.into(),
        r#type: Some(FeatureType {
            r#type: Some(ty),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn description(
    graph: &Graph,
    out_shape: [usize; 4],
    opts: &CoremlOptions,
) -> ModelDescription {
    ModelDescription {
        input: vec![feature(
            &identifier(&graph.input_name),
            graph.input_shape,
            opts.image_input,
        )],
        output: vec![feature(
            &identifier(&graph.output_name),
            out_shape,
            opts.image_output,
        )],
        metadata: Some(Metadata {
            short_description: opts.short_description.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The three files of a `.mlpackage`.
#[derive(Clone, Debug, PartialEq)]
pub struct MlPackageFiles {
    /// The MIL op types of the program (`conv`, `add`...), constants left out: what
    /// a target profile's `ops` allow-list is checked against.
    pub op_types: std::collections::BTreeSet<String>,
    /// `Data/com.apple.CoreML/model.mlmodel`
    pub model: Vec<u8>,
    /// `Data/com.apple.CoreML/weights/weight.bin`
    pub weights: Vec<u8>,
    /// `Manifest.json`
    pub manifest: String,
}

/// Fixed identifiers: a package made twice from the same graph is byte-identical.
const MODEL_ITEM_ID: &str = "5F1E9C2A-7D3B-4C11-9E0A-0000000000E1";
const WEIGHTS_ITEM_ID: &str = "5F1E9C2A-7D3B-4C11-9E0A-0000000000E2";

pub fn manifest() -> String {
    format!(
        r#"{{
    "fileFormatVersion": "1.0.0",
    "itemInfoEntries": {{
        "{MODEL_ITEM_ID}": {{
            "author": "com.apple.CoreML",
            "description": "CoreML Model Specification",
            "name": "model.mlmodel",
            "path": "com.apple.CoreML/model.mlmodel"
        }},
        "{WEIGHTS_ITEM_ID}": {{
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights"
        }}
    }},
    "rootModelIdentifier": "{MODEL_ITEM_ID}"
}}
"#
    )
}

/// Builds the package's files in memory.
pub fn mlprogram_files(graph: &Graph, opts: &CoremlOptions) -> Result<MlPackageFiles, CoremlError> {
    let shapes = graph.shapes()?;
    check_identifiers(graph)?;
    let compute = if opts.weights == WeightPrecision::Fp32 {
        DataType::Float32
    } else {
        DataType::Float16
    };
    let mut b = ProgramBuilder {
        ops: Vec::new(),
        blobs: BlobWriter::new(),
    };
    // MIL name under which IR value v can be read (compute precision).
    let mut read: BTreeMap<String, String> = BTreeMap::new();
    let x = b.input_edge(graph, opts, compute);
    read.insert(graph.input_name.clone(), x);

    let out_id = identifier(&graph.output_name);
    let needs_tail = compute == DataType::Float16 || opts.image_output;
    for node in &graph.nodes {
        let name = if node.name == graph.output_name && needs_tail {
            format!("{out_id}_net")
        } else {
            identifier(&node.name)
        };
        let ins: Vec<String> = node.inputs.iter().map(|i| read[i].clone()).collect();
        let ty = tensor_type(compute, &shapes[&node.name]);
        b.node(&node.op, &name, ins, ty, opts.weights, compute);
        read.insert(node.name.clone(), name);
    }
    let out_shape = shapes[&graph.output_name];
    b.output_edge(&read[&graph.output_name], &out_id, out_shape, opts, compute);
    Ok(b.finish(graph, out_shape, opts))
}

impl ProgramBuilder {
    /// The input, mapped from pixels to the net's range (image input) and cast to the
    /// compute precision: the MIL name the first node reads.
    fn input_edge(&mut self, graph: &Graph, opts: &CoremlOptions, compute: DataType) -> String {
        let input = identifier(&graph.input_name);
        let fp32_in = tensor_type(DataType::Float32, &graph.input_shape);
        let mut x = input.clone();
        if opts.image_input {
            let (scale, bias) = (opts.pixel_range.scale, opts.pixel_range.bias);
            x = self.affine(
                &input,
                x,
                scale,
                bias,
                &format!("{input}_normalized"),
                fp32_in,
            );
        }
        if compute == DataType::Float16 {
            let fp16_in = tensor_type(DataType::Float16, &graph.input_shape);
            x = self.cast(&input, x, "fp16", &format!("{input}_fp16"), fp16_in);
        }
        x
    }

    /// The output `y` cast back to fp32 and mapped from the net's range to pixels
    /// (image output), ending in the op named `out_id`.
    fn output_edge(
        &mut self,
        y: &str,
        out_id: &str,
        out_shape: [usize; 4],
        opts: &CoremlOptions,
        compute: DataType,
    ) {
        let fp32_out = tensor_type(DataType::Float32, &out_shape);
        let mut y = y.to_string();
        if compute == DataType::Float16 {
            let cast = if opts.image_output {
                format!("{out_id}_fp32")
            } else {
                out_id.to_string()
            };
            y = self.cast(out_id, y, "fp32", &cast, fp32_out.clone());
        }
        if opts.image_output {
            // pixel = (net - bias) / scale
            let r = opts.pixel_range;
            self.affine(
                out_id,
                y,
                1.0 / r.scale,
                -r.bias / r.scale,
                out_id,
                fp32_out,
            );
        }
    }

    /// `x * scale + bias` as mul + add with constants named after `base`; the add is
    /// named `out`.
    fn affine(
        &mut self,
        base: &str,
        x: String,
        scale: f32,
        bias: f32,
        out: &str,
        ty: ValueType,
    ) -> String {
        let s = self.constant(&format!("{base}_pixel_scale"), floats_value(&[scale], &[]));
        let bias = self.constant(&format!("{base}_pixel_bias"), floats_value(&[bias], &[]));
        let scaled = format!("{base}_scaled");
        let mul_in = [("x", vec![x]), ("y", vec![s])];
        self.op("mul", &scaled, &mul_in, ty.clone());
        self.op("add", out, &[("x", vec![scaled]), ("y", vec![bias])], ty);
        out.to_string()
    }

    /// A cast of `x` to `dtype` ("fp16", "fp32"), its dtype constant named after `base`.
    fn cast(&mut self, base: &str, x: String, dtype: &str, out: &str, ty: ValueType) -> String {
        let dt = self.constant(&format!("{base}_cast_dtype"), string_value(dtype));
        self.op("cast", out, &[("x", vec![x]), ("dtype", vec![dt])], ty);
        out.to_string()
    }

    /// The MIL op (and its constants) of one IR node, named `name`.
    fn node(
        &mut self,
        op: &Op,
        name: &str,
        ins: Vec<String>,
        ty: ValueType,
        weights: WeightPrecision,
        compute: DataType,
    ) {
        let int = |b: &mut Self, what: &str, v: usize| {
            b.constant(&format!("{name}_{what}"), ints_value(&[v as i32], &[]))
        };
        match op {
            Op::Conv2d { .. } => self.conv(op, name, &ins[0], ty, weights, compute),
            Op::Relu => self.op("relu", name, &[("x", ins)], ty),
            Op::Tanh => self.op("tanh", name, &[("x", ins)], ty),
            Op::Sigmoid => self.op("sigmoid", name, &[("x", ins)], ty),
            Op::Add => {
                let xy = [("x", vec![ins[0].clone()]), ("y", vec![ins[1].clone()])];
                self.op("add", name, &xy, ty)
            }
            Op::ConcatChannels => {
                let axis = int(self, "axis", 1);
                let interleave = self.constant(&format!("{name}_interleave"), bool_value(false));
                let args = [
                    ("values", ins),
                    ("axis", vec![axis]),
                    ("interleave", vec![interleave]),
                ];
                self.op("concat", name, &args, ty);
            }
            Op::UpsampleNearest { factor } => {
                let fh = int(self, "scale_h", *factor);
                let fw = int(self, "scale_w", *factor);
                let args = [
                    ("x", ins),
                    ("scale_factor_height", vec![fh]),
                    ("scale_factor_width", vec![fw]),
                ];
                self.op("upsample_nearest_neighbor", name, &args, ty);
            }
            // MIL's depth_to_space is TensorFlow's (DCR), the IR's order; its
            // pixel_shuffle would be PyTorch's CRD.
            Op::DepthToSpace { block } => {
                let bs = int(self, "block_size", *block);
                let args = [("x", ins), ("block_size", vec![bs])];
                self.op("depth_to_space", name, &args, ty);
            }
        }
    }

    /// A conv (`op` is an `Op::Conv2d`) of `x`, its weight in `weights` precision.
    fn conv(
        &mut self,
        op: &Op,
        name: &str,
        x: &str,
        ty: ValueType,
        weights: WeightPrecision,
        compute: DataType,
    ) {
        let Op::Conv2d {
            weight,
            weight_shape,
            bias,
            stride,
            pads,
            groups,
        } = op
        else {
            unreachable!("conv of a {op:?}");
        };
        let weight_var = self.conv_weight(name, weight, bias, *weight_shape, weights);
        let bias_bytes = if compute == DataType::Float16 {
            f16_bytes(bias)
        } else {
            bias.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        let bias_var =
            self.tensor_const(&format!("{name}_bias"), compute, &[bias.len()], bias_bytes);
        let ints = |b: &mut Self, what: &str, v: &[i32], shape: &[usize]| {
            b.constant(&format!("{name}_{what}"), ints_value(v, shape))
        };
        let strides = ints(self, "strides", &[stride[0] as i32, stride[1] as i32], &[2]);
        let pad_type = self.constant(&format!("{name}_pad_type"), string_value("custom"));
        // MIL pad order: [top, bottom, left, right]; IR: [top, left, bottom, right].
        let mil_pads = [pads[0], pads[2], pads[1], pads[3]].map(|p| p as i32);
        let pad = ints(self, "pad", &mil_pads, &[4]);
        let dilations = ints(self, "dilations", &[1, 1], &[2]);
        let groups_var = ints(self, "groups", &[*groups as i32], &[]);
        let args = [
            ("x", vec![x.to_string()]),
            ("weight", vec![weight_var]),
            ("bias", vec![bias_var]),
            ("strides", vec![strides]),
            ("pad_type", vec![pad_type]),
            ("pad", vec![pad]),
            ("dilations", vec![dilations]),
            ("groups", vec![groups_var]),
        ];
        self.op("conv", name, &args, ty);
    }

    /// The conv's weight constant: fp32, fp16, or int8 dequantized at load.
    fn conv_weight(
        &mut self,
        name: &str,
        weight: &[f32],
        bias: &[f32],
        shape: [usize; 4],
        precision: WeightPrecision,
    ) -> String {
        let wname = format!("{name}_weight");
        match precision {
            WeightPrecision::Int8 => self.int8_weight(&wname, weight, bias, shape),
            WeightPrecision::Fp16 => {
                self.tensor_const(&wname, DataType::Float16, &shape, f16_bytes(weight))
            }
            WeightPrecision::Fp32 => {
                let bytes = weight.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.tensor_const(&wname, DataType::Float32, &shape, bytes)
            }
        }
    }

    /// Per-output-channel symmetric int8 weights, `constexpr_affine_dequantize`d to
    /// fp16 at load.
    fn int8_weight(
        &mut self,
        wname: &str,
        weight: &[f32],
        bias: &[f32],
        shape: [usize; 4],
    ) -> String {
        let q = quantize_conv(weight, shape, bias, 1.0);
        let o = shape[0];
        let data = q.weight.iter().map(|v| *v as u8).collect::<Vec<_>>();
        // constexpr params are attributes (iOS 16/17 form).
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), string_value(wname));
        let qoff = self.blobs.add(BlobType::Int8, &data);
        attributes.insert(
            "quantized_data".into(),
            blob_value(DataType::Int8, &shape, qoff),
        );
        attributes.insert(
            "zero_point".into(),
            bytes_value(DataType::Int8, &[o], vec![0u8; o]),
        );
        let scale_bytes = f16_bytes(&q.weight_scales);
        let scale = if o >= 10 {
            let offset = self.blobs.add(BlobType::Float16, &scale_bytes);
            blob_value(DataType::Float16, &[o], offset)
        } else {
            bytes_value(DataType::Float16, &[o], scale_bytes)
        };
        attributes.insert("scale".into(), scale);
        attributes.insert("axis".into(), ints_value(&[0], &[]));
        self.ops.push(MirrorOperation {
            r#type: "constexpr_affine_dequantize".into(),
            inputs: BTreeMap::new(),
            outputs: vec![NamedValueType {
                name: wname.to_string(),
                r#type: Some(tensor_type(DataType::Float16, &shape)),
            }],
            attributes,
        });
        wname.to_string()
    }

    /// The package's files: the program as `main` of the model, the weight blobs, the
    /// manifest.
    fn finish(self, graph: &Graph, out_shape: [usize; 4], opts: &CoremlOptions) -> MlPackageFiles {
        let op_types = self
            .ops
            .iter()
            .map(|op| op.r#type.clone())
            .filter(|t| t != "const")
            .collect();
        let mut blocks = BTreeMap::new();
        let block = MirrorBlock {
            outputs: vec![identifier(&graph.output_name)],
            operations: self.ops,
        };
        blocks.insert(MLPROGRAM_OPSET.to_string(), block);
        let main = MirrorFunction {
            inputs: vec![NamedValueType {
                name: identifier(&graph.input_name),
                r#type: Some(tensor_type(DataType::Float32, &graph.input_shape)),
            }],
            opset: MLPROGRAM_OPSET.into(),
            block_specializations: blocks,
        };
        let model = MirrorModel {
            specification_version: MLPROGRAM_SPEC_VERSION,
            description: Some(description(graph, out_shape, opts)),
            ml_program: Some(MirrorProgram {
                version: 1,
                functions: BTreeMap::from([("main".to_string(), main)]),
            }),
        };
        MlPackageFiles {
            op_types,
            model: model.encode_to_vec(),
            weights: self.blobs.finish(),
            manifest: manifest(),
        }
    }
}

/// Writes `dir` (e.g. `student.mlpackage`): built next to it, then renamed into place
/// (an existing package at `dir` is replaced).
pub fn write_mlpackage(
    graph: &Graph,
    dir: &Path,
    opts: &CoremlOptions,
) -> Result<MlPackageFiles, CoremlError> {
    let files = mlprogram_files(graph, opts)?;
    write_package_files(&files, dir)?;
    Ok(files)
}

/// Writes already built package files to `dir`, as `write_mlpackage` does.
pub fn write_package_files(files: &MlPackageFiles, dir: &Path) -> Result<(), CoremlError> {
    let werr = |path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| CoremlError::Write {
            path: path.clone(),
            source,
        }
    };
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".mlpackage-")
        .tempdir_in(parent)
        .map_err(werr(parent))?;
    let data = tmp.path().join("Data/com.apple.CoreML");
    std::fs::create_dir_all(data.join("weights")).map_err(werr(&data))?;
    std::fs::write(data.join("model.mlmodel"), &files.model)
        .map_err(werr(&data.join("model.mlmodel")))?;
    std::fs::write(data.join("weights/weight.bin"), &files.weights)
        .map_err(werr(&data.join("weights/weight.bin")))?;
    std::fs::write(tmp.path().join("Manifest.json"), &files.manifest)
        .map_err(werr(&tmp.path().join("Manifest.json")))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(werr(dir))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).map_err(werr(dir))?;
    Ok(())
}
