//! Model-free control maps for ControlNet: `canny` (Gaussian blur, Sobel, non-maximum
//! suppression, hysteresis) and `softedge` (multi-scale Gaussian-derivative edge strength,
//! a classical stand-in for HED/PiDiNet soft edges).

use image::{GrayImage, RgbImage};

/// Canny parameters. Thresholds apply to the L2 Sobel magnitude of 0..255 luma (a step
/// from 0 to 255 gives about 1020), the scale of OpenCV's `cv2.Canny(img, 100, 200)` that
/// ControlNet's canny annotator uses.
#[derive(Debug, Clone, Copy)]
pub struct CannyParams {
    pub low_threshold: f32,
    pub high_threshold: f32,
    /// Gaussian blur σ in pixels before the gradient; 0 skips the blur.
    pub blur_sigma: f32,
}

impl Default for CannyParams {
    fn default() -> Self {
        CannyParams {
            low_threshold: 100.0,
            high_threshold: 200.0,
            blur_sigma: 1.0,
        }
    }
}

/// Soft edge parameters.
#[derive(Debug, Clone)]
pub struct SoftEdgeParams {
    /// Gaussian scales σ (pixels) whose gradient magnitudes are combined.
    pub sigmas: Vec<f32>,
    /// Edge strength mapped to 1 - exp(-gain · m / m99), m99 the 99th percentile.
    pub gain: f32,
}

impl Default for SoftEdgeParams {
    fn default() -> Self {
        SoftEdgeParams {
            sigmas: vec![1.0, 2.0, 4.0],
            gain: 2.0,
        }
    }
}

struct Plane {
    w: usize,
    h: usize,
    data: Vec<f32>,
}

impl Plane {
    fn at(&self, x: isize, y: isize) -> f32 {
        // replicate the border
        let x = x.clamp(0, self.w as isize - 1) as usize;
        let y = y.clamp(0, self.h as isize - 1) as usize;
        self.data[y * self.w + x]
    }
}

fn luma(img: &RgbImage) -> Plane {
    let (w, h) = img.dimensions();
    let data = img
        .pixels()
        .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
        .collect();
    Plane {
        w: w as usize,
        h: h as usize,
        data,
    }
}

fn gaussian_blur(p: &Plane, sigma: f32) -> Plane {
    if sigma <= 0.0 {
        return Plane {
            w: p.w,
            h: p.h,
            data: p.data.clone(),
        };
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let pass = |src: &Plane, horizontal: bool| {
        let mut data = vec![0.0; src.w * src.h];
        for y in 0..src.h {
            for x in 0..src.w {
                let mut acc = 0.0;
                for (k, weight) in kernel.iter().enumerate() {
                    let d = k as isize - radius;
                    acc += weight
                        * if horizontal {
                            src.at(x as isize + d, y as isize)
                        } else {
                            src.at(x as isize, y as isize + d)
                        };
                }
                data[y * src.w + x] = acc;
            }
        }
        Plane {
            w: src.w,
            h: src.h,
            data,
        }
    };
    pass(&pass(p, true), false)
}

/// Sobel gradients (gx, gy).
fn sobel(p: &Plane) -> (Vec<f32>, Vec<f32>) {
    let mut gx = vec![0.0; p.w * p.h];
    let mut gy = vec![0.0; p.w * p.h];
    for y in 0..p.h as isize {
        for x in 0..p.w as isize {
            let a = |dx: isize, dy: isize| p.at(x + dx, y + dy);
            let i = y as usize * p.w + x as usize;
            gx[i] = (a(1, -1) + 2.0 * a(1, 0) + a(1, 1)) - (a(-1, -1) + 2.0 * a(-1, 0) + a(-1, 1));
            gy[i] = (a(-1, 1) + 2.0 * a(0, 1) + a(1, 1)) - (a(-1, -1) + 2.0 * a(0, -1) + a(1, -1));
        }
    }
    (gx, gy)
}

/// Canny edges: 255 on edges, 0 elsewhere.
pub fn canny(img: &RgbImage, params: &CannyParams) -> GrayImage {
    let gray = gaussian_blur(&luma(img), params.blur_sigma);
    let (w, h) = (gray.w, gray.h);
    let (gx, gy) = sobel(&gray);
    let mag: Vec<f32> = gx
        .iter()
        .zip(&gy)
        .map(|(x, y)| (x * x + y * y).sqrt())
        .collect();
    // non-maximum suppression along the gradient direction, quantised to 0/45/90/135 degrees
    let mut thin = vec![0.0f32; w * h];
    let get = |x: isize, y: isize| {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let m = mag[i];
            if m == 0.0 {
                continue;
            }
            let angle = gy[i].atan2(gx[i]).to_degrees().rem_euclid(180.0);
            let (dx, dy) = if !(22.5..157.5).contains(&angle) {
                (1, 0)
            } else if angle < 67.5 {
                (1, 1)
            } else if angle < 112.5 {
                (0, 1)
            } else {
                (-1, 1)
            };
            let (xi, yi) = (x as isize, y as isize);
            // ties go to the first pixel along the direction, so plateaus stay one pixel wide
            if m > get(xi - dx, yi - dy) && m >= get(xi + dx, yi + dy) {
                thin[i] = m;
            }
        }
    }
    // hysteresis: strong pixels, and weak ones 8-connected to them
    let mut out = GrayImage::new(w as u32, h as u32);
    let mut stack: Vec<usize> = (0..w * h)
        .filter(|i| thin[*i] >= params.high_threshold)
        .collect();
    let mut edge = vec![false; w * h];
    for i in &stack {
        edge[*i] = true;
    }
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if !edge[j] && thin[j] >= params.low_threshold {
                    edge[j] = true;
                    stack.push(j);
                }
            }
        }
    }
    for (i, e) in edge.iter().enumerate() {
        if *e {
            out.put_pixel((i % w) as u32, (i / w) as u32, image::Luma([255]));
        }
    }
    out
}

/// Soft edges in 0..255: the mean over scales of σ-normalised gradient magnitudes,
/// mapped through 1 - exp(-gain · m / m99).
pub fn softedge(img: &RgbImage, params: &SoftEdgeParams) -> GrayImage {
    let gray = luma(img);
    let (w, h) = (gray.w, gray.h);
    let mut combined = vec![0.0f32; w * h];
    let scales = params.sigmas.len().max(1) as f32;
    for sigma in &params.sigmas {
        let (gx, gy) = sobel(&gaussian_blur(&gray, *sigma));
        // σ-normalised derivatives make a blurred edge as strong at each scale as a sharp one
        for (c, (x, y)) in combined.iter_mut().zip(gx.iter().zip(&gy)) {
            *c += (x * x + y * y).sqrt() * sigma.max(1.0) / scales;
        }
    }
    let mut sorted = combined.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p99 = sorted
        .get(((sorted.len() as f32 * 0.99) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    let norm = if p99 > 1e-6 { p99 } else { 1.0 };
    let data = combined
        .iter()
        .map(|m| {
            ((1.0 - (-params.gain * m / norm).exp()) * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    GrayImage::from_raw(w as u32, h as u32, data).expect("buffer matches the size")
}

/// A grey control map as the RGB image ControlNets take (channel repeated).
pub fn gray_to_rgb(gray: &GrayImage) -> RgbImage {
    let (w, h) = gray.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let v = gray.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = f(x, y);
            image::Rgb([v, v, v])
        })
    }

    fn edges(g: &GrayImage) -> Vec<(u32, u32)> {
        g.enumerate_pixels()
            .filter(|(_, _, p)| p[0] == 255)
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    #[test]
    fn canny_outlines_a_square_with_a_thin_closed_contour() {
        let img = image(32, 32, |x, y| {
            if (8..24).contains(&x) && (8..24).contains(&y) {
                255
            } else {
                0
            }
        });
        let e = canny(&img, &CannyParams::default());
        let pts = edges(&e);
        // every edge pixel lies on the square's border (±1 px), none inside or far outside
        for (x, y) in &pts {
            let near = |v: u32| (7..=8).contains(&v) || (23..=24).contains(&v);
            let inside = |v: u32| (7..=24).contains(&v);
            assert!(
                (near(*x) && inside(*y)) || (near(*y) && inside(*x)),
                "stray edge at {x},{y}"
            );
        }
        // thin: about one pixel per unit of perimeter (4·16), not a thick band
        assert!((56..=80).contains(&pts.len()), "{} edge pixels", pts.len());
        // closed: each side of the square has an edge pixel in every row/column it spans
        for v in 10..22 {
            assert!(
                pts.iter().any(|(x, y)| *y == v && *x <= 8),
                "left side open at row {v}"
            );
            assert!(
                pts.iter().any(|(x, y)| *x == v && *y >= 23),
                "bottom side open at column {v}"
            );
        }
        // thresholds above the strongest gradient leave nothing
        let none = canny(
            &img,
            &CannyParams {
                low_threshold: 5000.0,
                high_threshold: 6000.0,
                blur_sigma: 1.0,
            },
        );
        assert!(edges(&none).is_empty());
    }

    #[test]
    fn canny_hysteresis_keeps_weak_edges_only_when_connected_to_strong_ones() {
        let params = CannyParams {
            low_threshold: 100.0,
            high_threshold: 200.0,
            blur_sigma: 0.0,
        };
        // a 40-level horizontal step: Sobel magnitude 160, between the thresholds
        let weak_only = image(32, 32, |_, y| if y < 16 { 255 } else { 215 });
        assert!(
            edges(&canny(&weak_only, &params)).is_empty(),
            "a weak edge alone is dropped"
        );
        // the same weak step, now touching a strong vertical edge at x = 16
        let connected = image(32, 32, |x, y| {
            if x < 16 {
                0
            } else if y < 16 {
                255
            } else {
                215
            }
        });
        let pts = edges(&canny(&connected, &params));
        let weak_kept = pts
            .iter()
            .filter(|(x, y)| *x > 20 && (15..=16).contains(y))
            .count();
        assert!(
            weak_kept >= 10,
            "weak edge connected to a strong one is kept ({weak_kept} px)"
        );
        // and one pixel wide
        assert!(pts.iter().filter(|(x, _)| *x == 26).count() == 1);
    }

    #[test]
    fn softedge_is_bright_on_edges_and_falls_off_smoothly() {
        let flat = image(64, 64, |_, _| 90);
        assert!(softedge(&flat, &SoftEdgeParams::default())
            .pixels()
            .all(|p| p[0] == 0));
        let img = image(64, 64, |x, y| {
            if (16..48).contains(&x) && (16..48).contains(&y) {
                220
            } else {
                30
            }
        });
        let s = softedge(&img, &SoftEdgeParams::default());
        let v = |x, y| s.get_pixel(x, y)[0];
        assert!(
            v(16, 32) > 150 && v(47, 32) > 150,
            "edge {} / {}",
            v(16, 32),
            v(47, 32)
        );
        assert!(v(32, 32) < 20, "centre {}", v(32, 32));
        assert!(v(2, 2) < 20, "corner {}", v(2, 2));
        // soft: strength decreases step by step away from the edge, unlike canny's binary map
        let profile: Vec<u8> = (16..28).map(|x| v(x, 32)).collect();
        assert!(profile.windows(2).all(|w| w[0] >= w[1]), "{profile:?}");
        assert!(
            profile.iter().filter(|p| **p > 20 && **p < 200).count() >= 3,
            "{profile:?}"
        );
        assert_eq!(gray_to_rgb(&s).get_pixel(16, 32)[1], v(16, 32));
    }
}
