//! `video "clips/*.mp4" fps=N` sources end to end: clips are made here with ffmpeg from
//! generated frames (64x48, a few seconds), built with the procedural teacher and tiny
//! training, and the build's `--json` events say what ran.

mod common;
use common::*;
use std::path::Path;

const RECIPE: &str = r#"
effect "clips" {
    sources {
        images "photos/*.png"
        video "clips/*.mp4" fps=1
        crop "center" size=32
        holdout 0.2
    }
    teacher "procedural" {
        style "brick-mosaic"
        stud-size 4
        palette "lego-classic"
    }
    student width=8 blocks=1 teacher-width=8
    train { teacher-steps 20; student-steps 20; batch 2; checkpoint-every 10; }
}
"#;

/// A clip of `seconds` at 4 frames a second, 64x48, every frame different (a square
/// moving over a seed-dependent gradient), encoded with x264 (lossy, yuv420p).
fn make_clip(path: &Path, seed: u8, seconds: u32) {
    let frames = tempfile::tempdir().unwrap();
    for i in 0..seconds * 4 {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            let inside = (x / 8 == i % 8) && (y / 8 == (i / 2) % 6);
            if inside {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([
                    (x as u8 * 4).wrapping_add(seed.wrapping_mul(40)),
                    (y as u8 * 5).wrapping_add(seed),
                    seed.wrapping_mul(70).wrapping_add(i as u8 * 9),
                ])
            }
        });
        img.save(frames.path().join(format!("f{i:03}.png")))
            .unwrap();
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let pattern = frames.path().join("f%03d.png");
    ffmpeg(&[
        "-framerate",
        "4",
        "-i",
        pattern.to_str().unwrap(),
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        path.to_str().unwrap(),
    ]);
}

fn project(clips: &[(&str, u8)]) -> TestProject {
    let p = TestProject::new();
    p.recipe("clips", RECIPE);
    write_png(&p.root().join("photos/one.png"), 3, 40);
    write_png(&p.root().join("photos/two.png"), 9, 40);
    for (name, seed) in clips {
        make_clip(&p.root().join("clips").join(name), *seed, 3);
    }
    p
}

/// Stage ids of one kind that ran, sorted.
fn ran_ids(run: &Run, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = run
        .events
        .iter()
        .filter(|e| e["event"] == "stage-finished" && e["cached"] == false && e["kind"] == kind)
        .map(|e| e["stage"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Every file under the project outside `cache/` and `out/`, relative.
fn project_files(p: &TestProject) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(p.root())
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| p.root_rel(e.path()))
        .filter(|r| !r.starts_with("cache/") && !r.starts_with("out/"))
        .collect();
    v.sort();
    v
}

trait Rel {
    fn root_rel(&self, path: &Path) -> String;
}
impl Rel for TestProject {
    fn root_rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root())
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

#[test]
fn a_clip_builds_into_frames_named_by_clip_and_time_and_a_second_build_decodes_nothing() {
    let p = project(&[("a.mp4", 1)]);
    let files_before = project_files(&p);
    let first = p.build("clips");
    assert_eq!(
        ran_ids(&first, "crop"),
        vec![
            "crop/clips/a.mp4@0.000s",
            "crop/clips/a.mp4@1.000s",
            "crop/clips/a.mp4@2.000s",
            "crop/photos/one.png",
            "crop/photos/two.png",
        ]
    );
    assert_eq!(first.ran_of_kind("pairs"), 5);
    assert_eq!(first.ran_of_kind("train-teacher"), 1);
    assert_eq!(
        project_files(&p),
        files_before,
        "frames are extracted into the cache, never into the project"
    );
    assert!(p.cache_dir().join("frames/sets").is_dir());
    // A no-op build finds the frames in the cache: with no ffmpeg at all it still builds.
    let mut c = p.command(&["build", "--json", "clips"]);
    c.env("EFFECTC_FFMPEG", p.root().join("no-such-ffmpeg"));
    let out = c.output().unwrap();
    let second = Run {
        events: String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        output: out,
    };
    assert_eq!(second.code(), 0, "{}", second.stderr());
    assert_eq!(second.ran(), 0, "ran: {:?}", second.ran_stages());
    // `check` lowers the same recipe without decoding anything, and agrees it is fine.
    let check = p.run(&["check", "clips"]);
    assert_eq!(check.code(), 0, "{}", check.stderr());
}

#[test]
fn raising_fps_adds_frames_and_reruns_nothing_of_the_existing_ones() {
    let p = project(&[("a.mp4", 1)]);
    p.build("clips");
    p.recipe("clips", &RECIPE.replace("fps=1", "fps=2"));
    let r = p.build("clips");
    let new = vec![
        "crop/clips/a.mp4@0.500s",
        "crop/clips/a.mp4@1.500s",
        "crop/clips/a.mp4@2.500s",
    ];
    assert_eq!(ran_ids(&r, "crop"), new, "only the new frames are cropped");
    assert_eq!(
        ran_ids(&r, "pairs"),
        new.iter()
            .map(|s| s.replace("crop/", "pairs/"))
            .collect::<Vec<_>>()
    );
    for old in ["0.000", "1.000", "2.000"] {
        let e = r.stage(&format!("crop/clips/a.mp4@{old}s"));
        assert_eq!(e["cached"], true, "{old}s was cropped before");
    }
    assert_eq!(
        r.ran_of_kind("train-teacher"),
        1,
        "more items, a new teacher"
    );
}

#[test]
fn a_clip_re_encoded_to_the_same_frames_changes_nothing_downstream() {
    let p = project(&[("a.mp4", 1)]);
    let first = p.build("clips");
    assert!(first.ran() > 0);
    // Re-encode the decoded frames losslessly (x264 at qp 0, another codec setting,
    // other bytes) and put the result under the same name.
    let clip = p.root().join("clips/a.mp4");
    let other = p.root().join("a-lossless.mp4");
    ffmpeg(&[
        "-i",
        clip.to_str().unwrap(),
        "-c:v",
        "libx264",
        "-qp",
        "0",
        "-preset",
        "veryslow",
        "-pix_fmt",
        "yuv420p",
        other.to_str().unwrap(),
    ]);
    let before = std::fs::read(&clip).unwrap();
    std::fs::rename(&other, &clip).unwrap();
    assert_ne!(
        std::fs::read(&clip).unwrap(),
        before,
        "the clip's bytes changed"
    );
    let sets = || {
        std::fs::read_dir(p.cache_dir().join("frames/sets"))
            .unwrap()
            .count()
    };
    let sets_before = sets();
    let r = p.build("clips");
    assert_eq!(sets(), sets_before + 1, "the new clip was decoded");
    assert_eq!(
        r.ran(),
        0,
        "same pixels, same keys: ran {:?}",
        r.ran_stages()
    );
}

#[test]
fn the_holdout_split_is_by_clip_so_no_frame_of_a_clip_is_on_both_sides() {
    let clips: Vec<(String, u8)> = (0..6).map(|i| (format!("c{i}.mp4"), i as u8 + 1)).collect();
    let refs: Vec<(&str, u8)> = clips.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let p = project(&refs);
    p.recipe(
        "clips",
        &RECIPE
            .replace("fps=1", "fps=2")
            .replace("holdout 0.2", "holdout 0.5"),
    );
    p.build("clips");
    // The teacher's record names each input `train/ITEM/source` or `holdout/ITEM/source`.
    let record = walkdir::WalkDir::new(p.cache_dir().join("records"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.path()).ok()?).ok()
        })
        .find(|r| r["stage_id"] == "train-teacher")
        .expect("the teacher's record");
    let mut side_of_clip: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut frames = Vec::new();
    for name in record["inputs"].as_object().unwrap().keys() {
        let Some(item) = name.strip_suffix("/source") else {
            continue;
        };
        let (side, item) = item.split_once('/').unwrap();
        if let Some((clip, _)) = item.split_once('@') {
            side_of_clip
                .entry(clip.to_string())
                .or_default()
                .insert(side.to_string());
            frames.push(item.to_string());
        }
    }
    assert_eq!(side_of_clip.len(), 6);
    assert_eq!(frames.len(), 36, "6 frames of each of 6 clips");
    for (clip, sides) in &side_of_clip {
        assert_eq!(sides.len(), 1, "{clip} has frames on both sides: {sides:?}");
    }
    let held: usize = side_of_clip
        .values()
        .filter(|s| s.contains("holdout"))
        .count();
    assert!(
        held > 0 && held < 6,
        "both sides have clips ({held} held out)"
    );
    // The test has teeth: split by the frames' own names, some clip would straddle.
    let straddles = side_of_clip.keys().any(|clip| {
        let sides: std::collections::BTreeSet<bool> = frames
            .iter()
            .filter(|f| f.starts_with(&format!("{clip}@")))
            .map(|f| effectc::plan::lower::is_holdout(f, 0.5))
            .collect();
        sides.len() == 2
    });
    assert!(straddles, "hashing frame names would have leaked frames");
}

#[test]
fn an_unreadable_clip_fails_alone_naming_the_file_and_ffmpegs_message() {
    let p = project(&[("good.mp4", 2)]);
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(p.root().join("clips/bad.mp4"), noise).unwrap();
    let r = p.run(&["build", "--json", "clips"]);
    assert_eq!(r.code(), 1, "the data's fault: {}", r.stderr());
    let failed: Vec<&serde_json::Value> = r
        .events
        .iter()
        .filter(|e| e["event"] == "source-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", r.events);
    assert_eq!(failed[0]["source"], "clips/bad.mp4");
    assert_eq!(failed[0]["tier"], "input");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("clips/bad.mp4")
            && error.contains("Invalid data found when processing input"),
        "names the file and ffmpeg's last line: {error}"
    );
    // The photos and the good clip went on, all the way to the model.
    assert_eq!(
        ran_ids(&r, "crop"),
        vec![
            "crop/clips/good.mp4@0.000s",
            "crop/clips/good.mp4@1.000s",
            "crop/clips/good.mp4@2.000s",
            "crop/photos/one.png",
            "crop/photos/two.png",
        ]
    );
    assert_eq!(r.ran_of_kind("distill-student"), 1);
    assert_eq!(r.finished()["failed"], 1);
    assert_eq!(r.finished()["ok"], false);
    // `plan` says so too, before any work.
    let plan = p.run(&["plan", "clips"]);
    assert!(
        plan.stdout()
            .contains("left out: clips/bad.mp4: ffmpeg cannot read clips/bad.mp4"),
        "{}",
        plan.stdout()
    );
    // People read the same.
    let human = p.run(&["build", "clips"]);
    assert_eq!(human.code(), 1);
    assert!(
        human
            .stderr()
            .contains("error: source clips/bad.mp4 left out: ffmpeg cannot read clips/bad.mp4: ")
            && human
                .stderr()
                .contains("Invalid data found when processing input"),
        "{}",
        human.stderr()
    );
}

#[test]
fn without_ffmpeg_the_build_stops_naming_the_debian_package() {
    let p = project(&[]);
    std::fs::create_dir_all(p.root().join("clips")).unwrap();
    std::fs::write(p.root().join("clips/a.mp4"), b"not decoded").unwrap();
    let mut c = p.command(&["build", "--json", "clips"]);
    c.env("EFFECTC_FFMPEG", p.root().join("no-such-ffmpeg"));
    let out = c.output().unwrap();
    let r = Run {
        events: String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        output: out,
    };
    assert_eq!(r.code(), 3, "the machine's fault: {}", r.stderr());
    let failed = r
        .events
        .iter()
        .find(|e| e["event"] == "source-failed")
        .expect("source-failed");
    assert_eq!(failed["tier"], "environment");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("install the Debian package `ffmpeg`"),
        "{failed}"
    );
    assert_eq!(r.ran(), 0, "nothing runs on a machine without ffmpeg");
}

#[test]
fn gc_keeps_the_frames_a_build_reads_and_drops_the_rest() {
    let p = project(&[("a.mp4", 1)]);
    p.build("clips");
    let frames = || {
        walkdir::WalkDir::new(p.cache_dir().join("frames/px"))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .count()
    };
    assert_eq!(frames(), 3);
    let gc = p.run(&["cache", "gc"]);
    assert_eq!(gc.code(), 0, "{}", gc.stderr());
    assert_eq!(frames(), 3, "the last build's crops read them");
    // Without the video, no kept record reads a frame: gc drops them and their set.
    p.recipe(
        "clips",
        &RECIPE.replace("        video \"clips/*.mp4\" fps=1\n", ""),
    );
    p.build("clips");
    let gc = p.run(&["cache", "gc"]);
    assert_eq!(gc.code(), 0, "{}", gc.stderr());
    assert_eq!(frames(), 0);
    assert_eq!(
        std::fs::read_dir(p.cache_dir().join("frames/sets"))
            .unwrap()
            .count(),
        0
    );
    // Put back, the clip is decoded again and builds from the cache's records.
    p.recipe("clips", RECIPE);
    let r = p.build("clips");
    assert_eq!(frames(), 3);
    assert_eq!(r.ran_of_kind("crop"), 3, "gc removed their records too");
}
