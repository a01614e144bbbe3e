//! NeuralNetwork `.mlmodel` writer (specification version 4, iOS 13): one layer per
//! IR node, fp32 or fp16 weights, rank-4 image / exact array input mapping. The image
//! input's pixel map is the model's `NeuralNetworkImageScaler` preprocessing; the image
//! output's inverse map is a final linear activation layer.

use coreml_proto::proto::{
    activation_params, border_amounts, convolution_layer_params, model, neural_network_layer,
    neural_network_preprocessing, reorganize_data_layer_params, upsample_layer_params,
    ActivationLinear, ActivationParams, ActivationReLu, ActivationSigmoid, ActivationTanh,
    AddLayerParams, BorderAmounts, ConcatLayerParams, ConvolutionLayerParams, Model, NeuralNetwork,
    NeuralNetworkImageScaler, NeuralNetworkImageShapeMapping, NeuralNetworkLayer,
    NeuralNetworkMultiArrayShapeMapping, NeuralNetworkPreprocessing, ReorganizeDataLayerParams,
    UpsampleLayerParams, ValidPadding, WeightParams,
};
use prost::Message;

use super::mlprogram::description;
use super::{
    check_identifiers, f16_bytes, identifier, CoremlError, CoremlOptions, WeightPrecision,
    NEURALNETWORK_SPEC_VERSION,
};
use crate::ir::{Graph, Op};

fn weights(values: &[f32], precision: WeightPrecision) -> WeightParams {
    match precision {
        WeightPrecision::Fp16 => WeightParams {
            float16_value: f16_bytes(values),
            ..Default::default()
        },
        _ => WeightParams {
            float_value: values.to_vec(),
            ..Default::default()
        },
    }
}

fn activation(t: activation_params::NonlinearityType) -> neural_network_layer::Layer {
    neural_network_layer::Layer::Activation(ActivationParams {
        nonlinearity_type: Some(t),
    })
}

/// The `.mlmodel` bytes.
pub fn write_mlmodel(graph: &Graph, opts: &CoremlOptions) -> Result<Vec<u8>, CoremlError> {
    if opts.weights == WeightPrecision::Int8 {
        return Err(CoremlError::Unsupported(
            "int8 weights need an ML Program (.mlpackage); the NeuralNetwork .mlmodel takes fp32 or fp16".into(),
        ));
    }
    let shapes = graph.shapes()?;
    check_identifiers(graph)?;
    let out_shape = shapes[&graph.output_name];
    let id = |v: &str| identifier(v);
    let out_id = id(&graph.output_name);
    let mut layers = Vec::new();
    for node in &graph.nodes {
        let name = if node.name == graph.output_name && opts.image_output {
            format!("{out_id}_net")
        } else {
            id(&node.name)
        };
        let layer = match &node.op {
            Op::Conv2d {
                weight,
                weight_shape,
                bias,
                stride,
                pads,
                groups,
            } => {
                neural_network_layer::Layer::Convolution(ConvolutionLayerParams {
                    output_channels: weight_shape[0] as u64,
                    kernel_channels: weight_shape[1] as u64,
                    n_groups: *groups as u64,
                    kernel_size: vec![weight_shape[2] as u64, weight_shape[3] as u64],
                    stride: vec![stride[0] as u64, stride[1] as u64],
                    dilation_factor: vec![1, 1],
                    is_deconvolution: false,
                    has_bias: true,
                    weights: Some(weights(weight, opts.weights)),
                    bias: Some(weights(bias, opts.weights)),
                    output_shape: vec![],
                    // Explicit borders: [height (top, bottom), width (left, right)].
                    convolution_padding_type: Some(
                        convolution_layer_params::ConvolutionPaddingType::Valid(ValidPadding {
                            padding_amounts: Some(BorderAmounts {
                                border_amounts: vec![
                                    border_amounts::EdgeSizes {
                                        start_edge_size: pads[0] as u64,
                                        end_edge_size: pads[2] as u64,
                                    },
                                    border_amounts::EdgeSizes {
                                        start_edge_size: pads[1] as u64,
                                        end_edge_size: pads[3] as u64,
                                    },
                                ],
                            }),
                        }),
                    ),
                })
            }
            Op::Relu => activation(activation_params::NonlinearityType::ReLu(ActivationReLu {})),
            Op::Tanh => activation(activation_params::NonlinearityType::Tanh(ActivationTanh {})),
            Op::Sigmoid => activation(activation_params::NonlinearityType::Sigmoid(
                ActivationSigmoid {},
            )),
            Op::Add => neural_network_layer::Layer::Add(AddLayerParams { alpha: 0.0 }),
            Op::ConcatChannels => neural_network_layer::Layer::Concat(ConcatLayerParams {
                sequence_concat: false,
            }),
            Op::UpsampleNearest { factor } => {
                neural_network_layer::Layer::Upsample(UpsampleLayerParams {
                    scaling_factor: vec![*factor as u64, *factor as u64],
                    mode: upsample_layer_params::InterpolationMode::Nn as i32,
                    ..Default::default()
                })
            }
            // DEPTH_TO_SPACE is the IR's DCR order (PIXEL_SHUFFLE would be CRD).
            Op::DepthToSpace { block } => {
                neural_network_layer::Layer::ReorganizeData(ReorganizeDataLayerParams {
                    mode: reorganize_data_layer_params::ReorganizationType::DepthToSpace as i32,
                    block_size: *block as u64,
                })
            }
        };
        layers.push(NeuralNetworkLayer {
            name: name.clone(),
            input: node.inputs.iter().map(|i| id(i)).collect(),
            output: vec![name],
            layer: Some(layer),
            ..Default::default()
        });
    }
    if opts.image_output {
        // pixel = net / scale - bias / scale
        let r = opts.pixel_range;
        layers.push(NeuralNetworkLayer {
            name: out_id.clone(),
            input: vec![format!("{out_id}_net")],
            output: vec![out_id.clone()],
            layer: Some(activation(activation_params::NonlinearityType::Linear(
                ActivationLinear {
                    alpha: 1.0 / r.scale,
                    beta: -r.bias / r.scale,
                },
            ))),
            ..Default::default()
        });
    }
    let mut preprocessing = Vec::new();
    if opts.image_input {
        let r = opts.pixel_range;
        preprocessing.push(NeuralNetworkPreprocessing {
            feature_name: id(&graph.input_name),
            preprocessor: Some(neural_network_preprocessing::Preprocessor::Scaler(
                NeuralNetworkImageScaler {
                    channel_scale: r.scale,
                    red_bias: r.bias,
                    green_bias: r.bias,
                    blue_bias: r.bias,
                    gray_bias: r.bias,
                },
            )),
        });
    }
    let model = Model {
        specification_version: NEURALNETWORK_SPEC_VERSION,
        description: Some(description(graph, out_shape, opts)),
        r#type: Some(model::Type::NeuralNetwork(NeuralNetwork {
            layers,
            preprocessing,
            array_input_shape_mapping: NeuralNetworkMultiArrayShapeMapping::ExactArrayMapping
                as i32,
            image_input_shape_mapping: NeuralNetworkImageShapeMapping::Rank4ImageMapping as i32,
            update_params: None,
        })),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
