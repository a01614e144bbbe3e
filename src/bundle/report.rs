//! A static `report.html` from the bundle manifest (JSON) and an optional contact
//! sheet image: what a person opens to judge a release. No scripts, no external
//! resources; the same manifest gives the same bytes.
//!
//! Reads, when present: `effect` (string), `recipe_digest` (string), `targets`
//! (object of target name → object of metrics), `files` (object of path → sha256, or
//! array of objects with `path` and `sha256`). Everything else still appears in the
//! full manifest listing at the end.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        Value::String(s) => escape(s),
        Value::Bool(b) => {
            if *b {
                "<span class=\"pass\">yes</span>".into()
            } else {
                "<span class=\"fail\">no</span>".into()
            }
        }
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

/// The HTML text. `contact_sheet` is a path relative to the report (e.g.
/// `preview/contact_sheet.png`).
pub fn render(manifest: &Value, contact_sheet: Option<&str>) -> String {
    let effect = manifest
        .get("effect")
        .and_then(Value::as_str)
        .unwrap_or("effect");
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{} — effectc release</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; color: #222; }}\n\
         table {{ border-collapse: collapse; margin: 1em 0; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }}\n\
         th {{ background: #f3f3f3; }}\n\
         td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         .pass {{ color: #161; font-weight: bold; }} .fail {{ color: #a11; font-weight: bold; }}\n\
         code, pre {{ font-family: monospace; font-size: 0.9em; }}\n\
         img {{ max-width: 100%; border: 1px solid #ccc; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(effect),
        escape(effect)
    );
    if let Some(d) = manifest.get("recipe_digest").and_then(Value::as_str) {
        let _ = writeln!(h, "<p>Recipe digest: <code>{}</code></p>", escape(d));
    }
    if let Some(targets) = manifest.get("targets").and_then(Value::as_object) {
        // Columns: the union of metric names, in first-seen order.
        let mut columns: Vec<&String> = Vec::new();
        for metrics in targets.values() {
            if let Some(m) = metrics.as_object() {
                for k in m.keys() {
                    if !columns.contains(&k) {
                        columns.push(k);
                    }
                }
            }
        }
        h.push_str("<h2>Targets</h2>\n<table>\n<tr><th>target</th>");
        for c in &columns {
            let _ = write!(h, "<th>{}</th>", escape(c));
        }
        h.push_str("</tr>\n");
        for (name, metrics) in targets {
            let _ = write!(h, "<tr><td>{}</td>", escape(name));
            for c in &columns {
                let v = metrics.get(c.as_str()).unwrap_or(&Value::Null);
                let class = if v.is_number() { " class=\"num\"" } else { "" };
                let _ = write!(h, "<td{class}>{}</td>", cell(v));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    let files: Vec<(String, String)> = match manifest.get("files") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|f| {
                let get = |k: &str| {
                    f.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                (get("path"), get("sha256"))
            })
            .collect(),
        _ => Vec::new(),
    };
    if !files.is_empty() {
        h.push_str("<h2>Files</h2>\n<table>\n<tr><th>path</th><th>sha256</th></tr>\n");
        for (p, d) in &files {
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(p),
                escape(d)
            );
        }
        h.push_str("</table>\n");
    }
    if let Some(sheet) = contact_sheet {
        let _ = writeln!(
            h,
            "<h2>Preview</h2>\n<p>source | teacher | student | each target</p>\n<img src=\"{}\" alt=\"contact sheet\">",
            escape(sheet)
        );
    }
    let pretty = serde_json::to_string_pretty(manifest).unwrap_or_default();
    let _ = write!(
        h,
        "<h2>Manifest</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(&pretty)
    );
    h
}

/// Writes `report.html` atomically.
pub fn write_html(
    manifest: &Value,
    contact_sheet: Option<&str>,
    out: &Path,
) -> Result<(), ReportError> {
    let p = out.display().to_string();
    let werr = |source: std::io::Error| ReportError::Write {
        path: p.clone(),
        source,
    };
    crate::atomic::write(out, render(manifest, contact_sheet).as_bytes()).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shows_targets_files_and_sheet_and_escapes_text() {
        let manifest = serde_json::json!({
            "effect": "lego <b>",
            "recipe_digest": "abc123",
            "targets": {
                "android-nnapi": {"psnr_db": 41.25, "ssim": 0.987, "passed": true, "size_bytes": 81234},
                "ios-coreml": {"psnr_db": 58.5, "passed": false, "latency_ms": 3.2}
            },
            "files": {"models/student.tflite": "deadbeef"}
        });
        let html = render(&manifest, Some("preview/sheet.png"));
        assert!(html.contains("<h1>lego &lt;b&gt;</h1>"));
        let row = html
            .lines()
            .find(|l| l.starts_with("<tr><td>android-nnapi</td>"))
            .unwrap();
        assert!(
            row.contains("<td class=\"num\">41.2500</td>")
                && row.contains("<span class=\"pass\">yes</span>"),
            "{row}"
        );
        assert!(html.contains("<span class=\"fail\">no</span>"));
        assert!(html.contains("<th>latency_ms</th>"));
        assert!(html.contains("<code>models/student.tflite</code>"));
        assert!(html.contains("<img src=\"preview/sheet.png\""));
        assert!(!html.contains("<script"));
        assert_eq!(html, render(&manifest, Some("preview/sheet.png")));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report.html");
        write_html(&manifest, None, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            render(&manifest, None)
        );
    }
}
