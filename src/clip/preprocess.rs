//! CLIP's image preprocessing, as transformers' `CLIPImageProcessor` does it: the shortest
//! side resized to the model's input size with Pillow's bicubic filter, a centre crop,
//! scaling to [0, 1] and OpenAI's per-channel mean and std. The resize reproduces
//! Pillow's 8-bit resampling (`ImagingResample`: a = -0.5 cubic, support widened when
//! shrinking, 22-bit fixed-point weights, a horizontal pass then a vertical one, each
//! rounded and clamped to u8), so the pixels equal the reference's exactly.

use image::RgbImage;

/// OpenAI CLIP's normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
pub const MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Per output index: first input index and fixed-point weights (Pillow's `precompute_coeffs`
/// and `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // Pillow truncates toward zero (C casts).
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            let fixed = w
                .iter()
                .map(|&v| {
                    let r = if v < 0.0 { -0.5 } else { 0.5 };
                    (v * (1u32 << PRECISION_BITS) as f64 + r) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((w, h), BICUBIC)` of an RGB image.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let mut cur = img.clone();
    if w != iw {
        let coeffs = coefficients(iw as usize, w as usize);
        let mut out = RgbImage::new(w, ih);
        for y in 0..ih {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (j, &kw) in k.iter().enumerate() {
                    let p = cur.get_pixel((xmin + j) as u32, y).0;
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * kw as i64;
                    }
                }
                out.put_pixel(xx as u32, y, image::Rgb(acc.map(clip8)));
            }
        }
        cur = out;
    }
    if h != ih {
        let coeffs = coefficients(ih as usize, h as usize);
        let mut out = RgbImage::new(w, h);
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..w {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (j, &kw) in k.iter().enumerate() {
                    let p = cur.get_pixel(x, (ymin + j) as u32).0;
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * kw as i64;
                    }
                }
                out.put_pixel(x, yy as u32, image::Rgb(acc.map(clip8)));
            }
        }
        cur = out;
    }
    cur
}

/// The image as the model reads it: `size`x`size`, channels-first, normalised, as f32
/// values in CHW order (what `CLIPImageProcessor(...).pixel_values[0]` holds).
pub fn preprocess(img: &RgbImage, size: u32) -> Vec<f32> {
    let (w, h) = img.dimensions();
    // transformers' get_resize_output_image_size: the long side is truncated.
    let (nw, nh) = if w <= h {
        (size, (size as u64 * h as u64 / w as u64) as u32)
    } else {
        ((size as u64 * w as u64 / h as u64) as u32, size)
    };
    let resized = resize_bicubic(img, nw, nh);
    let top = (nh - size) / 2;
    let left = (nw - size) / 2;
    let n = (size * size) as usize;
    let mut out = vec![0f32; 3 * n];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel(left + x, top + y).0;
            for c in 0..3 {
                // rescale in f64 then f32, normalise in f32, as transformers' numpy code.
                let v = (p[c] as f64 * (1.0 / 255.0)) as f32;
                out[c * n + (y * size + x) as usize] = (v - MEAN[c] as f32) / STD[c] as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_size_is_left_alone_and_a_flat_image_stays_flat() {
        let img = RgbImage::from_pixel(7, 5, image::Rgb([10, 200, 99]));
        assert_eq!(resize_bicubic(&img, 7, 5), img);
        let small = resize_bicubic(&img, 3, 2);
        assert!(small.pixels().all(|p| p.0 == [10, 200, 99]));
        let big = resize_bicubic(&img, 16, 11);
        assert!(big.pixels().all(|p| p.0 == [10, 200, 99]));
    }

    #[test]
    fn the_shortest_side_becomes_the_input_size_and_the_crop_is_centred() {
        // A tall image with a bright middle band: after the crop the band fills the frame.
        let img = RgbImage::from_fn(10, 30, |_, y| {
            image::Rgb(if (10..20).contains(&y) {
                [255; 3]
            } else {
                [0; 3]
            })
        });
        let px = preprocess(&img, 10);
        assert_eq!(px.len(), 300);
        let white = (1.0 - MEAN[0] as f32) / STD[0] as f32;
        assert!((px[55] - white).abs() < 0.2, "{}", px[55]);
    }
}
