//! Decoding a clip with ffmpeg, as a child process: every frame of its first video
//! stream, unchanged in number and order (`-fps_mode passthrough`), as raw RGB on
//! stdout; each frame's timestamp comes from the `showinfo` filter on stderr, which logs
//! a frame before it reaches the output, so timestamps arrive ahead of their pixels.

use super::select::TimeBase;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// Why a clip gave no frames.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// No `ffmpeg` program: the machine's problem.
    #[error("cannot run ffmpeg ({0}): video sources need it; install the Debian package `ffmpeg` (`apt-get install ffmpeg`)")]
    Missing(std::io::Error),
    /// ffmpeg cannot read the file: the data's problem. `message` is ffmpeg's last
    /// stderr line.
    #[error("ffmpeg cannot read {clip}: {message}")]
    Unreadable { clip: String, message: String },
    /// Reading ffmpeg's output or writing frames failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One decoded frame: its timestamp (in the clip's time base) and its pixels.
pub struct Decoded {
    pub pts: i64,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

enum Line {
    TimeBase(TimeBase),
    Frame { pts: i64, width: u32, height: u32 },
}

/// Decodes `clip` (named `name` in messages), giving each frame to `each` in
/// presentation order; returns the clip's time base, or None when it has no frame.
pub fn decode(
    clip: &Path,
    name: &str,
    mut each: impl FnMut(TimeBase, Decoded) -> std::io::Result<()>,
) -> Result<Option<TimeBase>, VideoError> {
    let mut cmd = Command::new(ffmpeg_program());
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "info",
        "-i",
    ])
    .arg(clip)
    .args([
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-vf",
        "showinfo=checksum=0",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = crate::process::spawn(cmd).map_err(VideoError::Missing)?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Line>();
    // stderr is read on its own thread so neither pipe can fill up and stall ffmpeg.
    let reader = std::thread::spawn(move || {
        let mut last = String::new();
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r').trim_end();
            if let Some(parsed) = parse_line(line) {
                let _ = tx.send(parsed);
            } else if !line.is_empty() && !line.contains("Parsed_showinfo") {
                last = line.trim().to_string();
            }
        }
        last
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut tb = None;
    let mut result: Result<(), VideoError> = Ok(());
    for line in rx.iter() {
        match line {
            Line::TimeBase(t) => tb = Some(t),
            Line::Frame { pts, width, height } => {
                let Some(t) = tb else {
                    result = Err(unreadable(name, "ffmpeg gave a frame before its time base"));
                    break;
                };
                let mut rgb = vec![0u8; width as usize * height as usize * 3];
                if let Err(e) = stdout.read_exact(&mut rgb) {
                    // ffmpeg stopped mid-frame: its exit status and message say why.
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        result = Err(e.into());
                    }
                    break;
                }
                if let Err(e) = each(
                    t,
                    Decoded {
                        pts,
                        width,
                        height,
                        rgb,
                    },
                ) {
                    result = Err(e.into());
                    break;
                }
            }
        }
    }
    if result.is_err() {
        let _ = child.kill();
    }
    // Drain what is left so ffmpeg can finish writing, then reap it.
    let unread = std::io::copy(&mut stdout, &mut std::io::sink()).unwrap_or(0);
    let status = child.wait()?;
    let last = reader.join().unwrap_or_default();
    result?;
    if status.success() && tb.is_none() && unread > 0 {
        // Pixels came but no timestamps: this ffmpeg logs `showinfo` another way.
        return Err(VideoError::Io(std::io::Error::other(format!(
            "{name}: ffmpeg decoded frames but effectc could not read their timestamps from its `showinfo` log (ffmpeg 5.1 or newer is expected)"
        ))));
    }
    if !status.success() {
        let message = if last.is_empty() {
            format!("ffmpeg exited with {status}")
        } else {
            last
        };
        return Err(unreadable(name, &message));
    }
    Ok(tb)
}

fn unreadable(name: &str, message: &str) -> VideoError {
    VideoError::Unreadable {
        clip: name.to_string(),
        message: message.to_string(),
    }
}

/// `EFFECTC_FFMPEG` names another ffmpeg (tests use it to stand in a missing one).
fn ffmpeg_program() -> std::ffi::OsString {
    std::env::var_os("EFFECTC_FFMPEG").unwrap_or_else(|| "ffmpeg".into())
}

/// A `showinfo` line: `config in time_base: 1/10240, ...` or
/// `n:   0 pts:      0 pts_time:0 ... s:64x48 ...`.
fn parse_line(line: &str) -> Option<Line> {
    let rest = line.split_once("] ")?.1;
    if !line.contains("Parsed_showinfo") {
        return None;
    }
    if let Some(tb) = rest.strip_prefix("config in time_base: ") {
        let (num, den) = tb.split(',').next()?.trim().split_once('/')?;
        let (num, den) = (num.parse().ok()?, den.parse().ok()?);
        return (num > 0 && den > 0).then_some(Line::TimeBase(TimeBase { num, den }));
    }
    if !rest.trim_start().starts_with("n:") {
        return None;
    }
    let mut pts = None;
    let mut size = None;
    let mut fields = rest.split_whitespace();
    while let Some(f) = fields.next() {
        match f {
            // `pts:` is followed by its value after padding: `pts:      0`.
            "pts:" => pts = fields.next().and_then(|v| v.parse().ok()),
            _ if f.starts_with("pts:") => pts = f[4..].parse().ok(),
            _ if f.starts_with("s:") => {
                let (w, h) = f[2..].split_once('x')?;
                size = Some((w.parse().ok()?, h.parse().ok()?));
            }
            _ => {}
        }
    }
    let (width, height) = size?;
    Some(Line::Frame {
        pts: pts?,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn showinfo_lines_give_time_base_timestamp_and_size() {
        let tb = parse_line(
            "[Parsed_showinfo_0 @ 0x55ce] config in time_base: 1/10240, frame_rate: 10/1",
        );
        assert!(matches!(
            tb,
            Some(Line::TimeBase(TimeBase { num: 1, den: 10240 }))
        ));
        let f = parse_line("[Parsed_showinfo_0 @ 0x55ce] n:  12 pts:  12288 pts_time:1.2 pos: 48 fmt:yuv420p sar:1/1 s:64x48 i:P iskey:0 type:P");
        assert!(matches!(
            f,
            Some(Line::Frame {
                pts: 12288,
                width: 64,
                height: 48
            })
        ));
        assert!(parse_line(
            "[Parsed_showinfo_0 @ 0x55ce] config out time_base: 0/0, frame_rate: 0/0"
        )
        .is_none());
        assert!(
            parse_line("[Parsed_showinfo_0 @ 0x55ce]   side data - User Data Unregistered:")
                .is_none()
        );
        assert!(parse_line("Input #0, mov,mp4, from 'a.mp4':").is_none());
    }
}
