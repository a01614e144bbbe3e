//! The `command` and `directory` teachers' contracts.
//!
//! **command**: for each source item, effectc runs the recipe's `run` argv once.
//! - `{input}` in an argument is replaced by the path of the source PNG (the crop, at
//!   the recipe's size); without `{input}`, the PNG bytes arrive on stdin.
//! - `{output}` is replaced by the path where the program must write the stylized image
//!   (PNG or JPEG, same size as the input); without `{output}`, the image is read from
//!   stdout.
//! - The program runs in the project root. Exit status 0 means success; anything else,
//!   a timeout (`timeout-s`, default 300), a missing program, or an output that is not
//!   an image of the input's size fails the item with the program's name, the item,
//!   the exit code and the end of its stderr.
//!
//! **directory**: a folder of finished pairs; the target for source `photos/ann.jpg` is
//! `<dir>/ann.png|jpg|jpeg` (extension in any case). Two candidates is an error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CommandTeacherError {
    #[error("teacher command `{program}` could not start for {item}: {source}")]
    Spawn {
        program: String,
        item: PathBuf,
        source: std::io::Error,
    },
    #[error("teacher command `{program}` failed for {item} with exit code {code}:\n{stderr_tail}")]
    Failed {
        program: String,
        item: PathBuf,
        code: String,
        stderr_tail: String,
    },
    #[error("teacher command `{program}` timed out after {timeout_s} s on {item}")]
    Timeout {
        program: String,
        item: PathBuf,
        timeout_s: u64,
    },
    #[error("teacher command `{program}` gave no usable image for {item}: {what}")]
    BadOutput {
        program: String,
        item: PathBuf,
        what: String,
    },
    #[error("teacher command I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("two pair targets match `{stem}`: {} and {}", .first.display(), .second.display())]
pub struct AmbiguousPair {
    pub stem: String,
    pub first: PathBuf,
    pub second: PathBuf,
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn run_command_teacher(
    argv: &[String],
    input_png: &Path,
    output_png: &Path,
    timeout: Duration,
) -> Result<(), CommandTeacherError> {
    let program = argv.first().cloned().unwrap_or_default();
    let item = input_png.to_path_buf();
    let uses_input = argv.iter().any(|a| a.contains("{input}"));
    let uses_output = argv.iter().any(|a| a.contains("{output}"));
    let args: Vec<String> = argv[1.min(argv.len())..]
        .iter()
        .map(|a| {
            a.replace("{input}", &input_png.to_string_lossy())
                .replace("{output}", &output_png.to_string_lossy())
        })
        .collect();
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .stdin(if uses_input {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(if uses_output {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::piped());
    // Its own process group, killed whole on a timeout or when this function returns
    // (dropping the guard), so what the program started goes with it; the direct child
    // also dies with effectc (src/process.rs).
    let mut group =
        crate::process::spawn_group(cmd).map_err(|source| CommandTeacherError::Spawn {
            program: program.clone(),
            item: item.clone(),
            source,
        })?;
    // Feed stdin and drain stdout/stderr on threads so a chatty program never blocks.
    let stdin_thread = group.child.stdin.take().map(|mut stdin| {
        let bytes = std::fs::read(input_png);
        std::thread::spawn(move || {
            if let Ok(b) = bytes {
                let _ = stdin.write_all(&b);
            }
        })
    });
    let stdout_thread = group.child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        })
    });
    let stderr_thread = group.child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            buf
        })
    });
    let started = Instant::now();
    let status = loop {
        match group.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = group.kill_and_wait();
                return Err(CommandTeacherError::Timeout {
                    program,
                    item,
                    timeout_s: timeout.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                return Err(CommandTeacherError::Spawn {
                    program,
                    item,
                    source,
                })
            }
        }
    };
    if let Some(t) = stdin_thread {
        let _ = t.join();
    }
    let stdout = stdout_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    let stderr = stderr_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    if !status.success() {
        let code = status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none (killed by a signal)".into());
        return Err(CommandTeacherError::Failed {
            program,
            item,
            code,
            stderr_tail: tail(&stderr, 10),
        });
    }
    if !uses_output {
        std::fs::write(output_png, &stdout).map_err(|source| CommandTeacherError::Io {
            path: output_png.to_path_buf(),
            source,
        })?;
    }
    let bad = |what: String| CommandTeacherError::BadOutput {
        program: program.clone(),
        item: item.clone(),
        what,
    };
    let out = image::ImageReader::open(output_png)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| bad(format!("not a decodable image ({e})")))?
        .decode()
        .map_err(|e| bad(format!("not a decodable image ({e})")))?;
    let input = image::ImageReader::open(input_png)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| bad(format!("cannot read the input back ({e})")))?
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the input back ({e})")))?;
    if (out.width(), out.height()) != input {
        return Err(bad(format!(
            "size {}x{} differs from the input's {}x{}",
            out.width(),
            out.height(),
            input.0,
            input.1
        )));
    }
    // Normalise to PNG so the cache holds one format whatever the program wrote.
    super::write_png(&out.to_rgb8(), output_png).map_err(|source| CommandTeacherError::Io {
        path: output_png.to_path_buf(),
        source,
    })?;
    Ok(())
}

pub fn find_pair_target(dir: &Path, stem: &str) -> Result<Option<PathBuf>, AmbiguousPair> {
    let mut found: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let ext_ok = p
                .extension()
                .map(|x| x.to_string_lossy().to_ascii_lowercase())
                .is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg");
            if ext_ok && p.file_stem().is_some_and(|s| s == stem) {
                found.push(p);
            }
        }
    }
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(AmbiguousPair {
            stem: stem.into(),
            first: found[0].clone(),
            second: found[1].clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into(), "teacher".into()]
    }

    fn input(dir: &Path) -> PathBuf {
        let p = dir.join("in.png");
        image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
            .save(&p)
            .unwrap();
        p
    }

    #[test]
    fn stdin_to_stdout_and_placeholders_both_work() {
        let dir = tempfile::tempdir().unwrap();
        let inp = input(dir.path());
        let out = dir.path().join("out.png");
        run_command_teacher(&sh("cat"), &inp, &out, Duration::from_secs(10)).unwrap();
        assert_eq!(
            image::open(&out).unwrap().to_rgb8().get_pixel(0, 0).0,
            [10, 20, 30]
        );
        let out2 = dir.path().join("out2.png");
        let argv = vec!["cp".into(), "{input}".into(), "{output}".into()];
        run_command_teacher(&argv, &inp, &out2, Duration::from_secs(10)).unwrap();
        assert!(out2.is_file());
    }

    #[test]
    fn failures_name_the_program_exit_code_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let inp = input(dir.path());
        let out = dir.path().join("out.png");
        let err = run_command_teacher(
            &sh("echo 'model exploded' >&2; exit 3"),
            &inp,
            &out,
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`sh`") && err.contains("exit code 3") && err.contains("model exploded"),
            "{err}"
        );
        let err = run_command_teacher(&sh("sleep 5"), &inp, &out, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        let err = run_command_teacher(
            &sh("echo not-an-image"),
            &inp,
            &out,
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no usable image"), "{err}");
        let err = run_command_teacher(
            &["/no/such/program".to_string()],
            &inp,
            &out,
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("could not start"), "{err}");
    }

    #[test]
    fn directory_pairs_match_by_stem_and_refuse_ambiguity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ann.PNG"), b"x").unwrap();
        assert_eq!(
            find_pair_target(dir.path(), "ann").unwrap(),
            Some(dir.path().join("ann.PNG"))
        );
        assert_eq!(find_pair_target(dir.path(), "bob").unwrap(), None);
        std::fs::write(dir.path().join("ann.jpg"), b"x").unwrap();
        assert!(find_pair_target(dir.path(), "ann").is_err());
    }
}
