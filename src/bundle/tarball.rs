//! Reproducible tar.gz: entries sorted by path, zeroed mtimes / uids / gids, no user
//! or group names, fixed modes, fixed gzip level, no timestamp or file name in the gzip
//! header; written to a temporary file next to the target and renamed into place.

use std::path::{Component, Path, PathBuf};

use flate2::{Compression, GzBuilder};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "bundle entry `{0}` is not a plain relative path (no leading `/`, no `..`, no empty parts)"
    )]
    BadPath(String),
    #[error("bundle has two entries at `{0}`")]
    Duplicate(String),
    #[error("cannot read bundle input {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What goes into one tar entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntrySource {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// gzip level used for every bundle: changing it changes every bundle's bytes.
pub const GZIP_LEVEL: u32 = 9;
/// Mode of every entry: read-only data, nothing executable.
pub const ENTRY_MODE: u32 = 0o644;

fn check_path(p: &str) -> Result<(), BundleError> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && !p.ends_with('/')
        && !p.contains('\\')
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && !p.split('/').any(|part| part.is_empty());
    if ok {
        Ok(())
    } else {
        Err(BundleError::BadPath(p.to_string()))
    }
}

/// Writes `entries` (path inside the tar, content) to `out` as a reproducible tar.gz.
pub fn write_reproducible_tar_gz(
    entries: &[(String, EntrySource)],
    out: &Path,
) -> Result<(), BundleError> {
    let mut sorted: Vec<&(String, EntrySource)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(BundleError::Duplicate(pair[0].0.clone()));
        }
    }
    for (path, _) in &sorted {
        check_path(path)?;
    }
    let write_err = |source: std::io::Error| BundleError::Write {
        path: out.to_path_buf(),
        source,
    };
    // A source that cannot be read is reported as itself, not as a write error.
    let mut read_error = None;
    let written = crate::atomic::write_with(out, |file| {
        // No file name, no mtime, fixed OS byte ("unknown") in the gzip header.
        let gz = GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(&mut *file, Compression::new(GZIP_LEVEL));
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        for (path, source) in sorted {
            let data = match source {
                EntrySource::Bytes(b) => b.clone(),
                EntrySource::File(p) => match std::fs::read(p) {
                    Ok(buf) => buf,
                    Err(source) => {
                        read_error = Some(BundleError::Read {
                            path: p.clone(),
                            source,
                        });
                        return Err(std::io::Error::other("unreadable bundle entry"));
                    }
                },
            };
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            header.set_mode(ENTRY_MODE);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_username("")?;
            header.set_groupname("")?;
            tar.append_data(&mut header, path, &data[..])?;
        }
        tar.into_inner()?.finish()?;
        Ok(())
    });
    match (read_error, written) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(write_err(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// Every file under `dir` as entries named `prefix/<relative path>` (for directory
/// artifacts such as `.mlpackage`), in sorted order.
pub fn entries_from_dir(
    dir: &Path,
    prefix: &str,
) -> Result<Vec<(String, EntrySource)>, BundleError> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| BundleError::Read {
            path: dir.to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("directory loop")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(|_| BundleError::BadPath(entry.path().display().to_string()))?;
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        out.push((
            format!("{prefix}/{}", rel.join("/")),
            EntrySource::File(entry.path().to_path_buf()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_entries_give_the_same_bytes_whatever_their_order_and_file_times() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.onnx");
        std::fs::write(&file, b"onnx bytes").unwrap();
        let entries = vec![
            (
                "models/model.onnx".to_string(),
                EntrySource::File(file.clone()),
            ),
            (
                "manifest.json".to_string(),
                EntrySource::Bytes(b"{}".to_vec()),
            ),
        ];
        let a = dir.path().join("a.tar.gz");
        write_reproducible_tar_gz(&entries, &a).unwrap();
        // Different mtime on the input, reversed order, a second write.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&file, b"onnx bytes").unwrap();
        let reversed: Vec<_> = entries.iter().rev().cloned().collect();
        let b = dir.path().join("b.tar.gz");
        write_reproducible_tar_gz(&reversed, &b).unwrap();
        let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(a, b);
        // gzip header: no mtime (bytes 4..8), no FNAME flag.
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[3] & 0x08, 0);
        // Entries sorted, metadata zeroed.
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&a[..]));
        let names: Vec<(String, u64, u64, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("manifest.json".into(), 0, 0, 0o644),
                ("models/model.onnx".into(), 0, 0, 0o644)
            ]
        );
    }

    #[test]
    fn bad_and_duplicate_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.tar.gz");
        for bad in ["/etc/passwd", "../x", "a//b", "", "a/"] {
            let e =
                write_reproducible_tar_gz(&[(bad.to_string(), EntrySource::Bytes(vec![]))], &out)
                    .unwrap_err();
            assert!(matches!(e, BundleError::BadPath(_)), "{bad}: {e}");
        }
        let dup = vec![
            ("a".to_string(), EntrySource::Bytes(vec![])),
            ("a".to_string(), EntrySource::Bytes(vec![1])),
        ];
        assert!(matches!(
            write_reproducible_tar_gz(&dup, &out),
            Err(BundleError::Duplicate(_))
        ));
        assert!(!out.exists());
    }
}
