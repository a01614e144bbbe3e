//! What re-runs after which change: the cache's promise to an effect team.

mod common;
use common::*;

#[test]
fn second_build_runs_nothing() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let first = p.build("small");
    assert!(first.ran() > 0);
    assert_eq!(first.ran_of_kind("pairs"), 6);
    let second = p.build("small");
    assert_eq!(second.ran(), 0, "ran: {:?}", second.ran_stages());
    assert_eq!(second.cached(), first.ran() + first.cached());
}

#[test]
fn teacher_style_change_reruns_pairs_but_not_sources_or_crops() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    p.build("small");
    p.recipe("small", &SMALL_BRICK.replace("stud-size 4", "stud-size 8"));
    let r = p.build("small");
    assert_eq!(r.ran_of_kind("pairs"), 6);
    assert_eq!(r.ran_of_kind("crop"), 0);
    assert_eq!(r.ran_of_kind("synthetic"), 0);
    assert_eq!(
        r.ran_of_kind("pairs-sheet"),
        1,
        "the sheet shows the new pairs"
    );
    assert_eq!(r.ran_of_kind("train-teacher"), 1, "new pairs, new teacher");
}

#[test]
fn comments_formatting_and_order_change_nothing() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    p.build("small");
    let reshuffled = r#"
// the same recipe, written differently
effect "small" {
    student teacher-width=8 blocks=1 width=8   // properties reordered
    train { checkpoint-every 10; batch 2
        student-steps 20; teacher-steps 20 }
    teacher "procedural" {
        palette "lego-classic"
        stud-size 4
        style "brick-mosaic" /* moved */
    }
    sources {
        holdout 0.2
        crop "center"   size=32
        synthetic seed=3 count=6
    }
}
"#;
    p.recipe("small", reshuffled);
    let r = p.build("small");
    assert_eq!(r.ran(), 0, "ran: {:?}", r.ran_stages());
}

const PHOTOS: &str = r#"
effect "photos" {
    sources {
        images "photos/*.png"
        crop "center" size=32
    }
    teacher "procedural" { stud-size 4; }
    student width=4 blocks=1 teacher-width=4
    train { teacher-steps 5; student-steps 5; batch 2; }
}
"#;

#[test]
fn adding_one_image_runs_one_pair_and_removing_one_runs_none() {
    let p = TestProject::new();
    p.recipe("photos", PHOTOS);
    for i in 0..4u8 {
        write_png(&p.root().join(format!("photos/p{i}.png")), i + 1, 40);
    }
    let first = p.build("photos");
    assert_eq!(first.ran_of_kind("pairs"), 4);

    write_png(&p.root().join("photos/p9.png"), 99, 40);
    let added = p.build("photos");
    assert_eq!(
        added.ran_of_kind("pairs"),
        1,
        "ran: {:?}",
        added.ran_stages()
    );
    assert_eq!(added.ran_of_kind("crop"), 1);
    assert!(added
        .ran_stages()
        .contains(&"pairs/photos/p9.png".to_string()));

    std::fs::remove_file(p.root().join("photos/p0.png")).unwrap();
    let removed = p.build("photos");
    assert_eq!(
        removed.ran_of_kind("pairs"),
        0,
        "ran: {:?}",
        removed.ran_stages()
    );
    assert_eq!(removed.ran_of_kind("crop"), 0);
}

#[test]
fn early_cutoff_stops_where_an_output_is_unchanged() {
    let p = TestProject::new();
    p.recipe("photos", PHOTOS);
    let photo = p.root().join("photos/a.png");
    write_png(&photo, 5, 40);
    p.build("photos");
    // Re-encode the same pixels with another PNG compression: new file bytes (the crop
    // re-runs), identical crop output (so the pair does not).
    let img = image::open(&photo).unwrap().to_rgb8();
    let file = std::fs::File::create(&photo).unwrap();
    let enc = image::codecs::png::PngEncoder::new_with_quality(
        file,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Paeth,
    );
    image::ImageEncoder::write_image(enc, img.as_raw(), 40, 40, image::ExtendedColorType::Rgb8)
        .unwrap();
    let r = p.build("photos");
    assert_eq!(r.ran_of_kind("crop"), 1, "the source's bytes changed");
    assert_eq!(
        r.ran_of_kind("pairs"),
        0,
        "the crop came out byte-identical: stop there"
    );
}

#[test]
fn real_photos_from_the_sample_photos_build() {
    // The sample photos are read in place, copied only into a temp project.
    let p = TestProject::new();
    let mut n = 0;
    for name in ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"] {
        std::fs::create_dir_all(p.root().join("photos")).unwrap();
        std::fs::copy(sample_path(name), p.root().join("photos").join(name)).unwrap();
        n += 1;
    }
    assert!(n >= 3);
    p.recipe(
        "real",
        &PHOTOS
            .replace("\"photos\"", "\"real\"")
            .replace("photos/*.png", "photos/*"),
    );
    let r = p.build("real");
    assert_eq!(r.ran_of_kind("pairs"), n);
}

/// Every file under `dir` with its modification time.
fn mtimes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut files: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, t)
        })
        .collect();
    files.sort();
    files
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_noop_build_leaves_out_untouched_and_puts_back_what_a_person_changed() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    p.build("small");
    let out = p.root().join("out/small");
    // The second build reports every stage cached (its report says so): out/ is redone.
    p.build("small");
    let settled = mtimes(&out);
    assert!(settled.len() > 3, "{settled:?}");
    let third = p.build("small");
    assert_eq!(third.ran(), 0);
    assert_eq!(mtimes(&out), settled, "a no-op build rewrote out/");

    let sheet = out.join("pairs-sheet-pairs.png");
    let original = std::fs::read(&sheet).unwrap();
    std::fs::remove_file(&sheet).unwrap();
    p.build("small");
    assert_eq!(
        std::fs::read(&sheet).unwrap(),
        original,
        "a removed output is put back"
    );
    std::fs::write(&sheet, b"scribbled on").unwrap();
    p.build("small");
    assert_eq!(
        std::fs::read(&sheet).unwrap(),
        original,
        "an edited output is put back"
    );
}
