//! Deterministic portrait-like test images: background, shoulders, head, hair, eyes,
//! brows, nose, mouth, sometimes glasses or a beard, directional light and grain —
//! all varied by (seed, index). Only +, -, *, / and sqrt on f32, so every platform
//! draws the same bytes.

use image::{Rgb, RgbImage};

/// splitmix64: tiny, fast and identical everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn chance(&mut self, p: f32) -> bool {
        self.range(0.0, 1.0) < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn color(&mut self) -> [f32; 3] {
        [
            self.range(20.0, 235.0),
            self.range(20.0, 235.0),
            self.range(20.0, 235.0),
        ]
    }
}

const SKIN: &[[f32; 3]] = &[
    [255.0, 219.0, 172.0],
    [241.0, 194.0, 125.0],
    [224.0, 172.0, 105.0],
    [198.0, 134.0, 66.0],
    [141.0, 85.0, 36.0],
    [92.0, 51.0, 23.0],
    [255.0, 205.0, 180.0],
];
const HAIR: &[[f32; 3]] = &[
    [20.0, 16.0, 14.0],
    [60.0, 40.0, 25.0],
    [110.0, 70.0, 40.0],
    [200.0, 160.0, 90.0],
    [165.0, 60.0, 30.0],
    [150.0, 150.0, 150.0],
    [230.0, 225.0, 210.0],
];

#[derive(Clone, Copy)]
struct Ellipse {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
}

impl Ellipse {
    /// Coverage in [0, 1] with an anti-aliased rim `edge` wide (in image units).
    fn cover(&self, u: f32, v: f32, edge: f32) -> f32 {
        let dx = (u - self.cx) / self.rx;
        let dy = (v - self.cy) / self.ry;
        let f = (dx * dx + dy * dy).sqrt();
        ((1.0 - f) * self.rx.min(self.ry) / edge + 0.5).clamp(0.0, 1.0)
    }
    /// Coverage of the ring between f = 1 - t and f = 1.
    fn ring(&self, u: f32, v: f32, t: f32, edge: f32) -> f32 {
        let inner = Ellipse {
            rx: self.rx * (1.0 - t),
            ry: self.ry * (1.0 - t),
            ..*self
        };
        (self.cover(u, v, edge) - inner.cover(u, v, edge)).max(0.0)
    }
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn scale(c: [f32; 3], k: f32) -> [f32; 3] {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// One synthetic portrait of `size_px`², fully determined by (seed, index).
pub fn synthetic_portrait(seed: u64, index: u64, size_px: u32) -> RgbImage {
    let mut r = Rng::new(seed, index);
    let bg_top = r.color();
    let bg_bottom = r.color();
    let bg_disc = Ellipse {
        cx: r.range(0.0, 1.0),
        cy: r.range(0.0, 0.6),
        rx: r.range(0.1, 0.35),
        ry: r.range(0.1, 0.35),
    };
    let bg_disc_color = r.color();
    let stripes = r.chance(0.3);
    let skin = r.pick(SKIN);
    let hair_color = r.pick(HAIR);
    let hair_style = r.next() % 3; // 0 short cap, 1 long, 2 none
    let clothes = r.color();
    let cx = 0.5 + r.range(-0.06, 0.06);
    let cy = 0.46 + r.range(-0.04, 0.04);
    let head = Ellipse {
        cx,
        cy,
        rx: r.range(0.19, 0.24),
        ry: r.range(0.25, 0.3),
    };
    let neck = Ellipse {
        cx,
        cy: cy + head.ry + 0.02,
        rx: head.rx * 0.45,
        ry: 0.12,
    };
    let body = Ellipse {
        cx: cx + r.range(-0.03, 0.03),
        cy: 1.12,
        rx: r.range(0.38, 0.5),
        ry: 0.34,
    };
    let hair_back = Ellipse {
        cx,
        cy: cy + 0.12,
        rx: head.rx * 1.25,
        ry: head.ry * 1.3,
    };
    let hair_cap = Ellipse {
        cx,
        cy: cy - head.ry * 0.18,
        rx: head.rx * 1.08,
        ry: head.ry * 0.92,
    };
    let eye_dx = head.rx * r.range(0.36, 0.46);
    let eye_y = cy - head.ry * r.range(0.05, 0.15);
    let eye_r = head.rx * r.range(0.14, 0.19);
    let iris = r.pick(&[
        [60.0, 40.0, 20.0],
        [40.0, 90.0, 150.0],
        [50.0, 110.0, 60.0],
        [30.0, 30.0, 30.0],
    ]);
    let look = r.range(-0.3, 0.3) * eye_r;
    let mouth = Ellipse {
        cx,
        cy: cy + head.ry * r.range(0.45, 0.58),
        rx: head.rx * r.range(0.28, 0.42),
        ry: head.ry * r.range(0.05, 0.1),
    };
    let nose = Ellipse {
        cx,
        cy: cy + head.ry * 0.22,
        rx: head.rx * 0.1,
        ry: head.ry * 0.14,
    };
    let glasses = r.chance(0.3);
    let glasses_color = r.pick(&[
        [15.0, 15.0, 15.0],
        [120.0, 20.0, 20.0],
        [160.0, 130.0, 60.0],
    ]);
    let beard = r.chance(0.25);
    let (lx, ly) = (r.range(-1.0, 1.0), r.range(-1.0, 0.3));
    let light_len = (lx * lx + ly * ly).sqrt().max(0.001);
    let (lx, ly) = (lx / light_len, ly / light_len);
    let light_strength = r.range(0.1, 0.35);
    let grain_seed = r.next();

    let s = size_px as f32;
    let edge = 1.0 / s;
    let mut img = RgbImage::new(size_px, size_px);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let u = (x as f32 + 0.5) / s;
        let v = (y as f32 + 0.5) / s;
        let mut c = mix(bg_top, bg_bottom, v);
        c = mix(c, bg_disc_color, bg_disc.cover(u, v, edge) * 0.8);
        if stripes && ((u * 8.0 + v * 3.0) as i32) % 2 == 0 {
            c = scale(c, 0.85);
        }
        if hair_style == 1 {
            c = mix(c, hair_color, hair_back.cover(u, v, edge));
        }
        c = mix(c, scale(skin, 0.85), neck.cover(u, v, edge));
        c = mix(c, clothes, body.cover(u, v, edge));
        c = mix(c, scale(clothes, 0.7), body.ring(u, v, 0.06, edge));
        // Face, shaded as a dome lit from (lx, ly).
        let face = head.cover(u, v, edge);
        if face > 0.0 {
            let nx = (u - head.cx) / head.rx;
            let ny = (v - head.cy) / head.ry;
            let shade = 1.0 + light_strength * (nx * lx + ny * ly) - 0.12 * (nx * nx + ny * ny);
            c = mix(c, scale(skin, shade), face);
        }
        if beard {
            let b = Ellipse {
                cx,
                cy: cy + head.ry * 0.55,
                rx: head.rx * 0.9,
                ry: head.ry * 0.5,
            };
            let below = ((v - (cy + head.ry * 0.25)) / edge).clamp(0.0, 1.0);
            c = mix(c, hair_color, b.cover(u, v, edge) * face * below * 0.95);
        }
        if hair_style != 2 {
            let above = ((eye_y - eye_r * 2.2 - v) / (edge * 2.0) + 0.5).clamp(0.0, 1.0);
            c = mix(c, hair_color, hair_cap.cover(u, v, edge) * above);
        }
        c = mix(c, scale(skin, 0.8), nose.cover(u, v, edge) * 0.6);
        c = mix(c, [150.0, 40.0, 50.0], mouth.cover(u, v, edge));
        for side in [-1.0f32, 1.0] {
            let ex = cx + side * eye_dx;
            let white = Ellipse {
                cx: ex,
                cy: eye_y,
                rx: eye_r * 1.3,
                ry: eye_r * 0.8,
            };
            let pupil = Ellipse {
                cx: ex + look,
                cy: eye_y,
                rx: eye_r * 0.55,
                ry: eye_r * 0.55,
            };
            let brow = Ellipse {
                cx: ex,
                cy: eye_y - eye_r * 1.9,
                rx: eye_r * 1.5,
                ry: eye_r * 0.28,
            };
            c = mix(c, [245.0, 245.0, 240.0], white.cover(u, v, edge));
            c = mix(c, iris, pupil.cover(u, v, edge));
            c = mix(
                c,
                [10.0, 10.0, 10.0],
                Ellipse {
                    rx: eye_r * 0.25,
                    ry: eye_r * 0.25,
                    ..pupil
                }
                .cover(u, v, edge),
            );
            c = mix(c, scale(hair_color, 0.8), brow.cover(u, v, edge));
            if glasses {
                let lens = Ellipse {
                    cx: ex,
                    cy: eye_y,
                    rx: eye_r * 2.1,
                    ry: eye_r * 1.7,
                };
                c = mix(c, glasses_color, lens.ring(u, v, 0.18, edge));
            }
        }
        if glasses {
            let bridge = Ellipse {
                cx,
                cy: eye_y,
                rx: eye_dx - eye_r * 2.0,
                ry: eye_r * 0.18,
            };
            c = mix(c, glasses_color, bridge.cover(u, v, edge));
        }
        // Sensor grain from a per-pixel hash.
        let mut h = Rng(grain_seed ^ ((y as u64) << 32 | x as u64));
        let g = h.range(-5.0, 5.0);
        *px = Rgb([
            (c[0] + g).clamp(0.0, 255.0) as u8,
            (c[1] + g).clamp(0.0, 255.0) as u8,
            (c[2] + g).clamp(0.0, 255.0) as u8,
        ]);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_bytes_and_items_differ() {
        let a = synthetic_portrait(1, 0, 64);
        assert_eq!(a, synthetic_portrait(1, 0, 64));
        let b = synthetic_portrait(1, 1, 64);
        let diff: f64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / a.as_raw().len() as f64;
        assert!(
            diff > 10.0,
            "items should differ clearly, mean abs diff {diff}"
        );
    }
}
