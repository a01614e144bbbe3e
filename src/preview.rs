//! `effectc preview`'s model: a target's shipped file run with tract on RGB frames, so
//! that what a person sees is what the phone file computes (the int8 TFLite's rounding,
//! Core ML's fp16).
//!
//! - ONNX: the file itself. TFLite: the file (float), or for int8 its verified core,
//!   fed and read exactly as the shipped QUANTIZE / DEQUANTIZE edges would (see
//!   verify::tract_run). Core ML: the package decoded back, lowered to ONNX in the
//!   precision the device computes in, with the pixel maps written in the model, as
//!   `verify` checks it (Core ML itself does not run on Linux). Its fp16 compute is
//!   emulated in f32 with every stored value rounded to fp16 (`verify::fp16`): about
//!   the fp32 model's speed; `Fp16Eval::Exact` runs tract's fp16 kernels instead.
//!   The int8 core runs through `verify::int8` (tract's integer rounding, f32 matrix
//!   products: identical outputs at about the fp32 model's cost); `Int8Eval::Exact` runs
//!   tract's quantized kernels.
//! - Sizes: the student is fully convolutional, so it runs at any size that is a
//!   multiple of its built size's down-sampling grid. The shipped files declare the
//!   built size; for another size the TFLite file's activation shapes (and the sizes
//!   its RESHAPEs and resizes name) are scaled, the ONNX and Core ML inputs re-declared. Weights and
//!   quantization are untouched.

use crate::export::coreml::{read_mlpackage, PixelRange};
use crate::export::tflite_size::tflite_at_size;
use crate::tflite::{self, BuiltinOperator};
use crate::verify::coreml::{CoremlModel, Fp16Eval};
use crate::verify::int8::{Int8Eval, Int8Runner};
use crate::verify::TractModel;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// A target's shipped file, as `effectc build` leaves it in `out/EFFECT/`.
#[derive(Clone, Debug)]
pub enum Shipped {
    Onnx(PathBuf),
    /// The shipped file, and for int8 the core tract runs.
    Tflite {
        shipped: PathBuf,
        core: Option<PathBuf>,
    },
    MlPackage(PathBuf),
}

impl Shipped {
    /// The file a person would name (for messages and the page).
    pub fn path(&self) -> &Path {
        match self {
            Shipped::Onnx(p) | Shipped::MlPackage(p) => p,
            Shipped::Tflite { shipped, .. } => shipped,
        }
    }
}

/// What runs the net: tract on the file, the int8 core (fast, `verify::int8`), or the
/// decoded Core ML model.
enum Runner {
    Tract(TractModel),
    Int8(Int8Runner),
    Coreml(CoremlModel),
}

pub struct PreviewModel {
    model: Runner,
    size: usize,
    /// net input = pixel * scale + bias.
    input_map: PixelRange,
    /// pixel = net output * scale + bias.
    output_map: PixelRange,
}

fn err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

impl PreviewModel {
    /// Loads `shipped` to run on `size`×`size` RGB frames (Core ML's fp16 emulated:
    /// `verify::fp16`).
    pub fn load(shipped: &Shipped, size: usize) -> Result<PreviewModel, String> {
        Self::load_with(shipped, size, Fp16Eval::default())
    }

    /// `load`, with the way Core ML's fp16 compute is evaluated.
    pub fn load_with(
        shipped: &Shipped,
        size: usize,
        fp16: Fp16Eval,
    ) -> Result<PreviewModel, String> {
        Self::load_evals(shipped, size, fp16, Int8Eval::default())
    }

    /// `load`, with the ways Core ML's fp16 and an int8 TFLite core are evaluated.
    pub fn load_evals(
        shipped: &Shipped,
        size: usize,
        fp16: Fp16Eval,
        int8: Int8Eval,
    ) -> Result<PreviewModel, String> {
        let shape = [1, 3, size, size];
        let net = PixelRange::default();
        let out_map = PixelRange {
            scale: 1.0 / net.scale,
            bias: -net.bias / net.scale,
        };
        let (model, input_map, output_map) = match shipped {
            Shipped::Onnx(p) => {
                let bytes = std::fs::read(p).map_err(|e| err(p)(&e))?;
                let m = TractModel::onnx(&bytes, shape).map_err(|e| err(p)(&e))?;
                (Runner::Tract(m), net, out_map)
            }
            Shipped::Tflite { shipped, core } => {
                let p = core.as_ref().unwrap_or(shipped);
                let bytes = std::fs::read(p).map_err(|e| err(p)(&e))?;
                let bytes = tflite_at_size(&bytes, size).map_err(|e| err(p)(&e))?;
                let m = match core {
                    Some(_) => {
                        Runner::Int8(Int8Runner::load(&bytes, shape, int8).map_err(|e| err(p)(&e))?)
                    }
                    None => {
                        Runner::Tract(TractModel::tflite(&bytes, shape).map_err(|e| err(p)(&e))?)
                    }
                };
                (m, net, out_map)
            }
            Shipped::MlPackage(dir) => {
                let decoded = read_mlpackage(dir).map_err(|e| err(dir)(&e))?;
                let (input_map, output_map) = (
                    decoded.input_pixel_map.unwrap_or(net),
                    decoded.output_pixel_map.unwrap_or(out_map),
                );
                let shape = [1, decoded.graph.input_shape[1], size, size];
                let m = CoremlModel::load_with_range_check(decoded, shape, fp16, false)
                    .map_err(|e| err(dir)(&e))?;
                (Runner::Coreml(m), input_map, output_map)
            }
        };
        let m = PreviewModel {
            model,
            size,
            input_map,
            output_map,
        };
        // One run on a grey frame: checks the size fits the net (and warms tract up).
        m.run(&RgbImage::from_pixel(
            size as u32,
            size as u32,
            image::Rgb([128; 3]),
        ))
        .map_err(|e| {
            format!(
                "{}: it does not run at {size}x{size}: {e}",
                shipped.path().display()
            )
        })?;
        Ok(m)
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs one `size`×`size` frame; returns the output frame and the seconds tract took.
    pub fn run(&self, frame: &RgbImage) -> Result<(RgbImage, f64), String> {
        let s = self.size;
        if frame.dimensions() != (s as u32, s as u32) {
            return Err(format!(
                "frame is {}x{}, the model runs at {s}x{s}",
                frame.width(),
                frame.height()
            ));
        }
        let mut input = vec![0f32; 3 * s * s];
        for (x, y, p) in frame.enumerate_pixels() {
            for c in 0..3 {
                input[(c * s + y as usize) * s + x as usize] =
                    p[c] as f32 * self.input_map.scale + self.input_map.bias;
            }
        }
        let t0 = std::time::Instant::now();
        let (out, shape) = match &self.model {
            Runner::Tract(m) => m.run(&input).map_err(|e| e.to_string())?,
            Runner::Int8(m) => m.run(&input).map_err(|e| e.to_string())?,
            Runner::Coreml(m) => m
                .run_net(&input)
                .map(|(y, shape, _)| (y, shape))
                .map_err(|e| e.to_string())?,
        };
        let seconds = t0.elapsed().as_secs_f64();
        let [_, c, h, w] = shape;
        if c < 3 || h != s || w != s {
            return Err(format!(
                "the model gave a {c}x{h}x{w} output for a {s}x{s} frame: pick a multiple of 8 (the net's down-sampling)"
            ));
        }
        let img = RgbImage::from_fn(s as u32, s as u32, |x, y| {
            let at = |ch: usize| {
                let v = out[(ch * h + y as usize) * w + x as usize] * self.output_map.scale
                    + self.output_map.bias;
                v.round().clamp(0.0, 255.0) as u8
            };
            image::Rgb([at(0), at(1), at(2)])
        });
        Ok((img, seconds))
    }
}

/// The model's down-sampling grid: the sizes it runs at are the multiples of this.
/// Read from the shipped file's feature-map sizes at its built size: a `d`-pixel map
/// of a net built at `B` becomes `d * size / B` pixels, so `size` must be a multiple
/// of `B / gcd(B, d)` for every map.
pub fn grid_of(shipped: &Shipped) -> Result<usize, String> {
    let (built, dims): (usize, Vec<usize>) = match shipped {
        Shipped::Onnx(p) => {
            use tract_onnx::prelude::*;
            let bytes = std::fs::read(p).map_err(|e| err(p)(&e))?;
            let model = tract_onnx::onnx()
                .model_for_read(&mut &bytes[..])
                .and_then(|m| m.into_typed())
                .map_err(|e| err(p)(&format!("{e:#}")))?;
            let shape_of = |f: &TypedFact| f.shape.as_concrete().map(|s| s.to_vec());
            let input = model
                .input_fact(0)
                .ok()
                .and_then(shape_of)
                .filter(|s| s.len() == 4)
                .ok_or_else(|| format!("{}: the input is not NCHW", p.display()))?;
            let dims = model
                .nodes()
                .iter()
                .flat_map(|n| n.outputs.iter())
                // Activations only (weights are constants).
                .filter(|o| o.fact.konst.is_none())
                .filter_map(|o| shape_of(&o.fact))
                .filter(|s| s.len() == 4)
                .flat_map(|s| [s[2], s[3]])
                .collect();
            (input[2], dims)
        }
        Shipped::Tflite { shipped, core } => {
            let p = core.as_ref().unwrap_or(shipped);
            let bytes = std::fs::read(p).map_err(|e| err(p)(&e))?;
            let desc = tflite::parse(&bytes).map_err(|e| err(p)(&e))?;
            let input = *desc.inputs.first().ok_or("the model has no input")?;
            let built = desc.tensors[input as usize]
                .shape
                .get(1)
                .copied()
                .unwrap_or(0) as usize;
            // NHWC activations (no buffer), less those whose size is not a feature map's:
            // a PAD's output (map + pads) and the split shapes inside a depth-to-space
            // (around its TRANSPOSE), as `tflite_at_size` reads them.
            let skip = |i: i32| {
                desc.ops.iter().any(|o| {
                    let around =
                        matches!(o.code, BuiltinOperator::PAD | BuiltinOperator::TRANSPOSE)
                            && o.outputs.contains(&i);
                    around || (o.code == BuiltinOperator::TRANSPOSE && o.inputs.first() == Some(&i))
                })
            };
            let dims = desc
                .tensors
                .iter()
                .enumerate()
                .filter(|(i, t)| t.buffer == 0 && t.shape.len() == 4 && !skip(*i as i32))
                .flat_map(|(_, t)| [t.shape[1] as usize, t.shape[2] as usize])
                .collect();
            (built, dims)
        }
        Shipped::MlPackage(dir) => {
            let decoded = read_mlpackage(dir).map_err(|e| err(dir)(&e))?;
            let shapes = decoded.graph.shapes().map_err(|e| err(dir)(&e))?;
            let dims = shapes.values().flat_map(|s| [s[2], s[3]]).collect();
            (decoded.graph.input_shape[2], dims)
        }
    };
    if built == 0 {
        return Err(format!(
            "{}: the input has no size",
            shipped.path().display()
        ));
    }
    Ok(dims
        .into_iter()
        .filter(|d| *d > 0)
        .fold(1, |g, d| lcm(g, built / gcd(built, d))))
}

/// The refusal of a size off the grid (the same words for every target).
pub fn off_grid(size: usize, grid: usize) -> String {
    let below = size / grid * grid;
    let near = if below == 0 {
        grid.to_string()
    } else {
        format!("{below} or {}", below + grid)
    };
    format!(
        "--size {size} is not on the model's grid: it samples down {grid}x, so pick a multiple of {grid} (e.g. {near})"
    )
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// `before | after`, side by side (width 2 × size).
pub fn side_by_side(before: &RgbImage, after: &RgbImage) -> RgbImage {
    let (w, h) = before.dimensions();
    let mut out = RgbImage::new(w * 2, h);
    image::imageops::replace(&mut out, before, 0, 0);
    image::imageops::replace(&mut out, after, w as i64, 0);
    out
}
