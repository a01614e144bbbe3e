//! What a shipped model declares at its edges — the names, shapes, layout, dtype, value
//! range and colour order an app must feed and read — read from the file itself (not
//! from what the writer meant to write), for the manifest, the golden frames and the
//! report's Kotlin/Swift lines.
//!
//! Every student takes and gives RGB in the net's range [-1, 1] (pixel * 2/255 - 1);
//! what differs per target is how that is carried: NHWC float32 (or int8) for TFLite,
//! NCHW float32 for ONNX, an RGB image (a CVPixelBuffer, 0..255) for Core ML.

use crate::bundle::manifest::{Quantization, TensorSpec};
use crate::export::coreml::DecodedCoreml;
use crate::tflite::{self, TensorType};

/// The range the student's floats live in.
pub const NET_RANGE: [f64; 2] = [-1.0, 1.0];
/// What an 8-bit image pixel holds.
pub const PIXEL_RANGE: [f64; 2] = [0.0, 255.0];

/// The input and output of a `.tflite` file (NHWC).
pub fn tflite_edges(bytes: &[u8]) -> Result<(TensorSpec, TensorSpec), String> {
    let desc = tflite::parse(bytes).map_err(|e| e.to_string())?;
    let edge = |list: &[i32], what: &str| -> Result<TensorSpec, String> {
        let [i] = list else {
            return Err(format!(
                "the model has {} {what}s, expected one",
                list.len()
            ));
        };
        let t = desc
            .tensors
            .get(*i as usize)
            .ok_or_else(|| format!("{what} tensor {i} does not exist"))?;
        let dtype = match t.dtype {
            TensorType::FLOAT32 => "float32",
            TensorType::INT8 => "int8",
            TensorType::UINT8 => "uint8",
            other => return Err(format!("{what} `{}` has type {other:?}", t.name)),
        };
        let quantization = match (&t.quant, dtype) {
            (Some(q), "int8" | "uint8") if q.scale.len() == 1 => Some(Quantization {
                scale: q.scale[0] as f64,
                zero_point: q.zero_point.first().copied().unwrap_or(0),
            }),
            _ => None,
        };
        Ok(TensorSpec {
            name: t.name.clone(),
            kind: "tensor".into(),
            shape: t.shape.iter().map(|d| *d as usize).collect(),
            layout: "NHWC".into(),
            dtype: dtype.into(),
            range: NET_RANGE,
            colour: "RGB".into(),
            quantization,
        })
    };
    Ok((edge(&desc.inputs, "input")?, edge(&desc.outputs, "output")?))
}

/// The input and output of a `.onnx` file (NCHW float32).
pub fn onnx_edges(bytes: &[u8]) -> Result<(TensorSpec, TensorSpec), String> {
    use prost::Message;
    use tract_onnx::pb::{tensor_shape_proto::dimension, type_proto, ModelProto};
    let model = ModelProto::decode(bytes).map_err(|e| e.to_string())?;
    let graph = model.graph.ok_or("the model has no graph")?;
    let weights: std::collections::BTreeSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let edge = |v: Option<&tract_onnx::pb::ValueInfoProto>, what: &str| {
        let v = v.ok_or_else(|| format!("the model has no {what}"))?;
        let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(format!("{what} `{}` is not a tensor", v.name));
        };
        // ONNX's DataType: 1 float, 2 uint8, 3 int8.
        let dtype = match t.elem_type {
            1 => "float32",
            2 => "uint8",
            3 => "int8",
            other => return Err(format!("{what} `{}` has element type {other}", v.name)),
        };
        let shape = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(dimension::Value::DimValue(n)) => Ok(n as usize),
                        _ => Err(format!("{what} `{}` has a symbolic dimension", v.name)),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(TensorSpec {
            name: v.name.clone(),
            kind: "tensor".into(),
            shape,
            layout: "NCHW".into(),
            dtype: dtype.into(),
            range: NET_RANGE,
            colour: "RGB".into(),
            quantization: None,
        })
    };
    let input = graph
        .input
        .iter()
        .find(|i| !weights.contains(i.name.as_str()));
    Ok((edge(input, "input")?, edge(graph.output.first(), "output")?))
}

/// The input and output of a decoded Core ML model: images (RGB, 0..255, H×W) when the
/// model takes or gives images, else NCHW float32 multi-arrays.
pub fn coreml_edges(decoded: &DecodedCoreml) -> (TensorSpec, TensorSpec) {
    let [n, c, h, w] = decoded.graph.input_shape;
    let spec = |name: &str, image: bool, nchw: [usize; 4]| {
        if image {
            TensorSpec {
                name: name.to_string(),
                kind: "image".into(),
                shape: vec![nchw[2], nchw[3], nchw[1]],
                layout: "HWC".into(),
                dtype: "uint8".into(),
                range: PIXEL_RANGE,
                colour: "RGB".into(),
                quantization: None,
            }
        } else {
            TensorSpec {
                name: name.to_string(),
                kind: "tensor".into(),
                shape: nchw.to_vec(),
                layout: "NCHW".into(),
                dtype: "float32".into(),
                range: NET_RANGE,
                colour: "RGB".into(),
                quantization: None,
            }
        }
    };
    // The output's shape as the graph infers it (the student keeps the frame's size).
    let out = decoded
        .graph
        .shapes()
        .ok()
        .and_then(|s| s.get(&decoded.graph.output_name).copied())
        .unwrap_or([n, 3, h, w]);
    (
        spec(
            &decoded.input_feature,
            decoded.input_pixel_map.is_some(),
            [n, c, h, w],
        ),
        spec(
            &decoded.output_feature,
            decoded.output_pixel_map.is_some(),
            out,
        ),
    )
}
