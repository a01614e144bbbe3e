//! Source-file digests remembered by (size, mtime, inode), so an unchanged file is not
//! re-hashed on every build. A file rewritten with the same size within the same
//! mtime tick is the known blind spot, shared with make, cargo and git.

use super::store::write_atomic;
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    digest: Digest,
}

pub struct StatCache {
    path: PathBuf,
    entries: BTreeMap<PathBuf, Entry>,
    dirty: bool,
    /// How many files were actually hashed (for tests and benchmarks).
    pub hashed: usize,
}

impl StatCache {
    /// Loads `<cache root>/stat-cache.json`; a missing or unreadable file starts empty.
    pub fn load(cache_root: &Path) -> StatCache {
        let path = cache_root.join("stat-cache.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StatCache {
            path,
            entries,
            dirty: false,
            hashed: 0,
        }
    }

    pub fn digest_of(&mut self, path: &Path) -> std::io::Result<Digest> {
        let meta = std::fs::metadata(path)?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(-1);
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        if let Some(e) = self.entries.get(path) {
            if e.size == size && e.mtime_ns == mtime_ns && e.inode == inode {
                return Ok(e.digest);
            }
        }
        let digest = Digest::of_file(path)?;
        self.hashed += 1;
        self.entries.insert(
            path.to_path_buf(),
            Entry {
                size,
                mtime_ns,
                inode,
                digest,
            },
        );
        self.dirty = true;
        Ok(digest)
    }

    pub fn save(&mut self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        // Forget files that no longer exist.
        self.entries.retain(|p, _| p.exists());
        let bytes = serde_json::to_vec(&self.entries).map_err(std::io::Error::other)?;
        write_atomic(&self.path, &bytes)?;
        self.dirty = false;
        Ok(())
    }
}
