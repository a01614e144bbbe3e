//! The content-addressed build cache.
//!
//! ```text
//! cache/
//!   blobs/sha256/ab/abcd…     every output, by the SHA-256 of its bytes (read-only)
//!   records/ab/<key>.json     one record per stage key: outputs, metrics, timings, log
//!   snapshots/<effect>@<project>.bin   an effect's last build in one project (also
//!                             `.shard-I-of-N.bin` per slice), in one file
//!   checkpoints/<key>/        training checkpoints, kept across interrupted builds
//!   stat-cache.bin            (path, size, mtime, inode) → digest of source files
//!   locks/, tmp/
//! ```
//! Every write is atomic (temp file, fsync, rename) and blobs are written before the
//! record that names them, so a build killed at any instant leaves either a complete
//! entry or none. A record whose blob is missing or damaged is a miss.

mod record;
mod stat_cache;
mod store;

pub mod remote;

pub use record::{OutputRef, Snapshot, SnapshotEntry, StageRecord, SKIPPED_METRIC};
pub use stat_cache::StatCache;
pub use store::{
    BuildLock, Cache, CacheError, GcPolicy, GcReport, KeyLock, SnapshotId, VerifyReport,
};
