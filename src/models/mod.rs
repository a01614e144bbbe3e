//! The models directory: where the weight files `stdlib/models.kdl` names live, how a
//! model's SHA-256 is computed (a file's bytes; for a diffusers folder, the digest of
//! its `sha256sum` listing), and the before-any-work check that every model a recipe
//! needs is present and is the pinned one. `fetch` downloads them, `lock` pins the ones
//! the registry leaves unpinned (`models.lock`).

pub mod fetch;
pub mod lock;

use crate::digest::Digest;
use crate::project::Project;
use crate::recipe::stdlib::ModelEntry;
use crate::recipe::{Diagnostics, Recipe, RecipeDiagnostic, Teacher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `$EFFECTC_MODELS`; else the project's own `models/` folder when it has one (so a
/// project can carry small models, like tests/projects/tiny-diffusion); else
/// `~/.cache/effectc/models`. Where `models fetch` and `models import` write.
pub fn models_dir(project: &Project) -> PathBuf {
    if let Some(dir) = std::env::var_os("EFFECTC_MODELS") {
        return PathBuf::from(dir);
    }
    let local = project.root.join("models");
    if local.is_dir() {
        return local;
    }
    user_models_dir()
}

/// Set-up's models folder, shared by every project of this user.
fn user_models_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/effectc/models")
}

/// Where a registry file is looked for, in order: [`models_dir`], then, when that is the
/// project's own `models/`, set-up's `~/.cache/effectc/models`, so a project that carries
/// its small models still finds the MediaPipe models set-up installed.
pub fn models_search_path(project: &Project) -> Vec<PathBuf> {
    let first = models_dir(project);
    let user = user_models_dir();
    if std::env::var_os("EFFECTC_MODELS").is_some() || first == user {
        vec![first]
    } else {
        vec![first, user]
    }
}

/// Where registry file `file` is: in the first folder of [`models_search_path`] that has
/// it (a broken link counts, so the error that follows names it); None when none has it.
pub fn find_model(project: &Project, file: &str) -> Option<PathBuf> {
    first_having(&models_search_path(project), file)
}

fn first_having(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(file))
        .find(|p| p.symlink_metadata().is_ok())
}

/// The folders [`find_model`] searched, for messages: `A` or `A, then B`.
pub fn searched(project: &Project) -> String {
    models_search_path(project)
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", then ")
}

/// The model's SHA-256. A file: the SHA-256 of its bytes. A folder (diffusers layout):
/// the SHA-256 of the listing `sha256sum` prints for its files, sorted by relative path,
/// which a shell reproduces with
/// `cd DIR && find -L . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum | sha256sum`.
/// `digest_of` hashes one file (through the stat cache, so a model is hashed once).
pub fn model_digest(
    path: &Path,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
) -> std::io::Result<Digest> {
    if let (Ok(target), false) = (std::fs::read_link(path), path.exists()) {
        return Err(std::io::Error::other(format!(
            "a link to {}, which does not exist (a project copied without its links' targets? copy with `cp -rL`)",
            target.display()
        )));
    }
    if !path.is_dir() {
        return digest_of(path);
    }
    let mut files: Vec<(String, PathBuf)> = walkdir::WalkDir::new(path)
        .follow_links(true)
        .into_iter()
        // An entry that cannot be read (a link whose target is gone, as when a project is
        // copied without its links' targets) is an error naming it: left out, it would
        // give the folder another digest and a baffling "not the pinned file".
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            let at = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            std::io::Error::other(format!("{at}: {e}"))
        })?
        .into_iter()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(path)
                .unwrap_or(e.path())
                .to_string_lossy()
                .into_owned();
            (rel, e.path().to_path_buf())
        })
        .collect();
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut listing = String::new();
    for (rel, file) in files {
        listing.push_str(&format!("{}  {rel}\n", digest_of(&file)?.hex()));
    }
    Ok(Digest::of_bytes(listing.as_bytes()))
}

/// The models a recipe needs, by name: its teacher's (none for model-free teachers),
/// then the face crop's MediaPipe models.
pub fn needed_models(recipe: &Recipe) -> Vec<ModelEntry> {
    let mut models = match &recipe.teacher {
        Teacher::Diffusion(t) => t.models.clone(),
        _ => Vec::new(),
    };
    models.extend(recipe.sources.crop.models.iter().cloned());
    models
}

/// A model as the stages read it: registry entry, resolved path, content digest (which
/// goes into the keys of the stages that read it).
#[derive(Clone, Debug)]
pub struct ResolvedModel {
    pub entry: ModelEntry,
    pub path: PathBuf,
    pub digest: Digest,
}

/// Checks, before any work, that every model the recipe needs is present and matches
/// its pinned SHA-256. One diagnostic lists every missing model (name, file, expected
/// digest, path searched); another every mismatch. Returns the present ones by name.
/// Every model the recipe's teacher needs: present, readable and (with `verify_pins`)
/// the pinned file. `effectc check` reads no content, so it leaves the pins to the build.
pub fn check_models(
    project: &Project,
    recipe: &Recipe,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    verify_pins: bool,
    diags: &mut Diagnostics,
) -> BTreeMap<String, ResolvedModel> {
    let needed = needed_models(recipe);
    // `models.lock` pins what the registry leaves unpinned (src/models/lock.rs).
    let lock = match crate::models::lock::ModelLock::load(&project.root) {
        Ok(l) => l,
        Err(e) => {
            diags.push(RecipeDiagnostic::nowhere("bad-lock", e.to_string()));
            crate::models::lock::ModelLock::default()
        }
    };
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for m in &needed {
        let Some(path) = find_model(project, &m.file) else {
            missing.push(format!(
                "  {} — file {} (sha256 {}) not found in {}",
                m.name,
                m.file,
                crate::models::lock::pin_of(m, &lock)
                    .map(|p| p.hex().to_string())
                    .unwrap_or_else(|| "not pinned".into()),
                searched(project)
            ));
            continue;
        };
        match model_digest(&path, digest_of) {
            Ok(d) => {
                if let Some(pin) = crate::models::lock::pin_of(m, &lock).filter(|_| verify_pins) {
                    if !d.hex().eq_ignore_ascii_case(pin.hex()) {
                        wrong.push(format!(
                            "  {} — {} has sha256 {}, expected {} (pinned in {})",
                            m.name,
                            path.display(),
                            d.hex(),
                            pin.hex(),
                            pin.source()
                        ));
                        continue;
                    }
                }
                found.insert(
                    m.name.clone(),
                    ResolvedModel {
                        entry: m.clone(),
                        path,
                        digest: d,
                    },
                );
            }
            Err(e) => wrong.push(format!(
                "  {} — cannot read {}: {e}",
                m.name,
                path.display()
            )),
        }
    }
    let loc = match &recipe.teacher {
        Teacher::Diffusion(t) => t.base.loc.clone(),
        _ => recipe.sources.crop.mode.loc.clone(),
    };
    let diag = |code: &'static str, message: String, label: &str| match &loc {
        Some(loc) => RecipeDiagnostic::at(loc, code, message).label(label.to_string()),
        None => RecipeDiagnostic::nowhere(code, message),
    };
    if !missing.is_empty() {
        diags.push(
            diag(
                "missing-models",
                format!(
                    "{} model(s) missing:\n{}",
                    missing.len(),
                    missing.join("\n")
                ),
                "this recipe needs them",
            )
            .help(format!(
                "`effectc models fetch`, or put the files in {} (or set EFFECTC_MODELS), or `effectc models import PATH --name NAME`{}",
                searched(project),
                if missing.iter().any(|m| m.starts_with("  mediapipe-")) {
                    "; scripts/mediapipe-models.sh installs MediaPipe's"
                } else {
                    ""
                }
            )),
        );
    }
    if !wrong.is_empty() {
        diags.push(
            diag(
                "wrong-model",
                format!(
                    "{} model(s) are not the pinned files:\n{}",
                    wrong.len(),
                    wrong.join("\n")
                ),
                "this recipe needs them",
            )
            .help("replace the files, or update sha256= in stdlib/models.kdl (or the line in models.lock) if the new ones are intended"),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(p: &Path) -> std::io::Result<Digest> {
        Digest::of_file(p)
    }

    /// A project copied with `cp -r` keeps its links, whose relative targets are gone: the
    /// model is then an error naming the link, not a folder with another digest.
    #[test]
    fn a_broken_link_is_an_error_naming_it_not_another_digest() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny-sd");
        std::fs::create_dir_all(model.join("unet")).unwrap();
        std::fs::write(model.join("unet/config.json"), b"{}").unwrap();
        let whole = model_digest(&model, &mut hash).unwrap();

        std::os::unix::fs::symlink("../../gone/vae", model.join("vae")).unwrap();
        let err = model_digest(&model, &mut hash).unwrap_err().to_string();
        assert!(err.contains("vae"), "{err}");
        assert_ne!(whole.hex(), "", "the intact folder had a digest");

        let link = dir.path().join("tiny-clip");
        std::os::unix::fs::symlink("../fixtures/clip", &link).unwrap();
        let err = model_digest(&link, &mut hash).unwrap_err().to_string();
        assert!(
            err.contains("../fixtures/clip") && err.contains("does not exist"),
            "{err}"
        );
    }

    /// A project with its own `models/` still finds a file only set-up's folder has.
    #[test]
    fn a_file_the_first_folder_lacks_is_looked_for_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let project = Project {
            root: dir.path().to_path_buf(),
        };
        std::fs::create_dir_all(dir.path().join("models/tiny-sd")).unwrap();
        assert_eq!(models_search_path(&project)[0], dir.path().join("models"));
        assert_eq!(
            find_model(&project, "tiny-sd"),
            Some(dir.path().join("models/tiny-sd"))
        );

        let (own, setup) = (dir.path().join("models"), dir.path().join("setup"));
        std::fs::create_dir_all(setup.join("mediapipe-0.10.21")).unwrap();
        let dirs = [own.clone(), setup.clone()];
        assert_eq!(
            first_having(&dirs, "mediapipe-0.10.21"),
            Some(setup.join("mediapipe-0.10.21"))
        );
        assert_eq!(first_having(&dirs, "tiny-sd"), Some(own.join("tiny-sd")));
        assert_eq!(first_having(&dirs, "absent"), None, "in neither folder");
    }
}
