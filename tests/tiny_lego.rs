//! `effects/lego.kdl` end to end on a CPU: tests/projects/tiny-lego is the lego recipe node
//! for node (photos and a video clip, the face crop with MediaPipe's real models, the
//! softedge, pose and face-mesh ControlNets, InstructPix2Pix, CLIP attributes, the
//! identity filter, the student and both phone targets) on tiny random weights. It builds,
//! skips the photos without a face and says so, ships a bundle, and a second build runs
//! nothing.

mod common;

use common::{samples_dir, TestProject};
use std::process::Command;
use std::time::Instant;

const TINY_LEGO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/projects/tiny-lego");

/// A copy of tiny-lego made as a user would (its models are real files, not links),
/// with its inputs made by its own `make-inputs.sh` (the sample photos and a two-second
/// clip over the astronaut). No MediaPipe models in its `models/`: they are found where
/// set-up installed them.
fn tiny_lego_project() -> TestProject {
    let p = TestProject::copy_of(TINY_LEGO);
    let out = Command::new(p.root().join("make-inputs.sh"))
        .env("EFFECTC_SAMPLES", samples_dir())
        .output()
        .expect("make-inputs.sh");
    assert!(
        out.status.success(),
        "make-inputs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let photos = std::fs::read_dir(p.root().join("photos")).unwrap().count();
    assert!(photos >= 2, "the sample photos: a face and something else");
    assert!(p.root().join("clips/astronaut.mp4").is_file());
    p
}

/// The image of output `output` of the stage `id`, as the build's event names it.
fn image_of(p: &TestProject, run: &common::Run, id: &str, output: &str) -> image::RgbImage {
    let path = p.output_of(run, id, output);
    image::load_from_memory(&std::fs::read(path).unwrap())
        .unwrap()
        .to_rgb8()
}

#[test]
fn tiny_lego_builds_every_node_of_lego_end_to_end_and_then_runs_nothing() {
    let p = tiny_lego_project();

    let start = Instant::now();
    let first = p.build("tiny-lego");
    println!(
        "tiny-lego: first build {:.1} s, {} stages ran",
        start.elapsed().as_secs_f64(),
        first.ran()
    );
    for e in first
        .events
        .iter()
        .filter(|e| e["event"] == "stage-finished" && e["cached"] == false)
    {
        println!("  {} {} ms", e["stage"].as_str().unwrap(), e["duration_ms"]);
    }
    let done = first.finished();
    assert_eq!(done["ok"], true, "{done}");
    assert!(first.ran() > 0);

    // The photos without a face are skipped and reported, the astronaut is not.
    let skipped: Vec<&str> = first
        .events
        .iter()
        .filter(|e| e["event"] == "item-skipped")
        .map(|e| e["item"].as_str().unwrap())
        .collect();
    assert!(done["skipped"].as_u64().unwrap() >= 1, "{done}");
    assert_eq!(done["skipped"].as_u64().unwrap() as usize, skipped.len());
    assert!(skipped.contains(&"photos/coffee.png"), "{skipped:?}");
    assert!(!skipped.contains(&"photos/astronaut.png"), "{skipped:?}");

    // Every kind of stage lego needs ran: video frames through the face crop, the three
    // landmark and edge maps, CLIP, the teacher, the filter, training and the bundle.
    let frames: Vec<String> = first
        .ran_stages()
        .into_iter()
        .filter(|s| s.starts_with("crop/clips/astronaut.mp4@"))
        .collect();
    assert!(frames.len() >= 4, "2 s at fps=2: {frames:?}");
    for pre in ["softedge", "openpose-full", "mediapipe-face"] {
        for item in ["photos/astronaut.png", "clips/astronaut.mp4@0.000s"] {
            let id = format!("control:{pre}/{item}");
            assert_eq!(first.stage(&id)["cached"], false, "{id}");
        }
    }
    // At this crop size the face is large enough for both landmark maps to draw it.
    let face = image_of(
        &p,
        &first,
        "control:mediapipe-face/photos/astronaut.png",
        "control",
    );
    assert_eq!(face.dimensions(), (192, 192));
    let head = face
        .pixels()
        .filter(|px| px.0 == effectc::imaging::face_mesh::HEAD_RGB)
        .count();
    assert!(head > 0, "the mediapipe-face map draws the face oval");
    let pose = image_of(
        &p,
        &first,
        "control:openpose-full/photos/astronaut.png",
        "control",
    );
    let white = pose.pixels().filter(|px| px.0 == [255, 255, 255]).count();
    assert!(white > 20, "the openpose map draws the face points");
    for kind in ["attributes", "pairs", "identity"] {
        assert!(first.ran_of_kind(kind) >= 2, "{kind}: photo and frames");
    }
    assert_eq!(first.ran_of_kind("identity-filter"), 1);
    assert_eq!(first.ran_of_kind("train-teacher"), 1);
    assert_eq!(first.ran_of_kind("bundle"), 1);
    let bundle = p.root().join("out/tiny-lego/bundle-bundle.tar.gz");
    assert!(bundle.is_file(), "no {}", bundle.display());

    let start = Instant::now();
    let again = p.build("tiny-lego");
    println!(
        "tiny-lego: second build {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(again.ran(), 0, "{:?}", again.ran_stages());
    assert_eq!(again.finished()["skipped"], done["skipped"]);
}
