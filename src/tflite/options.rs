//! The operator-options tables, each read and written here and nowhere else: a new op
//! with a new table is one variant and its two arms below.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tract_tflite::tflite::{self, ActivationFunctionType as Act, BuiltinOptions, Padding};

use super::{op_name, BuiltinOperator, ModelError};

/// One operator's builtin options, field for field as the schema has them.
#[derive(Clone, Debug, PartialEq)]
pub enum Options {
    None,
    Conv2D {
        padding: Padding,
        stride_h: i32,
        stride_w: i32,
        act: Act,
        dilation_h: i32,
        dilation_w: i32,
    },
    Depthwise {
        padding: Padding,
        stride_h: i32,
        stride_w: i32,
        depth_multiplier: i32,
        act: Act,
        dilation_h: i32,
        dilation_w: i32,
    },
    Add {
        act: Act,
        pot_scale_int16: bool,
    },
    Mul {
        act: Act,
    },
    Pool {
        padding: Padding,
        stride_h: i32,
        stride_w: i32,
        filter_h: i32,
        filter_w: i32,
        act: Act,
    },
    Reshape {
        new_shape: Option<Vec<i32>>,
    },
    Concat {
        axis: i32,
        act: Act,
    },
    ResizeBilinear {
        align_corners: bool,
        half_pixel_centers: bool,
    },
    ResizeNearest {
        align_corners: bool,
        half_pixel_centers: bool,
    },
    DepthToSpace {
        block: i32,
    },
    /// Option tables without fields (PAD, QUANTIZE, DEQUANTIZE, DENSIFY, TRANSPOSE,
    /// MAXIMUM / MINIMUM).
    Empty(BuiltinOptions),
}

impl Options {
    /// The options of a stored operator; tables not listed here are refused (rather than
    /// copied wrong).
    pub(super) fn read(op: &tflite::Operator, code: BuiltinOperator) -> Result<Self, ModelError> {
        let ty = op.builtin_options_type();
        let missing = || ModelError::MissingOptions {
            op: op_name(code),
            options: ty,
        };
        Ok(match ty {
            BuiltinOptions::NONE => Options::None,
            BuiltinOptions::Conv2DOptions => {
                let o = op
                    .builtin_options_as_conv_2_doptions()
                    .ok_or_else(missing)?;
                Options::Conv2D {
                    padding: o.padding(),
                    stride_h: o.stride_h(),
                    stride_w: o.stride_w(),
                    act: o.fused_activation_function(),
                    dilation_h: o.dilation_h_factor(),
                    dilation_w: o.dilation_w_factor(),
                }
            }
            BuiltinOptions::DepthwiseConv2DOptions => {
                let o = op
                    .builtin_options_as_depthwise_conv_2_doptions()
                    .ok_or_else(missing)?;
                Options::Depthwise {
                    padding: o.padding(),
                    stride_h: o.stride_h(),
                    stride_w: o.stride_w(),
                    depth_multiplier: o.depth_multiplier(),
                    act: o.fused_activation_function(),
                    dilation_h: o.dilation_h_factor(),
                    dilation_w: o.dilation_w_factor(),
                }
            }
            BuiltinOptions::AddOptions => {
                let o = op.builtin_options_as_add_options().ok_or_else(missing)?;
                Options::Add {
                    act: o.fused_activation_function(),
                    pot_scale_int16: o.pot_scale_int16(),
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
                    stride_h: o.stride_h(),
                    stride_w: o.stride_w(),
                    filter_h: o.filter_height(),
                    filter_w: o.filter_width(),
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
            BuiltinOptions::ResizeNearestNeighborOptions => {
                let o = op
                    .builtin_options_as_resize_nearest_neighbor_options()
                    .ok_or_else(missing)?;
                Options::ResizeNearest {
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
            | BuiltinOptions::QuantizeOptions
            | BuiltinOptions::DequantizeOptions
            | BuiltinOptions::DensifyOptions
            | BuiltinOptions::TransposeOptions
            | BuiltinOptions::MaximumMinimumOptions => Options::Empty(ty),
            other => {
                return Err(ModelError::UnhandledOptions {
                    op: op_name(code),
                    options: other,
                })
            }
        })
    }

    /// The options table in `fb`, with its union type.
    pub(super) fn write<'fb>(
        &self,
        fb: &mut FlatBufferBuilder<'fb>,
    ) -> (BuiltinOptions, Option<WIPOffset<UnionWIPOffset>>) {
        use tflite::*;
        let (ty, table) = match self {
            Options::None => return (BuiltinOptions::NONE, None),
            Options::Conv2D {
                padding,
                stride_h,
                stride_w,
                act,
                dilation_h,
                dilation_w,
            } => {
                let args = Conv2DOptionsArgs {
                    padding: *padding,
                    stride_w: *stride_w,
                    stride_h: *stride_h,
                    fused_activation_function: *act,
                    dilation_w_factor: *dilation_w,
                    dilation_h_factor: *dilation_h,
                };
                let o = Conv2DOptions::create(fb, &args);
                (BuiltinOptions::Conv2DOptions, o.as_union_value())
            }
            Options::Depthwise {
                padding,
                stride_h,
                stride_w,
                depth_multiplier,
                act,
                dilation_h,
                dilation_w,
            } => {
                let args = DepthwiseConv2DOptionsArgs {
                    padding: *padding,
                    stride_w: *stride_w,
                    stride_h: *stride_h,
                    depth_multiplier: *depth_multiplier,
                    fused_activation_function: *act,
                    dilation_w_factor: *dilation_w,
                    dilation_h_factor: *dilation_h,
                };
                let o = DepthwiseConv2DOptions::create(fb, &args);
                (BuiltinOptions::DepthwiseConv2DOptions, o.as_union_value())
            }
            Options::Add {
                act,
                pot_scale_int16,
            } => {
                let args = AddOptionsArgs {
                    fused_activation_function: *act,
                    pot_scale_int16: *pot_scale_int16,
                };
                let o = AddOptions::create(fb, &args);
                (BuiltinOptions::AddOptions, o.as_union_value())
            }
            Options::Mul { act } => {
                let args = MulOptionsArgs {
                    fused_activation_function: *act,
                };
                let o = MulOptions::create(fb, &args);
                (BuiltinOptions::MulOptions, o.as_union_value())
            }
            Options::Pool {
                padding,
                stride_h,
                stride_w,
                filter_h,
                filter_w,
                act,
            } => {
                let args = Pool2DOptionsArgs {
                    padding: *padding,
                    stride_w: *stride_w,
                    stride_h: *stride_h,
                    filter_width: *filter_w,
                    filter_height: *filter_h,
                    fused_activation_function: *act,
                };
                let o = Pool2DOptions::create(fb, &args);
                (BuiltinOptions::Pool2DOptions, o.as_union_value())
            }
            Options::Reshape { new_shape } => {
                let new_shape = new_shape.as_ref().map(|s| fb.create_vector(s));
                let o = ReshapeOptions::create(fb, &ReshapeOptionsArgs { new_shape });
                (BuiltinOptions::ReshapeOptions, o.as_union_value())
            }
            Options::Concat { axis, act } => {
                let args = ConcatenationOptionsArgs {
                    axis: *axis,
                    fused_activation_function: *act,
                };
                let o = ConcatenationOptions::create(fb, &args);
                (BuiltinOptions::ConcatenationOptions, o.as_union_value())
            }
            Options::ResizeBilinear {
                align_corners,
                half_pixel_centers,
            } => {
                let args = ResizeBilinearOptionsArgs {
                    align_corners: *align_corners,
                    half_pixel_centers: *half_pixel_centers,
                };
                let o = ResizeBilinearOptions::create(fb, &args);
                (BuiltinOptions::ResizeBilinearOptions, o.as_union_value())
            }
            Options::ResizeNearest {
                align_corners,
                half_pixel_centers,
            } => {
                let args = ResizeNearestNeighborOptionsArgs {
                    align_corners: *align_corners,
                    half_pixel_centers: *half_pixel_centers,
                };
                let o = ResizeNearestNeighborOptions::create(fb, &args);
                (
                    BuiltinOptions::ResizeNearestNeighborOptions,
                    o.as_union_value(),
                )
            }
            Options::DepthToSpace { block } => {
                let args = DepthToSpaceOptionsArgs { block_size: *block };
                let o = DepthToSpaceOptions::create(fb, &args);
                (BuiltinOptions::DepthToSpaceOptions, o.as_union_value())
            }
            Options::Empty(ty) => {
                // An empty table: what each such type's `create` writes.
                let start = fb.start_table();
                let o: WIPOffset<flatbuffers::TableFinishedWIPOffset> = fb.end_table(start);
                (*ty, o.as_union_value())
            }
        };
        (ty, Some(table))
    }
}
