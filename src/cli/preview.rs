//! `effectc preview EFFECT [INPUT...]`: the built student, through one target's shipped
//! file run with tract, on a person's own photos, folders and videos. Writes
//! `before | after` PNGs (an MP4 for a video, re-encoded with ffmpeg, audio kept) and a
//! page showing them into `out/EFFECT/preview/`, and prints the frames per second tract
//! reached (one thread, model time only).

use super::commands::Env;
use super::exit::Exit;
use crate::imaging::crop::center_crop_resize;
use crate::preview::{grid_of, off_grid, side_by_side, PreviewModel, Shipped};
use crate::recipe::{Loader, Precision, Recipe, TargetFormat, TargetSpec};
use image::RgbImage;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct PreviewArgs {
    pub effect: String,
    pub inputs: Vec<PathBuf>,
    pub target: Option<String>,
    pub size: Option<u32>,
    pub crop: Option<String>,
}

const IMAGE_EXT: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];
const VIDEO_EXT: &[&str] = &["mp4", "mov", "m4v", "mkv", "webm", "avi"];

fn ext_of(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// One entry of the page.
enum Shown {
    Image {
        file: String,
        source: PathBuf,
    },
    Video {
        file: String,
        source: PathBuf,
        frames: usize,
    },
}

/// Model time and frames over the whole run.
#[derive(Default)]
struct Clock {
    seconds: f64,
    frames: usize,
}

impl Clock {
    fn fps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.frames as f64 / self.seconds
        } else {
            0.0
        }
    }
}

pub fn run(env: &Env, args: PreviewArgs) -> Result<Exit, Exit> {
    let loader = Loader::new(&env.project);
    let recipe = loader.load(&args.effect).map_err(|d| {
        eprintln!("{}", d.render(std::io::stderr().is_terminal()));
        Exit::Usage
    })?;
    if let Some(c) = args.crop.as_deref().filter(|c| *c != "center") {
        eprintln!(
            "error: --crop {c}: preview crops `center` (the face crop is not implemented yet)"
        );
        return Err(Exit::Usage);
    }
    let target = pick_target(&recipe, args.target.as_deref())?;
    let out_dir = env.project.root.join("out").join(&recipe.name);
    let shipped = built_files(&recipe, target, &out_dir)?;
    let (model, size) = load_model(&recipe, target, &shipped, args.size)?;
    if args.inputs.is_empty() {
        eprintln!(
            "error: give photos, folders or videos to preview: `effectc preview {} PHOTO...`",
            recipe.name
        );
        return Err(Exit::Usage);
    }

    // Everything is written into a staging folder beside `preview/` and moved in only
    // once the page is ready: an error or Ctrl-C leaves the last preview as it was.
    let dir = out_dir.join("preview");
    remove_stale_staging(&out_dir);
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(&out_dir)
        .map_err(|e| infra(&out_dir, e))?;
    let cancel = cancel_on_ctrl_c();
    let (files, mut skipped) = gather_inputs(&args.inputs);
    let mut session = Session {
        model: &model,
        staging: staging.path(),
        clock: Clock::default(),
        progress: Progress::new(cancel, photo_count(&files)),
    };
    let shown = session.preview_all(&files, &mut skipped, &dir)?;
    for (p, why) in skipped.iter().filter(|(p, _)| !files.contains(p)) {
        eprintln!("skipped {}: {why}", p.display());
    }
    let clock = session.clock;
    let page = dir.join("index.html");
    let html = page_html(
        &recipe.name,
        &target.name.value,
        shipped.path(),
        size,
        &clock,
        &shown,
        &skipped,
    );
    publish(staging.path(), &dir, &shown, html.as_bytes())?;
    let summary = Summary {
        effect: &recipe.name,
        target: &target.name.value,
        model: shipped.path(),
        size,
        clock: &clock,
        shown: shown.len(),
        skipped: &skipped,
        page: &page,
    };
    summary.print(env.json);
    Ok(if shown.is_empty() {
        Exit::Failed
    } else {
        Exit::Ok
    })
}

/// The target `--target` names, else the recipe's first.
fn pick_target<'r>(recipe: &'r Recipe, name: Option<&str>) -> Result<&'r TargetSpec, Exit> {
    match name {
        Some(t) => recipe
            .targets
            .iter()
            .find(|s| s.name.value == *t)
            .ok_or_else(|| {
                eprintln!(
                    "error: effect `{}` has no target `{t}` (its targets: {})",
                    recipe.name,
                    recipe
                        .targets
                        .iter()
                        .map(|s| s.name.value.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Exit::Usage
            }),
        // The recipe's first target: every target previews at about the fp32 model's
        // speed (int8 TFLite through verify::int8, Core ML's fp16 through verify::fp16).
        None => recipe
            .targets
            .first()
            .ok_or_else(|| {
            eprintln!(
                "error: effect `{}` has no target to preview: add one (`target \"onnx\" quantize=\"fp32\"`) and `effectc build {}`",
                recipe.name, recipe.name
            );
            Exit::Usage
        }),
    }
}

/// The target's files as `effectc build` copied them out of the `target:NAME` stage
/// (materialize); a missing one says to build first.
fn built_files(recipe: &Recipe, target: &TargetSpec, out_dir: &Path) -> Result<Shipped, Exit> {
    let stem = out_dir.join(format!("target-{}-model", target.name.value));
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
    let shipped = match target.profile.format {
        TargetFormat::Onnx => Shipped::Onnx(with("onnx")),
        TargetFormat::Tflite => Shipped::Tflite {
            shipped: with("tflite"),
            core: (target.precision == Precision::Int8).then(|| with("core.tflite")),
        },
        TargetFormat::Mlpackage => Shipped::MlPackage(with("mlpackage")),
    };
    let needed: Vec<&Path> = match &shipped {
        Shipped::Tflite {
            shipped,
            core: Some(c),
        } => vec![shipped.as_path(), c.as_path()],
        s => vec![s.path()],
    };
    if let Some(missing) = needed.iter().find(|p| !p.exists()) {
        eprintln!(
            "error: effect `{}` is not built for target `{}` ({} is missing): run `effectc build {}` first",
            recipe.name,
            target.name.value,
            missing.display(),
            recipe.name
        );
        return Err(Exit::Failed);
    }
    Ok(shipped)
}

/// The model loaded at the preview size (`--size`, else the recipe's crop), a size off
/// the model's grid refused up front, with the multiple, rather than deep inside tract.
fn load_model(
    recipe: &Recipe,
    target: &TargetSpec,
    shipped: &Shipped,
    size: Option<u32>,
) -> Result<(PreviewModel, usize), Exit> {
    let size = size.unwrap_or(recipe.sources.crop.size_px) as usize;
    if size == 0 {
        eprintln!("error: --size 0: give a number of pixels");
        return Err(Exit::Usage);
    }
    let grid = grid_of(shipped).map_err(|e| {
        eprintln!("error: cannot read the {} model: {e}", target.name.value);
        Exit::Usage
    })?;
    if size % grid != 0 {
        eprintln!("error: {}", off_grid(size, grid));
        return Err(Exit::Usage);
    }
    let model = PreviewModel::load(shipped, size).map_err(|e| {
        eprintln!("error: cannot load the {} model: {e}", target.name.value);
        Exit::Usage
    })?;
    Ok((model, size))
}

/// Set on the first Ctrl-C: stop after this frame and clean up; a second one quits at
/// once (what it leaves is a hidden staging folder, removed by the next preview).
fn cancel_on_ctrl_c() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(Exit::Interrupted.code());
        }
        eprintln!("\ninterrupted: stopping after this frame (Ctrl-C again to quit now)");
    });
    cancel
}

/// The files to preview (a folder's images and videos, by name) and the inputs skipped
/// with why.
fn gather_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(input)
                .sort_by_file_name()
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .filter(|p| {
                    let e = ext_of(p);
                    IMAGE_EXT.contains(&e.as_str()) || VIDEO_EXT.contains(&e.as_str())
                })
                .collect();
            if found.is_empty() {
                skipped.push((input.clone(), "no images or videos in this folder".into()));
            }
            files.append(&mut found);
        } else if input.exists() {
            files.push(input.clone());
        } else {
            skipped.push((input.clone(), "does not exist".into()));
        }
    }
    (files, skipped)
}

/// How many of `files` are photos (the progress line counts them).
fn photo_count(files: &[PathBuf]) -> usize {
    files
        .iter()
        .filter(|f| !VIDEO_EXT.contains(&ext_of(f).as_str()))
        .count()
}

/// What the loop over the files shares: the model, where it writes, the clock and
/// the progress line.
struct Session<'a> {
    model: &'a PreviewModel,
    staging: &'a Path,
    clock: Clock,
    progress: Progress,
}

impl Session<'_> {
    /// Previews each file into the staging folder; a file that fails is skipped with
    /// why, Ctrl-C stops the run and leaves `dir` as it was.
    fn preview_all(
        &mut self,
        files: &[PathBuf],
        skipped: &mut Vec<(PathBuf, String)>,
        dir: &Path,
    ) -> Result<Vec<Shown>, Exit> {
        let mut shown = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for file in files {
            let base = unique_name(&mut names, file);
            let result = self.preview_one(file, &base);
            if self.progress.cancelled() {
                eprintln!("interrupted: {} left as it was", dir.display());
                return Err(Exit::Interrupted);
            }
            match result {
                Ok(s) => shown.push(s),
                Err(why) => {
                    eprintln!("skipped {}: {why}", file.display());
                    skipped.push((file.clone(), why));
                }
            }
        }
        Ok(shown)
    }

    /// One photo (`BASE.png`) or video (`BASE.mp4`).
    fn preview_one(&mut self, file: &Path, base: &str) -> Result<Shown, String> {
        if VIDEO_EXT.contains(&ext_of(file).as_str()) {
            let out = format!("{base}.mp4");
            let to = self.staging.join(&out);
            preview_video(self.model, file, &to, &mut self.clock, &mut self.progress).map(
                |frames| Shown::Video {
                    file: out,
                    source: file.to_path_buf(),
                    frames,
                },
            )
        } else {
            let out = format!("{base}.png");
            let to = self.staging.join(&out);
            let r = preview_image(self.model, file, &to, &mut self.clock).map(|()| Shown::Image {
                file: out,
                source: file.to_path_buf(),
            });
            self.progress.photo(self.clock.fps());
            r
        }
    }
}

/// What the run prints at the end: a line for people, an event under `--json`.
struct Summary<'a> {
    effect: &'a str,
    target: &'a str,
    model: &'a Path,
    size: usize,
    clock: &'a Clock,
    shown: usize,
    skipped: &'a [(PathBuf, String)],
    page: &'a Path,
}

impl Summary<'_> {
    fn print(&self, json: bool) {
        let Summary {
            effect,
            target,
            model,
            size,
            clock,
            shown,
            skipped,
            page,
        } = self;
        let fps = clock.fps();
        if json {
            println!(
                "{}",
                serde_json::json!({"event": "preview-finished", "effect": effect, "target": target,
                    "size": size, "frames": clock.frames, "fps": fps, "shown": shown,
                    "skipped": skipped.iter().map(|(p, w)| serde_json::json!({"input": p, "reason": w})).collect::<Vec<_>>(),
                    "page": page})
            );
        } else {
            println!(
                "preview {effect} through {target} ({}) at {size}x{size}: {} frame(s), {fps:.1} frames/s in tract (one thread, model time)",
                model.display(),
                clock.frames
            );
            println!("page: {}", page.display());
        }
    }
}

/// Staging folders are `out/EFFECT/.preview-XXXX`.
const STAGING_PREFIX: &str = ".preview-";

/// Removes staging folders a preview quit at once (a second Ctrl-C) left behind.
fn remove_stale_staging(out_dir: &Path) {
    for e in std::fs::read_dir(out_dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Moves the staged pictures and videos into `dir` (renames in one file system), then
/// writes the page (the one atomic write), then drops what an earlier preview left
/// that this one did not write. Until the page is renamed in, the old page stands.
fn publish(staging: &Path, dir: &Path, shown: &[Shown], page: &[u8]) -> Result<(), Exit> {
    std::fs::create_dir_all(dir).map_err(|e| infra(dir, e))?;
    let mut keep = std::collections::BTreeSet::from(["index.html".to_string()]);
    for s in shown {
        let (Shown::Image { file, .. } | Shown::Video { file, .. }) = s;
        let to = dir.join(file);
        std::fs::rename(staging.join(file), &to).map_err(|e| infra(&to, e))?;
        keep.insert(file.clone());
    }
    let index = dir.join("index.html");
    crate::atomic::write(&index, page).map_err(|e| infra(&index, e))?;
    for e in std::fs::read_dir(dir).map_err(|e| infra(dir, e))?.flatten() {
        if !keep.contains(&*e.file_name().to_string_lossy()) {
            let p = e.path();
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            gone.map_err(|e| infra(&p, e))?;
        }
    }
    crate::atomic::sync_folder(dir).map_err(|e| infra(dir, e))
}

/// Progress on stderr (`NAME: frame i/N`) and the Ctrl-C flag the frame loops check.
/// On a terminal every frame rewrites one line; otherwise a line at the first and the
/// last frame and at most one a second between.
struct Progress {
    cancel: Arc<AtomicBool>,
    tty: bool,
    photos: usize,
    photo: usize,
    last: Option<std::time::Instant>,
}

impl Progress {
    fn new(cancel: Arc<AtomicBool>, photos: usize) -> Progress {
        Progress {
            cancel,
            tty: std::io::stderr().is_terminal(),
            photos,
            photo: 0,
            last: None,
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Frame `i` (from 1) of `n` (0: not known) of `name` is done.
    fn frame(&mut self, name: &str, i: usize, n: usize, fps: f64) {
        let of = if n > 0 {
            format!("/{n}")
        } else {
            String::new()
        };
        let line = format!("{name}: frame {i}{of} ({fps:.1} frames/s)");
        let last_one = n > 0 && i >= n;
        if self.tty {
            eprint!("\r\x1b[K{line}");
            if last_one {
                eprintln!();
            }
            return;
        }
        let due = self.last.is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0);
        if i == 1 || last_one || due {
            eprintln!("{line}");
            self.last = Some(std::time::Instant::now());
        }
    }

    /// One more photo done.
    fn photo(&mut self, fps: f64) {
        self.photo += 1;
        let (i, n) = (self.photo, self.photos);
        self.frame("photos", i, n, fps);
    }
}

fn infra(path: &Path, e: std::io::Error) -> Exit {
    eprintln!("error: {}: {e}", path.display());
    Exit::Infra
}

/// A file name for `input`'s output: its stem, made safe, numbered when taken.
fn unique_name(taken: &mut std::collections::BTreeSet<String>, input: &Path) -> String {
    let stem: String = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = stem.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{stem}-{n}");
        n += 1;
    }
    name
}

fn preview_image(
    model: &PreviewModel,
    input: &Path,
    out: &Path,
    clock: &mut Clock,
) -> Result<(), String> {
    let img = image::open(input)
        .map_err(|e| format!("cannot decode it as an image ({e})"))?
        .to_rgb8();
    let before = center_crop_resize(&img, model.size() as u32);
    let (after, seconds) = model.run(&before)?;
    clock.seconds += seconds;
    clock.frames += 1;
    crate::imaging::write_png(&side_by_side(&before, &after), out).map_err(|e| e.to_string())
}

/// The frame rate of the video's first video stream and its frame count (0 where the
/// container does not say), by ffprobe.
fn video_info(input: &Path) -> Result<(String, usize), String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=avg_frame_rate,nb_frames",
            "-of",
            "json",
        ])
        .arg(input)
        .output()
        .map_err(|e| format!("cannot run ffprobe ({e}); install ffmpeg"))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let stream = &info["streams"][0];
    let fps = stream["avg_frame_rate"].as_str().unwrap_or("").to_string();
    if !out.status.success() || fps.is_empty() || fps.starts_with("0/") {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(format!(
            "cannot decode it as a video ({})",
            if why.is_empty() {
                "no video stream".into()
            } else {
                why
            }
        ));
    }
    let frames = stream["nb_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((fps, frames))
}

/// Decodes `input` with ffmpeg (short side to the size, centre square, as the recipe's
/// crop), runs every frame, and encodes `before | after` with the source's audio.
fn preview_video(
    model: &PreviewModel,
    input: &Path,
    out: &Path,
    clock: &mut Clock,
    progress: &mut Progress,
) -> Result<usize, String> {
    let (fps, total) = video_info(input)?;
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut decoder = spawn_decoder(input, model.size())?;
    let mut encoder = spawn_encoder(input, out, model.size(), &fps)?;
    let mut reader = decoder.stdout.take().ok_or("ffmpeg gave no output")?;
    let mut writer = encoder.stdin.take().ok_or("ffmpeg took no input")?;
    let mut frames = FrameLoop {
        model,
        name,
        total,
        clock,
        progress,
        done: 0,
    };
    let failure = frames.run(&mut reader, &mut writer).err();
    let done = frames.done;
    // Closing both pipes lets the two ffmpegs finish before they are waited on.
    drop(writer);
    drop(reader);
    finish_video(decoder, encoder, done, failure, out)
}

/// The ffmpeg that reads `input` as raw RGB frames of `s`x`s`, cropped as the recipe does.
fn spawn_decoder(input: &Path, s: usize) -> Result<Child, String> {
    let filter =
        format!("scale={s}:{s}:force_original_aspect_ratio=increase:flags=lanczos,crop={s}:{s}");
    ffmpeg()
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(input)
        .args([
            "-map", "0:v:0", "-vf", &filter, "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ffmpeg ({e}); install ffmpeg"))
}

/// The ffmpeg that writes the `2s`x`s` side-by-side frames to `out` as H.264, at the
/// source's frame rate and with its audio, if any.
fn spawn_encoder(input: &Path, out: &Path, s: usize, fps: &str) -> Result<Child, String> {
    ffmpeg()
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            &format!("{}x{s}", 2 * s),
            "-r",
            fps,
            "-i",
            "-",
            "-i",
        ])
        .arg(input)
        .args([
            "-map",
            "0:v:0",
            "-map",
            "1:a?",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-crf",
            "18",
            "-c:a",
            "aac",
            "-shortest",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
        ])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ffmpeg ({e}); install ffmpeg"))
}

/// What the frame loop of one video shares: the model, the progress line's name and
/// count, the run's clock, and how many frames went through so far.
struct FrameLoop<'a> {
    model: &'a PreviewModel,
    name: String,
    total: usize,
    clock: &'a mut Clock,
    progress: &'a mut Progress,
    done: usize,
}

impl FrameLoop<'_> {
    /// Runs frames from the decoder into the encoder until the video ends; the error
    /// says why it stopped early (and the preview is then removed).
    fn run(&mut self, reader: &mut impl Read, writer: &mut impl Write) -> Result<(), String> {
        let s = self.model.size();
        let mut buf = vec![0u8; s * s * 3];
        while read_frame(reader, &mut buf).map_err(|e| format!("reading frames: {e}"))? {
            let before = RgbImage::from_raw(s as u32, s as u32, buf.clone())
                .ok_or("a frame of the wrong size")?;
            let (after, seconds) = self.model.run(&before)?;
            self.clock.seconds += seconds;
            self.clock.frames += 1;
            self.done += 1;
            self.progress
                .frame(&self.name, self.done, self.total, self.clock.fps());
            writer
                .write_all(side_by_side(&before, &after).as_raw())
                .map_err(|e| format!("the encoder stopped: {e}"))?;
            if self.progress.cancelled() {
                return Err("interrupted".into());
            }
        }
        Ok(())
    }
}

/// Waits for both ffmpegs and gives the frame count, or why the video failed (the
/// loop's own failure first, then the decoder's, then the encoder's), removing `out`.
fn finish_video(
    mut decoder: Child,
    mut encoder: Child,
    frames: usize,
    failure: Option<String>,
    out: &Path,
) -> Result<usize, String> {
    let dec_err = stderr_of(&mut decoder);
    let dec = decoder.wait().map_err(|e| e.to_string())?;
    let enc_err = stderr_of(&mut encoder);
    let enc = encoder.wait().map_err(|e| e.to_string())?;
    let fail = |why: String| {
        let _ = std::fs::remove_file(out);
        Err(why)
    };
    if let Some(why) = failure {
        return fail(why);
    }
    if !dec.success() || frames == 0 {
        return fail(format!(
            "cannot decode it as a video ({})",
            if dec_err.is_empty() {
                "no frames".into()
            } else {
                dec_err
            }
        ));
    }
    if !enc.success() {
        return fail(format!("ffmpeg could not encode the preview: {enc_err}"));
    }
    Ok(frames)
}

/// What a finished ffmpeg said on stderr, trimmed.
fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text.trim().to_string()
}

/// ffmpeg, dying with effectc (src/process.rs).
fn ffmpeg() -> Command {
    let mut cmd = Command::new("ffmpeg");
    crate::process::die_with_parent(&mut cmd);
    cmd
}

/// Fills `buf` with the next frame; false at a clean end of stream.
fn read_frame(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the video ended inside a frame",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page_html(
    effect: &str,
    target: &str,
    model: &Path,
    size: usize,
    clock: &Clock,
    shown: &[Shown],
    skipped: &[(PathBuf, String)],
) -> String {
    let mut body = String::new();
    for s in shown {
        match s {
            Shown::Image { file, source } => body.push_str(&format!(
                "<figure><img src=\"{f}\" alt=\"{src}: before and after\" width=\"{w}\" height=\"{size}\"><figcaption>{src}</figcaption></figure>\n",
                f = esc(file),
                src = esc(&source.display().to_string()),
                w = 2 * size
            )),
            Shown::Video {
                file,
                source,
                frames,
            } => body.push_str(&format!(
                "<figure><video src=\"{f}\" controls loop muted autoplay playsinline width=\"{w}\" height=\"{size}\"></video><figcaption>{src} ({frames} frames)</figcaption></figure>\n",
                f = esc(file),
                src = esc(&source.display().to_string()),
                w = 2 * size
            )),
        }
    }
    let skipped_html = if skipped.is_empty() {
        String::new()
    } else {
        let items: String = skipped
            .iter()
            .map(|(p, why)| {
                format!(
                    "<li><code>{}</code>: {}</li>",
                    esc(&p.display().to_string()),
                    esc(why)
                )
            })
            .collect();
        format!("<h2>Skipped</h2><ul>{items}</ul>")
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e} preview ({t})</title>\n\
<style>body{{font:15px system-ui,sans-serif;margin:24px;background:#f4f4f4;color:#222}}\
figure{{display:inline-block;margin:0 16px 16px 0;background:#fff;padding:8px;box-shadow:0 1px 3px #0003}}\
img,video{{display:block;max-width:100%;height:auto;image-rendering:pixelated}}figcaption{{font-size:13px;color:#555;margin-top:6px}}\
.cols{{display:flex;justify-content:space-around;font-weight:600;font-size:13px}}code{{font-size:13px}}</style></head>\n\
<body><h1>{e}: preview through <code>{t}</code></h1>\n\
<p>Each picture: the input (left) and the student as the <code>{t}</code> file computes it (right), at {size}×{size}, \
run with tract on this machine: {fps:.1} frames/s ({frames} frames, one thread, model time only). Model: <code>{m}</code>.</p>\n\
<div class=\"cols\" style=\"width:{w}px\"><span>before</span><span>after</span></div>\n{body}{skipped_html}\n</body></html>\n",
        e = esc(effect),
        t = esc(target),
        m = esc(&model.display().to_string()),
        fps = clock.fps(),
        frames = clock.frames,
        w = 2 * size
    )
}
