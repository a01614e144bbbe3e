//! The procedural LEGO brick-mosaic teacher: snap to a stud grid, quantize each cell to
//! a real LEGO colour, and render it as a 1x1 brick seen from above — seams, bevels, a
//! raised stud lit from the top-left with its shadow to the bottom-right, and a sheen.

use image::{Rgb, RgbImage};

#[derive(Clone, Debug, PartialEq)]
pub struct Palette {
    pub name: &'static str,
    pub colors: &'static [[u8; 3]],
}

/// Solid LEGO colours (BrickLink names in comments).
const CLASSIC: &[[u8; 3]] = &[
    [242, 243, 242], // White
    [160, 165, 169], // Light Bluish Gray
    [108, 110, 104], // Dark Bluish Gray
    [27, 42, 52],    // Black
    [201, 26, 9],    // Red
    [114, 14, 15],   // Dark Red
    [0, 85, 191],    // Blue
    [10, 52, 99],    // Dark Blue
    [90, 147, 219],  // Medium Blue
    [159, 195, 233], // Bright Light Blue
    [54, 174, 191],  // Medium Azure
    [35, 120, 65],   // Green
    [75, 151, 74],   // Bright Green
    [24, 70, 50],    // Dark Green
    [160, 188, 172], // Sand Green
    [187, 233, 11],  // Lime
    [242, 205, 55],  // Yellow
    [248, 187, 61],  // Bright Light Orange
    [254, 138, 24],  // Orange
    [169, 85, 0],    // Dark Orange
    [228, 205, 158], // Tan
    [149, 138, 115], // Dark Tan
    [88, 42, 18],    // Reddish Brown
    [53, 33, 0],     // Dark Brown
    [246, 215, 179], // Light Nougat
    [208, 145, 104], // Nougat
    [170, 125, 85],  // Medium Nougat
    [252, 151, 172], // Bright Pink
    [146, 57, 120],  // Magenta
    [129, 0, 123],   // Dark Purple
];
const GRAYSCALE: &[[u8; 3]] = &[
    [242, 243, 242],
    [160, 165, 169],
    [108, 110, 104],
    [27, 42, 52],
];

const PALETTES: &[Palette] = &[
    Palette {
        name: "lego-classic",
        colors: CLASSIC,
    },
    Palette {
        name: "lego-grayscale",
        colors: GRAYSCALE,
    },
];

pub fn palette_names() -> Vec<&'static str> {
    PALETTES.iter().map(|p| p.name).collect()
}

impl Palette {
    pub fn from_name(name: &str) -> Option<Palette> {
        PALETTES.iter().find(|p| p.name == name).cloned()
    }

    /// The palette colour nearest to `c` by the "redmean" weighted distance, a cheap
    /// perceptual approximation that needs no floating-point transcendental functions.
    pub fn nearest(&self, c: [f32; 3]) -> [u8; 3] {
        let mut best = self.colors[0];
        let mut best_d = f32::MAX;
        for &p in self.colors {
            let rm = (c[0] + p[0] as f32) / 2.0;
            let (dr, dg, db) = (c[0] - p[0] as f32, c[1] - p[1] as f32, c[2] - p[2] as f32);
            let d = (2.0 + rm / 256.0) * dr * dr
                + 4.0 * dg * dg
                + (2.0 + (255.0 - rm) / 256.0) * db * db;
            if d < best_d {
                best_d = d;
                best = p;
            }
        }
        best
    }
}

#[derive(Clone, Debug)]
pub struct BrickStyle {
    pub stud_px: u32,
    pub palette: Palette,
    /// Strength of the stud's light and shadow, 0..1.
    pub shading: f32,
    /// Darkness of the seams between bricks, 0..1.
    pub outline: f32,
}

impl Default for BrickStyle {
    fn default() -> Self {
        BrickStyle {
            stud_px: 8,
            palette: Palette {
                name: "lego-classic",
                colors: CLASSIC,
            },
            shading: 0.6,
            outline: 0.5,
        }
    }
}

fn shade(c: [u8; 3], k: f32) -> [f32; 3] {
    [c[0] as f32 * k, c[1] as f32 * k, c[2] as f32 * k]
}

/// Renders `src` as a mosaic of 1x1 LEGO bricks, `stud_px` pixels each. Deterministic.
pub fn brick_mosaic(src: &RgbImage, style: &BrickStyle) -> RgbImage {
    let (w, h) = src.dimensions();
    let s = style.stud_px.max(2);
    let mut out = RgbImage::new(w, h);
    let sf = s as f32;
    let stud_r = sf * 0.31;
    for cy in (0..h).step_by(s as usize) {
        for cx in (0..w).step_by(s as usize) {
            let (cw, ch) = (s.min(w - cx), s.min(h - cy));
            let mut sum = [0f32; 3];
            for y in cy..cy + ch {
                for x in cx..cx + cw {
                    let p = src.get_pixel(x, y).0;
                    for k in 0..3 {
                        sum[k] += p[k] as f32;
                    }
                }
            }
            let n = (cw * ch) as f32;
            let base = style.palette.nearest([sum[0] / n, sum[1] / n, sum[2] / n]);
            for y in cy..cy + ch {
                for x in cx..cx + cw {
                    let lx = (x - cx) as f32 + 0.5;
                    let ly = (y - cy) as f32 + 0.5;
                    let mut k = 1.0f32;
                    // Bevel: the brick's top face catches light at the top-left edges.
                    if lx < 1.0 || ly < 1.0 {
                        k += 0.18 * style.shading;
                    }
                    if lx > sf - 1.0 || ly > sf - 1.0 {
                        k -= 0.3 * style.shading;
                    }
                    // The stud: a disc lit from the top-left, casting a shadow down-right.
                    let (dx, dy) = (lx - sf / 2.0, ly - sf / 2.0);
                    let d = (dx * dx + dy * dy).sqrt();
                    let (sx, sy) = (dx - sf * 0.07, dy - sf * 0.07);
                    let ds = (sx * sx + sy * sy).sqrt();
                    if d <= stud_r {
                        let light = -(dx + dy) / (stud_r * 1.414);
                        k += style.shading * (0.12 + 0.22 * light);
                        // Specular sheen near the top-left of the stud.
                        let (hx, hy) = (dx + stud_r * 0.4, dy + stud_r * 0.4);
                        if (hx * hx + hy * hy).sqrt() < stud_r * 0.28 {
                            k += 0.25 * style.shading;
                        }
                        if d > stud_r - 1.0 {
                            k -= 0.15 * style.shading; // the stud's rim
                        }
                    } else if ds <= stud_r + sf * 0.05 {
                        k -= 0.28 * style.shading;
                    }
                    let mut c = shade(base, k.max(0.0));
                    // Seams between bricks.
                    if lx < 1.0 && cx > 0 || ly < 1.0 && cy > 0 {
                        c = shade(
                            [
                                c[0].min(255.0) as u8,
                                c[1].min(255.0) as u8,
                                c[2].min(255.0) as u8,
                            ],
                            1.0 - 0.6 * style.outline,
                        );
                    }
                    out.put_pixel(
                        x,
                        y,
                        Rgb([
                            c[0].clamp(0.0, 255.0) as u8,
                            c[1].clamp(0.0, 255.0) as u8,
                            c[2].clamp(0.0, 255.0) as u8,
                        ]),
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_brick_faces_use_only_palette_colours() {
        let src = crate::imaging::synthetic::synthetic_portrait(3, 0, 64);
        let out = brick_mosaic(&src, &BrickStyle::default());
        // Local (1, 4) of each 8 px brick is on its flat face: no bevel, seam or stud.
        let mut colours = std::collections::BTreeSet::new();
        for cy in (0..64).step_by(8) {
            for cx in (0..64).step_by(8) {
                let face = out.get_pixel(cx + 1, cy + 4).0;
                assert!(
                    CLASSIC.contains(&face),
                    "{face:?} at brick ({cx},{cy}) is not a LEGO colour"
                );
                colours.insert(face);
            }
        }
        assert!(
            colours.len() >= 3,
            "a portrait should need several brick colours, got {colours:?}"
        );
    }

    #[test]
    fn studs_are_lit_top_left_and_shadowed_bottom_right() {
        let src = RgbImage::from_pixel(16, 16, Rgb([201, 26, 9]));
        let out = brick_mosaic(
            &src,
            &BrickStyle {
                stud_px: 16,
                ..BrickStyle::default()
            },
        );
        let lum = |x: u32, y: u32| {
            let p = out.get_pixel(x, y).0;
            p[0] as u32 + p[1] as u32 + p[2] as u32
        };
        assert!(
            lum(6, 6) > lum(10, 10),
            "stud top-left should be brighter than its bottom-right"
        );
        assert!(
            lum(12, 12) < lum(3, 12),
            "shadow falls down-right of the stud"
        );
    }
}
