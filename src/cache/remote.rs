//! A shared cache over the Bazel remote-cache HTTP protocol, so any server teams already
//! run for Bazel (nginx with WebDAV PUT, bazel-remote, a bucket behind a proxy) works:
//! `GET/PUT <url>/ac/<stage key>` holds a stage record (effectc's JSON record, where
//! Bazel keeps an ActionResult) and `GET/PUT <url>/cas/<sha256>` holds blobs.
//!
//! The remote only ever saves work: every read is checked (the record must name its key,
//! each blob must hash to its digest) before it lands in the local cache, and any
//! failure (server down, 5xx, garbage) is reported once and the build goes on locally.
//! After a transport failure the remote is switched off for the rest of the build, so
//! a dead server costs one timeout, not one per stage.

use super::{Cache, StageRecord};
use crate::digest::Digest;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Blobs can be weights or bundles: allow large bodies.
const MAX_BODY: u64 = 16 << 30;
/// Warnings about bad answers printed per build before going quiet.
const MAX_WARNINGS: usize = 3;

pub struct RemoteCache {
    base: String,
    agent: ureq::Agent,
    down: AtomicBool,
    warnings: AtomicUsize,
    /// Counters for the build summary and tests.
    pub fetched: AtomicUsize,
    pub pushed: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote cache {url}: {message}")]
    Transport { url: String, message: String },
    #[error("remote cache {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("remote cache {url}: {message}")]
    Garbage { url: String, message: String },
    #[error("local cache: {0}")]
    Local(String),
}

impl RemoteCache {
    pub fn new(url: &str) -> RemoteCache {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        RemoteCache {
            base: url.trim_end_matches('/').to_string(),
            agent,
            down: AtomicBool::new(false),
            warnings: AtomicUsize::new(0),
            fetched: AtomicUsize::new(0),
            pushed: AtomicUsize::new(0),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Whether an earlier transport failure switched the remote off for this build.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Reports a failure on stderr (a few times per build), switching the remote off
    /// when the server cannot be reached at all.
    pub fn warn(&self, e: &RemoteError) {
        if matches!(e, RemoteError::Transport { .. }) {
            if self.down.swap(true, Ordering::SeqCst) {
                return;
            }
            eprintln!("warning: {e}; building locally without the remote cache");
            return;
        }
        let n = self.warnings.fetch_add(1, Ordering::SeqCst);
        if n < MAX_WARNINGS {
            eprintln!("warning: {e}; building that stage locally");
        } else if n == MAX_WARNINGS {
            eprintln!("warning: more remote cache errors; not reporting them further");
        }
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let url = format!("{}/{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| RemoteError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            status => return Err(RemoteError::Status { url, status }),
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| RemoteError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        Ok(Some(bytes))
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let url = format!("{}/{path}", self.base);
        let resp = self
            .agent
            .put(&url)
            .send(bytes)
            .map_err(|e| RemoteError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(RemoteError::Status { url, status }),
        }
    }

    fn has(&self, path: &str, size: u64) -> bool {
        let url = format!("{}/{path}", self.base);
        match self.agent.head(&url).call() {
            Ok(resp) => {
                resp.status().as_u16() == 200
                    && resp
                        .headers()
                        .get("content-length")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        == Some(size)
            }
            Err(_) => false,
        }
    }

    /// The record of `key` from the remote, with every blob it names checked and stored
    /// in `cache` (blobs before the record, as local runs do). None: not there.
    pub fn fetch(&self, cache: &Cache, key: &Digest) -> Result<Option<StageRecord>, RemoteError> {
        if self.is_down() {
            return Ok(None);
        }
        let path = format!("ac/{}", key.hex());
        let Some(bytes) = self.get(&path)? else {
            return Ok(None);
        };
        let garbage = |message: String| RemoteError::Garbage {
            url: format!("{}/{path}", self.base),
            message,
        };
        let rec: StageRecord = serde_json::from_slice(&bytes)
            .map_err(|e| garbage(format!("not a stage record: {e}")))?;
        if rec.key != *key {
            return Err(garbage(format!("the record is for key {}", rec.key.hex())));
        }
        for out in rec.outputs.values() {
            if cache.has_blob(&out.digest) {
                continue;
            }
            let blob_path = format!("cas/{}", out.digest.hex());
            let Some(blob) = self.get(&blob_path)? else {
                // The record outlived its blob on the server: a miss, not an error.
                return Ok(None);
            };
            let got = Digest::of_bytes(&blob);
            if got != out.digest || blob.len() as u64 != out.size_bytes {
                return Err(RemoteError::Garbage {
                    url: format!("{}/{blob_path}", self.base),
                    message: format!(
                        "the blob hashes to {} ({} bytes), not {} ({} bytes)",
                        got.hex(),
                        blob.len(),
                        out.digest.hex(),
                        out.size_bytes
                    ),
                });
            }
            cache
                .put_blob_bytes(&blob)
                .map_err(|e| RemoteError::Local(e.to_string()))?;
        }
        cache
            .put_record(&rec)
            .map_err(|e| RemoteError::Local(e.to_string()))?;
        self.fetched.fetch_add(1, Ordering::SeqCst);
        Ok(Some(rec))
    }

    /// Uploads a record's blobs (each re-hashed first, so a damaged local blob never
    /// spreads; blobs the server already holds are skipped), then the record.
    pub fn push(&self, cache: &Cache, rec: &StageRecord) -> Result<(), RemoteError> {
        if self.is_down() {
            return Ok(());
        }
        for out in rec.outputs.values() {
            let blob_path = format!("cas/{}", out.digest.hex());
            if self.has(&blob_path, out.size_bytes) {
                continue;
            }
            let file = cache.blob_path(&out.digest);
            let mut bytes = Vec::new();
            std::fs::File::open(&file)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| RemoteError::Local(format!("{}: {e}", file.display())))?;
            if Digest::of_bytes(&bytes) != out.digest {
                return Err(RemoteError::Local(format!(
                    "{} does not match its digest; run `effectc cache verify`",
                    file.display()
                )));
            }
            self.put(&blob_path, &bytes)?;
        }
        let json = serde_json::to_vec_pretty(rec)
            .map_err(|e| RemoteError::Local(format!("encoding the record: {e}")))?;
        self.put(&format!("ac/{}", rec.key.hex()), &json)?;
        self.pushed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
