//! Source-file digests remembered by (size, mtime, inode), so an unchanged file is not
//! re-hashed on every build. A file rewritten with the same size within the same
//! mtime tick is the known blind spot, shared with make, cargo and git.
//!
//! The file is read whole on every build, so it is a flat binary list rather than JSON:
//! a no-op build over 10,000 sources reads it in about a millisecond.

use super::store::write_atomic;
use crate::digest::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "stat-cache.bin";
/// The JSON form earlier versions wrote; removed when the binary one is saved.
const OLD_FILE_NAME: &str = "stat-cache.json";
const MAGIC: &[u8; 16] = b"effectc-stat-v1\n";
/// path length (u32), size (u64), mtime in ns (i128), inode (u64), digest (32 bytes).
const FIXED_LEN: usize = 4 + 8 + 16 + 8 + 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    digest: Digest,
}

pub struct StatCache {
    path: PathBuf,
    entries: HashMap<PathBuf, Entry>,
    dirty: bool,
    /// How many files were actually hashed (for tests and benchmarks).
    pub hashed: usize,
}

impl StatCache {
    /// Loads `<cache root>/stat-cache.bin`; a missing, damaged or older file starts
    /// empty (every source is hashed once more, nothing is trusted that cannot be read).
    pub fn load(cache_root: &Path) -> StatCache {
        let path = cache_root.join(FILE_NAME);
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| decode(&b))
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
        write_atomic(&self.path, &encode(&self.entries))?;
        let _ = std::fs::remove_file(self.path.with_file_name(OLD_FILE_NAME));
        self.dirty = false;
        Ok(())
    }
}

fn encode(entries: &HashMap<PathBuf, Entry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + entries.len() * (FIXED_LEN + 64));
    out.extend_from_slice(MAGIC);
    for (path, e) in entries {
        let bytes = path.as_os_str().as_encoded_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.inode.to_le_bytes());
        out.extend_from_slice(&e.digest.0);
    }
    out
}

/// None when the bytes are not a whole stat cache of this version.
fn decode(bytes: &[u8]) -> Option<HashMap<PathBuf, Entry>> {
    let mut rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let mut entries = HashMap::with_capacity(rest.len() / (FIXED_LEN + 48));
    while !rest.is_empty() {
        let len = u32::from_le_bytes(split(&mut rest, 4)?.try_into().ok()?) as usize;
        let path_bytes = split(&mut rest, len)?.to_vec();
        let fixed = split(&mut rest, FIXED_LEN - 4)?;
        let size = u64::from_le_bytes(fixed[0..8].try_into().ok()?);
        let mtime_ns = i128::from_le_bytes(fixed[8..24].try_into().ok()?);
        let inode = u64::from_le_bytes(fixed[24..32].try_into().ok()?);
        let digest = Digest(fixed[32..64].try_into().ok()?);
        // Written from an OsStr on this machine by `encode`.
        let path = PathBuf::from(path_os_string(path_bytes)?);
        entries.insert(
            path,
            Entry {
                size,
                mtime_ns,
                inode,
                digest,
            },
        );
    }
    Some(entries)
}

/// The first `n` bytes of `rest`, which moves past them.
fn split<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(n)?;
    *rest = tail;
    Some(head)
}

#[cfg(unix)]
fn path_os_string(bytes: Vec<u8>) -> Option<std::ffi::OsString> {
    Some(std::os::unix::ffi::OsStringExt::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_os_string(bytes: Vec<u8>) -> Option<std::ffi::OsString> {
    String::from_utf8(bytes).ok().map(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_file_is_hashed_once_across_loads_and_a_damaged_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache_root = dir.path().join("cache");
        std::fs::create_dir_all(&cache_root).unwrap();
        let src = dir.path().join("a.png");
        std::fs::write(&src, b"pixels").unwrap();

        let mut stat = StatCache::load(&cache_root);
        let d = stat.digest_of(&src).unwrap();
        assert_eq!(d, Digest::of_bytes(b"pixels"));
        assert_eq!(stat.hashed, 1);
        stat.save().unwrap();

        let mut again = StatCache::load(&cache_root);
        assert_eq!(again.digest_of(&src).unwrap(), d);
        assert_eq!(again.hashed, 0, "the saved entry answers without hashing");

        // A file cut short is not half-trusted: it is read as empty.
        let file = cache_root.join(FILE_NAME);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        let mut damaged = StatCache::load(&cache_root);
        assert_eq!(damaged.digest_of(&src).unwrap(), d);
        assert_eq!(damaged.hashed, 1);
    }
}
