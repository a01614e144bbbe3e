//! The MediaPipe-face control map, drawn as the annotator of the MediaPipe-face ControlNet
//! (CrucibleAI/ControlNetMediaPipeFace) draws it.
//!
//! Reference: `huggingface/controlnet_aux` `mediapipe_face/mediapipe_face_common.py`
//! (`generate_annotation`): on a black canvas, MediaPipe's `draw_landmarks` draws only
//! the contour connections — face oval, left eye, left eyebrow, right eye, right
//! eyebrow, lips, in that order — as `cv2.line`s of thickness 2, no landmark dots; faces
//! whose landmark box is under 64 px on its short side are left out; the pupils
//! (landmarks 468 and 473, 4×4 squares) exist only with the 478-point refined model.
//! The colours are given as BGR-drawn tuples and the canvas is flipped BGR→RGB at the
//! end, so the RGB colours here are the reference tuples reversed.
//! The index pairs are MediaPipe's `python/solutions/face_mesh_connections.py`.

use image::{Rgb, RgbImage};

/// The reference's `min_face_size_pixels`.
pub const MIN_FACE_SIZE_PX: f32 = 64.0;
/// The reference's `f_thick`.
const THICKNESS_PX: f32 = 2.0;

/// FACEMESH_FACE_OVAL.
#[rustfmt::skip]
pub const FACE_OVAL: [[usize; 2]; 36] = [
    [10, 338], [338, 297], [297, 332], [332, 284], [284, 251], [251, 389], [389, 356],
    [356, 454], [454, 323], [323, 361], [361, 288], [288, 397], [397, 365], [365, 379],
    [379, 378], [378, 400], [400, 377], [377, 152], [152, 148], [148, 176], [176, 149],
    [149, 150], [150, 136], [136, 172], [172, 58], [58, 132], [132, 93], [93, 234],
    [234, 127], [127, 162], [162, 21], [21, 54], [54, 103], [103, 67], [67, 109], [109, 10],
];
/// FACEMESH_LEFT_EYE (the subject's left).
#[rustfmt::skip]
pub const LEFT_EYE: [[usize; 2]; 16] = [
    [263, 249], [249, 390], [390, 373], [373, 374], [374, 380], [380, 381], [381, 382],
    [382, 362], [263, 466], [466, 388], [388, 387], [387, 386], [386, 385], [385, 384],
    [384, 398], [398, 362],
];
/// FACEMESH_LEFT_EYEBROW.
#[rustfmt::skip]
pub const LEFT_EYEBROW: [[usize; 2]; 8] = [
    [276, 283], [283, 282], [282, 295], [295, 285], [300, 293], [293, 334], [334, 296],
    [296, 336],
];
/// FACEMESH_RIGHT_EYE.
#[rustfmt::skip]
pub const RIGHT_EYE: [[usize; 2]; 16] = [
    [33, 7], [7, 163], [163, 144], [144, 145], [145, 153], [153, 154], [154, 155],
    [155, 133], [33, 246], [246, 161], [161, 160], [160, 159], [159, 158], [158, 157],
    [157, 173], [173, 133],
];
/// FACEMESH_RIGHT_EYEBROW.
#[rustfmt::skip]
pub const RIGHT_EYEBROW: [[usize; 2]; 8] = [
    [46, 53], [53, 52], [52, 65], [65, 55], [70, 63], [63, 105], [105, 66], [66, 107],
];
/// FACEMESH_LIPS.
#[rustfmt::skip]
pub const LIPS: [[usize; 2]; 40] = [
    [61, 146], [146, 91], [91, 181], [181, 84], [84, 17], [17, 314], [314, 405],
    [405, 321], [321, 375], [375, 291], [61, 185], [185, 40], [40, 39], [39, 37], [37, 0],
    [0, 267], [267, 269], [269, 270], [270, 409], [409, 291], [78, 95], [95, 88], [88, 178],
    [178, 87], [87, 14], [14, 317], [317, 402], [402, 318], [318, 324], [324, 308],
    [78, 191], [191, 80], [80, 81], [81, 82], [82, 13], [13, 312], [312, 311], [311, 310],
    [310, 415], [415, 308],
];

/// RGB colours of the final map (the reference's BGR-drawn tuples, reversed).
pub const HEAD_RGB: [u8; 3] = [10, 200, 10];
pub const MOUTH_RGB: [u8; 3] = [10, 180, 10];
pub const LEFT_EYE_RGB: [u8; 3] = [10, 200, 180];
pub const LEFT_EYEBROW_RGB: [u8; 3] = [10, 220, 180];
pub const RIGHT_EYE_RGB: [u8; 3] = [180, 200, 10];
pub const RIGHT_EYEBROW_RGB: [u8; 3] = [180, 220, 10];
pub const RIGHT_IRIS_RGB: [u8; 3] = [250, 200, 10];
pub const LEFT_IRIS_RGB: [u8; 3] = [10, 200, 250];

/// The connection sets in the reference's drawing order, each with its colour.
pub fn contour_sets() -> [(&'static [[usize; 2]], [u8; 3]); 6] {
    [
        (&FACE_OVAL, HEAD_RGB),
        (&LEFT_EYE, LEFT_EYE_RGB),
        (&LEFT_EYEBROW, LEFT_EYEBROW_RGB),
        (&RIGHT_EYE, RIGHT_EYE_RGB),
        (&RIGHT_EYEBROW, RIGHT_EYEBROW_RGB),
        (&LIPS, MOUTH_RGB),
    ]
}

/// Draws the map of one face's landmarks (x, y in pixels of a `width`×`height` canvas;
/// 468 points, or 478 with the irises, whose pupils 468/473 are then drawn too).
pub fn draw_face_mesh(width: u32, height: u32, points: &[[f32; 2]]) -> RgbImage {
    let mut canvas = RgbImage::new(width, height);
    if points.len() < 468 || face_size(points) < MIN_FACE_SIZE_PX {
        return canvas;
    }
    // `_normalized_to_pixel_coordinates`: floor, and points off the canvas are dropped
    // with every connection they end.
    let pixel = |i: usize| {
        let p = points[i];
        (p[0] >= 0.0 && p[1] >= 0.0 && p[0] < width as f32 && p[1] < height as f32)
            .then(|| [p[0].floor(), p[1].floor()])
    };
    for (set, colour) in contour_sets() {
        for [a, b] in set {
            if let (Some(p), Some(q)) = (pixel(*a), pixel(*b)) {
                draw_line(&mut canvas, p, q, THICKNESS_PX, Rgb(colour));
            }
        }
    }
    // `draw_pupils(..., halfwidth=2)`: image[y-2:y+2, x-2:x+2] = colour.
    for (i, colour) in [(468usize, RIGHT_IRIS_RGB), (473, LEFT_IRIS_RGB)] {
        if let Some(p) = points.get(i).and_then(|_| pixel(i)) {
            let (x, y) = (p[0] as i64, p[1] as i64);
            for yy in (y - 2).max(0)..(y + 2).min(height as i64) {
                for xx in (x - 2).max(0)..(x + 2).min(width as i64) {
                    canvas.put_pixel(xx as u32, yy as u32, Rgb(colour));
                }
            }
        }
    }
    canvas
}

/// The short side of the landmarks' bounding box, in pixels.
fn face_size(points: &[[f32; 2]]) -> f32 {
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for p in points {
        x0 = x0.min(p[0]);
        y0 = y0.min(p[1]);
        x1 = x1.max(p[0]);
        y1 = y1.max(p[1]);
    }
    (x1 - x0).min(y1 - y0)
}

/// A line `thickness` px wide with round ends (what `cv2.line` draws for a thickness
/// over 1): every pixel whose centre lies within thickness/2 of the segment between the
/// two pixel centres.
pub(crate) fn draw_line(
    canvas: &mut RgbImage,
    p: [f32; 2],
    q: [f32; 2],
    thickness: f32,
    colour: Rgb<u8>,
) {
    let r = (thickness / 2.0).max(0.5);
    let (w, h) = (canvas.width() as i64, canvas.height() as i64);
    let x_lo = ((p[0].min(q[0]) - r).floor() as i64).max(0);
    let x_hi = ((p[0].max(q[0]) + r).ceil() as i64).min(w - 1);
    let y_lo = ((p[1].min(q[1]) - r).floor() as i64).max(0);
    let y_hi = ((p[1].max(q[1]) + r).ceil() as i64).min(h - 1);
    let (dx, dy) = (q[0] - p[0], q[1] - p[1]);
    let len2 = dx * dx + dy * dy;
    for y in y_lo..=y_hi {
        for x in x_lo..=x_hi {
            let (px, py) = (x as f32 - p[0], y as f32 - p[1]);
            let t = if len2 > 0.0 {
                ((px * dx + py * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (ex, ey) = (px - t * dx, py - t * dy);
            if ex * ex + ey * ey <= r * r {
                canvas.put_pixel(x as u32, y as u32, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 468 points: the oval on a circle, each other contour set's points on its own
    /// horizontal line, the rest in a corner.
    fn synthetic_face() -> Vec<[f32; 2]> {
        let mut pts = vec![[20.0, 20.0]; 468];
        // The oval: around a circle of radius 80 centred at (110, 110).
        for (k, [a, _]) in FACE_OVAL.iter().enumerate() {
            let t = k as f32 / FACE_OVAL.len() as f32 * std::f32::consts::TAU;
            pts[*a] = [110.0 + 80.0 * t.cos(), 110.0 + 80.0 * t.sin()];
        }
        // The other sets on their own rows, points spread along x.
        let rows: [(&[[usize; 2]], f32); 5] = [
            (&LEFT_EYE, 90.0),
            (&LEFT_EYEBROW, 70.0),
            (&RIGHT_EYE, 100.0),
            (&RIGHT_EYEBROW, 60.0),
            (&LIPS, 150.0),
        ];
        for (set, y) in rows {
            let mut ids: Vec<usize> = set.iter().flatten().copied().collect();
            ids.sort();
            ids.dedup();
            for (k, i) in ids.iter().enumerate() {
                pts[*i] = [60.0 + k as f32 * 4.0, y];
            }
        }
        pts
    }

    #[test]
    fn contours_are_drawn_in_the_reference_colours_on_black() {
        let img = draw_face_mesh(224, 224, &synthetic_face());
        assert_eq!(img.get_pixel(5, 5).0, [0, 0, 0], "background black");
        assert_eq!(
            img.get_pixel(190, 110).0,
            HEAD_RGB,
            "the oval's rightmost point"
        );
        assert_eq!(img.get_pixel(64, 150).0, MOUTH_RGB, "lips");
        assert_eq!(img.get_pixel(64, 90).0, LEFT_EYE_RGB, "left eye");
        assert_eq!(img.get_pixel(64, 70).0, LEFT_EYEBROW_RGB, "left eyebrow");
        assert_eq!(img.get_pixel(64, 100).0, RIGHT_EYE_RGB, "right eye");
        assert_eq!(img.get_pixel(64, 60).0, RIGHT_EYEBROW_RGB, "right eyebrow");
        // No landmark dots: a point used by no contour leaves no mark.
        assert_eq!(img.get_pixel(20, 20).0, [0, 0, 0]);
        // Thickness 2: one pixel either side of a horizontal line, not three.
        assert_eq!(img.get_pixel(64, 151).0, MOUTH_RGB);
        assert_eq!(img.get_pixel(64, 152).0, [0, 0, 0]);
    }

    #[test]
    fn the_reference_colours_are_its_bgr_tuples_reversed() {
        // mediapipe_face_common.py: left_eye_draw color=(180, 200, 10) drawn into a
        // BGR canvas, then `reverse_channels`.
        assert_eq!(LEFT_EYE_RGB, [10, 200, 180]);
        assert_eq!(RIGHT_EYE_RGB, [180, 200, 10]);
        assert_eq!(
            contour_sets().iter().map(|(s, _)| s.len()).sum::<usize>(),
            124
        );
    }

    #[test]
    fn a_small_face_or_too_few_points_draw_nothing() {
        let small: Vec<[f32; 2]> = synthetic_face()
            .iter()
            .map(|p| [p[0] / 4.0, p[1] / 4.0])
            .collect();
        let img = draw_face_mesh(224, 224, &small);
        assert!(
            img.pixels().all(|p| p.0 == [0, 0, 0]),
            "a 45 px face is under 64 px"
        );
        let img = draw_face_mesh(224, 224, &synthetic_face()[..100]);
        assert!(img.pixels().all(|p| p.0 == [0, 0, 0]));
    }

    #[test]
    fn pupils_are_drawn_only_with_the_refined_points() {
        let mut pts = synthetic_face();
        pts.extend(std::iter::repeat_n([0.0, 0.0], 10));
        pts[468] = [100.0, 125.0];
        pts[473] = [150.0, 125.0];
        let img = draw_face_mesh(224, 224, &pts);
        assert_eq!(img.get_pixel(99, 124).0, RIGHT_IRIS_RGB);
        assert_eq!(img.get_pixel(148, 123).0, LEFT_IRIS_RGB);
        assert_eq!(
            img.get_pixel(102, 125).0,
            [0, 0, 0],
            "halfwidth 2: x-2..x+2, end excluded"
        );
        let plain = draw_face_mesh(224, 224, &synthetic_face());
        assert_eq!(
            plain.get_pixel(99, 124).0,
            [0, 0, 0],
            "468 points: no pupils"
        );
    }
}
