//! OpenPose-style body control maps, drawn as the SD 1.5 `control_v11p_sd15_openpose`
//! ControlNet's annotator draws them.
//!
//! Reference: `huggingface/controlnet_aux`, `src/controlnet_aux/open_pose/util.py`
//! (`draw_bodypose`, `draw_facepose`), the same code as
//! `lllyasviel/ControlNet-v1-1-nightly` `annotator/openpose/util.py`: on a black canvas
//! each of the 17 limbs is `cv2.ellipse2Poly(centre, (len/2, stickwidth=4), angle, 0,
//! 360, 1)` filled with `fillConvexPoly` in the limb's colour, the whole canvas is then
//! scaled by 0.6, and the 18 keypoints are drawn on top as filled circles of radius 4 in
//! full colour. Face points are white filled circles of radius 3.

use image::{Rgb, RgbImage};

/// MediaPipe pose landmarks with a visibility below this are treated as missing
/// (MediaPipe's own drawing utilities use the same 0.5 cut-off).
pub const MIN_VISIBILITY: f32 = 0.5;

/// The annotator's limbs as 1-based pairs of COCO-18 keypoints (its `limbSeq`); only the
/// first 17 are drawn (the reference's last two, ear–shoulder, are never used).
const LIMB_SEQ: [[usize; 2]; 17] = [
    [2, 3],
    [2, 6],
    [3, 4],
    [4, 5],
    [6, 7],
    [7, 8],
    [2, 9],
    [9, 10],
    [10, 11],
    [2, 12],
    [12, 13],
    [13, 14],
    [2, 1],
    [1, 15],
    [15, 17],
    [1, 16],
    [16, 18],
];

/// The annotator's colours: limb `i` and keypoint `i` both use `COLORS[i]` (RGB, as the
/// reference canvas is handed on as RGB).
pub const COLORS: [[u8; 3]; 18] = [
    [255, 0, 0],
    [255, 85, 0],
    [255, 170, 0],
    [255, 255, 0],
    [170, 255, 0],
    [85, 255, 0],
    [0, 255, 0],
    [0, 255, 85],
    [0, 255, 170],
    [0, 255, 255],
    [0, 170, 255],
    [0, 85, 255],
    [0, 0, 255],
    [85, 0, 255],
    [170, 0, 255],
    [255, 0, 255],
    [255, 0, 170],
    [255, 0, 85],
];

const STICK_WIDTH_PX: i32 = 4;
const KEYPOINT_RADIUS_PX: i32 = 4;
const FACE_POINT_RADIUS_PX: i32 = 3;

/// MediaPipe pose landmark index of each COCO-18 keypoint (None: the neck, which is the
/// shoulders' midpoint). MediaPipe's indices: 0 nose, 2 left eye, 5 right eye, 7 left ear,
/// 8 right ear, 11/12 left/right shoulder, 13/14 elbows, 15/16 wrists, 23/24 hips,
/// 25/26 knees, 27/28 ankles (left first).
const COCO18_FROM_MEDIAPIPE: [Option<usize>; 18] = [
    Some(0),  // 0 nose
    None,     // 1 neck
    Some(12), // 2 right shoulder
    Some(14), // 3 right elbow
    Some(16), // 4 right wrist
    Some(11), // 5 left shoulder
    Some(13), // 6 left elbow
    Some(15), // 7 left wrist
    Some(24), // 8 right hip
    Some(26), // 9 right knee
    Some(28), // 10 right ankle
    Some(23), // 11 left hip
    Some(25), // 12 left knee
    Some(27), // 13 left ankle
    Some(5),  // 14 right eye
    Some(2),  // 15 left eye
    Some(8),  // 16 right ear
    Some(7),  // 17 left ear
];

/// MediaPipe's 33 pose landmarks (x, y in pixels, visibility) → OpenPose COCO-18 body
/// keypoints in OpenPose's order. A landmark below [`MIN_VISIBILITY`] (or absent, when
/// fewer than 33 are given) is None; the neck exists only when both shoulders do.
pub fn coco18_from_mediapipe_pose(points: &[[f32; 3]]) -> [Option<[f32; 2]>; 18] {
    let visible = |i: usize| {
        points
            .get(i)
            .filter(|p| p[2] >= MIN_VISIBILITY)
            .map(|p| [p[0], p[1]])
    };
    let mut body = [None; 18];
    for (k, source) in COCO18_FROM_MEDIAPIPE.iter().enumerate() {
        body[k] = source.and_then(visible);
    }
    if let (Some(l), Some(r)) = (visible(11), visible(12)) {
        body[1] = Some([(l[0] + r[0]) / 2.0, (l[1] + r[1]) / 2.0]);
    }
    body
}

/// The 68 dlib/OpenPose face points as MediaPipe face-mesh indices (a point given by two
/// indices is their midpoint). There is no official table: this is the hand-made
/// correspondence of Peizhi Yan's `Mediapipe_2_Dlib_Landmarks` (2024, `mp2dlib.py`),
/// in dlib order: jaw 0-16, right brow 17-21, left brow 22-26, nose 27-35, right eye
/// 36-41, left eye 42-47, outer lips 48-59, inner lips 60-67.
#[rustfmt::skip]
const DLIB68_FROM_MEDIAPIPE: [[usize; 2]; 68] = [
    [127, 127], [234, 234], [93, 93], [132, 58], [58, 172], [136, 136], [150, 150],
    [176, 176], [152, 152], [400, 400], [379, 379], [365, 365], [397, 288], [361, 361],
    [323, 323], [454, 454], [356, 356],
    [70, 70], [63, 63], [105, 105], [66, 66], [107, 107],
    [336, 336], [296, 296], [334, 334], [293, 293], [300, 300],
    [168, 6], [197, 195], [5, 5], [4, 4], [75, 75], [97, 97], [2, 2], [326, 326], [305, 305],
    [33, 33], [160, 160], [158, 158], [133, 133], [153, 153], [144, 144],
    [362, 362], [385, 385], [387, 387], [263, 263], [373, 373], [380, 380],
    [61, 61], [39, 39], [37, 37], [0, 0], [267, 267], [269, 269], [291, 291], [321, 321],
    [314, 314], [17, 17], [84, 84], [91, 91],
    [78, 78], [82, 82], [13, 13], [312, 312], [308, 308], [317, 317], [14, 14], [87, 87],
];

/// MediaPipe's 468 face-mesh points (pixels) → the 68 face points the OpenPose map draws
/// (empty when fewer than 468 are given).
pub fn dlib68_from_mediapipe_mesh(points: &[[f32; 3]]) -> Vec<[f32; 2]> {
    if points.len() < 468 {
        return Vec::new();
    }
    DLIB68_FROM_MEDIAPIPE
        .iter()
        .map(|[a, b]| {
            let (p, q) = (points[*a], points[*b]);
            [(p[0] + q[0]) / 2.0, (p[1] + q[1]) / 2.0]
        })
        .collect()
}

/// Draws the OpenPose control map: black canvas, limbs at 0.6 of their colour, keypoints
/// in full colour, then `face` points (already in the 68/70-point dlib order the
/// reference uses) as white dots. Coordinates are pixels.
pub fn draw_openpose(
    width: u32,
    height: u32,
    body: &[Option<[f32; 2]>; 18],
    face: Option<&[[f32; 2]]>,
) -> RgbImage {
    let mut canvas = RgbImage::new(width, height);
    for (i, [a, b]) in LIMB_SEQ.iter().enumerate() {
        let (Some(p), Some(q)) = (body[a - 1], body[b - 1]) else {
            continue;
        };
        // The reference's naming: X is the row (y) coordinate, Y the column (x).
        let (dx, dy) = (p[0] - q[0], p[1] - q[1]);
        let length = (dx * dx + dy * dy).sqrt();
        let angle_deg = dy.atan2(dx).to_degrees() as i32;
        let centre = [((p[0] + q[0]) / 2.0) as i32, ((p[1] + q[1]) / 2.0) as i32];
        let polygon = ellipse_polygon(centre, [(length / 2.0) as i32, STICK_WIDTH_PX], angle_deg);
        fill_convex_polygon(&mut canvas, &polygon, Rgb(COLORS[i]));
    }
    // `(canvas * 0.6).astype(np.uint8)`: truncation, like numpy's cast.
    for px in canvas.pixels_mut() {
        for c in px.0.iter_mut() {
            *c = (*c as f32 * 0.6) as u8;
        }
    }
    for (i, point) in body.iter().enumerate() {
        if let Some(p) = point {
            fill_circle(
                &mut canvas,
                [p[0] as i32, p[1] as i32],
                KEYPOINT_RADIUS_PX,
                Rgb(COLORS[i]),
            );
        }
    }
    for p in face.unwrap_or(&[]) {
        let (x, y) = (p[0] as i32, p[1] as i32);
        // The reference skips points at the origin (its marker for "not detected").
        if x > 0 && y > 0 {
            fill_circle(
                &mut canvas,
                [x, y],
                FACE_POINT_RADIUS_PX,
                Rgb([255, 255, 255]),
            );
        }
    }
    canvas
}

/// `cv2.ellipse2Poly(centre, axes, angle, 0, 360, delta=1)`: one vertex per degree of the
/// rotated ellipse, rounded to pixels, repeated vertices dropped.
fn ellipse_polygon(centre: [i32; 2], axes: [i32; 2], angle_deg: i32) -> Vec<[i32; 2]> {
    let (sin_a, cos_a) = (angle_deg as f64).to_radians().sin_cos();
    let mut polygon: Vec<[i32; 2]> = Vec::with_capacity(361);
    for t in 0..=360 {
        let (sin_t, cos_t) = (t as f64).to_radians().sin_cos();
        let (ex, ey) = (axes[0] as f64 * cos_t, axes[1] as f64 * sin_t);
        let x = centre[0] as f64 + ex * cos_a - ey * sin_a;
        let y = centre[1] as f64 + ex * sin_a + ey * cos_a;
        let v = [x.round() as i32, y.round() as i32];
        if polygon.last() != Some(&v) {
            polygon.push(v);
        }
    }
    polygon
}

/// Fills a convex polygon, its boundary included (as `cv2.fillConvexPoly` does): each
/// row is filled between the leftmost and rightmost crossing of the polygon's edges.
/// (A per-pixel inside test fails here: rounding the ellipse's vertices to pixels leaves
/// tiny dents whose edge lines cut through the interior.)
fn fill_convex_polygon(canvas: &mut RgbImage, polygon: &[[i32; 2]], colour: Rgb<u8>) {
    let (w, h) = (canvas.width() as i32, canvas.height() as i32);
    let (Some(y0), Some(y1)) = (
        polygon.iter().map(|p| p[1]).min(),
        polygon.iter().map(|p| p[1]).max(),
    ) else {
        return;
    };
    let rows = (y1 - y0 + 1) as usize;
    let mut spans = vec![(i32::MAX, i32::MIN); rows];
    for (i, a) in polygon.iter().enumerate() {
        let b = polygon[(i + 1) % polygon.len()];
        let (lo, hi) = if a[1] <= b[1] { (*a, b) } else { (b, *a) };
        for y in lo[1]..=hi[1] {
            let x = if hi[1] == lo[1] {
                [lo[0], hi[0]]
            } else {
                let t = (y - lo[1]) as f64 / (hi[1] - lo[1]) as f64;
                let x = (lo[0] as f64 + t * (hi[0] - lo[0]) as f64).round() as i32;
                [x, x]
            };
            let span = &mut spans[(y - y0) as usize];
            span.0 = span.0.min(x[0].min(x[1]));
            span.1 = span.1.max(x[0].max(x[1]));
        }
    }
    for (row, (x_lo, x_hi)) in spans.into_iter().enumerate() {
        let y = y0 + row as i32;
        if y < 0 || y >= h {
            continue;
        }
        for x in x_lo.max(0)..=x_hi.min(w - 1) {
            canvas.put_pixel(x as u32, y as u32, colour);
        }
    }
}

/// `cv2.circle(..., radius, colour, thickness=-1)`: every pixel within `radius` of the
/// centre.
pub(crate) fn fill_circle(canvas: &mut RgbImage, centre: [i32; 2], radius: i32, colour: Rgb<u8>) {
    let (w, h) = (canvas.width() as i32, canvas.height() as i32);
    for y in (centre[1] - radius).max(0)..=(centre[1] + radius).min(h - 1) {
        for x in (centre[0] - radius).max(0)..=(centre[0] + radius).min(w - 1) {
            let (dx, dy) = (x - centre[0], y - centre[1]);
            if dx * dx + dy * dy <= radius * radius {
                canvas.put_pixel(x as u32, y as u32, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(c: [u8; 3]) -> [u8; 3] {
        c.map(|v| (v as f32 * 0.6) as u8)
    }

    /// A synthetic MediaPipe pose of a standing person, 512×512, all visible.
    fn synthetic_mediapipe_pose() -> Vec<[f32; 3]> {
        let mut p = vec![[0.0, 0.0, 0.0]; 33];
        let mut set = |i: usize, x: f32, y: f32| p[i] = [x, y, 0.9];
        set(0, 256.0, 90.0);
        set(2, 270.0, 78.0);
        set(5, 242.0, 78.0);
        set(7, 290.0, 85.0);
        set(8, 222.0, 85.0);
        set(11, 316.0, 150.0);
        set(12, 196.0, 150.0);
        set(13, 340.0, 230.0);
        set(14, 172.0, 230.0);
        set(15, 350.0, 300.0);
        set(16, 162.0, 300.0);
        set(23, 290.0, 300.0);
        set(24, 222.0, 300.0);
        set(25, 295.0, 390.0);
        set(26, 217.0, 390.0);
        set(27, 298.0, 480.0);
        set(28, 214.0, 480.0);
        p
    }

    #[test]
    fn mapping_picks_mediapipe_indices_and_builds_the_neck() {
        let mut pose = synthetic_mediapipe_pose();
        let body = coco18_from_mediapipe_pose(&pose);
        assert_eq!(body[0], Some([256.0, 90.0]));
        assert_eq!(body[1], Some([256.0, 150.0]));
        assert_eq!(
            body[2],
            Some([196.0, 150.0]),
            "right shoulder is MediaPipe 12"
        );
        assert_eq!(
            body[5],
            Some([316.0, 150.0]),
            "left shoulder is MediaPipe 11"
        );
        assert_eq!(body[4], Some([162.0, 300.0]));
        assert_eq!(body[10], Some([214.0, 480.0]));
        assert_eq!(body[13], Some([298.0, 480.0]));
        assert_eq!(body[14], Some([242.0, 78.0]), "right eye is MediaPipe 5");
        assert_eq!(body[17], Some([290.0, 85.0]), "left ear is MediaPipe 7");
        // A hidden landmark and a hidden shoulder (which takes the neck with it).
        pose[14][2] = 0.2;
        pose[11][2] = 0.49;
        let body = coco18_from_mediapipe_pose(&pose);
        assert_eq!(body[3], None);
        assert_eq!(body[5], None);
        assert_eq!(body[1], None);
        assert!(coco18_from_mediapipe_pose(&[]).iter().all(Option::is_none));
    }

    #[test]
    fn limb_is_scaled_colour_keypoints_full_colour_rest_black() {
        let mut body = [None; 18];
        body[2] = Some([40.0, 50.0]); // right shoulder
        body[3] = Some([40.0, 110.0]); // right elbow: limb 2 ([3, 4]) joins them
        let img = draw_openpose(128, 160, &body, None);
        assert_eq!(img.dimensions(), (128, 160));
        assert_eq!(img.get_pixel(40, 80).0, scaled(COLORS[2]), "limb midpoint");
        assert_eq!(img.get_pixel(40, 50).0, COLORS[2], "keypoint 2");
        assert_eq!(img.get_pixel(40, 110).0, COLORS[3], "keypoint 3");
        assert_eq!(img.get_pixel(100, 20).0, [0, 0, 0]);
        assert_eq!(
            img.get_pixel(50, 80).0,
            [0, 0, 0],
            "a limb is 4 px thick each side"
        );
    }

    #[test]
    fn diagonal_limb_is_filled_across_its_width() {
        let mut body = [None; 18];
        body[2] = Some([196.0, 150.0]);
        body[3] = Some([172.0, 230.0]);
        let img = draw_openpose(256, 256, &body, None);
        // Midpoint, and 3 px to either side of it across the bone.
        for x in [181, 184, 187] {
            assert_eq!(img.get_pixel(x, 190).0, scaled(COLORS[2]), "x = {x}");
        }
    }

    #[test]
    fn missing_keypoint_draws_neither_circle_nor_limbs() {
        let mut body = [None; 18];
        body[2] = Some([40.0, 50.0]);
        body[4] = Some([40.0, 110.0]); // wrist without its elbow: no limb
        let img = draw_openpose(128, 160, &body, None);
        assert_eq!(img.get_pixel(40, 80).0, [0, 0, 0]);
        let lit = img.pixels().filter(|p| p.0 != [0, 0, 0]).count();
        // Just the two keypoint discs (radius 4: 49 pixels each).
        assert_eq!(lit, 2 * 49);
    }

    #[test]
    fn face_points_are_white_dots() {
        let body = [None; 18];
        let face = [[30.0, 30.0], [0.0, 0.0]];
        let img = draw_openpose(64, 64, &body, Some(&face));
        assert_eq!(img.get_pixel(30, 30).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(33, 30).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(34, 30).0, [0, 0, 0]);
        assert_eq!(
            img.get_pixel(0, 0).0,
            [0, 0, 0],
            "the origin means undetected"
        );
    }

    #[test]
    #[ignore = "writes target/openpose_synthetic.png for a person to look at"]
    fn write_synthetic_openpose_png() {
        let body = coco18_from_mediapipe_pose(&synthetic_mediapipe_pose());
        let img = draw_openpose(512, 512, &body, None);
        crate::imaging::write_png(&img, std::path::Path::new("target/openpose_synthetic.png"))
            .unwrap();
    }

    #[test]
    fn the_face_mesh_maps_to_68_points_in_dlib_order() {
        let mut mesh = vec![[0.0f32, 0.0, 0.0]; 468];
        mesh[152] = [100.0, 200.0, 0.0]; // chin
        mesh[168] = [100.0, 80.0, 0.0];
        mesh[6] = [100.0, 90.0, 0.0];
        mesh[33] = [70.0, 100.0, 0.0]; // right eye outer corner
        let face = dlib68_from_mediapipe_mesh(&mesh);
        assert_eq!(face.len(), 68);
        assert_eq!(face[8], [100.0, 200.0], "dlib 8 is the chin");
        assert_eq!(
            face[27],
            [100.0, 85.0],
            "nose bridge: midpoint of 168 and 6"
        );
        assert_eq!(face[36], [70.0, 100.0]);
        assert!(dlib68_from_mediapipe_mesh(&mesh[..10]).is_empty());
    }
}
