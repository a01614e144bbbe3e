//! The cache on disk: blobs, records, snapshots, locks, verify and gc.

use super::record::{OutputRef, Snapshot, StageRecord};
use crate::digest::Digest;
use fs4::fs_std::FileExt;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Last-used times are refreshed at most this often, so a no-op build writes nothing.
const TOUCH_EVERY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The disk said no: retry, free space, fix permissions. Never the recipe's fault.
    #[error("cache: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that must be read whole to act safely cannot be (gc will not guess).
    #[error("cache: {path} is damaged ({why}); `cache gc` deletes nothing while a snapshot cannot be read: remove that file (its effect's next build writes it again) and re-run")]
    Damaged { path: PathBuf, why: String },
}

impl CacheError {
    fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> CacheError + 'p {
        move |source| CacheError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub use crate::atomic::write as write_atomic;

/// Which build a snapshot belongs to: one project (by its canonical path), one effect,
/// and for sharded builds one slice. Two projects sharing a cache never share a
/// snapshot, even with effects of the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotId {
    pub effect: String,
    /// The first 16 hex digits of the SHA-256 of the project's canonical path.
    pub project: String,
    pub shard: Option<(usize, usize)>,
}

impl SnapshotId {
    pub fn new(project_root: &Path, effect: &str) -> SnapshotId {
        let canonical = project_root
            .canonicalize()
            .unwrap_or_else(|_| project_root.to_path_buf());
        let digest = Digest::of_bytes(canonical.to_string_lossy().as_bytes());
        SnapshotId {
            effect: effect.to_string(),
            project: digest.hex()[..16].to_string(),
            shard: None,
        }
    }

    pub fn with_shard(mut self, shard: Option<(usize, usize)>) -> SnapshotId {
        self.shard = shard;
        self
    }

    /// `brick@0123456789abcdef.bin`, `brick@0123456789abcdef.shard-0-of-4.bin`.
    pub fn file_name(&self) -> String {
        match self.shard {
            None => format!("{}@{}.bin", self.effect, self.project),
            Some((i, n)) => format!("{}@{}.shard-{i}-of-{n}.bin", self.effect, self.project),
        }
    }
}

/// What `cache gc` removes. Without a policy: every record no snapshot in the cache
/// names (whichever project or shard wrote it). With `older_than` and/or `max_size`
/// (shared caches), snapshots stop deciding: records not used within `older_than` go,
/// then the least recently used go until what is kept fits in `max_size` bytes.
#[derive(Clone, Debug, Default)]
pub struct GcPolicy {
    pub older_than: Option<Duration>,
    pub max_size: Option<u64>,
}

impl GcPolicy {
    pub fn is_lru(&self) -> bool {
        self.older_than.is_some() || self.max_size.is_some()
    }
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
    /// Bytes of the kept records and blobs.
    pub bytes_kept: u64,
    pub snapshots_read: usize,
    pub snapshots_removed: usize,
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kept {} records and {} blobs ({} bytes, named by {} snapshot(s)); removed {} records and {} blobs ({} bytes freed){}",
            self.records_kept,
            self.blobs_kept,
            self.bytes_kept,
            self.snapshots_read,
            self.records_removed,
            self.blobs_removed,
            self.bytes_freed,
            if self.snapshots_removed > 0 {
                format!(" and {} unused snapshot(s)", self.snapshots_removed)
            } else {
                String::new()
            }
        )
    }
}

/// Sets `path`'s mtime (its last-used time) to now when it is older than a day.
fn touch_if_stale(path: &Path, mtime: Option<SystemTime>) {
    let now = SystemTime::now();
    let stale = mtime.is_none_or(|m| now.duration_since(m).is_ok_and(|age| age > TOUCH_EVERY));
    if stale {
        // Best effort: a read-only cache still builds; gc then sees an older time.
        if let Ok(f) = File::options().write(true).open(path) {
            let _ = f.set_modified(now);
        }
    }
}

fn mtime(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
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
        // A hit is a use: refresh the record's last-used time (its mtime) for gc.
        touch_if_stale(
            &path,
            fs::metadata(&path).ok().and_then(|m| m.modified().ok()),
        );
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

    fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.root.join("snapshots").join(id.file_name())
    }

    /// Before snapshots were keyed by project: `snapshots/<effect>.bin`.
    fn legacy_snapshot_path(&self, effect: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{effect}.bin"))
    }

    /// This build's snapshot, or, the first time, the effect's old unkeyed one. Which of
    /// the two answered is in the `bool` (true: its own). A damaged snapshot only costs
    /// speed here: records answer instead, and the build writes a good one.
    pub fn read_snapshot(&self, id: &SnapshotId) -> Result<(Option<Snapshot>, bool), CacheError> {
        if let Some(s) = self.read_snapshot_file(&self.snapshot_path(id))? {
            return Ok((Some(s), true));
        }
        if id.shard.is_none() {
            // Entries are checked against keys, so another project's old snapshot is safe.
            return Ok((
                self.read_snapshot_file(&self.legacy_snapshot_path(&id.effect))?,
                false,
            ));
        }
        Ok((None, false))
    }

    fn read_snapshot_file(&self, path: &Path) -> Result<Option<Snapshot>, CacheError> {
        match fs::read(path) {
            Ok(b) => Ok(postcard::from_bytes(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::Io {
                op: "read",
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    pub fn write_snapshot(&self, id: &SnapshotId, snap: &Snapshot) -> Result<(), CacheError> {
        let path = self.snapshot_path(id);
        let bytes = postcard::to_allocvec(snap).map_err(|e| CacheError::Io {
            op: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(CacheError::io("write", &path))
    }

    /// A build that used its snapshot without rewriting it marks it used: the snapshot's
    /// mtime is the last-used time of every record it names (one file, not one per
    /// record, so a no-op build stays one read). Refreshed at most once a day.
    pub fn mark_snapshot_used(&self, id: &SnapshotId) {
        let path = self.snapshot_path(id);
        touch_if_stale(
            &path,
            fs::metadata(&path).ok().and_then(|m| m.modified().ok()),
        );
    }

    /// Every snapshot in the cache (any project, effect or shard), with its last-used
    /// time. Refuses when one cannot be read: what it names cannot be known.
    fn all_snapshots(&self) -> Result<Vec<(PathBuf, Snapshot, SystemTime)>, CacheError> {
        let mut out = Vec::new();
        let dir = self.root.join("snapshots");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(CacheError::Io {
                    op: "list",
                    path: dir,
                    source: e,
                })
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            // Temp files of an interrupted write are not snapshots.
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        paths.sort();
        for path in paths {
            let bytes = fs::read(&path).map_err(CacheError::io("read", &path))?;
            let meta = fs::metadata(&path).map_err(CacheError::io("stat", &path))?;
            match postcard::from_bytes::<Snapshot>(&bytes) {
                Ok(s) => out.push((path, s, mtime(&meta))),
                Err(e) => {
                    return Err(CacheError::Damaged {
                        path,
                        why: format!("not a snapshot: {e}"),
                    })
                }
            }
        }
        Ok(out)
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

    /// Deletes the records `policy` does not keep, the blobs no kept record names,
    /// checkpoints of removed records, and stray temp files. Waits for running builds
    /// to finish first (exclusive lock); deletes nothing if a snapshot is damaged.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport, CacheError> {
        let lock = self.lock_file("build")?;
        FileExt::lock_exclusive(&lock)
            .map_err(CacheError::io("lock", &self.root.join("locks/build")))?;
        let now = SystemTime::now();
        let mut report = GcReport::default();
        let snapshots = self.all_snapshots()?;
        report.snapshots_read = snapshots.len();
        // A record's last use: its own mtime, or the latest use of a snapshot naming it.
        let mut named: BTreeMap<Digest, SystemTime> = BTreeMap::new();
        for (_, snap, used) in &snapshots {
            for e in snap.entries.values() {
                let t = named.entry(e.key).or_insert(*used);
                *t = (*t).max(*used);
            }
        }
        struct Found {
            path: PathBuf,
            rec: Option<StageRecord>,
            last_used: SystemTime,
            size: u64,
        }
        let mut found: Vec<Found> = Vec::new();
        for path in list_files(&self.root.join("records")) {
            let meta = fs::metadata(&path).map_err(CacheError::io("stat", &path))?;
            let rec = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<StageRecord>(&b).ok());
            let last_used = rec
                .as_ref()
                .and_then(|r| named.get(&r.key))
                .map_or(mtime(&meta), |t| (*t).max(mtime(&meta)));
            found.push(Found {
                path,
                rec,
                last_used,
                size: meta.len(),
            });
        }
        let blob_size = |d: &Digest| {
            fs::metadata(self.blob_path(d))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let mut keep = vec![false; found.len()];
        if policy.is_lru() {
            // Most recently used first; each blob counts once however many records share it.
            let mut order: Vec<usize> = (0..found.len()).collect();
            order.sort_by(|&a, &b| found[b].last_used.cmp(&found[a].last_used));
            let mut counted: BTreeSet<Digest> = BTreeSet::new();
            let mut total = 0u64;
            for i in order {
                let Some(rec) = &found[i].rec else { continue };
                let age = now.duration_since(found[i].last_used).unwrap_or_default();
                if policy.older_than.is_some_and(|limit| age > limit) {
                    continue;
                }
                let mut size = found[i].size;
                let new_blobs: Vec<Digest> = rec
                    .outputs
                    .values()
                    .map(|o| o.digest)
                    .filter(|d| !counted.contains(d))
                    .collect();
                size += new_blobs.iter().map(blob_size).sum::<u64>();
                if policy.max_size.is_some_and(|max| total + size > max) {
                    // Older records do not jump the queue: the rest go too.
                    break;
                }
                total += size;
                counted.extend(new_blobs);
                keep[i] = true;
            }
        } else {
            for (i, f) in found.iter().enumerate() {
                keep[i] = f.rec.as_ref().is_some_and(|r| named.contains_key(&r.key));
            }
        }
        let mut live_blobs = BTreeSet::new();
        // Video frames are read by digest of their pixels (`video::store`): the ones a
        // kept record read stay, the rest are decoded again when a build needs them.
        let mut live_inputs = BTreeSet::new();
        let mut kept_keys = BTreeSet::new();
        let mut removed_keys = BTreeSet::new();
        for (f, keep_it) in found.iter().zip(&keep) {
            if *keep_it {
                let rec = f.rec.as_ref().expect("only readable records are kept");
                report.records_kept += 1;
                report.bytes_kept += f.size;
                live_blobs.extend(rec.outputs.values().map(|o| o.digest));
                live_inputs.extend(rec.inputs.values().copied());
                kept_keys.insert(rec.key);
            } else {
                report.bytes_freed += f.size;
                fs::remove_file(&f.path).map_err(CacheError::io("remove", &f.path))?;
                report.records_removed += 1;
                if let Some(r) = &f.rec {
                    removed_keys.insert(r.key);
                }
            }
        }
        for path in list_files(&self.root.join("blobs/sha256")) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if Digest::parse(&name).is_some_and(|d| live_blobs.contains(&d)) {
                report.blobs_kept += 1;
                report.bytes_kept += size;
            } else {
                report.bytes_freed += size;
                fs::remove_file(&path).map_err(CacheError::io("remove", &path))?;
                report.blobs_removed += 1;
            }
        }
        let (frames_removed, frame_bytes) =
            crate::video::FrameStore::new(&self.root).gc(&live_inputs);
        report.blobs_removed += frames_removed;
        report.bytes_freed += frame_bytes;
        // Under a policy, a snapshot unused for the whole window describes no live build.
        if let Some(limit) = policy.older_than {
            for (path, _, used) in &snapshots {
                if now.duration_since(*used).unwrap_or_default() > limit {
                    fs::remove_file(path).map_err(CacheError::io("remove", path))?;
                    report.snapshots_removed += 1;
                }
            }
        }
        // A checkpoint without a record is an interrupted stage's progress: it stays
        // (under a policy, until it is older than the window).
        if let Ok(entries) = fs::read_dir(self.root.join("checkpoints")) {
            for e in entries.flatten() {
                let key = Digest::parse(&e.file_name().to_string_lossy());
                let stale = policy.older_than.is_some_and(|limit| {
                    e.metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .is_some_and(|t| now.duration_since(t).unwrap_or_default() > limit)
                });
                let drop_it = match key {
                    Some(k) if kept_keys.contains(&k) => false,
                    Some(k) if removed_keys.contains(&k) => true,
                    Some(_) => stale,
                    None => true,
                };
                if drop_it {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cache: &Cache, name: &str, blobs: &[&[u8]], age_days: u64) -> StageRecord {
        let outputs = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("out{i}"), cache.put_blob_bytes(b).unwrap()))
            .collect();
        let rec = StageRecord {
            key: Digest::of_bytes(name.as_bytes()),
            stage_id: name.into(),
            kind: "test".into(),
            effect: "e".into(),
            outputs,
            metrics: Default::default(),
            params: Default::default(),
            inputs: Default::default(),
            duration_ms: 0,
            duration_us: 0,
            finished_at_unix: 0,
            log: String::new(),
        };
        cache.put_record(&rec).unwrap();
        let then = SystemTime::now() - Duration::from_secs(age_days * 86_400);
        File::options()
            .write(true)
            .open(cache.record_path(&rec.key))
            .unwrap()
            .set_modified(then)
            .unwrap();
        rec
    }

    #[test]
    fn max_size_drops_least_recently_used_first_and_keeps_shared_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let (shared, b, c) = (vec![1u8; 1000], vec![2u8; 1000], vec![3u8; 1000]);
        let oldest = record(&cache, "oldest", &[shared.as_slice()], 3);
        let middle = record(&cache, "middle", &[shared.as_slice(), b.as_slice()], 2);
        let newest = record(&cache, "newest", &[c.as_slice()], 1);
        let rec_size = |r: &StageRecord| fs::metadata(cache.record_path(&r.key)).unwrap().len();
        // Room for the two newest records and their three blobs, not a byte more.
        let room = rec_size(&newest) + rec_size(&middle) + 3000;
        let report = cache
            .gc(&GcPolicy {
                older_than: None,
                max_size: Some(room),
            })
            .unwrap();
        assert_eq!((report.records_removed, report.records_kept), (1, 2));
        assert!(cache.read_record_raw(&oldest.key).is_none());
        // Raw reads: a hit (get_record) would count as a use and reorder them.
        assert!(cache.read_record_raw(&middle.key).is_some());
        assert!(cache.read_record_raw(&newest.key).is_some());
        assert!(
            cache.has_blob(&Digest::of_bytes(&shared)),
            "the oldest record's blob is still named by a kept one"
        );
        assert_eq!(report.blobs_removed, 0);

        // One byte less and the middle record goes too (its blobs with it).
        let report = cache
            .gc(&GcPolicy {
                older_than: None,
                max_size: Some(rec_size(&newest) + 1000),
            })
            .unwrap();
        assert_eq!((report.records_removed, report.blobs_removed), (1, 2));
        assert!(cache.read_record_raw(&newest.key).is_some());
    }

    #[test]
    fn a_hit_refreshes_a_stale_last_used_time_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let rec = record(&cache, "r", &[b"x".as_slice()], 40);
        let used = |c: &Cache| {
            fs::metadata(c.record_path(&rec.key))
                .unwrap()
                .modified()
                .unwrap()
        };
        assert!(SystemTime::now().duration_since(used(&cache)).unwrap() > TOUCH_EVERY);
        cache.get_record(&rec.key).unwrap().unwrap();
        let refreshed = used(&cache);
        assert!(SystemTime::now().duration_since(refreshed).unwrap() < TOUCH_EVERY);
        let report = cache
            .gc(&GcPolicy {
                older_than: Some(Duration::from_secs(30 * 86_400)),
                max_size: None,
            })
            .unwrap();
        assert_eq!(report.records_kept, 1);
    }
}
