//! `crop "face"` on real photos with MediaPipe's real models (installed by set-up in
//! `~/.cache/effectc/models/mediapipe-0.10.21`): the astronaut's face is found, levelled
//! and centred; the coffee cup has no face and is skipped, reported, and never re-run;
//! the openpose and mediapipe-face control maps are drawn from the crop's landmarks.

mod common;

use common::{sample_path, samples_dir, TestProject, TINY_DIFFUSION};
use effectc::imaging::face_crop::CropLandmarks;
use std::path::PathBuf;

fn copy_photos(p: &TestProject, names: &[&str]) {
    std::fs::create_dir_all(p.root().join("photos")).unwrap();
    for n in names {
        std::fs::copy(sample_path(n), p.root().join("photos").join(n)).unwrap();
    }
}

/// A PNG blob of the cache (blobs have no extension to guess the format from).
fn open_png(path: PathBuf) -> image::RgbImage {
    image::load_from_memory(&std::fs::read(path).unwrap())
        .unwrap()
        .to_rgb8()
}

const FACES: &str = r#"
effect "faces" {
    sources {
        images "photos/*.png"
        crop "face" size=128 margin=0.6
        holdout 0.0
    }
    teacher "procedural" {
        style "brick-mosaic"
        stud-size 4
        palette "lego-classic"
    }
    student width=8 blocks=1 teacher-width=8
    train { teacher-steps 10; student-steps 10; batch 1; checkpoint-every 10; }
}
"#;

#[test]
fn the_face_crop_levels_the_astronaut_and_skips_the_coffee_cup_once() {
    let p = TestProject::new();
    copy_photos(&p, &["astronaut.png", "coffee.png"]);
    p.recipe("faces", FACES);
    let first = p.build("faces");
    let done = first.finished();
    assert_eq!(done["skipped"], 1, "{done}");
    assert_eq!(done["ok"], true);
    let skips: Vec<_> = first
        .events
        .iter()
        .filter(|e| e["event"] == "item-skipped")
        .collect();
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0]["item"], "photos/coffee.png");
    assert_eq!(skips[0]["stage"], "crop/photos/coffee.png");
    assert_eq!(skips[0]["reason"], "no face found");
    // The cup's pair never ran; training went on with the astronaut.
    let pairs: Vec<String> = first
        .ran_stages()
        .into_iter()
        .filter(|s| s.starts_with("pairs/"))
        .collect();
    assert_eq!(pairs, ["pairs/photos/astronaut.png"]);
    assert!(first.ran_stages().contains(&"train-teacher".to_string()));

    // The astronaut: her eyes level, centred left to right, above the middle.
    let lm: CropLandmarks = serde_json::from_slice(
        &std::fs::read(p.output_of(&first, "crop/photos/astronaut.png", "landmarks")).unwrap(),
    )
    .unwrap();
    assert_eq!(lm.size, 128);
    assert_eq!(lm.face_mesh.len(), 468);
    let eye = |set: &[[usize; 2]]| {
        let n = set.len() as f32;
        let (x, y) = set.iter().fold((0.0, 0.0), |(x, y), [a, _]| {
            (x + lm.face_mesh[*a][0], y + lm.face_mesh[*a][1])
        });
        [x / n, y / n]
    };
    let right = eye(&effectc::imaging::face_mesh::RIGHT_EYE);
    let left = eye(&effectc::imaging::face_mesh::LEFT_EYE);
    assert!(
        (right[1] - left[1]).abs() < 1.0,
        "eyes level: {right:?} {left:?}"
    );
    assert!(
        right[0] < left[0],
        "the subject's right eye on the image's left"
    );
    let mid = (right[0] + left[0]) / 2.0;
    assert!((mid - 64.0).abs() < 1.0, "eyes centred: {mid}");
    assert!(
        right[1] > 20.0 && right[1] < 64.0,
        "eyes in the upper half: {right:?}"
    );
    let crop = open_png(p.output_of(&first, "crop/photos/astronaut.png", "image"));
    assert_eq!(crop.dimensions(), (128, 128));

    // Nothing runs twice, and the skip is still reported.
    let again = p.build("faces");
    assert_eq!(again.ran(), 0, "{:?}", again.ran_stages());
    assert_eq!(again.finished()["skipped"], 1);
    assert!(again
        .events
        .iter()
        .any(|e| e["event"] == "item-skipped" && e["item"] == "photos/coffee.png"));

    // People read the skip under the summary line.
    let human = p.run(&["build", "faces"]);
    assert_eq!(human.code(), 0);
    assert!(
        human.stderr().contains("1 item(s) skipped")
            && human
                .stderr()
                .contains("skipped photos/coffee.png: no face found"),
        "{}",
        human.stderr()
    );
}

/// The tiny diffusion project with two ControlNet presets drawn from landmarks, the
/// real MediaPipe models linked into its models folder (the builtin registry names
/// them; a project's registry files add to it).
fn tiny_faces_project() -> TestProject {
    let p = TestProject::copy_of(TINY_DIFFUSION);
    p.link_mediapipe_models();
    let mut presets = std::fs::read_to_string(p.root().join("stdlib/controlnets.kdl")).unwrap();
    presets.push_str(
        "controlnet \"tiny-pose\" preprocessor=\"openpose-full\" model=\"tiny-control-a\"\n",
    );
    presets.push_str(
        "controlnet \"tiny-face\" preprocessor=\"mediapipe-face\" model=\"tiny-control-b\"\n",
    );
    p.write("stdlib/controlnets.kdl", &presets);
    copy_photos(&p, &["astronaut.png"]);
    let recipe = std::fs::read_to_string(p.root().join("effects/tiny.kdl"))
        .unwrap()
        .replace(
            "synthetic count=6 seed=3\n        crop \"center\" size=32\n        holdout 0.3",
            "images \"photos/*.png\"\n        crop \"face\" size=128 margin=0.1\n        holdout 0.0",
        )
        .replace(
            "controlnet \"tiny-canny\" weight=0.7",
            "controlnet \"tiny-pose\" weight=0.7\n        controlnet \"tiny-face\" weight=0.5",
        )
        .replace("    target \"onnx\" quantize=\"fp32\"\n", "");
    assert!(recipe.contains("tiny-pose") && recipe.contains("crop \"face\""));
    p.write("effects/tiny.kdl", &recipe);
    p
}

#[test]
fn openpose_and_mediapipe_face_maps_are_drawn_from_the_crop_landmarks() {
    let p = tiny_faces_project();
    let run = p.build("tiny");
    assert_eq!(run.ran_of_kind("crop"), 1);
    assert_eq!(
        run.ran_of_kind("control"),
        3,
        "softedge, openpose-full, mediapipe-face"
    );
    let map = |pre: &str| {
        open_png(p.output_of(
            &run,
            &format!("control:{pre}/photos/astronaut.png"),
            "control",
        ))
    };
    let has = |img: &image::RgbImage, c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
    let face = map("mediapipe-face");
    assert_eq!(face.dimensions(), (128, 128));
    use effectc::imaging::face_mesh as fm;
    for (name, c) in [
        ("oval", fm::HEAD_RGB),
        ("lips", fm::MOUTH_RGB),
        ("left eye", fm::LEFT_EYE_RGB),
        ("right eye", fm::RIGHT_EYE_RGB),
    ] {
        assert!(
            has(&face, c) > 0,
            "mediapipe-face map lacks the {name} colour {c:?}"
        );
    }
    let pose = map("openpose-full");
    assert!(has(&pose, [255, 255, 255]) > 20, "the face's white dots");
    // The nose keypoint (COCO 0) in full red, when the pose model saw the nose.
    assert!(
        has(&pose, effectc::imaging::openpose::COLORS[0]) > 0,
        "the nose keypoint"
    );
    assert_eq!(p.build("tiny").ran(), 0);
}

/// Not a check: builds the four sample photos through the face crop and the three
/// control maps, writes `/tmp/control-maps-sheet.png` (crop | softedge | openpose-full |
/// mediapipe-face; a skipped photo's row shows the photo and says why in the log) and
/// prints each stage's time. `cargo test --test face_crop -- --ignored --nocapture`.
#[test]
#[ignore]
fn control_maps_contact_sheet() {
    let p = tiny_faces_project();
    copy_photos(&p, &["chelsea.png", "coffee.png"]);
    std::fs::copy(
        samples_dir().join("rocket.jpg"),
        p.root().join("photos/rocket.jpg"),
    )
    .unwrap();
    let recipe = std::fs::read_to_string(p.root().join("effects/tiny.kdl"))
        .unwrap()
        .replace("images \"photos/*.png\"", "images \"photos/*\"")
        .replace(
            "crop \"face\" size=128 margin=0.1",
            // Three of the four photos have no face: past the default bound of half.
            "crop \"face\" size=256 margin=0.6\n        max-skipped 0.75",
        );
    p.write("effects/tiny.kdl", &recipe);
    let run = p.build("tiny");
    let mut rows = Vec::new();
    for name in ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"] {
        let item = format!("photos/{name}");
        let crop_id = format!("crop/{item}");
        let crop = run.stage(&crop_id);
        println!("{crop_id}: {} ms", crop["duration_ms"]);
        if let Some(skip) = run
            .events
            .iter()
            .find(|e| e["event"] == "item-skipped" && e["item"] == item.as_str())
        {
            println!("  skipped: {}", skip["reason"]);
            let photo = image::open(samples_dir().join(name)).unwrap().to_rgb8();
            // The crop made nothing: show the photo and why.
            let mut note = image::RgbImage::new(256, 256);
            let white = image::Rgb([235, 235, 235]);
            let draw = effectc::imaging::contact_sheet::draw_text;
            draw(&mut note, 8, 110, "SKIPPED:", 2, white);
            draw(
                &mut note,
                8,
                132,
                skip["reason"].as_str().unwrap_or("?"),
                2,
                white,
            );
            rows.push(vec![photo, note]);
            continue;
        }
        let mut row = vec![open_png(p.output_of(&run, &crop_id, "image"))];
        for pre in ["softedge", "openpose-full", "mediapipe-face"] {
            let id = format!("control:{pre}/{item}");
            println!("{id}: {} ms", run.stage(&id)["duration_ms"]);
            row.push(open_png(p.output_of(&run, &id, "control")));
        }
        rows.push(row);
    }
    let sheet = effectc::imaging::contact_sheet::contact_sheet(
        &rows,
        &["crop", "softedge", "openpose", "mp-face"],
        256,
    );
    sheet.save("/tmp/control-maps-sheet.png").unwrap();
    println!("wrote /tmp/control-maps-sheet.png");
}
