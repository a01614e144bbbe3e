//! What the plan reads from the pictures themselves: `crop "face" faces="all"` makes one
//! item per face of a group photo (faces counted when the plan is made, cached by the
//! photo's digest), and `sources { dedupe }` leaves out near-duplicates (a still clip's
//! frames, one photo saved at two sizes), each skipped naming its twin.

mod common;

use common::{ffmpeg, sample_path, TestProject};
use effectc::imaging::face_crop::CropLandmarks;

const FACES: &str = r#"
effect "faces" {
    sources {
        images "photos/*.png"
        crop "face" size=64 margin=0.6 faces="all"
        holdout 0.0
    }
    teacher "procedural" {
        style "brick-mosaic"
        stud-size 4
        palette "lego-classic"
    }
    student width=8 blocks=1 teacher-width=8
    train { teacher-steps 4; student-steps 4; batch 1; checkpoint-every 4; }
}
"#;

/// Where the group picture holds each head: (x, y, width, height).
const HEADS: [(u32, u32, u32, u32); 3] = [
    (10, 10, 240, 280),
    (300, 60, 210, 245),
    (150, 310, 240, 280),
];

/// A group picture: the astronaut's head pasted three times on a blue-grey canvas, once
/// smaller and once mirrored (at [`HEADS`]).
fn group_photo(path: &std::path::Path) {
    let astronaut = image::open(sample_path("astronaut.png")).unwrap().to_rgb8();
    let head = image::imageops::crop_imm(&astronaut, 120, 0, 240, 280).to_image();
    let mut canvas = image::RgbImage::from_pixel(540, 600, image::Rgb([90, 110, 130]));
    let [(x0, y0, ..), (x1, y1, w1, h1), (x2, y2, ..)] = HEADS;
    image::imageops::replace(&mut canvas, &head, x0 as i64, y0 as i64);
    let smaller = image::imageops::resize(&head, w1, h1, image::imageops::FilterType::Triangle);
    image::imageops::replace(&mut canvas, &smaller, x1 as i64, y1 as i64);
    let mirrored = image::imageops::flip_horizontal(&head);
    image::imageops::replace(&mut canvas, &mirrored, x2 as i64, y2 as i64);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    canvas.save(path).unwrap();
}

/// What a non-JSON build or plan says on stderr about looking for faces, if anything.
fn scan_line(p: &TestProject, args: &[&str]) -> Option<String> {
    let r = p.run(args);
    assert_eq!(r.code(), 0, "{args:?}: {}", r.stderr());
    r.stderr()
        .lines()
        .find(|l| l.starts_with("sources: looked for faces"))
        .map(str::to_string)
}

#[test]
fn a_group_photo_gives_one_item_per_face_and_only_a_new_photo_is_scanned() {
    let p = TestProject::new();
    group_photo(&p.root().join("photos/group.png"));
    p.recipe("faces", FACES);
    let first = p.build("faces");
    let crops: Vec<String> = first
        .ran_stages()
        .into_iter()
        .filter(|s| s.starts_with("crop/"))
        .collect();
    assert_eq!(
        crops,
        [
            "crop/photos/group.png#face1",
            "crop/photos/group.png#face2",
            "crop/photos/group.png#face3"
        ]
    );
    assert_eq!(first.finished()["skipped"], 0, "{}", first.finished());
    // Each crop is around a different pasted head.
    let mut heads_found: Vec<usize> = crops
        .iter()
        .map(|id| {
            let lm: CropLandmarks = serde_json::from_slice(
                &std::fs::read(p.output_of(&first, id, "landmarks")).unwrap(),
            )
            .unwrap();
            let [cx, cy] = lm.crop_box.center;
            HEADS
                .iter()
                .position(|&(x, y, w, h)| {
                    cx >= x as f32 && cx < (x + w) as f32 && cy >= y as f32 && cy < (y + h) as f32
                })
                .unwrap_or_else(|| panic!("{id}: crop centre ({cx}, {cy}) is on no head"))
        })
        .collect();
    heads_found.sort();
    assert_eq!(heads_found, [0, 1, 2], "each crop holds a different face");
    // Largest face first: the two full-size heads, then the smaller one.
    let lm3: CropLandmarks = serde_json::from_slice(
        &std::fs::read(p.output_of(&first, "crop/photos/group.png#face3", "landmarks")).unwrap(),
    )
    .unwrap();
    let [cx, cy] = lm3.crop_box.center;
    let (x, y, w, h) = HEADS[1];
    assert!(cx >= x as f32 && cx < (x + w) as f32 && cy >= y as f32 && cy < (y + h) as f32);

    // A no-op build, and a plan, look at no picture.
    assert_eq!(scan_line(&p, &["build", "faces"]), None);
    assert_eq!(scan_line(&p, &["plan", "faces"]), None);
    let noop = p.build("faces");
    assert_eq!(noop.ran(), 0);

    // A new photo: only it is scanned; its one face is one more item.
    std::fs::copy(
        sample_path("astronaut.png"),
        p.root().join("photos/astronaut.png"),
    )
    .unwrap();
    let line = scan_line(&p, &["plan", "faces"]).expect("the new photo is scanned");
    assert!(line.contains("looked for faces in 1 picture(s)"), "{line}");
    let second = p.build("faces");
    let new_crops: Vec<String> = second
        .ran_stages()
        .into_iter()
        .filter(|s| s.starts_with("crop/"))
        .collect();
    assert_eq!(new_crops, ["crop/photos/astronaut.png#face1"]);
}

const DEDUPE: &str = r#"
effect "dedupe" {
    sources {
        images "photos/*"
        video "clips/*.mp4" fps=2
        crop "center" size=32
        holdout 0.0
        dedupe
    }
    teacher "procedural" {
        style "brick-mosaic"
        stud-size 4
        palette "lego-classic"
    }
    student width=8 blocks=1 teacher-width=8
    train { teacher-steps 4; student-steps 4; batch 1; checkpoint-every 4; }
}
"#;

#[test]
fn dedupe_leaves_out_a_still_clips_repeated_frames_and_a_photo_saved_twice() {
    let p = TestProject::new();
    let photos = p.root().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::create_dir_all(p.root().join("clips")).unwrap();
    std::fs::copy(sample_path("chelsea.png"), photos.join("chelsea.png")).unwrap();
    std::fs::copy(sample_path("coffee.png"), photos.join("coffee.png")).unwrap();
    // The same cat, half the size, as a JPEG.
    let cat = image::open(sample_path("chelsea.png")).unwrap().to_rgb8();
    let (w, h) = cat.dimensions();
    image::imageops::resize(&cat, w / 2, h / 2, image::imageops::FilterType::Triangle)
        .save(photos.join("chelsea-small.jpg"))
        .unwrap();
    // Two seconds of a still picture, lossy, taken at 2 frames a second: 4 frames.
    let clip = p.root().join("clips/still.mp4");
    ffmpeg(&[
        "-loop",
        "1",
        "-i",
        sample_path("rocket.jpg").to_str().unwrap(),
        "-t",
        "2",
        "-r",
        "10",
        "-vf",
        "scale=160:-2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        clip.to_str().unwrap(),
    ]);
    p.recipe("dedupe", DEDUPE);
    let first = p.build("dedupe");
    let skips: Vec<(String, String)> = first
        .events
        .iter()
        .filter(|e| e["event"] == "item-skipped")
        .map(|e| {
            (
                e["item"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Names sort `chelsea-small.jpg` first: it is kept, the larger copy left out.
    assert!(
        skips.contains(&(
            "photos/chelsea.png".into(),
            "near-duplicate of photos/chelsea-small.jpg".into()
        )),
        "{skips:?}"
    );
    let frames: Vec<&(String, String)> = skips
        .iter()
        .filter(|(item, _)| item.starts_with("clips/still.mp4@"))
        .collect();
    assert_eq!(frames.len(), 3, "{skips:?}");
    for (_, reason) in &frames {
        assert_eq!(reason, "near-duplicate of clips/still.mp4@0.000s");
    }
    assert_eq!(skips.len(), 4, "{skips:?}");
    // Three distinct pictures train; the near-duplicates count toward no bound
    // (4 of 7 skipped would be over the default `max-skipped` 0.5).
    let done = first.finished();
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["skipped"], 4, "{done}");
    let pairs: Vec<String> = first
        .ran_stages()
        .into_iter()
        .filter(|s| s.starts_with("pairs/"))
        .collect();
    assert_eq!(
        pairs,
        [
            "pairs/clips/still.mp4@0.000s",
            "pairs/photos/chelsea-small.jpg",
            "pairs/photos/coffee.png"
        ]
    );

    // Without `dedupe`, every item builds, and the kept ones keep their keys.
    p.edit("effects/dedupe.kdl", "        dedupe\n", "");
    let all = p.build("dedupe");
    assert_eq!(all.finished()["skipped"], 0, "{}", all.finished());
    let crops_ran: Vec<String> = all
        .ran_stages()
        .into_iter()
        .filter(|s| s.starts_with("crop/"))
        .collect();
    assert_eq!(
        crops_ran.len(),
        4,
        "only the left-out items' crops run: {crops_ran:?}"
    );
    assert!(!crops_ran.contains(&"crop/photos/coffee.png".to_string()));
}
