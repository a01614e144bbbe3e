//! `effectc models fetch`: downloads a registry model into the models directory.
//!
//! - **Where from.** A file entry's `fetch="URL"`; a folder entry's `fetch="BASE"` with
//!   one `file "REL"` child per file (fetched from `BASE/REL`). With a team mirror
//!   (`EFFECTC_MODELS_MIRROR=URL`), every file comes from `URL/<registry file path>`
//!   instead (`URL/<folder>/<REL>` for a folder), so a mirror is a plain copy of a
//!   models directory behind any HTTP server.
//! - **Resume.** Bytes land in `<file>.part` beside the target (a folder is assembled in
//!   `<folder>.part/`); a later run asks for the rest with an HTTP Range request. A
//!   server that ignores the range (200) restarts the file from zero.
//! - **Checked before it appears.** The finished file (or folder) is hashed and compared
//!   with its pin (the registry's `sha256=`, else `models.lock`); a mismatch removes the
//!   partial download and keeps nothing. Only then one rename puts it under its name.
//! - **Tokens.** `HF_TOKEN`, when set, is sent as `Authorization: Bearer` to the URL the
//!   registry or mirror names (never to the host a redirect leads to: ureq drops it).

use crate::digest::Digest;
use crate::models::lock::Pin;
use crate::models::model_digest;
use crate::recipe::stdlib::ModelEntry;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("model `{name}` has no download source: the registry gives it no fetch=\"URL\"{hint}")]
    NoSource { name: String, hint: String },
    #[error("{url}: HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: String,
    },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model `{name}`: the downloaded {what} has sha256 {got}, but {pin_source} pins {want}; refused, nothing kept")]
    Digest {
        name: String,
        what: &'static str,
        got: String,
        want: String,
        pin_source: &'static str,
    },
    #[error("model `{name}`: {path} is already there but has sha256 {got}, and {pin_source} pins {want}; remove it to fetch the pinned one")]
    PresentDiffers {
        name: String,
        path: PathBuf,
        got: String,
        want: String,
        pin_source: &'static str,
    },
}

/// What one fetch did.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub path: PathBuf,
    pub digest: Digest,
    /// Bytes downloaded by this run.
    pub downloaded: u64,
    /// Bytes that were already in `.part` files and were not fetched again.
    pub resumed: u64,
    /// The model was already in the models directory.
    pub present: bool,
}

pub struct Fetcher {
    agent: ureq::Agent,
    token: Option<String>,
    mirror: Option<String>,
    progress: bool,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `name` + `.part`, beside it.
fn part_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn join_url(base: &str, rel: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        rel.trim_start_matches('/')
    )
}

impl Fetcher {
    /// `token`: `HF_TOKEN`; `mirror`: `EFFECTC_MODELS_MIRROR`; `progress`: draw a bar
    /// on stderr (a terminal, not `--json`).
    pub fn new(token: Option<String>, mirror: Option<String>, progress: bool) -> Fetcher {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer fails (and resumes on the next run); a slow one does not.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .user_agent(concat!("effectc/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Fetcher {
            agent,
            token: token.filter(|t| !t.is_empty()),
            mirror: mirror.filter(|m| !m.is_empty()),
            progress,
        }
    }

    /// Whether `entry` can be fetched at all (it has a URL, or a mirror is set).
    pub fn has_source(&self, entry: &ModelEntry) -> bool {
        self.mirror.is_some() || entry.fetch.is_some()
    }

    /// (URL, path relative to the model) of every file of `entry`; the path is empty
    /// for a single-file model.
    pub fn sources(&self, entry: &ModelEntry) -> Result<Vec<(String, String)>, FetchError> {
        let base = match (&self.mirror, &entry.fetch) {
            (Some(m), _) => join_url(m, &entry.file),
            (None, Some(u)) => u.clone(),
            (None, None) => {
                return Err(FetchError::NoSource {
                    name: entry.name.clone(),
                    hint: match &entry.url {
                        Some(u) => format!(
                            " (it says: {u}); get the file by hand and `effectc models import PATH --name {}`, or set EFFECTC_MODELS_MIRROR",
                            entry.name
                        ),
                        None => "; set EFFECTC_MODELS_MIRROR or import it by hand".into(),
                    },
                })
            }
        };
        if entry.files.is_empty() {
            return Ok(vec![(base, String::new())]);
        }
        Ok(entry
            .files
            .iter()
            .map(|rel| (join_url(&base, rel), rel.clone()))
            .collect())
    }

    /// Fetches `entry` into `dir` unless it is already there, checking it against `pin`.
    pub fn fetch(
        &self,
        dir: &Path,
        entry: &ModelEntry,
        pin: Option<&Pin>,
    ) -> Result<Fetched, FetchError> {
        let dest = dir.join(&entry.file);
        let mut hash = |p: &Path| Digest::of_file(p);
        if dest.exists() {
            let digest = model_digest(&dest, &mut hash).map_err(io_err(&dest))?;
            if let Some(pin) = pin.filter(|p| !digest.hex().eq_ignore_ascii_case(p.hex())) {
                return Err(FetchError::PresentDiffers {
                    name: entry.name.clone(),
                    path: dest,
                    got: digest.hex(),
                    want: pin.hex().to_string(),
                    pin_source: pin.source(),
                });
            }
            return Ok(Fetched {
                path: dest,
                digest,
                downloaded: 0,
                resumed: 0,
                present: true,
            });
        }
        let sources = self.sources(entry)?;
        let part = part_of(&dest);
        let parent = dest.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let (mut downloaded, mut resumed) = (0, 0);
        let folder = !entry.files.is_empty();
        if folder {
            // Each file goes to `<folder>.part/<rel>.part`, then to `<rel>` when whole.
            for (url, rel) in &sources {
                let target = part.join(rel);
                if target.is_file() {
                    resumed += target.metadata().map(|m| m.len()).unwrap_or(0);
                    continue;
                }
                let fpart = part_of(&target);
                if let Some(p) = fpart.parent() {
                    std::fs::create_dir_all(p).map_err(io_err(p))?;
                }
                let (d, r) = self
                    .download(url, &fpart, &format!("{}/{rel}", entry.name))
                    .inspect_err(|_| {
                        // Keep partial bytes for the next run, not empty folders.
                        let _ = std::fs::remove_dir(fpart.parent().unwrap_or(&part));
                        let _ = std::fs::remove_dir(&part);
                    })?;
                downloaded += d;
                resumed += r;
                std::fs::rename(&fpart, &target).map_err(io_err(&target))?;
            }
        } else {
            let (url, _) = &sources[0];
            let (d, r) = self.download(url, &part, &entry.name)?;
            downloaded += d;
            resumed += r;
        }
        let digest = model_digest(&part, &mut hash).map_err(io_err(&part))?;
        if let Some(pin) = pin.filter(|p| !digest.hex().eq_ignore_ascii_case(p.hex())) {
            // Nothing of a wrong download stays: the next run starts from zero.
            let _ = if folder {
                std::fs::remove_dir_all(&part)
            } else {
                std::fs::remove_file(&part)
            };
            return Err(FetchError::Digest {
                name: entry.name.clone(),
                what: if folder { "folder" } else { "file" },
                got: digest.hex(),
                want: pin.hex().to_string(),
                pin_source: pin.source(),
            });
        }
        std::fs::rename(&part, &dest).map_err(io_err(&dest))?;
        crate::atomic::sync_folder(parent).map_err(io_err(parent))?;
        Ok(Fetched {
            path: dest,
            digest,
            downloaded,
            resumed,
            present: false,
        })
    }

    /// Downloads `url` into `part`, continuing after the bytes already there. Returns
    /// (bytes downloaded now, bytes that were already there). The file is fsynced.
    fn download(&self, url: &str, part: &Path, label: &str) -> Result<(u64, u64), FetchError> {
        let have = part.metadata().map(|m| m.len()).unwrap_or(0);
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let transport = |message: String| FetchError::Transport {
            url: url.to_string(),
            message,
        };
        let mut resp = req.call().map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let start = match status {
            200 => 0,
            206 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                match content_range_start(&range) {
                    Some(s) if s == have => have,
                    _ => {
                        return Err(transport(format!(
                            "asked for the bytes from {have} on, got the range `{range}`"
                        )))
                    }
                }
            }
            // Nothing left to send: the partial file is already whole (the digest says).
            416 if have > 0 => return Ok((0, have)),
            401 | 403 => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                    hint: match &self.token {
                        None => ": the server wants an access token. Set HF_TOKEN to a Hugging Face token (https://huggingface.co/settings/tokens) whose account has accepted the model's licence, and run again".into(),
                        Some(_) => ": the token in HF_TOKEN was refused (wrong or expired, or its account has no access to this model: accept the licence on the model's page)".into(),
                    },
                })
            }
            404 => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                    hint: ": not found (check the registry's fetch= URL, or the mirror's copy)".into(),
                })
            }
            _ => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                    hint: String::new(),
                })
            }
        };
        let mut file = if start == 0 {
            File::create(part)
        } else {
            OpenOptions::new().append(true).open(part)
        }
        .map_err(io_err(part))?;
        let total = resp.body().content_length().map(|n| n + start);
        let bar = self.bar(label, total, start);
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        let cut = |got: u64, why: String| {
            transport(format!(
                "the transfer stopped after {} bytes{} ({why}); {} kept in {}: run `effectc models fetch` again to resume",
                start + got,
                total.map(|t| format!(" of {t}")).unwrap_or_default(),
                start + got,
                part.display()
            ))
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.sync_all();
                    bar.abandon();
                    return Err(cut(got, e.to_string()));
                }
            };
            file.write_all(&buf[..n]).map_err(io_err(part))?;
            got += n as u64;
            bar.inc(n as u64);
        }
        file.sync_all().map_err(io_err(part))?;
        bar.finish_and_clear();
        if let Some(t) = total.filter(|t| *t != start + got) {
            return Err(cut(got, format!("the server announced {t} bytes")));
        }
        Ok((got, start))
    }

    fn bar(&self, label: &str, total: Option<u64>, start: u64) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
        } else {
            "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar.set_position(start);
        bar
    }
}

/// `bytes START-END/TOTAL` → START.
fn content_range_start(header: &str) -> Option<u64> {
    let rest = header.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn a_mirror_serves_the_registry_paths() {
        let entry = ModelEntry {
            name: "cn".into(),
            file: "control_x".into(),
            arch: "controlnet-sd15".into(),
            sha256: None,
            url: None,
            fetch: Some("https://huggingface.co/a/b/resolve/main".into()),
            files: vec![
                "config.json".into(),
                "diffusion_pytorch_model.safetensors".into(),
            ],
            loc: crate::recipe::diagnostic::Loc::new(
                &crate::recipe::diagnostic::SourceFile::new("t", ""),
                (0, 0).into(),
            ),
        };
        let direct = Fetcher::new(None, None, false).sources(&entry).unwrap();
        assert_eq!(
            direct[0].0,
            "https://huggingface.co/a/b/resolve/main/config.json"
        );
        let mirrored = Fetcher::new(None, Some("http://m/models/".into()), false)
            .sources(&entry)
            .unwrap();
        assert_eq!(
            mirrored[1].0,
            "http://m/models/control_x/diffusion_pytorch_model.safetensors"
        );
        assert_eq!(mirrored[1].1, "diffusion_pytorch_model.safetensors");
    }
}
