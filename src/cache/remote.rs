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
//!
//! Trust: a team's cache is filled only by trusted writers. Credentials go in request
//! headers (`--remote-header`), held here and nowhere else: never printed, logged,
//! recorded or put in events (errors name the header, never its value). A client with
//! uploads off (`--remote-upload=false`, a laptop) reads and never writes. A server that
//! refuses credentials (401/403) is reported once, naming the option, and switched off
//! (for reads) or left read-only (for writes).

use super::{Cache, StageRecord};
use crate::digest::Digest;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Blobs can be weights or bundles: allow large bodies.
const MAX_BODY: u64 = 16 << 30;
/// Warnings about bad answers printed per build before going quiet.
const MAX_WARNINGS: usize = 3;

/// A header value that must not be shown: its Debug and Display say only that it is there.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself, for the request (and tests); never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How effectc talks to the remote, beyond its URL.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Sent with every request (credentials: `Authorization: Bearer …`).
    pub headers: Vec<(String, Secret)>,
    /// Whether stages that ran are uploaded (false: read-only client).
    pub upload: bool,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            headers: Vec::new(),
            upload: true,
        }
    }
}

/// The hint every refused-credentials message carries.
const CREDENTIALS_HINT: &str = "give credentials with --remote-header 'NAME: VALUE' (or EFFECTC_REMOTE_HEADER, or `remote-header` in effectc.kdl)";

pub struct RemoteCache {
    base: String,
    agent: ureq::Agent,
    headers: Vec<(String, Secret)>,
    upload: bool,
    down: AtomicBool,
    /// A write was refused (401/403): reads go on, uploads stop.
    read_only: AtomicBool,
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
    /// 401/403: the server wants (other) credentials.
    #[error("remote cache {url}: HTTP {status}: {}", auth_message(.sent, *.write))]
    Auth {
        url: String,
        status: u16,
        /// The names (never the values) of the headers sent.
        sent: Vec<String>,
        write: bool,
    },
    #[error("remote cache {url}: {message}")]
    Garbage { url: String, message: String },
    #[error("local cache: {0}")]
    Local(String),
}

fn auth_message(sent: &[String], write: bool) -> String {
    let what = if write {
        "the server refused an upload"
    } else {
        "the server refused to answer"
    };
    let sent = if sent.is_empty() {
        "no credentials were sent".to_string()
    } else {
        format!("the header(s) {} were sent and refused", sent.join(", "))
    };
    let fix = if write {
        format!("{CREDENTIALS_HINT}, or read only with --remote-upload=false")
    } else {
        CREDENTIALS_HINT.to_string()
    };
    format!("{what} ({sent}); {fix}")
}

/// The URL as shown in messages: without a `user:password@` part.
fn shown_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

impl RemoteCache {
    pub fn new(url: &str) -> RemoteCache {
        RemoteCache::with_options(url, RemoteOptions::default())
    }

    pub fn with_options(url: &str, options: RemoteOptions) -> RemoteCache {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        RemoteCache {
            base: url.trim_end_matches('/').to_string(),
            agent,
            headers: options.headers,
            upload: options.upload,
            down: AtomicBool::new(false),
            read_only: AtomicBool::new(false),
            warnings: AtomicUsize::new(0),
            fetched: AtomicUsize::new(0),
            pushed: AtomicUsize::new(0),
        }
    }

    /// The URL for messages (a `user:password@` part left out).
    pub fn url(&self) -> String {
        shown_url(&self.base)
    }

    /// Whether stages that ran are uploaded: asked for, and not refused by the server.
    pub fn uploads(&self) -> bool {
        self.upload && !self.read_only.load(Ordering::SeqCst)
    }

    /// The names of the headers sent (for messages; never the values).
    fn header_names(&self) -> Vec<String> {
        self.headers.iter().map(|(n, _)| n.clone()).collect()
    }

    fn status_error(&self, url: &str, status: u16, write: bool) -> RemoteError {
        let url = shown_url(url);
        match status {
            401 | 403 => RemoteError::Auth {
                url,
                status,
                sent: self.header_names(),
                write,
            },
            _ => RemoteError::Status { url, status },
        }
    }

    fn transport(&self, url: &str, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Transport {
            url: shown_url(url),
            message: e.to_string(),
        }
    }

    /// Whether an earlier transport failure switched the remote off for this build.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Reports a failure on stderr (a few times per build), switching the remote off
    /// when the server cannot be reached at all.
    pub fn warn(&self, e: &RemoteError) {
        if let RemoteError::Auth { write: true, .. } = e {
            if !self.read_only.swap(true, Ordering::SeqCst) {
                eprintln!("warning: {e}; uploads are off for this build");
            }
            return;
        }
        if let RemoteError::Auth { write: false, .. } = e {
            if !self.down.swap(true, Ordering::SeqCst) {
                eprintln!("warning: {e}; building locally without the remote cache");
            }
            return;
        }
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
        let mut req = self.agent.get(&url);
        for (name, Secret(value)) in &self.headers {
            req = req.header(name, value);
        }
        let mut resp = req.call().map_err(|e| self.transport(&url, e))?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            status => return Err(self.status_error(&url, status, false)),
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.transport(&url, e))?;
        Ok(Some(bytes))
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let url = format!("{}/{path}", self.base);
        let mut req = self.agent.put(&url);
        for (name, Secret(value)) in &self.headers {
            req = req.header(name, value);
        }
        let resp = req.send(bytes).map_err(|e| self.transport(&url, e))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(self.status_error(&url, status, true)),
        }
    }

    fn has(&self, path: &str, size: u64) -> bool {
        let url = format!("{}/{path}", self.base);
        let mut req = self.agent.head(&url);
        for (name, Secret(value)) in &self.headers {
            req = req.header(name, value);
        }
        match req.call() {
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
            url: shown_url(&format!("{}/{path}", self.base)),
            message,
        };
        let rec: StageRecord = serde_json::from_slice(&bytes)
            .map_err(|e| garbage(format!("not a stage record: {e}")))?;
        if rec.key != *key {
            return Err(garbage(format!("the record is for key {}", rec.key.hex())));
        }
        for (name, out) in &rec.outputs {
            if cache.has_blob(&out.digest) {
                // Hashed when it was stored; the record must still say its true size.
                let size = std::fs::metadata(cache.blob_path(&out.digest))
                    .map(|m| m.len())
                    .map_err(|e| RemoteError::Local(e.to_string()))?;
                if size != out.size_bytes {
                    return Err(garbage(format!(
                        "output `{name}` is said to be {} bytes, but blob {} is {size}",
                        out.size_bytes,
                        out.digest.hex()
                    )));
                }
                continue;
            }
            let blob_path = format!("cas/{}", out.digest.hex());
            let Some(blob) = self.get(&blob_path)? else {
                // The record outlived its blob on the server: a miss, not an error.
                return Ok(None);
            };
            let got = Digest::of_bytes(&blob);
            let bad_blob = |message: String| RemoteError::Garbage {
                url: shown_url(&format!("{}/{blob_path}", self.base)),
                message,
            };
            if got != out.digest {
                return Err(bad_blob(format!(
                    "output `{name}` does not hash to the digest its record names (it hashes to {})",
                    got.hex()
                )));
            }
            if blob.len() as u64 != out.size_bytes {
                return Err(bad_blob(format!(
                    "output `{name}` is {} bytes, its record says {}",
                    blob.len(),
                    out.size_bytes
                )));
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
    /// With uploads off (asked for, or refused by the server) nothing is sent.
    pub fn push(&self, cache: &Cache, rec: &StageRecord) -> Result<(), RemoteError> {
        if self.is_down() || !self.uploads() {
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
