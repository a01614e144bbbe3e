//! Source items: what the recipe's `sources` block names, each with a name stable across
//! builds and its side of the holdout split.

use crate::digest::{Digest, KeyHasher};
use crate::plan::SourceFailure;
use crate::project::Project;
use crate::recipe::check::is_glob;
use crate::recipe::{Diagnostics, Recipe, RecipeDiagnostic, Spanned};
use crate::stages::stage::Tiered;
use crate::video::FrameStore;
use std::path::{Path, PathBuf};

/// A source item: a name stable across builds (relative path, or `synthetic-0007`).
#[derive(Clone, Debug)]
pub struct SourceItem {
    pub name: String,
    pub origin: ItemOrigin,
    pub holdout: bool,
    /// `crop "face" faces="all"`: which face of the picture (1 = the largest) this item
    /// is (`photo.jpg#face2`); None: the largest face, or a centre crop.
    pub face: Option<u32>,
}

#[derive(Clone, Debug)]
pub enum ItemOrigin {
    File {
        path: PathBuf,
        digest: Digest,
    },
    /// A frame of a video clip, stored in the cache at `path` (a PNG); `digest` is the
    /// digest of its decoded pixels, so a re-encoded clip keeps every key downstream.
    Frame {
        clip: PathBuf,
        path: PathBuf,
        digest: Digest,
    },
    Synthetic {
        seed: u64,
        index: u64,
    },
}

/// Held-out items are chosen by a stable hash of the item's name, so adding or removing
/// items never moves another item between splits.
pub fn is_holdout(item: &str, fraction: f64) -> bool {
    let mut h = KeyHasher::new("effectc/holdout/v1");
    h.str(item);
    let d = h.finish();
    let x = u64::from_le_bytes(d.0[..8].try_into().unwrap_or([0; 8]));
    (x as f64 / u64::MAX as f64) < fraction
}

/// The folders of a glob before its first wildcard (`data/*/x.jpg` → `data`).
pub fn glob_literal_prefix(pattern: &str) -> PathBuf {
    Path::new(pattern)
        .components()
        .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
        .collect()
}

/// Expands the recipe's image globs (relative to the project root), sorted by name.
pub fn image_files(project: &Project, recipe: &Recipe, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for glob in &recipe.sources.images {
        files.extend(glob_files(project, glob, diags));
    }
    files.sort();
    files.dedup();
    files
}

/// The files one glob (or plain path) of `sources` names, sorted; a glob that matches
/// nothing is an `empty-glob` diagnostic at its span.
fn glob_files(project: &Project, glob: &Spanned<String>, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let pattern = &glob.value;
    let mut files = Vec::new();
    if !is_glob(pattern) {
        files.push(project.root.join(pattern));
        return files;
    }
    let Ok(g) = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
    else {
        return files;
    };
    let matcher = g.compile_matcher();
    // Walk only below the glob's literal prefix.
    let prefix = glob_literal_prefix(pattern);
    let start = project.root.join(&prefix);
    for entry in walkdir::WalkDir::new(&start)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = project.relative(entry.path());
        if matcher.is_match(&rel) {
            files.push(entry.path().to_path_buf());
        }
    }
    if files.is_empty() {
        let d = match &glob.loc {
            Some(loc) => {
                RecipeDiagnostic::at(loc, "empty-glob", format!("`{pattern}` matches no files"))
                    .label("no match")
            }
            None => {
                RecipeDiagnostic::nowhere("empty-glob", format!("`{pattern}` matches no files"))
            }
        };
        diags.push(d.help(format!(
            "paths are relative to the project root {}",
            project.root.display()
        )));
    }
    files.sort();
    files
}

/// Every source item of the recipe: synthetic ones first, then image files by name,
/// then the frames of each clip by clip and time. `frames` extracts clips (None for
/// `check`, which only opens them: it lists no frames). A clip ffmpeg cannot read is a
/// [`SourceFailure`], not a diagnostic: the build reports it and goes on without it.
pub fn source_items(
    project: &Project,
    recipe: &Recipe,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    mut frames: Option<&mut FrameStore>,
    diags: &mut Diagnostics,
    failures: &mut Vec<SourceFailure>,
) -> Vec<SourceItem> {
    let mut items = Vec::new();
    let holdout = recipe.sources.holdout;
    if let Some(s) = &recipe.sources.synthetic {
        for index in 0..s.count as u64 {
            let name = format!("synthetic-{index:04}");
            items.push(SourceItem {
                holdout: is_holdout(&name, holdout),
                name,
                face: None,
                origin: ItemOrigin::Synthetic {
                    seed: s.seed,
                    index,
                },
            });
        }
    }
    for path in image_files(project, recipe, diags) {
        let name = project.relative(&path);
        match digest_of(&path) {
            Ok(digest) => items.push(SourceItem {
                holdout: is_holdout(&name, holdout),
                name,
                face: None,
                origin: ItemOrigin::File { path, digest },
            }),
            Err(e) => diags.push(RecipeDiagnostic::nowhere(
                "unreadable-source",
                format!("cannot read source image {}: {e}", path.display()),
            )),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for video in &recipe.sources.videos {
        for clip in glob_files(project, &video.glob, diags) {
            let name = project.relative(&clip);
            let digest = match digest_of(&clip) {
                Ok(d) => d,
                Err(e) => {
                    diags.push(RecipeDiagnostic::nowhere(
                        "unreadable-source",
                        format!("cannot read video {}: {e}", clip.display()),
                    ));
                    continue;
                }
            };
            let Some(store) = frames.as_deref_mut() else {
                continue;
            };
            match store.frames(&clip, &name, &digest, video.fps) {
                Ok(list) => {
                    // The split hashes the clip, not the frame: all of a clip's frames
                    // are on one side, so no held-out frame has a near twin in training.
                    let holdout = is_holdout(&name, holdout);
                    for f in list {
                        let item = crate::video::frame_name(&name, f.time_us);
                        if !seen.insert(item.clone()) {
                            continue;
                        }
                        items.push(SourceItem {
                            name: item,
                            holdout,
                            face: None,
                            origin: ItemOrigin::Frame {
                                clip: clip.clone(),
                                path: store.frame_path(&f.digest),
                                digest: f.digest,
                            },
                        });
                    }
                }
                Err(e) => failures.push(SourceFailure {
                    source: name,
                    tier: e.tier(),
                    error: e.to_string(),
                }),
            }
        }
    }
    items
}
