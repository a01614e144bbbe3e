//! `effectc models list|import|verify`: the models directory, seen from the registry.

use super::commands::{EXIT_BUILD_FAILED, EXIT_INFRA, EXIT_OK, EXIT_USER};
use super::ModelsAction;
use crate::digest::Digest;
use crate::models::{model_digest, models_dir};
use crate::project::Project;
use crate::recipe::stdlib::Registry;
use crate::recipe::Diagnostics;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

pub fn run(project: &Project, action: ModelsAction) -> Result<i32, i32> {
    let mut diags = Diagnostics::default();
    let registry = Registry::load(project, &mut diags);
    if !diags.is_empty() {
        eprintln!("{}", diags.render(std::io::stderr().is_terminal()));
        return Err(EXIT_USER);
    }
    let dir = models_dir(project);
    // Always re-hash here: these commands exist to check the bytes.
    let mut hash = |p: &Path| Digest::of_file(p);
    match action {
        ModelsAction::List => {
            println!("models directory: {}", dir.display());
            for m in registry.models.values() {
                let path = dir.join(&m.file);
                let state = if path.exists() { "present" } else { "missing" };
                let pin = if m.sha256.is_some() {
                    "pinned"
                } else {
                    "unpinned"
                };
                println!(
                    "{:<24} {:<20} {:<8} {:<9} {}",
                    m.name,
                    m.arch,
                    state,
                    pin,
                    path.display()
                );
            }
            Ok(EXIT_OK)
        }
        ModelsAction::Verify => {
            let mut bad = 0;
            let mut checked = 0;
            for m in registry.models.values() {
                let path = dir.join(&m.file);
                if !path.exists() {
                    continue;
                }
                checked += 1;
                let digest = model_digest(&path, &mut hash).map_err(|e| {
                    eprintln!("error: cannot read {}: {e}", path.display());
                    EXIT_INFRA
                })?;
                match &m.sha256 {
                    Some(want) if !digest.hex().eq_ignore_ascii_case(want) => {
                        bad += 1;
                        println!(
                            "MISMATCH {}: {} has sha256 {}, expected {want}",
                            m.name,
                            path.display(),
                            digest.hex()
                        );
                    }
                    Some(_) => println!("ok       {}", m.name),
                    None => println!("unpinned {}: sha256 {}", m.name, digest.hex()),
                }
            }
            println!("{checked} present model(s) checked, {bad} mismatch(es)");
            Ok(if bad > 0 { EXIT_BUILD_FAILED } else { EXIT_OK })
        }
        ModelsAction::Import { path, name } => {
            if !path.exists() {
                eprintln!("error: {} does not exist", path.display());
                return Err(EXIT_USER);
            }
            let entry = match &name {
                Some(n) => match registry.models.get(n) {
                    Some(e) => Some(e),
                    None => {
                        eprintln!(
                            "error: no model `{n}` in stdlib/models.kdl (known: {})",
                            registry
                                .models
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        return Err(EXIT_USER);
                    }
                },
                None => None,
            };
            let digest = model_digest(&path, &mut hash).map_err(|e| {
                eprintln!("error: cannot read {}: {e}", path.display());
                EXIT_INFRA
            })?;
            if let Some(want) = entry.and_then(|e| e.sha256.as_ref()) {
                if !digest.hex().eq_ignore_ascii_case(want) {
                    eprintln!(
                        "error: {} has sha256 {}, but model `{}` is pinned to {want}; nothing imported",
                        path.display(),
                        digest.hex(),
                        entry.map(|e| e.name.as_str()).unwrap_or_default()
                    );
                    return Err(EXIT_USER);
                }
            }
            let file_name = match entry {
                Some(e) => e.file.clone(),
                None => path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            let dest = dir.join(&file_name);
            copy_atomically(&path, &dest).map_err(|e| {
                eprintln!("error: cannot import into {}: {e}", dest.display());
                EXIT_INFRA
            })?;
            println!("imported {} ({})", dest.display(), digest.hex());
            let model_name = name.unwrap_or_else(|| {
                Path::new(&file_name)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            println!("registry line for stdlib/models.kdl:");
            println!(
                "model \"{model_name}\" file=\"{file_name}\" arch=\"{}\" sha256=\"{}\"",
                entry.map(|e| e.arch.as_str()).unwrap_or("ARCH"),
                digest.hex()
            );
            Ok(EXIT_OK)
        }
    }
}

/// Copies a file or folder to `dest` through a temporary sibling and one rename, so an
/// interrupted import never leaves a half-copied model under the real name.
fn copy_atomically(src: &Path, dest: &Path) -> std::io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp: PathBuf = parent.join(format!(
        ".import-{}-{}",
        std::process::id(),
        dest.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        if src.is_dir() {
            for entry in walkdir::WalkDir::new(src).follow_links(true) {
                let entry = entry.map_err(std::io::Error::other)?;
                let rel = entry.path().strip_prefix(src).unwrap_or(entry.path());
                let to = tmp.join(rel);
                if entry.file_type().is_dir() {
                    std::fs::create_dir_all(&to)?;
                } else {
                    std::fs::copy(entry.path(), &to)?;
                }
            }
        } else {
            std::fs::copy(src, &tmp)?;
        }
        if dest.is_dir() {
            std::fs::remove_dir_all(dest)?;
        }
        std::fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
