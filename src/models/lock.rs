//! `models.lock`: the SHA-256 that `effectc models fetch` got for each model the
//! registry does not pin, kept beside the recipes (in the project root) so that it is
//! reviewed and committed like them. Later fetches and builds hold to it, as to a pin in
//! stdlib/models.kdl; a registry pin always wins over the lock.
//!
//! The file is KDL, one line per model, sorted by name:
//!
//! ```kdl
//! model "clip-tokenizer" sha256="9f2c…"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "models.lock";

const HEADER: &str =
    "// Written by `effectc models fetch`: the SHA-256 of each model fetched without a pin in\n\
// stdlib/models.kdl (for a folder, of its sorted `sha256sum` listing). Builds and fetches\n\
// refuse a model that differs. Commit this file; review its changes.\n";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelLock {
    /// Model name → lowercase hex SHA-256.
    pub pins: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn path_in(project_root: &Path) -> PathBuf {
    project_root.join(FILE_NAME)
}

impl ModelLock {
    /// The project's lock; empty when there is none.
    pub fn load(project_root: &Path) -> Result<ModelLock, LockError> {
        let path = path_in(project_root);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelLock::default()),
            Err(source) => return Err(LockError::Read { path, source }),
        };
        Self::parse(&text).map_err(|message| LockError::Parse { path, message })
    }

    pub fn parse(text: &str) -> Result<ModelLock, String> {
        let doc: kdl::KdlDocument = text.parse().map_err(|e| format!("not KDL: {e}"))?;
        let mut pins = BTreeMap::new();
        for node in doc.nodes() {
            let line = || {
                let offset = node.span().offset();
                text[..offset.min(text.len())].matches('\n').count() + 1
            };
            if node.name().value() != "model" {
                return Err(format!(
                    "line {}: unknown node `{}` (expected `model \"NAME\" sha256=\"HEX\"`)",
                    line(),
                    node.name().value()
                ));
            }
            let name = node.get(0).and_then(|v| v.as_string());
            let sha = node.get("sha256").and_then(|v| v.as_string());
            match (name, sha) {
                (Some(name), Some(sha))
                    if sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    pins.insert(name.to_string(), sha.to_ascii_lowercase());
                }
                _ => {
                    return Err(format!(
                        "line {}: expected `model \"NAME\" sha256=\"<64 hex>\"`",
                        line()
                    ))
                }
            }
        }
        Ok(ModelLock { pins })
    }

    pub fn render(&self) -> String {
        let mut out = String::from(HEADER);
        for (name, sha) in &self.pins {
            // Rust's debug quoting escapes as KDL strings do (\", \\, \n, \u{..}).
            out.push_str(&format!("model {name:?} sha256=\"{sha}\"\n"));
        }
        out
    }

    /// Writes the lock atomically.
    pub fn save(&self, project_root: &Path) -> Result<(), LockError> {
        let path = path_in(project_root);
        crate::atomic::write(&path, self.render().as_bytes())
            .map_err(|source| LockError::Write { path, source })
    }
}

/// Where a model's expected digest comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// `sha256=` in the registry.
    Registry(String),
    /// `models.lock`.
    Lock(String),
}

impl Pin {
    pub fn hex(&self) -> &str {
        match self {
            Pin::Registry(h) | Pin::Lock(h) => h,
        }
    }
    /// Where to change it if the new file is intended.
    pub fn source(&self) -> &'static str {
        match self {
            Pin::Registry(_) => "stdlib/models.kdl",
            Pin::Lock(_) => FILE_NAME,
        }
    }
}

/// The digest a model must have: the registry's pin, else the lock's.
pub fn pin_of(entry: &crate::recipe::stdlib::ModelEntry, lock: &ModelLock) -> Option<Pin> {
    entry
        .sha256
        .as_ref()
        .map(|h| Pin::Registry(h.to_ascii_lowercase()))
        .or_else(|| lock.pins.get(&entry.name).cloned().map(Pin::Lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_renders_sorted_and_reads_back() {
        let mut lock = ModelLock::default();
        lock.pins.insert("zeta".into(), "a".repeat(64));
        lock.pins
            .insert("alpha \"x\"".into(), "B".repeat(64).to_lowercase());
        let text = lock.render();
        let alpha = text.find("alpha").unwrap();
        assert!(alpha < text.find("zeta").unwrap(), "{text}");
        assert_eq!(ModelLock::parse(&text).unwrap(), lock);
    }

    #[test]
    fn a_bad_lock_line_is_named() {
        let err = ModelLock::parse("model \"a\" sha256=\"abc\"\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("64 hex"), "{err}");
        let err = ModelLock::parse("\nmodle \"a\"\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("modle"), "{err}");
    }
}
