//! Golden frames in a target's own terms: a frame the student sees as NCHW floats in
//! [-1, 1] becomes what the app hands that target's runtime — NHWC for TFLite, an 8-bit
//! RGB image for Core ML, int8 with the tensor's scale and zero point for an integer
//! input — so `input-0.npy` can be fed to the official interpreter as it is.

use super::manifest::TensorSpec;
use super::npy::NpyData;

/// `frame` (NCHW, one image of `c`×`h`×`w`, in the net's range [-1, 1]) as `spec` holds
/// it: its shape and its values.
pub fn encode_frame(
    spec: &TensorSpec,
    frame: &[f32],
    (c, h, w): (usize, usize, usize),
) -> Result<(Vec<usize>, NpyData), String> {
    if frame.len() != c * h * w {
        return Err(format!("frame has {} values, not {c}×{h}×{w}", frame.len()));
    }
    let (sh, sw, sc) = spec.hwc().ok_or_else(|| {
        format!(
            "`{}` has layout {} without H, W and C",
            spec.name, spec.layout
        )
    })?;
    if (sh, sw, sc) != (h, w, c) {
        return Err(format!(
            "`{}` is {:?} ({}), the frame {c}×{h}×{w}",
            spec.name, spec.shape, spec.layout
        ));
    }
    // Walk the spec's layout in order; each element reads frame[ch][y][x].
    let axes: Vec<char> = spec.layout.chars().collect();
    let total: usize = spec.shape.iter().product();
    let mut values = Vec::with_capacity(total);
    let mut index = vec![0usize; spec.shape.len()];
    for _ in 0..total {
        let at = |a: char| {
            axes.iter()
                .position(|x| *x == a)
                .map(|i| index[i])
                .unwrap_or(0)
        };
        let v = frame[(at('C') * h + at('H')) * w + at('W')];
        // The net's [-1, 1] onto the spec's range.
        let [lo, hi] = spec.range;
        values.push(lo + (v as f64 + 1.0) * 0.5 * (hi - lo));
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < spec.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    let quantize = |x: f64, lo: f64, hi: f64| match spec.quantization {
        Some(q) => ((x / q.scale).round() + q.zero_point as f64).clamp(lo, hi),
        None => x.round().clamp(lo, hi),
    };
    let data = match spec.dtype.as_str() {
        "float32" => NpyData::F32(values.iter().map(|v| *v as f32).collect()),
        "uint8" => NpyData::U8(
            values
                .iter()
                .map(|v| quantize(*v, 0.0, 255.0) as u8)
                .collect(),
        ),
        "int8" => NpyData::I8(
            values
                .iter()
                .map(|v| quantize(*v, -128.0, 127.0) as i8)
                .collect(),
        ),
        other => return Err(format!("`{}` has dtype {other}", spec.name)),
    };
    Ok((spec.shape.clone(), data))
}

/// The inverse: what the runtime holds, back to the net's NCHW floats in [-1, 1]
/// (integers dequantized; pixels mapped from [0, 255]).
pub fn decode_frame(spec: &TensorSpec, data: &NpyData) -> Result<Vec<f32>, String> {
    let (h, w, c) = spec.hwc().ok_or_else(|| {
        format!(
            "`{}` has layout {} without H, W and C",
            spec.name, spec.layout
        )
    })?;
    let total: usize = spec.shape.iter().product();
    if data.len() != total || total != h * w * c {
        return Err(format!(
            "{} values for `{}` of shape {:?}",
            data.len(),
            spec.name,
            spec.shape
        ));
    }
    let raw = data.to_f32();
    let axes: Vec<char> = spec.layout.chars().collect();
    let mut out = vec![0f32; total];
    let mut index = vec![0usize; spec.shape.len()];
    let [lo, hi] = spec.range;
    for r in raw {
        let at = |a: char| {
            axes.iter()
                .position(|x| *x == a)
                .map(|i| index[i])
                .unwrap_or(0)
        };
        let real = match spec.quantization {
            Some(q) => (r as f64 - q.zero_point as f64) * q.scale,
            None => r as f64,
        };
        out[(at('C') * h + at('H')) * w + at('W')] = ((real - lo) / (hi - lo) * 2.0 - 1.0) as f32;
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < spec.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::Quantization;

    fn spec(layout: &str, shape: Vec<usize>, dtype: &str, range: [f64; 2]) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            kind: "tensor".into(),
            shape,
            layout: layout.into(),
            dtype: dtype.into(),
            range,
            colour: "RGB".into(),
            quantization: None,
        }
    }

    #[test]
    fn frames_take_each_targets_layout_and_range() {
        // 3 channels, 1×2 pixels: channel k, pixel x holds (k*2+x)/8 - 0.5 (exact).
        let frame: Vec<f32> = (0..6).map(|i| i as f32 / 8.0 - 0.5).collect();
        let nhwc = spec("NHWC", vec![1, 1, 2, 3], "float32", [-1.0, 1.0]);
        let (shape, data) = encode_frame(&nhwc, &frame, (3, 1, 2)).unwrap();
        assert_eq!(shape, vec![1, 1, 2, 3]);
        // Pixel 0's three channels first, then pixel 1's.
        let NpyData::F32(v) = &data else { panic!() };
        let want = [-0.5, -0.25, 0.0, -0.375, -0.125, 0.125];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        assert_eq!(decode_frame(&nhwc, &data).unwrap().len(), 6);
        for (a, b) in decode_frame(&nhwc, &data).unwrap().iter().zip(&frame) {
            assert!((a - b).abs() < 1e-6);
        }
        // An image: 0..255 pixels, rounded.
        let image = spec("HWC", vec![1, 2, 3], "uint8", [0.0, 255.0]);
        let (_, data) = encode_frame(&image, &frame, (3, 1, 2)).unwrap();
        assert_eq!(data, NpyData::U8(vec![64, 96, 128, 80, 112, 143]));
        // int8 with the tensor's scale and zero point.
        let mut q = spec("NHWC", vec![1, 1, 2, 3], "int8", [-1.0, 1.0]);
        q.quantization = Some(Quantization {
            scale: 1.0 / 128.0,
            zero_point: 0,
        });
        let (_, data) = encode_frame(&q, &frame, (3, 1, 2)).unwrap();
        assert_eq!(data, NpyData::I8(vec![-64, -32, 0, -48, -16, 16]));
        // NCHW keeps the order.
        let nchw = spec("NCHW", vec![1, 3, 1, 2], "float32", [-1.0, 1.0]);
        assert_eq!(
            encode_frame(&nchw, &frame, (3, 1, 2)).unwrap().1,
            NpyData::F32(frame.clone())
        );
        // A frame of another size is refused, naming the tensor.
        let err = encode_frame(&nhwc, &frame[..3], (3, 1, 1)).unwrap_err();
        assert!(err.contains("`x`"), "{err}");
    }
}
