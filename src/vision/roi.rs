//! Rotated regions of interest in source pixels, MediaPipe's `ImageToTensorCalculator`
//! (sample a rotated rectangle into a model's input square as its OpenCV path does) and the
//! rectangle rules of `DetectionsToRectsCalculator` / `RectTransformationCalculator`.
//! Everything is in pixels, so rotations stay rigid on non-square images.

use image::RgbImage;

/// A rectangle centred at (cx, cy), w × h pixels, rotated by `rotation` radians (positive
/// turns the rectangle's x axis from the image's x axis towards its y axis, i.e.
/// clockwise on screen).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
    pub rotation: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Outside is black (letterboxing of the detectors).
    Zero,
    /// Outside repeats the edge pixel (the landmark models' default).
    Replicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// u8 / 127.5 - 1
    MinusOneToOne,
    /// u8 / 255
    ZeroToOne,
}

impl Range {
    pub fn map(self, v: f32) -> f32 {
        match self {
            Range::MinusOneToOne => v / 127.5 - 1.0,
            Range::ZeroToOne => v / 255.0,
        }
    }
}

/// The angle in (-π, π].
pub fn normalize_radians(a: f32) -> f32 {
    let two_pi = 2.0 * std::f32::consts::PI;
    a - two_pi * ((a + std::f32::consts::PI) / two_pi).floor()
}

/// MediaPipe's `ComputeRotation`: the rotation that turns the vector from `start` to
/// `end` (pixels) to `target` radians.
pub fn rotation_between(start: [f32; 2], end: [f32; 2], target: f32) -> f32 {
    normalize_radians(target - (-(end[1] - start[1])).atan2(end[0] - start[0]))
}

impl Roi {
    /// The whole image, letterboxed into a square (`keep_aspect_ratio: true`).
    pub fn letterbox(width: u32, height: u32) -> Roi {
        let side = width.max(height) as f32;
        Roi {
            cx: width as f32 / 2.0,
            cy: height as f32 / 2.0,
            w: side,
            h: side,
            rotation: 0.0,
        }
    }

    /// `RectTransformationCalculator` with `square_long: true` and no shift: the long
    /// side, scaled.
    pub fn square_long_scaled(self, scale: f32) -> Roi {
        let side = self.w.max(self.h) * scale;
        Roi {
            w: side,
            h: side,
            ..self
        }
    }

    /// A point given in the ROI's own normalised coordinates ((0,0) top-left, (1,1)
    /// bottom-right of the rotated rectangle), in source pixels.
    pub fn to_image(&self, u: f32, v: f32) -> [f32; 2] {
        let (x, y) = ((u - 0.5) * self.w, (v - 0.5) * self.h);
        let (s, c) = self.rotation.sin_cos();
        [self.cx + c * x - s * y, self.cy + s * x + c * y]
    }

    /// The model input: `size`² pixels sampled bilinearly from the rotated rectangle,
    /// NHWC RGB floats in `range`.
    pub fn sample(&self, img: &RgbImage, size: usize, border: Border, range: Range) -> Vec<f32> {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let raw = img.as_raw();
        let pixel = |x: i64, y: i64, c: usize| -> u32 {
            let (x, y) = match border {
                Border::Replicate => (x.clamp(0, w - 1), y.clamp(0, h - 1)),
                Border::Zero => {
                    if x < 0 || y < 0 || x >= w || y >= h {
                        return 0;
                    }
                    (x, y)
                }
            };
            raw[((y * w + x) * 3) as usize + c] as u32
        };
        let (sin, cos) = (self.rotation as f64).sin_cos();
        let mut out = Vec::with_capacity(size * size * 3);
        for i in 0..size {
            for j in 0..size {
                // MediaPipe's CPU path (OpenCV warpPerspective of the 8-bit image, the
                // rectangle's corners on the tensor's corners) samples output pixel (j, i)
                // at the ROI point (j / size, i / size), read as a source pixel index,
                // rounded to 1/32 pixel, with integer bilinear weights, and rounds the
                // result to 8 bits. Doing the same gives MediaPipe's tensors: the pose
                // detector's score moves by 0.01 with plain float bilinear sampling, and
                // BlazeFace's keypoints by ~4 px with a half-pixel shift.
                let (u, v) = (j as f64 / size as f64 - 0.5, i as f64 / size as f64 - 0.5);
                let (x, y) = (u * self.w as f64, v * self.h as f64);
                let fx = self.cx as f64 + cos * x - sin * y;
                let fy = self.cy as f64 + sin * x + cos * y;
                let (qx, qy) = ((fx * 32.0).round() as i64, (fy * 32.0).round() as i64);
                let (x0, y0) = (qx.div_euclid(32), qy.div_euclid(32));
                let (ax, ay) = (qx.rem_euclid(32) as u32, qy.rem_euclid(32) as u32);
                for c in 0..3 {
                    let sum = (32 - ax) * (32 - ay) * pixel(x0, y0, c)
                        + ax * (32 - ay) * pixel(x0 + 1, y0, c)
                        + (32 - ax) * ay * pixel(x0, y0 + 1, c)
                        + ax * ay * pixel(x0 + 1, y0 + 1, c);
                    out.push(range.map(((sum + 512) >> 10) as f32));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_levels_the_eyes() {
        // Eyes level: no rotation. Second eye lower on screen: positive (clockwise).
        assert_eq!(rotation_between([0.0, 0.0], [10.0, 0.0], 0.0), 0.0);
        let r = rotation_between([0.0, 0.0], [10.0, 10.0], 0.0);
        assert!((r - std::f32::consts::FRAC_PI_4).abs() < 1e-6);
        // The ROI's x axis then points from the first eye to the second.
        let roi = Roi {
            cx: 0.0,
            cy: 0.0,
            w: 2.0,
            h: 2.0,
            rotation: r,
        };
        let p = roi.to_image(1.0, 0.5);
        assert!((p[0] - p[1]).abs() < 1e-6 && p[0] > 0.0);
        // Pose: hips to head straight up gives no rotation with a 90° target.
        assert!(
            rotation_between([0.0, 10.0], [0.0, 0.0], std::f32::consts::FRAC_PI_2).abs() < 1e-6
        );
    }

    #[test]
    fn letterbox_sampling_pads_with_black_and_keeps_pixels() {
        // 4x2 image: the letterboxed square is 4x4, rows 0 and 3 are padding.
        let mut img = RgbImage::new(4, 2);
        img.pixels_mut()
            .for_each(|p| *p = image::Rgb([255, 255, 255]));
        let t = Roi::letterbox(4, 2).sample(&img, 4, Border::Zero, Range::MinusOneToOne);
        assert_eq!(t[0], -1.0);
        assert_eq!(t[(4 + 1) * 3], 1.0);
        assert_eq!(t[(3 * 4 + 2) * 3], -1.0);
    }
}
