//! `effectc preview`: a tiny built effect run through each target's shipped file on a
//! real photo, a folder (with a file that does not decode) and a small generated video.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn with_targets(recipe: &str) -> String {
    recipe.replace(
        "    train {",
        "    target \"android-nnapi\" quantize=\"int8\"\n    target \"ios-coreml\" quantize=\"fp16\"\n    target \"onnx\" quantize=\"fp32\"\n    train {",
    )
}

fn png_size(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (width, height, frames, has audio) of a video, by ffprobe.
fn probe(p: &Path) -> (u32, u32, u32, bool) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut video = None;
    let mut audio = false;
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        match f[0] {
            "video" => {
                video = Some((
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                ))
            }
            "audio" => audio = true,
            _ => {}
        }
    }
    let (w, h, n) = video.unwrap_or_else(|| panic!("no video stream in {}: {text}", p.display()));
    (w, h, n, audio)
}

#[test]
fn preview_shows_photos_folders_and_video_through_each_target() {
    let p = TestProject::new();
    p.recipe("small", &with_targets(SMALL_BRICK));
    // Not built yet: the error names the command that builds it.
    let r = p.run(&[
        "preview",
        "small",
        sample_path("astronaut.png").to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("not built") && r.stderr().contains("`effectc build small`"),
        "{}",
        r.stderr()
    );
    p.build("small");

    // A photo, through the default target: the recipe's first, android-nnapi (int8
    // previews fast now: nothing is skipped, nothing said about it).
    let astronaut = sample_path("astronaut.png");
    let r = p.run(&["preview", "small", astronaut.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stderr(), r.stdout());
    assert!(
        r.stdout().contains("through android-nnapi") && r.stdout().contains("frames/s"),
        "{}",
        r.stdout()
    );
    assert!(!r.stderr().contains("slower"), "{}", r.stderr());
    // Progress: one photo of one.
    assert!(r.stderr().contains("photos: frame 1/1"), "{}", r.stderr());
    let dir = p.root().join("out/small/preview");
    assert_eq!(png_size(&dir.join("astronaut.png")), (64, 32));
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(page.contains("<img src=\"astronaut.png\""), "{page}");
    // The right half is the model's output, not the input copied.
    let pic = image::open(dir.join("astronaut.png")).unwrap().to_rgb8();
    let differs = (0..32u32)
        .flat_map(|y| (0..32u32).map(move |x| (x, y)))
        .filter(|&(x, y)| pic.get_pixel(x, y) != pic.get_pixel(x + 32, y))
        .count();
    assert!(
        differs > 100,
        "after looks like before ({differs} pixels differ)"
    );

    // A folder with a broken file, and a video with sound, at another size and target.
    let inputs = p.root().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::copy(sample_path("chelsea.png"), inputs.join("chelsea.png")).unwrap();
    std::fs::copy(sample_path("rocket.jpg"), inputs.join("rocket.jpg")).unwrap();
    std::fs::write(inputs.join("broken.png"), b"not a png at all").unwrap();
    let clip = p.root().join("clip.mp4");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=96x64:rate=10",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=22050",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(made.success());
    for target in ["ios-coreml", "onnx", "android-nnapi"] {
        let r = p.run(&[
            "preview",
            "small",
            "--target",
            target,
            "--size",
            "64",
            inputs.to_str().unwrap(),
            clip.to_str().unwrap(),
        ]);
        assert_eq!(r.code(), 0, "{target}: {}\n{}", r.stderr(), r.stdout());
        assert!(
            r.stderr().contains("skipped") && r.stderr().contains("broken.png"),
            "{target}: {}",
            r.stderr()
        );
        assert!(
            r.stdout().contains(&format!("through {target}")),
            "{}",
            r.stdout()
        );
        for name in ["chelsea.png", "rocket.png"] {
            assert_eq!(png_size(&dir.join(name)), (128, 64), "{target} {name}");
        }
        assert!(!dir.join("broken.png").exists());
        let (w, h, frames, audio) = probe(&dir.join("clip.mp4"));
        assert_eq!((w, h), (128, 64), "{target}");
        assert!(frames >= 9, "{target}: {frames} frames");
        // Progress on stderr: the clip's first and last frame of its count.
        let stderr = r.stderr();
        let counts: Vec<(usize, usize)> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("clip.mp4: frame "))
            .filter_map(|l| {
                let (i, n) = l.split_once(' ')?.0.split_once('/')?;
                Some((i.parse().ok()?, n.parse().ok()?))
            })
            .collect();
        assert_eq!(counts.first().map(|c| c.0), Some(1), "{target}: {stderr}");
        assert!(
            counts.last().is_some_and(|(i, n)| i == n && *n >= 9),
            "{target}: {stderr}"
        );
        assert!(audio, "{target}: the audio is kept");
        let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
        for needle in [
            "src=\"chelsea.png\"",
            "src=\"rocket.png\"",
            "src=\"clip.mp4\"",
            "broken.png",
        ] {
            assert!(page.contains(needle), "{target}: page lacks {needle}");
        }
    }

    // Nothing decodes: named, and the run fails.
    let r = p.run(&[
        "preview",
        "small",
        inputs.join("broken.png").to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("broken.png") && r.stderr().contains("cannot decode"),
        "{}",
        r.stderr()
    );
    // A size off the model's grid is refused with the reason.
    let r = p.run(&[
        "preview",
        "small",
        "--size",
        "36",
        astronaut.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("multiple of"), "{}", r.stderr());
    // Through every target, up front, in the same words: this net samples down 8x.
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for target in ["ios-coreml", "onnx", "android-nnapi"] {
        let r = p.run(&[
            "preview",
            "small",
            "--target",
            target,
            "--size",
            "100",
            astronaut.to_str().unwrap(),
        ]);
        assert_eq!(r.code(), 2, "{target}: {}", r.stderr());
        assert!(
            r.stderr()
                .contains("--size 100 is not on the model's grid: it samples down 8x, so pick a multiple of 8 (e.g. 96 or 104)"),
            "{target}: {}",
            r.stderr()
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("index.html")).unwrap(),
        page
    );

    // Ctrl-C in a long clip: exit 130, the last preview left exactly as it was, no
    // partial file and no staging folder.
    let long = p.root().join("long.mp4");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=128x128:rate=30",
            "-t",
            "30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&long)
        .status()
        .unwrap();
    assert!(made.success());
    let before: Vec<_> = list(&dir);
    let mut child = p
        .command(&[
            "preview",
            "small",
            "--target",
            "onnx",
            "--size",
            "128",
            long.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // Wait for the first frame's progress line, then interrupt.
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "the preview ended before its first frame: {seen}");
        seen.push_str(&line);
        if line.contains("long.mp4: frame 1/900") {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("interrupted"), "{seen}");
    assert!(
        !seen.contains("frame 900/900"),
        "it finished before the signal: {seen}"
    );
    assert_eq!(list(&dir), before);
    assert_eq!(
        std::fs::read_to_string(dir.join("index.html")).unwrap(),
        page
    );
    let leftovers: Vec<_> = std::fs::read_dir(p.root().join("out/small"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".preview-") || n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// (name, bytes) of every file in `dir`, sorted.
fn list(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The shipped TFLite file declared for another size is exactly what the writer gives
/// for the same net at that size (shapes, RESHAPE targets and all).
#[test]
fn a_tflite_file_rescaled_is_the_file_written_at_that_size() {
    use effectc::export::tflite::{write, TflitePrecision};
    use effectc::ir::sample::student_like;
    use effectc::tflite::parse;
    let at = |px| {
        write(&student_like(8, px, 1), TflitePrecision::Float32)
            .unwrap()
            .shipped
    };
    let rescaled = effectc::export::tflite_size::tflite_at_size(&at(32), 64).unwrap();
    let (got, want) = (parse(&rescaled).unwrap(), parse(&at(64)).unwrap());
    for (g, w) in got.tensors.iter().zip(&want.tensors) {
        assert_eq!((&g.name, &g.shape), (&w.name, &w.shape));
    }
    assert!(
        got == want,
        "the rescaled file differs beyond tensor shapes"
    );
    // This net samples down 4x: 34 px would need an 8.5-pixel feature map.
    let err = effectc::export::tflite_size::tflite_at_size(&at(32), 34)
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiple of 4"), "{err}");
}
