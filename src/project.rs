//! The project: the folder holding `effects/`, found from the working directory
//! upwards as cargo finds Cargo.toml. Its own `stdlib/` and `targets/` add to or
//! override the ones built into the binary.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Project {
    pub root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("no effectc project found in {start} or any parent folder (a project is a folder with an `effects/` folder of .kdl recipes)")]
    NotFound { start: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Project {
    pub fn discover(start: &Path) -> Result<Project, ProjectError> {
        let start = start.canonicalize().map_err(|source| ProjectError::Io {
            path: start.to_path_buf(),
            source,
        })?;
        let mut dir = Some(start.as_path());
        while let Some(d) = dir {
            if d.join("effects").is_dir() {
                return Ok(Project {
                    root: d.to_path_buf(),
                });
            }
            dir = d.parent();
        }
        Err(ProjectError::NotFound { start })
    }

    pub fn effects_dir(&self) -> PathBuf {
        self.root.join("effects")
    }

    pub fn effect_path(&self, name: &str) -> PathBuf {
        self.effects_dir().join(format!("{name}.kdl"))
    }

    /// Every effect name (file stem of `effects/*.kdl`), sorted.
    pub fn effect_names(&self) -> Result<Vec<String>, ProjectError> {
        let dir = self.effects_dir();
        let entries = std::fs::read_dir(&dir).map_err(|source| ProjectError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Path relative to the project root, for messages and item names.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/")
    }
}
