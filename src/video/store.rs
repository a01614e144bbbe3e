//! Extracted frames live in the cache, never in the project:
//!
//! ```text
//! cache/frames/
//!   sets/<key>.json       the frames of one clip at one fps: [(time, pixel digest)];
//!                         key = H(extractor version, the clip file's digest, fps)
//!   px/ab/<digest>.png    one decoded frame, named by the digest of its pixels
//! ```
//!
//! A build looks its clips up by key (the clip's digest comes from the stat cache), so a
//! no-op build runs no ffmpeg. A frame's digest covers its decoded pixels (and size), not
//! the clip's bytes: a clip re-encoded to the same pixels, or the same frame reached at
//! a higher fps, gives the same digest, and every stage after it keeps its key. Every
//! file is written atomically (`atomic.rs`), frames before the set that names them; a
//! set whose frames were removed (`cache gc`) is extracted again.

use super::ffmpeg::{self, VideoError};
use super::select::{Selector, TimeBase};
use crate::digest::{Digest, KeyHasher};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bump when extraction changes which frames or pixels it gives.
const EXTRACTOR_VERSION: u64 = 1;

/// One selected frame of a clip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Its grid time, in microseconds (`select::target_us`).
    pub time_us: u64,
    /// The digest of its decoded pixels (`pixel_digest`).
    pub digest: Digest,
}

/// The digest of decoded RGB pixels and their size.
pub fn pixel_digest(width: u32, height: u32, rgb: &[u8]) -> Digest {
    let mut h = KeyHasher::new("effectc/frame-pixels/v1");
    h.u64(width as u64).u64(height as u64).bytes(rgb);
    h.finish()
}

/// The frames folder of a cache, and what extraction cost (for reports and tests).
pub struct FrameStore {
    root: PathBuf,
    /// The cache folder `frames/` is in: plan-time scans of photos (faces found,
    /// perceptual hashes) are kept beside it (`plan::lower::scan`).
    cache_root: PathBuf,
    /// Photos and frames the face detector ran on while planning (`faces="all"`), and
    /// items hashed for `dedupe` (not found in the cache), with the time taken.
    pub face_scans: usize,
    pub hashed_items: usize,
    pub scan_time: std::time::Duration,
    /// Clips decoded by this store (not found in the cache).
    pub decoded_clips: usize,
    /// Frames written by those decodes, and the time they took.
    pub decoded_frames: usize,
    pub decode_time: std::time::Duration,
}

impl FrameStore {
    pub fn new(cache_root: &Path) -> FrameStore {
        FrameStore {
            root: cache_root.join("frames"),
            cache_root: cache_root.to_path_buf(),
            face_scans: 0,
            hashed_items: 0,
            scan_time: std::time::Duration::ZERO,
            decoded_clips: 0,
            decoded_frames: 0,
            decode_time: std::time::Duration::ZERO,
        }
    }

    /// The cache folder this store's `frames/` is in.
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// Where the frame with pixel digest `d` is stored (a PNG).
    pub fn frame_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join("px")
            .join(&hex[..2])
            .join(format!("{hex}.png"))
    }

    fn set_path(&self, clip_digest: &Digest, fps: f64) -> PathBuf {
        let mut h = KeyHasher::new("effectc/frame-set/v1");
        h.u64(EXTRACTOR_VERSION)
            .digest(clip_digest)
            .u64(fps.to_bits());
        self.root
            .join("sets")
            .join(format!("{}.json", h.finish().hex()))
    }

    /// The frames of `clip` (whose file digest is `clip_digest`) at `fps`: from the
    /// cache when it has them all, else decoded with ffmpeg and stored.
    pub fn frames(
        &mut self,
        clip: &Path,
        name: &str,
        clip_digest: &Digest,
        fps: f64,
    ) -> Result<Vec<Frame>, VideoError> {
        let set = self.set_path(clip_digest, fps);
        if let Some(frames) = std::fs::read(&set)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Frame>>(&b).ok())
        {
            if frames.iter().all(|f| self.frame_path(&f.digest).is_file()) {
                return Ok(frames);
            }
        }
        let started = std::time::Instant::now();
        let frames = self.extract(clip, name, fps)?;
        self.decode_time += started.elapsed();
        self.decoded_clips += 1;
        self.decoded_frames += frames.len();
        let bytes = serde_json::to_vec(&frames).map_err(std::io::Error::other)?;
        crate::atomic::write(&set, &bytes)?;
        Ok(frames)
    }

    fn extract(&self, clip: &Path, name: &str, fps: f64) -> Result<Vec<Frame>, VideoError> {
        let mut frames = Vec::new();
        let mut selector: Option<Selector<ffmpeg::Decoded>> = None;
        let mut take = |time_us: u64, f: &ffmpeg::Decoded| -> std::io::Result<()> {
            let digest = pixel_digest(f.width, f.height, &f.rgb);
            let path = self.frame_path(&digest);
            if !path.is_file() {
                write_frame_png(&path, f)?;
            }
            frames.push(Frame { time_us, digest });
            Ok(())
        };
        ffmpeg::decode(clip, name, |tb: TimeBase, f| {
            selector
                .get_or_insert_with(|| Selector::new(fps, tb))
                .push(f.pts, f, &mut take)
        })?;
        if let Some(s) = selector {
            s.finish(&mut take)?;
        }
        if frames.is_empty() {
            return Err(VideoError::Unreadable {
                clip: name.to_string(),
                message: "it has no video frames".into(),
            });
        }
        Ok(frames)
    }

    /// Removes frames whose digest is not in `live` (what kept stage records read) and
    /// the sets that named them; returns (files removed, bytes freed).
    pub fn gc(&self, live: &BTreeSet<Digest>) -> (usize, u64) {
        let mut removed = 0;
        let mut freed = 0;
        let mut gone = BTreeSet::new();
        for e in walkdir::WalkDir::new(self.root.join("px"))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
        {
            let digest = e
                .path()
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(Digest::parse);
            if digest.is_some_and(|d| live.contains(&d)) {
                continue;
            }
            freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
                gone.extend(digest);
            }
        }
        if let Ok(sets) = std::fs::read_dir(self.root.join("sets")) {
            for e in sets.flatten() {
                let stale = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Vec<Frame>>(&b).ok())
                    .is_none_or(|frames| frames.iter().any(|f| gone.contains(&f.digest)));
                if stale {
                    freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    if std::fs::remove_file(e.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        (removed, freed)
    }
}

fn write_frame_png(path: &Path, f: &ffmpeg::Decoded) -> std::io::Result<()> {
    let img = image::RgbImage::from_raw(f.width, f.height, f.rgb.clone())
        .ok_or_else(|| std::io::Error::other("a frame's size does not match its pixels"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(std::io::Error::other)?;
    crate::atomic::write(path, &bytes)
}
