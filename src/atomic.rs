//! The one way effectc writes a file that someone else may read (the cache, `out/`, a
//! bundle, a checkpoint): a temporary file in the same folder, fsync, rename over the
//! name, fsync of the folder. A crash or a full disk leaves the old file or the new one,
//! never half of one, and the temporary file is removed on any error.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// Writes `path` atomically from a writer: `fill` gets the temporary file.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let dir = folder_of(path);
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    readable(tmp.path())?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_folder(dir)
}

/// Writes `path` atomically through a library that only writes to a path of its own:
/// `fill` gets the temporary file's path.
pub fn write_at(path: &Path, fill: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let dir = folder_of(path);
    fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)?
        .into_temp_path();
    fill(&tmp)?;
    File::open(&tmp)?.sync_all()?;
    readable(&tmp)?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_folder(dir)
}

/// Makes a rename inside `dir` durable.
pub fn sync_folder(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// tempfile creates 0600; what we write is an ordinary readable file.
fn readable(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        write(&path, b"old").unwrap();
        let err = write_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.html")]);
        write_at(&path, |p| fs::write(p, b"new")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }
}
