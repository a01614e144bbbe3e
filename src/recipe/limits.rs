//! Shared rules every recipe file obeys before and after parsing: how deep it may nest
//! (the KDL parser recurses, so a deep file must be refused before it reaches it), how
//! paths stay inside their folder, and which `{placeholders}` a text may hold.

/// Recipe, stdlib and target files are a few KiB; refuse what no person wrote.
pub const MAX_FILE_BYTES: usize = 128 * 1024;
/// The parser's thread: a base stack plus room for one recursion per byte (measured:
/// its error recovery takes well under 1 KiB per bad byte in a debug build).
pub const PARSE_STACK_BASE: usize = 16 << 20;
pub const PARSE_STACK_PER_BYTE: usize = 2048;
/// Syntax errors shown per file; a mangled file can yield thousands.
pub const MAX_SYNTAX_ERRORS: usize = 8;

/// Deepest `{ ... }` nesting a recipe may use; real recipes use 3 or 4 levels.
pub const MAX_DEPTH: usize = 64;
/// The parser recurses once per `*` or `/` (and per run of other text) inside a
/// `/* ... */` comment, so such comments get a budget too.
pub const MAX_COMMENT_TOKENS: usize = 2000;
/// The parser recovers from a stray `}` at the top level by recursing: refuse a file
/// with more than a few of them before parsing.
pub const MAX_STRAY_CLOSES: usize = 16;

/// What the pre-scan found: byte offset and length of the culprit, and the message.
#[derive(Debug, PartialEq)]
pub struct LimitError {
    pub offset: usize,
    pub len: usize,
    pub code: &'static str,
    pub message: String,
    pub label: &'static str,
    pub help: Option<&'static str>,
}

/// Scans KDL text for nesting the parser cannot take, skipping strings and comments.
/// Linear and allocation-free; errs on the side of letting text through to the parser
/// (which reports real syntax errors better).
pub fn scan(text: &str) -> Result<(), LimitError> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut stray = 0usize;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment(b, i)?;
                continue;
            }
            b'"' => {
                i = quoted(b, i).map_err(|how| unclosed(i, how, false))?;
                continue;
            }
            b'#' => {
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + hashes) == Some(&b'"') {
                    i = raw(b, i, hashes).map_err(|how| unclosed(i, how, true))?;
                } else {
                    // Past the whole run: counting it again from each `#` is quadratic.
                    i += hashes;
                }
                continue;
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(LimitError {
                        offset: i,
                        len: 1,
                        code: "too-deep",
                        message: format!(
                            "nodes nest deeper than {MAX_DEPTH} levels (a recipe needs 3 or 4)"
                        ),
                        label: "one level too deep",
                        help: None,
                    });
                }
            }
            b'}' => {
                if depth == 0 {
                    stray += 1;
                    if stray > MAX_STRAY_CLOSES {
                        return Err(LimitError {
                            offset: i,
                            len: 1,
                            code: "syntax",
                            message: format!(
                                "more than {MAX_STRAY_CLOSES} `}}` close blocks that were never opened"
                            ),
                            label: "no `{` opened this",
                            help: None,
                        });
                    }
                } else {
                    depth -= 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Skips `/* ... */` (nested) from `start`; returns the index after it.
fn block_comment(b: &[u8], start: usize) -> Result<usize, LimitError> {
    let (mut i, mut nest, mut tokens) = (start + 2, 1usize, 0usize);
    let too_much = |what: &str| {
        LimitError {
        offset: start,
        len: 2,
        code: "too-deep",
        message: format!("this `/* ... */` comment is too {what} for the KDL parser (it recurses on each nested comment and each `*` or `/` inside)"),
        label: "comment starts here",
        help: None,
    }
    };
    while i < b.len() {
        if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            nest -= 1;
            i += 2;
            if nest == 0 {
                return Ok(i);
            }
            continue;
        }
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            nest += 1;
            tokens += 1;
            if nest > MAX_DEPTH {
                return Err(too_much("deeply nested"));
            }
            i += 2;
            continue;
        }
        // One parser step per `*` or `/`, and one per run of other bytes.
        let run_starts = i == start + 2 || matches!(b[i - 1], b'*' | b'/');
        if matches!(b[i], b'*' | b'/') || run_starts {
            tokens += 1;
            if tokens > MAX_COMMENT_TOKENS {
                return Err(too_much("long"));
            }
        }
        i += 1;
    }
    Err(LimitError {
        offset: start,
        len: 2,
        code: "syntax",
        message: "KDL syntax error: this comment is never closed with `*/`".into(),
        label: "opened here",
        help: None,
    })
}

/// How a string ended when it did not close.
enum Open {
    /// A single-line string met a newline (KDL 2 forbids it).
    Newline(usize),
    Eof,
}

/// Skips a `"..."` or `"""..."""` string (with escapes) from `start`.
fn quoted(b: &[u8], start: usize) -> Result<usize, Open> {
    let triple = b[start..].starts_with(b"\"\"\"");
    let mut i = start + if triple { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 1;
                // A whitespace escape swallows every space and newline after it.
                if b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
                    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
            b'\n' if !triple => return Err(Open::Newline(i)),
            b'"' if !triple => return Ok(i + 1),
            b'"' if b[i..].starts_with(b"\"\"\"") => return Ok(i + 3),
            _ => i += 1,
        }
    }
    Err(Open::Eof)
}

/// Skips a raw string `#"..."#` / `##"""..."""##` from `start` (`hashes` leading `#`).
fn raw(b: &[u8], start: usize, hashes: usize) -> Result<usize, Open> {
    let open = start + hashes;
    let quotes = if b[open..].starts_with(b"\"\"\"") {
        3
    } else {
        1
    };
    let mut i = open + quotes;
    while i < b.len() {
        if b[i] == b'\n' && quotes == 1 {
            return Err(Open::Newline(i));
        }
        if b[i..].starts_with(&b"\"\"\""[..quotes])
            && b[i + quotes..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == b'#')
                .count()
                == hashes
        {
            return Ok(i + quotes + hashes);
        }
        i += 1;
    }
    Err(Open::Eof)
}

/// The diagnostic for a string that does not close. Reported here, not left to the
/// parser: its recovery re-scans from every later quote, quadratic in the line.
fn unclosed(start: usize, how: Open, raw: bool) -> LimitError {
    match how {
        Open::Newline(at) => LimitError {
            offset: start,
            len: at - start,
            code: "syntax",
            message: format!(
                "KDL syntax error: Unexpected newline in single-line {} string",
                if raw { "raw" } else { "quoted" }
            ),
            label: "not closed on this line",
            help: Some("close it on the same line, or make it multi-line with `\"\"\"` and a newline right after the opening quotes"),
        },
        Open::Eof => LimitError {
            offset: start,
            len: 1,
            code: "syntax",
            message: "KDL syntax error: this string is never closed".into(),
            label: "opened here",
            help: None,
        },
    }
}

/// Why a path written in a recipe would leave the folder it is relative to, if it would.
/// The one rule for every path: relative, and no `..` component. A symlink inside the
/// project is followed (that is how a team points at a big dataset elsewhere).
pub fn path_escape(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    let drive =
        path.len() >= 2 && path.as_bytes()[1] == b':' && path.as_bytes()[0].is_ascii_alphabetic();
    if path.starts_with(['/', '\\']) || drive || path.starts_with('~') {
        return Some("is absolute");
    }
    if path.split(['/', '\\']).any(|c| c == "..") {
        return Some("climbs out with `..`");
    }
    None
}

/// Names that become file names (`extends "BASE"` → `stdlib/BASE.kdl`): one plain
/// component.
pub fn name_escape(name: &str) -> Option<&'static str> {
    path_escape(name)
        .or_else(|| (name.contains(['/', '\\']) || name == ".").then_some("is a path, not a name"))
}

/// Every `{name}` in `text`: (byte offset, name).
pub fn placeholders(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{' {
            let name_len = b[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
                .count();
            if name_len > 0 && b.get(i + 1 + name_len) == Some(&b'}') {
                out.push((i, &text[i + 1..i + 1 + name_len]));
                i += name_len + 2;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_braces_outside_strings_and_comments() {
        let ok = "a { b { c \"{{{{\" #\"{{\"# /* { */ // {\n } }";
        assert_eq!(scan(ok), Ok(()));
        let deep = format!(
            "{}{}",
            "n {".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        let e = scan(&deep).unwrap_err();
        assert_eq!(e.offset, 2 + 3 * MAX_DEPTH);
        assert_eq!(scan(&"n {".repeat(MAX_DEPTH)), Ok(()));
        assert!(scan(&"}".repeat(MAX_STRAY_CLOSES + 1)).is_err());
        assert!(scan(&format!("/*{}*/", "*".repeat(MAX_COMMENT_TOKENS + 1))).is_err());
        assert!(scan(&"/*".repeat(MAX_DEPTH + 1)).is_err());
        assert_eq!(scan("/* a long comment with few stars */ n"), Ok(()));
        assert_eq!(
            scan("n \"a\\  \n  b\" \"\"\"\nx\n\"\"\" #\"\"\"\n\"\"\"#"),
            Ok(())
        );
        for open in [
            "n \"abc",
            "n #\"abc\"",
            "/* abc",
            "n \"\"\"abc\"\"",
            "n \"a\nb\"",
        ] {
            assert_eq!(scan(open).unwrap_err().code, "syntax", "{open}");
        }
    }

    #[test]
    fn paths_stay_inside() {
        for bad in [
            "/etc",
            "\\x",
            "C:\\x",
            "~/x",
            "..",
            "a/../../b",
            "a\\..\\b",
            "",
        ] {
            assert!(path_escape(bad).is_some(), "{bad}");
        }
        for good in ["photos/*.jpg", "a..b.jpg", "./pairs", "data/**/x"] {
            assert_eq!(path_escape(good), None, "{good}");
        }
        assert!(name_escape("../x").is_some() && name_escape("a/b").is_some());
        assert_eq!(name_escape("face-mask"), None);
    }

    #[test]
    fn placeholders_are_braced_names() {
        assert_eq!(
            placeholders("a {attributes}, {x y} {} {b-c}{"),
            vec![(2, "attributes"), (25, "b-c")]
        );
    }
}
