//! A static `report.html` from the bundle manifest (JSON) and an optional contact
//! sheet image: what a person opens to judge a release. No scripts, no external
//! resources; the same manifest gives the same bytes.
//!
//! A bundle manifest (`bundle::Manifest`) gets its targets with units (KB, dB, ms),
//! pass/fail and golden frames as links, and the student and teacher figures; any other
//! JSON gets its `targets` metrics as they are. `files` (path → sha256) is listed, and
//! the full manifest is printed at the end.

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
    match serde_json::from_value::<super::Manifest>(manifest.clone()) {
        Ok(m) => typed_sections(&mut h, &m, manifest),
        Err(_) => generic_targets(&mut h, manifest),
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

/// A manifest this version does not know: every target metric as it is.
fn generic_targets(h: &mut String, manifest: &Value) {
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
}

fn num(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$} {unit}"),
        _ => "—".into(),
    }
}

/// The report of a bundle manifest: targets with units, bars and golden frames as
/// links; the student and its teacher. `doc` is the manifest as JSON, where the report
/// beside the tarball adds each target's `latency_ms` measured on the building machine.
fn typed_sections(h: &mut String, m: &super::Manifest, doc: &Value) {
    h.push_str(
        "<h2>Targets</h2>\n<table>\n<tr><th>target</th><th>format</th><th>precision</th>\
         <th>model</th><th>size</th><th>PSNR vs student</th><th>SSIM</th><th>max abs error</th>\
         <th>latency (tract, 1 thread)</th><th>verified</th><th>golden frames</th></tr>\n",
    );
    for (name, t) in &m.targets {
        let latency = doc["targets"][name]["latency_ms"].as_f64();
        let golden: Vec<String> = t
            .golden
            .iter()
            .enumerate()
            .map(|(i, g)| {
                format!(
                    "{i}: <a href=\"{}\">in</a> / <a href=\"{}\">out</a>",
                    escape(&g.input),
                    escape(&g.output)
                )
            })
            .collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&t.format),
            escape(&t.precision),
            escape(&t.file),
            num(t.size_bytes.map(|b| b as f64 / 1000.0), 1, "KB"),
            num(t.psnr_db, 2, "dB"),
            num(t.ssim, 4, ""),
            num(t.max_abs, 4, ""),
            num(latency, 2, "ms"),
            if t.verified {
                "<span class=\"pass\">pass</span>"
            } else {
                "<span class=\"fail\">fail</span>"
            },
            golden.join("<br>")
        );
    }
    h.push_str("</table>\n<p>Golden frames are float32 <code>.npy</code> files: the input a target is fed and the output it must give.</p>\n");
    let s = &m.student;
    let _ = writeln!(
        h,
        "<h2>Student and teacher</h2>\n<table>\n<tr><th></th><th>width</th><th>params</th>\
         <th>GMACs at 512²</th><th>PSNR vs pairs</th><th>PSNR vs teacher</th><th>SSIM</th>\
         <th>flicker ratio</th></tr>\n<tr><td>student</td><td class=\"num\">{} ({} blocks)</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        s.width,
        s.blocks,
        s.params
            .map(|p| p.to_string())
            .unwrap_or_else(|| "—".into()),
        num(s.macs_512.map(|m| m as f64 / 1e9), 2, ""),
        num(s.psnr_vs_target_db, 2, "dB"),
        num(s.psnr_db, 2, "dB"),
        num(s.ssim, 4, ""),
        num(s.flicker_ratio, 3, ""),
    );
    let t = &m.teacher;
    let _ = writeln!(
        h,
        "<tr><td>teacher</td><td class=\"num\">{}</td><td></td><td></td>\
         <td class=\"num\">{}</td><td></td><td></td><td></td></tr>\n</table>\n\
         <p>Output = input scores {} against the pairs: the floor a net must beat.</p>",
        t.width,
        num(t.psnr_db, 2, "dB"),
        num(t.identity_psnr_db, 2, "dB"),
    );
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
    fn report_shows_targets_with_units_links_and_the_sheet_and_escapes_text() {
        let manifest = serde_json::json!({
            "effect": "lego <b>",
            "version": "1.0.0",
            "recipe_digest": "abc123",
            "files": {"models/android-nnapi/model.tflite": "deadbeef"},
            "student": {"width": 16, "blocks": 4, "params": 72783, "macs_512": 829947904u64,
                        "psnr_db": 31.5, "psnr_vs_target_db": 25.66, "ssim": 0.93, "flicker_ratio": 0.58},
            "teacher": {"width": 32, "psnr_db": 26.12, "identity_psnr_db": 15.96},
            "targets": {
                "android-nnapi": {"file": "models/android-nnapi/model.tflite", "format": "tflite",
                    "precision": "int8", "psnr_db": 41.25, "ssim": 0.987, "max_abs": 0.02,
                    "size_bytes": 81234, "verified": true,
                    "golden": [{"input": "golden/android-nnapi/input-0.npy", "output": "golden/android-nnapi/output-0.npy"}],
                    "latency_ms": 3.21},
                "ios-coreml": {"file": "models/ios-coreml/model.mlpackage", "format": "mlpackage",
                    "precision": "fp16", "psnr_db": 58.5, "ssim": 0.999, "max_abs": 0.001,
                    "size_bytes": 150000, "verified": false, "golden": []}
            }
        });
        let html = render(&manifest, Some("preview/sheet.png"));
        assert!(html.contains("<h1>lego &lt;b&gt;</h1>"));
        let row = html
            .lines()
            .find(|l| l.starts_with("<tr><td>android-nnapi</td>"))
            .unwrap();
        for cell in [
            "81.2 KB",
            "41.25 dB",
            "3.21 ms",
            "<span class=\"pass\">pass</span>",
        ] {
            assert!(row.contains(cell), "{cell} missing from {row}");
        }
        assert!(
            row.contains("<a href=\"golden/android-nnapi/input-0.npy\">in</a>"),
            "golden frames are links: {row}"
        );
        assert!(!row.contains("[{"), "no JSON in a cell: {row}");
        assert!(html.contains("<span class=\"fail\">fail</span>"));
        assert!(
            html.contains("25.66 dB") && html.contains("0.83"),
            "the student's figures"
        );
        assert!(html.contains("<code>models/android-nnapi/model.tflite</code>"));
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
