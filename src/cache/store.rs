//! The cache on disk: blobs, records, snapshots, locks, verify and gc.

use super::record::{OutputRef, Snapshot, StageRecord};
use crate::digest::Digest;
use fs4::fs_std::FileExt;
use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The disk said no: retry, free space, fix permissions. Never the recipe's fault.
    #[error("cache: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CacheError {
    fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> CacheError + 'p {
        move |source| CacheError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
    /// Every cache error is the infrastructure's (disk), not the user's recipe.
    pub fn is_infrastructure(&self) -> bool {
        true
    }
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

pub struct Cache {
    root: PathBuf,
}

/// Held by every build (shared) and by gc (exclusive), so gc never deletes what a
/// running build is about to use.
pub struct BuildLock {
    _file: File,
}

/// Held while a stage key runs, so two builds never run the same stage at once.
pub struct KeyLock {
    _file: File,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    /// Damaged blobs (content does not match the name), moved to `quarantine/`.
    pub damaged: Vec<Digest>,
    pub records_checked: usize,
    /// Unreadable records, removed.
    pub bad_records: Vec<PathBuf>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.bad_records.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} blobs ({} bytes) and {} records",
            self.blobs_checked, self.bytes_checked, self.records_checked
        )?;
        for d in &self.damaged {
            writeln!(f, "damaged blob {d}: content does not match its digest (moved to quarantine/; the next build rebuilds it)")?;
        }
        for r in &self.bad_records {
            writeln!(f, "unreadable record {} (removed)", r.display())?;
        }
        if self.is_clean() {
            writeln!(f, "cache is clean")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub records_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub records_kept: usize,
    pub blobs_kept: usize,
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kept {} records and {} blobs; removed {} records and {} blobs ({} bytes freed)",
            self.records_kept,
            self.blobs_kept,
            self.records_removed,
            self.blobs_removed,
            self.bytes_freed
        )
    }
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

impl Cache {
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        for sub in [
            "blobs/sha256",
            "records",
            "snapshots",
            "checkpoints",
            "locks",
            "tmp",
        ] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(CacheError::io("create", &p))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An empty scratch folder on the cache's filesystem (so outputs move in by rename).
    pub fn scratch_dir(&self) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(&tmp)
            .map_err(CacheError::io("create scratch folder in", &tmp))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// Every blob digest present, read with one directory listing per prefix: far
    /// cheaper than one `stat` per blob when a build checks tens of thousands.
    pub fn blob_index(&self) -> std::collections::HashSet<Digest> {
        let mut set = std::collections::HashSet::new();
        if let Ok(prefixes) = fs::read_dir(self.root.join("blobs/sha256")) {
            for prefix in prefixes.flatten() {
                if let Ok(entries) = fs::read_dir(prefix.path()) {
                    for e in entries.flatten() {
                        if let Some(d) = e.file_name().to_str().and_then(Digest::parse) {
                            set.insert(d);
                        }
                    }
                }
            }
        }
        set
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Moves a finished output file into the blob store (hash, fsync, rename).
    pub fn put_blob_file(&self, path: &Path) -> Result<OutputRef, CacheError> {
        let digest = Digest::of_file(path).map_err(CacheError::io("hash", path))?;
        let size_bytes = fs::metadata(path)
            .map_err(CacheError::io("stat", path))?
            .len();
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            let dir = dest.parent().unwrap_or(&self.root);
            fs::create_dir_all(dir).map_err(CacheError::io("create", dir))?;
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(CacheError::io("sync", path))?;
            if fs::rename(path, &dest).is_err() {
                // Another filesystem: copy to a temp file beside the blob, then rename.
                let bytes = fs::read(path).map_err(CacheError::io("read", path))?;
                write_atomic(&dest, &bytes).map_err(CacheError::io("write", &dest))?;
            }
        }
        Ok(OutputRef { digest, size_bytes })
    }

    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<OutputRef, CacheError> {
        let digest = Digest::of_bytes(bytes);
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            write_atomic(&dest, bytes).map_err(CacheError::io("write", &dest))?;
        }
        Ok(OutputRef {
            digest,
            size_bytes: bytes.len() as u64,
        })
    }

    fn record_path(&self, key: &Digest) -> PathBuf {
        let hex = key.hex();
        self.root
            .join("records")
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }

    /// The record of `key`, or None when it is missing, unreadable, or names a blob
    /// that is gone (a miss: the stage runs again).
    pub fn get_record(&self, key: &Digest) -> Result<Option<StageRecord>, CacheError> {
        let path = self.record_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CacheError::Io {
                    op: "read",
                    path,
                    source: e,
                })
            }
        };
        let Ok(rec) = serde_json::from_slice::<StageRecord>(&bytes) else {
            return Ok(None);
        };
        if rec.key != *key || !rec.outputs.values().all(|o| self.has_blob(&o.digest)) {
            return Ok(None);
        }
        Ok(Some(rec))
    }

    /// The record of `key` as written, even when its blobs are gone (for `explain`).
    pub fn read_record_raw(&self, key: &Digest) -> Option<StageRecord> {
        fs::read(self.record_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn put_record(&self, rec: &StageRecord) -> Result<(), CacheError> {
        let path = self.record_path(&rec.key);
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| CacheError::Io {
            op: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(CacheError::io("write", &path))
    }

    fn snapshot_path(&self, effect: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{effect}.bin"))
    }

    pub fn read_snapshot(&self, effect: &str) -> Result<Option<Snapshot>, CacheError> {
        let path = self.snapshot_path(effect);
        match fs::read(&path) {
            // A damaged snapshot only costs speed: records answer instead.
            Ok(b) => Ok(postcard::from_bytes(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::Io {
                op: "read",
                path,
                source: e,
            }),
        }
    }

    pub fn write_snapshot(&self, effect: &str, snap: &Snapshot) -> Result<(), CacheError> {
        let path = self.snapshot_path(effect);
        let bytes = postcard::to_allocvec(snap).map_err(|e| CacheError::Io {
            op: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(CacheError::io("write", &path))
    }

    fn lock_file(&self, name: &str) -> Result<File, CacheError> {
        let path = self.root.join("locks").join(name);
        File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(CacheError::io("open lock", &path))
    }

    pub fn build_lock(&self) -> Result<BuildLock, CacheError> {
        let file = self.lock_file("build")?;
        FileExt::lock_shared(&file)
            .map_err(CacheError::io("lock", &self.root.join("locks/build")))?;
        Ok(BuildLock { _file: file })
    }

    pub fn lock_key(&self, key: &Digest) -> Result<KeyLock, CacheError> {
        let file = self.lock_file(&key.hex())?;
        FileExt::lock_exclusive(&file).map_err(CacheError::io("lock", &self.root.join("locks")))?;
        Ok(KeyLock { _file: file })
    }

    pub fn checkpoint_dir(&self, key: &Digest) -> PathBuf {
        self.root.join("checkpoints").join(key.hex())
    }

    pub fn list_records(&self) -> Result<Vec<StageRecord>, CacheError> {
        let mut out = Vec::new();
        for path in list_files(&self.root.join("records")) {
            if let Ok(bytes) = fs::read(&path) {
                if let Ok(r) = serde_json::from_slice::<StageRecord>(&bytes) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Re-hashes every blob. A damaged one moves to `quarantine/` (kept for a post
    /// mortem); the records naming it become misses, so the next build rebuilds it.
    pub fn verify(&self) -> Result<VerifyReport, CacheError> {
        let mut report = VerifyReport::default();
        for path in list_files(&self.root.join("blobs/sha256")) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let actual = Digest::of_file(&path).map_err(CacheError::io("hash", &path))?;
            report.blobs_checked += 1;
            report.bytes_checked += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if actual.hex() != name {
                let q = self.root.join("quarantine");
                fs::create_dir_all(&q).map_err(CacheError::io("create", &q))?;
                fs::rename(&path, q.join(&name)).map_err(CacheError::io("quarantine", &path))?;
                report.damaged.push(Digest::parse(&name).unwrap_or(actual));
            }
        }
        for path in list_files(&self.root.join("records")) {
            report.records_checked += 1;
            let ok = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<StageRecord>(&b).ok())
                .is_some();
            if !ok && path.extension().is_some_and(|e| e == "json") {
                let _ = fs::remove_file(&path);
                report.bad_records.push(path);
            }
        }
        Ok(report)
    }

    /// Deletes records not in `keep`, blobs no kept record names, checkpoints of keys
    /// not kept, and stray temp files. Waits for running builds to finish first.
    pub fn gc(&self, keep: &BTreeSet<Digest>) -> Result<GcReport, CacheError> {
        let lock = self.lock_file("build")?;
        FileExt::lock_exclusive(&lock)
            .map_err(CacheError::io("lock", &self.root.join("locks/build")))?;
        let mut report = GcReport::default();
        let mut live_blobs = BTreeSet::new();
        for path in list_files(&self.root.join("records")) {
            let rec = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<StageRecord>(&b).ok());
            match rec {
                Some(r) if keep.contains(&r.key) => {
                    report.records_kept += 1;
                    live_blobs.extend(r.outputs.values().map(|o| o.digest));
                }
                _ => {
                    report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&path).map_err(CacheError::io("remove", &path))?;
                    report.records_removed += 1;
                }
            }
        }
        for path in list_files(&self.root.join("blobs/sha256")) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if Digest::parse(&name).is_some_and(|d| live_blobs.contains(&d)) {
                report.blobs_kept += 1;
            } else {
                report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(CacheError::io("remove", &path))?;
                report.blobs_removed += 1;
            }
        }
        if let Ok(entries) = fs::read_dir(self.root.join("checkpoints")) {
            for e in entries.flatten() {
                let keep_it = Digest::parse(&e.file_name().to_string_lossy())
                    .is_some_and(|d| keep.contains(&d));
                if !keep_it {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        for dir in ["tmp", "quarantine"] {
            if let Ok(entries) = fs::read_dir(self.root.join(dir)) {
                for e in entries.flatten() {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
        Ok(report)
    }
}
