//! `effectc models list|import|verify|fetch`: the models directory, seen from the
//! registry and the project's models.lock.

use super::exit::Exit;
use super::ModelsAction;
use crate::digest::Digest;
use crate::models::fetch::Fetcher;
use crate::models::lock::{pin_of, ModelLock, Pin};
use crate::models::{find_model, model_digest, models_dir, searched};
use crate::project::Project;
use crate::recipe::stdlib::{ModelEntry, Registry};
use crate::recipe::Diagnostics;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

pub fn run(project: &Project, action: ModelsAction, json: bool) -> Result<Exit, Exit> {
    let mut diags = Diagnostics::default();
    let registry = Registry::load(project, &mut diags);
    if !diags.is_empty() {
        eprintln!("{}", diags.render(std::io::stderr().is_terminal()));
        return Err(Exit::Usage);
    }
    let lock = ModelLock::load(&project.root).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    let dir = models_dir(project);
    // Always re-hash here: these commands exist to check the bytes.
    let mut hash = |p: &Path| Digest::of_file(p);
    match action {
        ModelsAction::List => {
            println!("models directory: {}", searched(project));
            for m in registry.models.values() {
                let path = find_model(project, &m.file).unwrap_or_else(|| dir.join(&m.file));
                let state = if path.exists() { "present" } else { "missing" };
                let pin = match pin_of(m, &lock) {
                    Some(Pin::Registry(_)) => "pinned",
                    Some(Pin::Lock(_)) => "locked",
                    None => "unpinned",
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
            Ok(Exit::Ok)
        }
        ModelsAction::Verify => {
            let mut bad = 0;
            let mut checked = 0;
            for m in registry.models.values() {
                let Some(path) = find_model(project, &m.file).filter(|p| p.exists()) else {
                    continue;
                };
                checked += 1;
                let digest = model_digest(&path, &mut hash).map_err(|e| {
                    eprintln!("error: cannot read {}: {e}", path.display());
                    Exit::Infra
                })?;
                match pin_of(m, &lock) {
                    Some(pin) if !digest.hex().eq_ignore_ascii_case(pin.hex()) => {
                        bad += 1;
                        println!(
                            "MISMATCH {}: {} has sha256 {}, but {} pins {}",
                            m.name,
                            path.display(),
                            digest.hex(),
                            pin.source(),
                            pin.hex()
                        );
                    }
                    Some(_) => println!("ok       {}", m.name),
                    None => println!("unpinned {}: sha256 {}", m.name, digest.hex()),
                }
            }
            println!("{checked} present model(s) checked, {bad} mismatch(es)");
            Ok(if bad > 0 { Exit::Failed } else { Exit::Ok })
        }
        ModelsAction::Import { path, name } => {
            if !path.exists() {
                eprintln!("error: {} does not exist", path.display());
                return Err(Exit::Usage);
            }
            let entry = match &name {
                Some(n) => Some(registry_entry(&registry, n)?),
                None => None,
            };
            let digest = model_digest(&path, &mut hash).map_err(|e| {
                eprintln!("error: cannot read {}: {e}", path.display());
                Exit::Infra
            })?;
            if let Some(want) = entry.and_then(|e| e.sha256.as_ref()) {
                if !digest.hex().eq_ignore_ascii_case(want) {
                    eprintln!(
                        "error: {} has sha256 {}, but model `{}` is pinned to {want}; nothing imported",
                        path.display(),
                        digest.hex(),
                        entry.map(|e| e.name.as_str()).unwrap_or_default()
                    );
                    return Err(Exit::Usage);
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
                Exit::Infra
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
            Ok(Exit::Ok)
        }
        ModelsAction::Fetch { names } => fetch(project, &registry, lock, &dir, names, json),
    }
}

/// `effectc models fetch [NAME...]`: every named model (default: every registry model
/// with a source) fetched and checked; digests of unpinned ones go to models.lock.
fn fetch(
    project: &Project,
    registry: &Registry,
    mut lock: ModelLock,
    dir: &Path,
    names: Vec<String>,
    json: bool,
) -> Result<Exit, Exit> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let fetcher = Fetcher::new(
        env("HF_TOKEN"),
        env("EFFECTC_MODELS_MIRROR"),
        !json && std::io::stderr().is_terminal(),
    );
    let chosen: Vec<_> = if names.is_empty() {
        registry
            .models
            .values()
            .filter(|m| fetcher.has_source(m))
            .collect()
    } else {
        let mut v = Vec::new();
        for n in &names {
            v.push(registry_entry(registry, n)?);
        }
        v
    };
    if chosen.is_empty() && !json {
        println!(
            "nothing to fetch: no registry model has fetch=\"URL\" (or set EFFECTC_MODELS_MIRROR)"
        );
    }
    let mut code = Exit::Ok;
    let mut locked = Vec::new();
    for m in chosen {
        let pin = pin_of(m, &lock);
        match fetcher.fetch(dir, m, pin.as_ref()) {
            Ok(f) => {
                if pin.is_none() {
                    lock.pins.insert(m.name.clone(), f.digest.hex());
                    locked.push(m.name.clone());
                }
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "model-fetched", "model": m.name, "path": f.path,
                            "sha256": f.digest.hex(), "downloaded": f.downloaded, "resumed": f.resumed,
                            "present": f.present, "pin": pin.as_ref().map(|p| p.source())})
                    );
                } else if f.present {
                    println!(
                        "present  {} ({}, sha256 {})",
                        m.name,
                        f.path.display(),
                        f.digest.hex()
                    );
                } else {
                    let resumed = if f.resumed > 0 {
                        format!(", resumed after {} bytes", f.resumed)
                    } else {
                        String::new()
                    };
                    println!(
                        "fetched  {} → {} ({} bytes{resumed}, sha256 {})",
                        m.name,
                        f.path.display(),
                        f.downloaded + f.resumed,
                        f.digest.hex()
                    );
                }
            }
            Err(e) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "model-fetch-failed", "model": m.name, "error": e.to_string()})
                    );
                }
                eprintln!("error: {e}");
                code = code.max(Exit::from(&e));
            }
        }
    }
    if !locked.is_empty() {
        lock.save(&project.root).map_err(|e| {
            eprintln!("error: {e}");
            Exit::Infra
        })?;
        if !json {
            println!(
                "recorded the sha256 of {} in {} (no pin in the registry): commit it",
                locked.join(", "),
                crate::models::lock::path_in(&project.root).display()
            );
        }
    }
    Ok(code)
}

/// Copies a file or folder to `dest` through a temporary sibling and one rename, so an
/// interrupted import never leaves a half-copied model under the real name.
/// The registry's entry named `name`; an unknown name is the user's error, listing the
/// known ones.
fn registry_entry<'r>(registry: &'r Registry, name: &str) -> Result<&'r ModelEntry, Exit> {
    registry.models.get(name).ok_or_else(|| {
        eprintln!(
            "error: no model `{name}` in stdlib/models.kdl (known: {})",
            registry
                .models
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        Exit::Usage
    })
}

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
