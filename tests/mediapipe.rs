//! MediaPipe's four models in tract (src/vision/), against LiteRT's outputs
//! (tests/fixtures/mediapipe/, written by scripts/make_mediapipe_fixtures.py), and the
//! face / pose detectors on the sample photos (scripts/samples.sh).
//!
//! The models are not in git: `make test`'s set-up installs them
//! (scripts/mediapipe-models.sh). A missing model fails the test, naming the file.

mod common;

use std::path::{Path, PathBuf};

use effectc::vision::model::TfliteModel;
use effectc::vision::{FaceDetector, FaceMesh, PoseEstimator};

fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("EFFECTC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/effectc/models")
        });
    let path = dir.join("mediapipe-0.10.21").join(file);
    assert!(
        path.is_file(),
        "MediaPipe model {} is missing: run scripts/mediapipe-models.sh (scripts/setup.sh does)",
        path.display()
    );
    path
}

/// A sample photo, read in place.
fn sample(name: &str) -> image::RgbImage {
    let path = common::sample_path(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mediapipe")
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The same synthetic pattern the fixture script computes.
fn synthetic(size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                v.push(((31 * y + 17 * x + 71 * c + (x * y) % 13) % 256) as u8);
            }
        }
    }
    v
}

/// The photo at size x size by the nearest source pixel, in integers, as the fixture
/// script samples it (so the portrait is read in place, never copied into the repo).
fn nearest(img: &image::RgbImage, size: usize) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut v = Vec::with_capacity(size * size * 3);
    for i in 0..size {
        let y = (2 * i + 1) * h / (2 * size);
        for j in 0..size {
            let x = (2 * j + 1) * w / (2 * size);
            v.extend_from_slice(&img.get_pixel(x as u32, y as u32).0);
        }
    }
    v
}

fn to_float(u8s: &[u8], range: &str) -> Vec<f32> {
    match range {
        "-1..1" => u8s.iter().map(|&v| v as f32 / 127.5 - 1.0).collect(),
        "0..1" => u8s.iter().map(|&v| v as f32 / 255.0).collect(),
        other => panic!("unknown input range {other}"),
    }
}

/// Tolerance: every output element within 1e-4 of the output's largest magnitude
/// (at least 1e-4 absolute): LiteRT (XNNPACK) and tract both compute in float32 from
/// the same fp16-rounded weights, so only summation order differs.
const REL_TOL: f32 = 1e-4;

/// The four MediaPipe files effectc rewrites and runs.
const SHIPPED_MODELS: [&str; 4] = [
    "face_detection_short_range.tflite",
    "face_landmark.tflite",
    "pose_detection.tflite",
    "pose_landmark_full.tflite",
];

fn check_model(file: &str) {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let stem = file.trim_end_matches(".tflite");
    let spec = &manifest["models"][stem];
    let range = spec["range"].as_str().unwrap();
    let size = spec["size"].as_u64().unwrap() as usize;
    let model = timed(&format!("{stem}: read, rewrite, load, optimize"), || {
        TfliteModel::load(&model_path(file)).unwrap()
    });
    eprintln!("{stem}: {:?}", model.stats);
    assert_eq!(model.size, size);
    let photo = nearest(&sample("astronaut.png"), size);
    for (case, pixels) in [("photo", photo), ("synthetic", synthetic(size))] {
        let input = to_float(&pixels, range);
        let outputs = timed(&format!("{stem}: one run"), || model.run(&input).unwrap());
        for (i, out) in spec["outputs"].as_array().unwrap().iter().enumerate() {
            let name = out["name"].as_str().unwrap();
            let stride = out["stride"].as_u64().unwrap() as usize;
            let want = read_f32(&fixtures().join(format!("{stem}.{name}.{case}.f32")));
            let got: Vec<f32> = outputs[i].iter().step_by(stride).copied().collect();
            assert_eq!(got.len(), want.len(), "{stem} {case} {name}: length");
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!(
                "{stem} {case} {name}: max abs err {err:.3e}, scale {scale:.3e}, rel {:.3e}",
                err / scale
            );
            assert!(
                err <= REL_TOL * scale,
                "{stem} {case} {name}: max abs err {err} > {} (scale {scale})",
                REL_TOL * scale
            );
        }
    }
}

#[test]
fn face_detector_matches_litert() {
    check_model("face_detection_short_range.tflite");
}

#[test]
fn face_landmark_matches_litert() {
    check_model("face_landmark.tflite");
}

#[test]
fn pose_detector_matches_litert() {
    check_model("pose_detection.tflite");
}

#[test]
fn pose_landmark_matches_litert() {
    check_model("pose_landmark_full.tflite");
}

/// Each rewritten model, read back into `effectc::tflite::Model` and written again, gives
/// the same bytes: the one model type holds everything the rewrite writes.
#[test]
fn rewritten_models_round_trip_through_the_tflite_model() {
    for file in SHIPPED_MODELS {
        let bytes = std::fs::read(model_path(file)).unwrap();
        let (rewritten, _) = effectc::vision::tflite_rewrite::rewrite(&bytes).unwrap();
        let model = effectc::tflite::parse(&rewritten).unwrap();
        let again = effectc::tflite::serialize(&model).unwrap();
        assert!(
            again == rewritten,
            "{file}: written again, the bytes differ"
        );
    }
}

fn face_detector() -> FaceDetector {
    FaceDetector::load(&model_path("face_detection_short_range.tflite")).unwrap()
}

fn inside(p: [f32; 2], b: [f32; 4]) -> bool {
    p[0] >= b[0] && p[0] <= b[2] && p[1] >= b[1] && p[1] <= b[3]
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Times one call, printed for the figures in docs/mediapipe.md (never asserted). The
/// thread's CPU time is the figure to read on a shared machine (tract runs
/// single-threaded, in this thread); wall time is printed beside it.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (t, c) = (std::time::Instant::now(), thread_cpu_seconds());
    let out = f();
    eprintln!(
        "{what}: {:.1} ms CPU, {:.1} ms wall",
        (thread_cpu_seconds() - c) * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    out
}

#[test]
fn face_detector_finds_the_astronaut_face() {
    let det = face_detector();
    let img = sample("astronaut.png");
    let faces = timed("face detection (astronaut)", || det.detect(&img).unwrap());
    eprintln!("{faces:?}");
    assert_eq!(
        faces.len(),
        1,
        "exactly one face in astronaut.png: {faces:?}"
    );
    let f = &faces[0];
    let [x0, y0, x1, y1] = f.bbox;
    assert!(f.score >= 0.5 && x1 > x0 + 20.0 && y1 > y0 + 20.0, "{f:?}");
    for k in &f.keypoints[..4] {
        assert!(
            inside(*k, f.bbox),
            "eyes, nose and mouth inside the box: {f:?}"
        );
    }
    let [right_eye, left_eye, nose, mouth] = [
        f.keypoints[0],
        f.keypoints[1],
        f.keypoints[2],
        f.keypoints[3],
    ];
    // A frontal portrait: the subject's right eye is on the image's left.
    assert!(right_eye[0] < left_eye[0], "{f:?}");
    assert!(
        right_eye[1] < mouth[1] && left_eye[1] < mouth[1],
        "eyes above the mouth: {f:?}"
    );
    assert!(
        nose[1] > right_eye[1].min(left_eye[1]) && nose[1] < mouth[1],
        "nose between eyes and mouth: {f:?}"
    );
    // The face is in the upper half of this head-and-shoulders portrait.
    assert!(y1 < img.height() as f32 * 0.75, "{f:?}");
}

#[test]
fn face_detector_finds_no_face_in_a_cup_or_a_rocket() {
    let det = face_detector();
    for name in ["coffee.png", "rocket.jpg"] {
        let faces = det.detect(&sample(name)).unwrap();
        assert!(faces.is_empty(), "{name}: no face expected, got {faces:?}");
    }
    let e = det
        .detect(&image::RgbImage::new(0, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn face_mesh_of_the_astronaut_lies_on_the_face() {
    let det = face_detector();
    let mesh = FaceMesh::load(&model_path("face_landmark.tflite")).unwrap();
    let img = sample("astronaut.png");
    let face = det.detect(&img).unwrap().remove(0);
    let lm = timed("face mesh (astronaut)", || {
        mesh.landmarks(&img, &face).unwrap()
    });
    assert_eq!(lm.points.len(), 468);
    assert!(lm.presence > 0.5, "presence {}", lm.presence);
    // The mesh reaches the forehead and chin, a little outside BlazeFace's box: allow a
    // quarter of the box on each side, and most points strictly inside.
    let [x0, y0, x1, y1] = face.bbox;
    let (mx, my) = ((x1 - x0) * 0.25, (y1 - y0) * 0.25);
    let grown = [x0 - mx, y0 - my, x1 + mx, y1 + my];
    let strictly = lm
        .points
        .iter()
        .filter(|p| inside([p[0], p[1]], face.bbox))
        .count();
    for p in &lm.points {
        assert!(
            inside([p[0], p[1]], grown),
            "landmark {p:?} far outside the face box {:?}",
            face.bbox
        );
    }
    assert!(
        strictly * 10 >= lm.points.len() * 8,
        "only {strictly}/468 landmarks in the face box"
    );
    // Landmark 1 is the nose tip, near the detector's nose keypoint; 13/14 the lips,
    // below it.
    let nose = lm.points[1];
    let d = ((nose[0] - face.keypoints[2][0]).powi(2) + (nose[1] - face.keypoints[2][1]).powi(2))
        .sqrt();
    assert!(
        d < (x1 - x0) * 0.15,
        "mesh nose {nose:?} vs detector nose {:?}",
        face.keypoints[2]
    );
    assert!(lm.points[13][1] > nose[1] && lm.points[14][1] > nose[1]);
    if let Some(out) = std::env::var_os("VISION_DRAW") {
        draw(
            &img,
            &face,
            &lm,
            &PoseEstimator::load(
                &model_path("pose_detection.tflite"),
                &model_path("pose_landmark_full.tflite"),
            )
            .unwrap()
            .estimate(&img)
            .unwrap(),
            Path::new(&out),
        );
    }
}

fn pose_estimator() -> PoseEstimator {
    PoseEstimator::load(
        &model_path("pose_detection.tflite"),
        &model_path("pose_landmark_full.tflite"),
    )
    .unwrap()
}

#[test]
fn pose_of_the_astronaut_has_shoulders_below_the_face() {
    let pose = pose_estimator();
    let img = sample("astronaut.png");
    let det = timed("pose detection (astronaut)", || pose.detect(&img).unwrap());
    eprintln!("{det:?}");
    let lm = timed("pose detection + landmarks (astronaut)", || {
        pose.estimate(&img).unwrap()
    })
    .expect("a person in astronaut.png");
    assert_eq!(lm.points.len(), 33);
    let face = face_detector().detect(&img).unwrap().remove(0);
    let (nose, l_sh, r_sh) = (lm.points[0], lm.points[11], lm.points[12]);
    eprintln!(
        "nose {nose:?} left shoulder {l_sh:?} right shoulder {r_sh:?} presence {}",
        lm.presence
    );
    assert!(
        inside([nose[0], nose[1]], face.bbox),
        "pose nose {nose:?} in the face box {:?}",
        face.bbox
    );
    for s in [l_sh, r_sh] {
        assert!(s[3] > 0.5, "shoulder visible: {s:?}");
        assert!(
            s[1] > face.bbox[3],
            "shoulder {s:?} below the face {:?}",
            face.bbox
        );
        assert!(
            s[1] < img.height() as f32 && s[0] > 0.0 && s[0] < img.width() as f32,
            "shoulder {s:?} in the image"
        );
    }
    // Subject's right shoulder on the image's left, shoulders wider than the face.
    assert!(
        r_sh[0] < face.bbox[0] && l_sh[0] > face.bbox[2],
        "shoulders {r_sh:?} {l_sh:?} face {:?}",
        face.bbox
    );
}

#[test]
fn pose_finds_no_person_in_a_cup_or_a_rocket() {
    let pose = pose_estimator();
    for name in ["coffee.png", "rocket.jpg"] {
        let lm = pose.estimate(&sample(name)).unwrap();
        assert!(lm.is_none(), "no person expected in {name}, got {lm:?}");
    }
}

/// The astronaut with what was found: face box (red), detector keypoints (yellow), mesh
/// (green), pose landmarks (cyan, visible ones only).
fn draw(
    img: &image::RgbImage,
    face: &effectc::vision::FaceDetection,
    mesh: &effectc::vision::FaceLandmarks,
    pose: &Option<effectc::vision::PoseLandmarks>,
    out: &Path,
) {
    let mut canvas = img.clone();
    let mut dot = |x: f32, y: f32, r: i32, c: [u8; 3]| {
        for dy in -r..=r {
            for dx in -r..=r {
                let (px, py) = (x as i32 + dx, y as i32 + dy);
                if dx * dx + dy * dy <= r * r
                    && px >= 0
                    && py >= 0
                    && (px as u32) < canvas.width()
                    && (py as u32) < canvas.height()
                {
                    canvas.put_pixel(px as u32, py as u32, image::Rgb(c));
                }
            }
        }
    };
    let [x0, y0, x1, y1] = face.bbox;
    for i in 0..=100 {
        let t = i as f32 / 100.0;
        for (x, y) in [
            (x0 + (x1 - x0) * t, y0),
            (x0 + (x1 - x0) * t, y1),
            (x0, y0 + (y1 - y0) * t),
            (x1, y0 + (y1 - y0) * t),
        ] {
            dot(x, y, 1, [255, 0, 0]);
        }
    }
    for p in &mesh.points {
        dot(p[0], p[1], 1, [0, 255, 0]);
    }
    // Contours from MediaPipe's face-mesh connection sets, to check the topology lines up.
    const LIPS: [usize; 20] = [
        61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
    ];
    const RIGHT_EYE: [usize; 16] = [
        33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
    ];
    const LEFT_EYE: [usize; 16] = [
        263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466,
    ];
    const OVAL: [usize; 36] = [
        10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
        152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
    ];
    for (set, c) in [
        (&LIPS[..], [255, 0, 0]),
        (&RIGHT_EYE[..], [255, 0, 255]),
        (&LEFT_EYE[..], [0, 0, 255]),
        (&OVAL[..], [255, 255, 255]),
    ] {
        for &i in set {
            dot(mesh.points[i][0], mesh.points[i][1], 2, c);
        }
    }
    for k in &face.keypoints {
        dot(k[0], k[1], 4, [255, 255, 0]);
    }
    if let Some(p) = pose {
        for l in p.points.iter().filter(|l| l[3] > 0.5) {
            dot(l[0], l[1], 5, [0, 255, 255]);
        }
    }
    canvas.save(out).unwrap();
    eprintln!("drew {}", out.display());
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn points(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// End to end against MediaPipe 0.10.21's own graphs (tests/fixtures/mediapipe/pipeline.json):
/// the same models, so differences come only from pre/post-processing. Tolerances, in
/// pixels of the 512-px photo: face box and keypoints 0.5; mesh mean 0.5, max 1; pose:
/// face and shoulder points (0..=12) 1 each, all 33 on average 1.5. Measured: face and
/// mesh agree to 0.00 px, pose 0.51 px on average, elbows and a hip (out of the frame)
/// up to 4.4 px (a Python replica of the graph on LiteRT differs from MediaPipe the same
/// way there).
#[test]
fn detectors_match_mediapipe_on_the_astronaut() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline.json")).unwrap())
            .unwrap();
    let r = &reference["photos"]["astronaut.png"];
    let img = sample("astronaut.png");
    let faces = face_detector().detect(&img).unwrap();
    let want = &r["faces"][0];
    assert_eq!(faces.len(), r["faces"].as_array().unwrap().len());
    let f = &faces[0];
    let wb = points(&serde_json::json!([want["bbox"]]))[0].clone();
    let box_err = (0..4)
        .map(|i| (f.bbox[i] - wb[i]).abs())
        .fold(0f32, f32::max);
    let kp_err = points(&want["keypoints"])
        .iter()
        .zip(&f.keypoints)
        .map(|(w, k)| dist([w[0], w[1]], *k))
        .fold(0f32, f32::max);
    let score = want["score"].as_f64().unwrap() as f32;
    eprintln!(
        "face: score {} vs {score}, box max err {box_err:.2} px, keypoints max err {kp_err:.2} px",
        f.score
    );

    let mesh = FaceMesh::load(&model_path("face_landmark.tflite"))
        .unwrap()
        .landmarks(&img, f)
        .unwrap();
    let wm = points(&r["mesh"]);
    let errs: Vec<f32> = wm
        .iter()
        .zip(&mesh.points)
        .map(|(w, p)| dist([w[0], w[1]], [p[0], p[1]]))
        .collect();
    let (mesh_mean, mesh_max) = (
        errs.iter().sum::<f32>() / errs.len() as f32,
        errs.iter().fold(0f32, |m, e| m.max(*e)),
    );
    let z_err = wm
        .iter()
        .zip(&mesh.points)
        .map(|(w, p)| (w[2] - p[2]).abs())
        .fold(0f32, f32::max);
    eprintln!("mesh: mean err {mesh_mean:.2} px, max {mesh_max:.2} px, z max err {z_err:.2}");

    let pose = pose_estimator().estimate(&img).unwrap().unwrap();
    let wp = points(&r["pose"]);
    let errs: Vec<f32> = wp
        .iter()
        .zip(&pose.points)
        .map(|(w, p)| dist([w[0], w[1]], [p[0], p[1]]))
        .collect();
    let pose_mean = errs.iter().sum::<f32>() / errs.len() as f32;
    let vis_err = wp
        .iter()
        .zip(&pose.points)
        .map(|(w, p)| (w[3] - p[3]).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "pose: mean err {pose_mean:.2} px, per point {errs:.1?}, visibility max err {vis_err:.3}"
    );

    assert!(
        (f.score - score).abs() < 1e-3 && box_err < 0.5 && kp_err < 0.5,
        "face differs from MediaPipe"
    );
    assert!(
        mesh_mean < 0.5 && mesh_max < 1.0,
        "mesh differs from MediaPipe"
    );
    assert!(
        errs[..=12].iter().all(|e| *e < 1.0) && pose_mean < 1.5,
        "pose differs from MediaPipe"
    );
}

#[test]
fn bad_model_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("face_detection_short_range.tflite");
    let e = FaceDetector::load(&missing)
        .err()
        .expect("a missing file fails")
        .to_string();
    assert!(
        e.contains("face_detection_short_range.tflite")
            && e.contains("scripts/mediapipe-models.sh"),
        "{e}"
    );

    let garbage = dir.path().join("garbage.tflite");
    std::fs::write(&garbage, b"not a flatbuffer at all").unwrap();
    let e = FaceMesh::load(&garbage)
        .err()
        .expect("garbage fails")
        .to_string();
    assert!(e.contains("garbage.tflite") && e.contains("TFLite"), "{e}");

    // The right format, the wrong model: its input size gives it away.
    let e = FaceDetector::load(&model_path("face_landmark.tflite"))
        .err()
        .expect("wrong model")
        .to_string();
    assert!(
        e.contains("face_landmark.tflite") && e.contains("192x192"),
        "{e}"
    );
}

/// Why the rewrite exists: stock tract-tflite refuses every shipped file. Prints what it
/// stumbles on first (docs/mediapipe.md quotes it).
#[test]
fn stock_tract_refuses_the_shipped_files() {
    use tract_tflite::prelude::Framework;
    for file in SHIPPED_MODELS {
        let bytes = std::fs::read(model_path(file)).unwrap();
        let e = tract_tflite::tflite()
            .model_for_read(&mut &bytes[..])
            .and_then(|m| m.into_optimized())
            .err()
            .unwrap_or_else(|| panic!("stock tract now loads {file}: the rewrite may be unneeded"));
        // The root cause names the operator code (the files fill only the deprecated
        // int8 field: 6 is DEQUANTIZE).
        let root = e
            .root_cause()
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("{file}: {}", root.chars().take(140).collect::<String>());
    }
}

/// Stages run items on several threads: one loaded detector must be shareable.
#[test]
fn detectors_are_shareable_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<FaceDetector>();
    shareable::<FaceMesh>();
    shareable::<PoseEstimator>();
}
