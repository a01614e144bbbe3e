//! What the plan reads from the pictures themselves, cached by their digests so a no-op
//! build decodes nothing (as video frames are, `video::store`):
//!
//! ```text
//! cache/scan/faces/<key>.json   faces="all": how many faces a picture holds;
//!                               key = H(version, picture digest, detector and mesh
//!                               digests, crop size)
//! cache/scan/phash/<digest>     dedupe: the perceptual hash of a picture (`imaging::phash`)
//! ```
//!
//! `faces="all"` turns a picture into one item per face (`photo.jpg#face1`, largest
//! first); `dedupe` leaves out an item whose picture is within the recipe's distance of
//! an earlier kept one, and says which (`near-duplicate of ...`).

use super::items::{ItemOrigin, SourceItem};
use crate::digest::{Digest, KeyHasher};
use crate::imaging::phash::PHash;
use crate::models::ResolvedModel;
use crate::recipe::{Diagnostics, RecipeDiagnostic};
use crate::video::FrameStore;
use crate::vision::{FaceDetector, FaceMesh};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bump when the face count of a picture could change (detection, confirmation).
const FACE_SCAN_VERSION: u64 = 1;

/// The picture an item reads, and its digest (None for synthetic items).
fn picture(item: &SourceItem) -> Option<(&Path, &Digest)> {
    match &item.origin {
        ItemOrigin::File { path, digest } | ItemOrigin::Frame { path, digest, .. } => {
            Some((path, digest))
        }
        ItemOrigin::Synthetic { .. } => None,
    }
}

#[derive(Serialize, Deserialize)]
struct FaceScan {
    /// The confirmed faces' boxes (x0, y0, x1, y1 in source pixels), largest first.
    boxes: Vec<[f32; 4]>,
    /// Why the picture was not looked at (unreadable, too small): the crop skips it.
    unusable: Option<String>,
}

/// `faces="all"`: each picture becomes one item per face it holds, `name#face1`... in
/// [`crate::stages::face_crop::confirmed_faces`] order; a picture with no face, or not
/// readable as one, stays one item (its crop skips it, saying why). Each face item keeps
/// its picture's holdout side, so no face of a held-out group photo is trained on.
pub fn one_item_per_face(
    items: Vec<SourceItem>,
    detector: &ResolvedModel,
    mesh: &ResolvedModel,
    size_px: u32,
    store: &mut FrameStore,
    diags: &mut Diagnostics,
) -> Vec<SourceItem> {
    let dir = store.cache_root().join("scan").join("faces");
    let mut models: Option<(FaceDetector, FaceMesh)> = None;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some((path, digest)) = picture(&item) else {
            out.push(item);
            continue;
        };
        let mut h = KeyHasher::new("effectc/face-scan/v1");
        h.u64(FACE_SCAN_VERSION)
            .digest(digest)
            .digest(&detector.digest)
            .digest(&mesh.digest)
            .u64(size_px as u64);
        let file = dir.join(format!("{}.json", h.finish().hex()));
        let cached = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<FaceScan>(&b).ok());
        let scan = match cached {
            Some(s) => s,
            None => {
                let started = Instant::now();
                let scan = match scan_faces(path, detector, mesh, size_px, &mut models) {
                    Ok(s) => s,
                    Err(e) => {
                        diags.push(RecipeDiagnostic::nowhere(
                            "face-scan",
                            format!("finding the faces of {}: {e}", item.name),
                        ));
                        out.push(item);
                        continue;
                    }
                };
                store.face_scans += 1;
                store.scan_time += started.elapsed();
                let bytes = serde_json::to_vec(&scan).expect("a face scan serializes");
                if let Err(e) = crate::atomic::write(&file, &bytes) {
                    eprintln!("warning: could not cache {}: {e}", file.display());
                }
                scan
            }
        };
        if scan.boxes.is_empty() {
            out.push(item);
            continue;
        }
        for k in 1..=scan.boxes.len() as u32 {
            out.push(SourceItem {
                name: format!("{}#face{k}", item.name),
                face: Some(k),
                ..item.clone()
            });
        }
    }
    out
}

fn scan_faces(
    path: &Path,
    detector: &ResolvedModel,
    mesh: &ResolvedModel,
    size_px: u32,
    models: &mut Option<(FaceDetector, FaceMesh)>,
) -> Result<FaceScan, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let img = match crate::imaging::source::decode_source(&bytes) {
        Ok(img) => img,
        Err(why) => {
            return Ok(FaceScan {
                boxes: vec![],
                unusable: Some(why),
            })
        }
    };
    if let Some(why) = crate::imaging::source::too_small(&img, size_px) {
        return Ok(FaceScan {
            boxes: vec![],
            unusable: Some(why),
        });
    }
    if models.is_none() {
        *models = Some((
            FaceDetector::load(&detector.path).map_err(|e| e.to_string())?,
            FaceMesh::load(&mesh.path).map_err(|e| e.to_string())?,
        ));
    }
    let (d, m) = models.as_ref().expect("loaded above");
    let faces = crate::stages::face_crop::confirmed_faces(d, m, &img, usize::MAX)
        .map_err(|e| e.to_string())?;
    Ok(FaceScan {
        boxes: faces.iter().map(|(f, _)| f.bbox).collect(),
        unusable: None,
    })
}

/// `dedupe`: splits `items` into those kept and the near-duplicates, each with the name
/// of the earlier kept item it is within `distance` bits of. Synthetic items and pictures
/// that do not decode are kept (their crop says what is wrong with them).
pub fn near_duplicates(
    items: Vec<SourceItem>,
    distance: u32,
    store: &mut FrameStore,
) -> (Vec<SourceItem>, Vec<(SourceItem, String)>) {
    let dir = store.cache_root().join("scan").join("phash");
    let mut kept: Vec<SourceItem> = Vec::with_capacity(items.len());
    let mut hashes: Vec<(PHash, usize)> = Vec::new();
    let mut dropped = Vec::new();
    for item in items {
        let Some(hash) =
            picture(&item).and_then(|(path, digest)| phash_of(path, digest, &dir, store))
        else {
            kept.push(item);
            continue;
        };
        match hashes.iter().find(|(h, _)| h.distance(&hash) <= distance) {
            Some((_, i)) => {
                let twin = kept[*i].name.clone();
                dropped.push((item, twin));
            }
            None => {
                hashes.push((hash, kept.len()));
                kept.push(item);
            }
        }
    }
    (kept, dropped)
}

fn phash_path(dir: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    dir.join(&hex[..2]).join(hex)
}

fn phash_of(path: &Path, digest: &Digest, dir: &Path, store: &mut FrameStore) -> Option<PHash> {
    let file = phash_path(dir, digest);
    if let Some(h) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| PHash::parse(&s))
    {
        return Some(h);
    }
    let started = Instant::now();
    let bytes = std::fs::read(path).ok()?;
    let img = crate::imaging::source::decode_source(&bytes).ok()?;
    let hash = PHash::of(&img);
    store.hashed_items += 1;
    store.scan_time += started.elapsed();
    if let Err(e) = crate::atomic::write(&file, hash.hex().as_bytes()) {
        eprintln!("warning: could not cache {}: {e}", file.display());
    }
    Some(hash)
}
