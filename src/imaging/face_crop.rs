//! The face crop's geometry: a square box around a detected face, turned so the eyes are
//! level, padded by a margin, and resampled to the recipe's size (bilinear, with
//! supersampling when the box is much larger than the output). Also the landmarks of
//! one item, mapped into the crop's pixels, as the JSON the control maps read.

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

/// A square, rotated box in source pixels: `center`, side length `side`, and the angle
/// (radians, image coordinates: y down) of its x axis, i.e. of the line from the face's
/// right eye (image left) to its left eye.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropBox {
    pub center: [f32; 2],
    pub side: f32,
    pub angle_rad: f32,
}

impl CropBox {
    /// The box around a face: x axis along the eyes (`right_eye` → `left_eye`, the
    /// subject's right and left), centred on the perpendicular through the eyes' midpoint
    /// at the height of the detection box's centre, its side the detection box's longer
    /// side times `1 + 2 * margin`.
    pub fn around_face(
        bbox: [f32; 4],
        right_eye: [f32; 2],
        left_eye: [f32; 2],
        margin: f32,
    ) -> CropBox {
        let (ex, ey) = (left_eye[0] - right_eye[0], left_eye[1] - right_eye[1]);
        let angle_rad = if ex == 0.0 && ey == 0.0 {
            0.0
        } else {
            ey.atan2(ex)
        };
        let (_, v) = axes(angle_rad);
        let mid = [
            (right_eye[0] + left_eye[0]) / 2.0,
            (right_eye[1] + left_eye[1]) / 2.0,
        ];
        let bc = [(bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0];
        // Keep only the box centre's offset along the face's vertical axis: the eyes stay
        // centred left to right.
        let down = (bc[0] - mid[0]) * v[0] + (bc[1] - mid[1]) * v[1];
        let center = [mid[0] + v[0] * down, mid[1] + v[1] * down];
        let face = (bbox[2] - bbox[0]).max(bbox[3] - bbox[1]).max(1.0);
        CropBox {
            center,
            side: face * (1.0 + 2.0 * margin),
            angle_rad,
        }
    }

    /// A source point in the pixels of a `size`×`size` crop of this box.
    pub fn to_crop(&self, p: [f32; 2], size: u32) -> [f32; 2] {
        let (u, v) = axes(self.angle_rad);
        let (dx, dy) = (p[0] - self.center[0], p[1] - self.center[1]);
        let s = size as f32 / self.side;
        [
            (dx * u[0] + dy * u[1]) * s + size as f32 / 2.0,
            (dx * v[0] + dy * v[1]) * s + size as f32 / 2.0,
        ]
    }

    /// A crop pixel position back in source pixels.
    pub fn to_source(&self, q: [f32; 2], size: u32) -> [f32; 2] {
        let (u, v) = axes(self.angle_rad);
        let s = self.side / size as f32;
        let (a, b) = (
            (q[0] - size as f32 / 2.0) * s,
            (q[1] - size as f32 / 2.0) * s,
        );
        [
            self.center[0] + a * u[0] + b * v[0],
            self.center[1] + a * u[1] + b * v[1],
        ]
    }

    /// Source pixels per crop pixel.
    pub fn scale(&self, size: u32) -> f32 {
        self.side / size as f32
    }
}

/// The box's x axis (along the eyes) and y axis (down the face), as unit vectors.
fn axes(angle: f32) -> ([f32; 2], [f32; 2]) {
    let (s, c) = angle.sin_cos();
    ([c, s], [-s, c])
}

/// Resamples `bx` of `src` into a `size`×`size` image. Each output pixel averages
/// k×k bilinear samples spread over its footprint in the source (k = the scale, rounded
/// up, at most 4), so a large face shrunk to 256 px does not alias. Samples outside the
/// source take the nearest edge pixel.
pub fn crop_rotated(src: &RgbImage, bx: &CropBox, size: u32) -> RgbImage {
    let k = (bx.scale(size).ceil() as u32).clamp(1, 4);
    let mut out = RgbImage::new(size, size);
    let inv = 1.0 / (k * k) as f32;
    for y in 0..size {
        for x in 0..size {
            let mut acc = [0f32; 3];
            for sy in 0..k {
                for sx in 0..k {
                    // Sub-sample positions inside the output pixel, in crop pixels.
                    let q = [
                        x as f32 + (sx as f32 + 0.5) / k as f32,
                        y as f32 + (sy as f32 + 0.5) / k as f32,
                    ];
                    let p = bx.to_source(q, size);
                    let c = bilinear(src, p[0] - 0.5, p[1] - 0.5);
                    for (a, v) in acc.iter_mut().zip(c) {
                        *a += v;
                    }
                }
            }
            out.put_pixel(
                x,
                y,
                Rgb(acc.map(|a| (a * inv).round().clamp(0.0, 255.0) as u8)),
            );
        }
    }
    out
}

/// The colour at (x, y) in pixel-index coordinates (pixel i's centre is at i), edges
/// clamped.
fn bilinear(img: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: i64, yi: i64| {
        img.get_pixel(xi.clamp(0, w - 1) as u32, yi.clamp(0, h - 1) as u32)
            .0
    };
    let (xi, yi) = (x0 as i64, y0 as i64);
    let (a, b, c, d) = (
        at(xi, yi),
        at(xi + 1, yi),
        at(xi, yi + 1),
        at(xi + 1, yi + 1),
    );
    let mut out = [0f32; 3];
    for ch in 0..3 {
        let top = a[ch] as f32 * (1.0 - fx) + b[ch] as f32 * fx;
        let bottom = c[ch] as f32 * (1.0 - fx) + d[ch] as f32 * fx;
        out[ch] = top * (1.0 - fy) + bottom * fy;
    }
    out
}

/// What the face crop saves beside its image (`landmarks.json`): the box in the source,
/// and every landmark in the crop's pixels, so each control map reads them instead of
/// running a model again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropLandmarks {
    /// The crop's side in pixels.
    pub size: u32,
    /// The source image's size in pixels.
    pub source_size: [u32; 2],
    /// The crop box in source pixels.
    #[serde(rename = "box")]
    pub crop_box: CropBox,
    /// The face detector's score and box corners (x0, y0, x1, y1 in crop pixels; the box
    /// is axis-aligned in the source, so these are two of its rotated corners).
    pub detection_score: f32,
    pub detection_box: [f32; 4],
    /// MediaPipe's six face keypoints: right eye, left eye, nose tip, mouth centre, right
    /// ear tragion, left ear tragion (the subject's right/left).
    pub keypoints: Vec<[f32; 2]>,
    /// The 468 face-mesh points: x, y in crop pixels, z on the same scale.
    pub face_mesh: Vec<[f32; 3]>,
    /// The 33 pose points (x, y, z in crop pixels, visibility), when a person was found.
    pub pose: Option<Vec<[f32; 4]>>,
}

impl CropLandmarks {
    /// Maps landmarks found in the source into `bx`'s crop of side `size`.
    #[allow(clippy::too_many_arguments)]
    pub fn in_crop(
        bx: &CropBox,
        size: u32,
        source_size: [u32; 2],
        score: f32,
        bbox: [f32; 4],
        keypoints: &[[f32; 2]],
        mesh: &[[f32; 3]],
        pose: Option<&[[f32; 4]]>,
    ) -> CropLandmarks {
        let s = 1.0 / bx.scale(size);
        let a = bx.to_crop([bbox[0], bbox[1]], size);
        let b = bx.to_crop([bbox[2], bbox[3]], size);
        CropLandmarks {
            size,
            source_size,
            crop_box: *bx,
            detection_score: score,
            detection_box: [a[0], a[1], b[0], b[1]],
            keypoints: keypoints.iter().map(|p| bx.to_crop(*p, size)).collect(),
            face_mesh: mesh
                .iter()
                .map(|p| {
                    let q = bx.to_crop([p[0], p[1]], size);
                    [q[0], q[1], p[2] * s]
                })
                .collect(),
            pose: pose.map(|pts| {
                pts.iter()
                    .map(|p| {
                        let q = bx.to_crop([p[0], p[1]], size);
                        [q[0], q[1], p[2] * s, p[3]]
                    })
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grey picture with a red dot (the subject's right eye, image left) and a blue
    /// dot (left eye), their midpoint at `mid`, the eye line turned by `deg` degrees.
    fn tilted_eyes(deg: f32, mid: [f32; 2], half_gap: f32) -> (RgbImage, [f32; 2], [f32; 2]) {
        let (s, c) = deg.to_radians().sin_cos();
        let right = [mid[0] - c * half_gap, mid[1] - s * half_gap];
        let left = [mid[0] + c * half_gap, mid[1] + s * half_gap];
        let mut img = RgbImage::from_pixel(400, 300, Rgb([128, 128, 128]));
        for (p, colour) in [(right, [255, 0, 0]), (left, [0, 0, 255])] {
            for y in 0..300 {
                for x in 0..400 {
                    let (dx, dy) = (x as f32 + 0.5 - p[0], y as f32 + 0.5 - p[1]);
                    if dx * dx + dy * dy <= 36.0 {
                        img.put_pixel(x, y, Rgb(colour));
                    }
                }
            }
        }
        (img, right, left)
    }

    /// The centroid of the pixels close to `colour`.
    fn centroid(img: &RgbImage, colour: [u8; 3]) -> [f32; 2] {
        let (mut sx, mut sy, mut n) = (0f32, 0f32, 0f32);
        for (x, y, p) in img.enumerate_pixels() {
            let d: i32 =
                p.0.iter()
                    .zip(colour)
                    .map(|(a, b)| (*a as i32 - b as i32).abs())
                    .sum();
            if d < 60 {
                sx += x as f32 + 0.5;
                sy += y as f32 + 0.5;
                n += 1.0;
            }
        }
        assert!(n > 0.0, "colour {colour:?} not found");
        [sx / n, sy / n]
    }

    #[test]
    fn a_face_turned_by_20_degrees_comes_out_level_and_centred() {
        let (img, right, left) = tilted_eyes(20.0, [210.0, 140.0], 30.0);
        // A detection box around the eyes, a bit below them (as a face box is).
        let bbox = [160.0, 100.0, 260.0, 210.0];
        let bx = CropBox::around_face(bbox, right, left, 0.25);
        assert!((bx.angle_rad.to_degrees() - 20.0).abs() < 1e-3);
        let size = 128;
        let crop = crop_rotated(&img, &bx, size);
        let r = centroid(&crop, [255, 0, 0]);
        let l = centroid(&crop, [0, 0, 255]);
        assert!((r[1] - l[1]).abs() < 0.5, "eyes level: {r:?} {l:?}");
        assert!(r[0] < l[0], "right eye on the image's left");
        let mid_x = (r[0] + l[0]) / 2.0;
        assert!(
            (mid_x - size as f32 / 2.0).abs() < 0.5,
            "eyes centred: {mid_x}"
        );
        // The eye gap scales with the box: 60 source px of a 110*1.5 px box.
        let gap = l[0] - r[0];
        let want = 60.0 * size as f32 / bx.side;
        assert!((gap - want).abs() < 1.0, "gap {gap}, want {want}");
        // The mapping agrees with where the pixels went.
        let mapped = bx.to_crop(right, size);
        assert!(
            (mapped[0] - r[0]).abs() < 0.5 && (mapped[1] - r[1]).abs() < 0.5,
            "{mapped:?} vs {r:?}"
        );
    }

    #[test]
    fn to_crop_and_to_source_are_inverse() {
        let bx = CropBox {
            center: [100.0, 80.0],
            side: 150.0,
            angle_rad: 0.7,
        };
        let p = [123.0, 45.0];
        let q = bx.to_source(bx.to_crop(p, 256), 256);
        assert!((p[0] - q[0]).abs() < 1e-3 && (p[1] - q[1]).abs() < 1e-3);
        assert_eq!(bx.to_crop(bx.center, 256), [128.0, 128.0]);
    }

    #[test]
    fn a_level_box_is_a_plain_scaled_crop() {
        // A horizontal gradient: a level 2x crop of its middle keeps the gradient's
        // direction and halves nothing else.
        let src = RgbImage::from_fn(64, 64, |x, _| Rgb([(x * 4) as u8, 0, 0]));
        let bx = CropBox {
            center: [32.0, 32.0],
            side: 32.0,
            angle_rad: 0.0,
        };
        let out = crop_rotated(&src, &bx, 64);
        // Output x covers source 16..48: crop pixel 0 samples source x 16.25 → 16 px
        // index 15.75, so red ≈ 63.
        let first = out.get_pixel(0, 32).0[0] as i32;
        let last = out.get_pixel(63, 32).0[0] as i32;
        assert!((first - 63).abs() <= 1, "{first}");
        assert!((last - 189).abs() <= 1, "{last}");
        assert_eq!(out.get_pixel(10, 0), out.get_pixel(10, 63), "rows alike");
    }

    #[test]
    fn landmarks_follow_the_box_into_the_crop() {
        let bx = CropBox::around_face([0.0, 0.0, 100.0, 100.0], [30.0, 40.0], [70.0, 40.0], 0.5);
        let lm = CropLandmarks::in_crop(
            &bx,
            200,
            [100, 100],
            0.9,
            [0.0, 0.0, 100.0, 100.0],
            &[[30.0, 40.0], [70.0, 40.0]],
            &[[50.0, 50.0, 10.0]],
            Some(&[[50.0, 50.0, 0.0, 0.8]]),
        );
        // Level box of side 200 centred on (50, 50): one source px is one crop px.
        assert_eq!(lm.keypoints[0], [80.0, 90.0]);
        assert_eq!(lm.face_mesh[0], [100.0, 100.0, 10.0]);
        assert_eq!(lm.pose.as_ref().unwrap()[0], [100.0, 100.0, 0.0, 0.8]);
        let text = serde_json::to_string(&lm).unwrap();
        assert_eq!(serde_json::from_str::<CropLandmarks>(&text).unwrap(), lm);
    }
}
