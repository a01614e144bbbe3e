//! The report a person opens to judge a build: a static, self-contained HTML page (no
//! scripts, no network; every picture embedded as a `data:` URI), so it reads the same
//! inside the tarball (`report.html`) and in `out/EFFECT/` (`bundle-report.html`).
//!
//! Sections: the effect and recipe digest; each target with units (KB, dB, ms) and its
//! bar; what the app feeds each target and gets back, with a few lines of Kotlin /
//! Swift / Python; the student and the teacher; the pictures (loss curves, contact
//! sheet, pairs sheet); skipped or dropped items with their reason, when a stage
//! reported any; the time per stage; the files and the manifest. What the building
//! machine measured (latency, times) is shown only when given, i.e. beside the tarball:
//! the tarball's bytes must not depend on the machine.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::manifest::{Manifest, TargetSummary, TensorSpec};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A picture shown in the report.
#[derive(Clone, Debug)]
pub struct Figure {
    pub title: String,
    pub caption: String,
    pub png: Vec<u8>,
}

/// One row of the time table: a stage, or every item of a per-item stage kind.
#[derive(Clone, Debug, PartialEq)]
pub struct StageTime {
    pub stage: String,
    /// How many stages the row counts (1, or the items of a kind).
    pub count: usize,
    /// How many of them ran in this build (the rest came from the cache).
    pub ran: usize,
    /// The summed run time of those that ran in this build, in microseconds.
    pub us: u64,
}

/// An item a stage left out, and why (a face not found, a frame too dark...): read from
/// a stage's record, never guessed.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    pub stage: String,
    pub item: String,
    /// `skipped` or `dropped`, as the stage said.
    pub what: String,
    pub reason: String,
}

/// Everything a report shows.
#[derive(Clone, Debug, Default)]
pub struct ReportInput<'a> {
    pub manifest: Option<&'a Manifest>,
    /// `measurements.json` of the building machine (latency per target, the machine).
    pub measurements: Option<&'a Value>,
    /// Prepended to the manifest's `golden/...` paths in links: `""` inside the tarball,
    /// `bundle-` in out/EFFECT/ (where the files are `bundle-golden/...`).
    pub golden_prefix: &'a str,
    pub figures: Vec<Figure>,
    pub stage_times: Vec<StageTime>,
    pub dropped: Vec<Dropped>,
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

/// Standard base64 (RFC 4648, with padding), for `data:` URIs.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(A[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn num(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$} {unit}").trim_end().to_string(),
        _ => "—".into(),
    }
}

/// A run time: milliseconds under a second (a kind of per-item stage may take a few),
/// seconds above.
fn run_time(us: u64) -> String {
    if us < 1_000_000 {
        num(Some(us as f64 / 1e3), 1, "ms")
    } else {
        num(Some(us as f64 / 1e6), 2, "s")
    }
}

const STYLE: &str =
    "body { font-family: sans-serif; margin: 2em; color: #222; max-width: 80em; }\n\
table { border-collapse: collapse; margin: 1em 0; }\n\
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }\n\
th { background: #f3f3f3; }\n\
td.num { text-align: right; font-variant-numeric: tabular-nums; }\n\
.pass { color: #161; font-weight: bold; } .fail { color: #a11; font-weight: bold; }\n\
p.advice { background: #fff4e0; border-left: 4px solid #d80; padding: 0.4em 0.7em; }\n\
code, pre { font-family: monospace; font-size: 0.9em; }\n\
pre.code { background: #f6f6f6; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; }\n\
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }\n\
img { max-width: 100%; border: 1px solid #ccc; image-rendering: pixelated; }\n";

/// The HTML text; the same input gives the same bytes.
pub fn render(r: &ReportInput) -> String {
    let effect = r.manifest.map(|m| m.effect.as_str()).unwrap_or("effect");
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{0} — effectc report</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{0}</h1>\n",
        escape(effect)
    );
    if let Some(m) = r.manifest {
        if let Some(v) = &m.version {
            let _ = writeln!(h, "<p>Version <code>{}</code></p>", escape(v));
        }
        let _ = writeln!(
            h,
            "<p>Recipe digest: <code>{}</code> (every stage's kind, version and params, \
             and every file the plan reads)</p>",
            escape(&m.recipe_digest)
        );
        targets(&mut h, m, r);
        app_code(&mut h, m, r.golden_prefix);
        student_teacher(&mut h, m);
    }
    if !r.figures.is_empty() {
        h.push_str("<h2>Pictures</h2>\n");
        for f in &r.figures {
            let _ = writeln!(
                h,
                "<figure>\n<h3>{}</h3>\n<img src=\"data:image/png;base64,{}\" alt=\"{}\">\n\
                 <figcaption>{}</figcaption>\n</figure>",
                escape(&f.title),
                base64(&f.png),
                escape(&f.title),
                escape(&f.caption)
            );
        }
    }
    if !r.dropped.is_empty() {
        let _ = writeln!(
            h,
            "<h2>Skipped and dropped items</h2>\n<p>{} item(s) the build left out, \
             as the stages reported them.</p>\n<table id=\"dropped\">\n\
             <tr><th>stage</th><th>item</th><th></th><th>reason</th></tr>",
            r.dropped.len()
        );
        for d in &r.dropped {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&d.stage),
                escape(&d.item),
                escape(&d.what),
                escape(&d.reason)
            );
        }
        h.push_str("</table>\n");
    }
    if !r.stage_times.is_empty() {
        let total: u64 = r.stage_times.iter().map(|t| t.us).sum();
        h.push_str(
            "<h2>Time per stage</h2>\n<p>What each stage took in this build; stages \
             found in the cache took none.</p>\n\
             <table id=\"stage-times\">\n<tr><th>stage</th><th>stages</th><th>ran</th>\
             <th>cached</th><th>time</th></tr>\n",
        );
        for t in &r.stage_times {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&t.stage),
                t.count,
                t.ran,
                t.count - t.ran,
                if t.ran == 0 {
                    "—".to_string()
                } else {
                    run_time(t.us)
                }
            );
        }
        let _ = writeln!(
            h,
            "<tr><th>total</th><td></td><td></td><td></td><td class=\"num\">{}</td></tr>\n</table>",
            run_time(total)
        );
    }
    if let Some(m) = r.manifest {
        h.push_str("<h2>Files</h2>\n<table id=\"files\">\n<tr><th>path</th><th>sha256</th></tr>\n");
        for (p, d) in &m.files {
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(p),
                escape(d)
            );
        }
        h.push_str("</table>\n");
        let pretty = serde_json::to_string_pretty(m).unwrap_or_default();
        let _ = writeln!(h, "<h2>Manifest</h2>\n<pre>{}</pre>", escape(&pretty));
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// The targets: what shipped, how it verified against the profile's bar, how fast.
fn targets(h: &mut String, m: &Manifest, r: &ReportInput) {
    let measured = r.measurements.is_some();
    h.push_str(
        "<h2>Targets</h2>\n<table id=\"targets\">\n<tr><th>target</th><th>format</th>\
         <th>precision</th><th>model</th><th>size</th><th>PSNR vs student</th><th>bar</th>\
         <th>SSIM</th><th>max abs error</th>",
    );
    if measured {
        h.push_str("<th>latency (tract, 1 thread)</th>");
    }
    h.push_str("<th>verified</th><th>golden frames</th></tr>\n");
    for (name, t) in &m.targets {
        let golden: Vec<String> = t
            .golden
            .iter()
            .enumerate()
            .map(|(i, g)| {
                format!(
                    "{i}: <a href=\"{p}{}\">in</a> / <a href=\"{p}{}\">out</a>",
                    escape(&g.input),
                    escape(&g.output),
                    p = escape(r.golden_prefix)
                )
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td>",
            escape(name),
            escape(&t.format),
            escape(&t.precision),
            escape(&t.file),
            num(t.size_bytes.map(|b| b as f64 / 1000.0), 1, "KB"),
            num(t.psnr_db, 2, "dB"),
            t.min_psnr_db
                .map(|b| format!("≥ {b:.0} dB"))
                .unwrap_or_else(|| "—".into()),
            num(t.ssim, 4, ""),
            num(t.max_abs, 4, ""),
        );
        if let Some(ms) = r.measurements {
            let latency = ms["targets"][name]["latency_ms"].as_f64();
            let _ = write!(h, "<td class=\"num\">{}</td>", num(latency, 2, "ms"));
        }
        let _ = writeln!(
            h,
            "<td>{}</td><td>{}</td></tr>",
            if t.verified {
                "<span class=\"pass\">pass</span>"
            } else {
                "<span class=\"fail\">fail</span>"
            },
            golden.join("<br>")
        );
    }
    h.push_str(
        "</table>\n<p>PSNR, SSIM and max abs error compare the shipped model with the trained \
         student on held-out frames (values in [-1, 1]); the bar is the target profile's \
         minimum PSNR for the precision. Golden frames are <code>.npy</code> files in the \
         target's own layout, dtype and range (below): the input to feed and the output the \
         shipped model gives for it.</p>\n",
    );
    if let Some(machine) = r.measurements.map(|m| &m["machine"]) {
        if let Some(cpu) = machine["cpu"].as_str() {
            let _ = writeln!(
                h,
                "<p>Latency measured on {} ({} CPUs, {} {}).</p>",
                escape(cpu),
                machine["cpus"],
                escape(machine["os"].as_str().unwrap_or("")),
                escape(machine["arch"].as_str().unwrap_or(""))
            );
        }
    }
}

fn shape_text(s: &TensorSpec) -> String {
    let dims: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn spec_text(s: &TensorSpec) -> String {
    let mut t = format!(
        "{} {} {} {}, {} in [{}, {}]",
        s.kind,
        s.dtype,
        shape_text(s),
        s.layout,
        s.colour,
        s.range[0],
        s.range[1]
    );
    if let Some(q) = s.quantization {
        let _ = write!(t, ", real = (q − {}) × {}", q.zero_point, q.scale);
    }
    t
}

/// What each target takes and gives, and a few lines that feed it one frame.
fn app_code(h: &mut String, m: &Manifest, golden_prefix: &str) {
    h.push_str("<h2>For the app</h2>\n<table id=\"io\">\n<tr><th>target</th><th></th><th>name</th><th>as</th></tr>\n");
    for (name, t) in &m.targets {
        for (edge, spec) in [("input", &t.input), ("output", &t.output)] {
            if let Some(s) = spec {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{edge}</td><td><code>{}</code></td><td>{}</td></tr>",
                    escape(name),
                    escape(&s.name),
                    escape(&spec_text(s))
                );
            }
        }
    }
    h.push_str("</table>\n");
    for (name, t) in &m.targets {
        let (Some(i), Some(o)) = (&t.input, &t.output) else {
            continue;
        };
        let (lang, code) = match t.format.as_str() {
            "tflite" => (
                "Kotlin (TFLite Interpreter, NNAPI delegate)",
                kotlin(name, t, i, o),
            ),
            "mlpackage" | "mlmodel" => ("Swift (Core ML)", swift(name, t, i, o)),
            "onnx" => (
                "Python (ONNX Runtime), checking a golden frame",
                python_onnx(name, t, i, o, golden_prefix),
            ),
            _ => continue,
        };
        let _ = writeln!(
            h,
            "<h3>{}: {lang}</h3>\n<pre class=\"code\">{}</pre>",
            escape(name),
            escape(&code)
        );
    }
}

fn count(s: &TensorSpec) -> usize {
    s.shape.iter().product()
}

fn kotlin(name: &str, t: &TargetSummary, i: &TensorSpec, o: &TensorSpec) -> String {
    let (ih, iw, _) = i.hwc().unwrap_or((0, 0, 0));
    let file = t.file.rsplit('/').next().unwrap_or("model.tflite");
    let (bytes_in, put) = match (i.dtype.as_str(), i.quantization) {
        ("int8", Some(q)) => (
            1,
            format!(
                "input.put((v / {}f + {}).roundToInt().coerceIn(-128, 127).toByte())",
                q.scale, q.zero_point
            ),
        ),
        ("uint8", Some(q)) => (
            1,
            format!(
                "input.put((v / {}f + {}).roundToInt().coerceIn(0, 255).toByte())",
                q.scale, q.zero_point
            ),
        ),
        _ => (4, "input.putFloat(v)".to_string()),
    };
    let read = match (o.dtype.as_str(), o.quantization) {
        ("int8", Some(q)) => format!(
            "(output.get(k).toInt() - {}) * {}f  // int8 → real",
            q.zero_point, q.scale
        ),
        _ => "output.getFloat(k * 4)".to_string(),
    };
    let bytes_out = if o.dtype == "float32" { 4 } else { 1 };
    format!(
        "// {name}: {file} ({}), in the app's assets.\n\
         val interpreter = Interpreter(\n\
         \x20   FileUtil.loadMappedFile(context, \"{file}\"),\n\
         \x20   Interpreter.Options().addDelegate(NnApiDelegate())\n\
         )\n\
         // Input `{}`: {}.\n\
         val frame = Bitmap.createScaledBitmap(photo, {iw}, {ih}, true)\n\
         val input = ByteBuffer.allocateDirect({}).order(ByteOrder.nativeOrder())\n\
         for (y in 0 until {ih}) for (x in 0 until {iw}) {{\n\
         \x20   val p = frame.getPixel(x, y)\n\
         \x20   for (c in intArrayOf(Color.red(p), Color.green(p), Color.blue(p))) {{\n\
         \x20       val v = c / 127.5f - 1f  // pixel → [-1, 1]\n\
         \x20       {put}\n\
         \x20   }}\n\
         }}\n\
         // Output `{}`: {}.\n\
         val output = ByteBuffer.allocateDirect({}).order(ByteOrder.nativeOrder())\n\
         interpreter.runForMultipleInputsOutputs(\n\
         \x20   arrayOf(input.rewind()),\n\
         \x20   mapOf(interpreter.getOutputIndex(\"{}\") to output)\n\
         )\n\
         // Value k (y, x, channel in that order) back to a pixel:\n\
         // ((v + 1) * 127.5).roundToInt().coerceIn(0, 255) with v = {read}\n",
        t.precision,
        i.name,
        spec_text(i),
        count(i) * bytes_in,
        o.name,
        spec_text(o),
        count(o) * bytes_out,
        o.name,
    )
}

fn swift(name: &str, t: &TargetSummary, i: &TensorSpec, o: &TensorSpec) -> String {
    let (ih, iw, _) = i.hwc().unwrap_or((0, 0, 0));
    let feed = if i.kind == "image" {
        format!(
            "// Input `{0}`: {1}; a {iw}×{ih} 32BGRA CVPixelBuffer from the camera \
             (Core ML scales pixels itself).\n\
             let input = try MLDictionaryFeatureProvider(dictionary: [\n\
             \x20   \"{0}\": MLFeatureValue(pixelBuffer: pixelBuffer)\n\
             ])",
            i.name,
            spec_text(i)
        )
    } else {
        format!(
            "// Input `{0}`: {1}.\n\
             let array = try MLMultiArray(shape: {2}, dataType: .float32)\n\
             // fill array[[0, c, y, x]] with pixel / 127.5 - 1\n\
             let input = try MLDictionaryFeatureProvider(dictionary: [\"{0}\": array])",
            i.name,
            spec_text(i),
            shape_text(i)
        )
    };
    let read = if o.kind == "image" {
        format!(
            "// Output `{0}`: {1}.\nlet styled: CVPixelBuffer? = result.featureValue(for: \"{0}\")?.imageBufferValue",
            o.name,
            spec_text(o)
        )
    } else {
        format!(
            "// Output `{0}`: {1}.\nlet styled: MLMultiArray? = result.featureValue(for: \"{0}\")?.multiArrayValue",
            o.name,
            spec_text(o)
        )
    };
    format!(
        "// {name}: {} ({}); Xcode compiles it into the app as model.mlmodelc.\n\
         let config = MLModelConfiguration()\n\
         config.computeUnits = .all  // Neural Engine, GPU or CPU\n\
         let url = Bundle.main.url(forResource: \"model\", withExtension: \"mlmodelc\")!\n\
         let model = try MLModel(contentsOf: url, configuration: config)\n\
         {feed}\n\
         let result = try model.prediction(from: input)\n\
         {read}\n",
        t.file, t.precision
    )
}

fn python_onnx(
    name: &str,
    t: &TargetSummary,
    i: &TensorSpec,
    o: &TensorSpec,
    golden_prefix: &str,
) -> String {
    let golden = t
        .golden
        .first()
        .map(|g| (g.input.clone(), g.output.clone()))
        .unwrap_or_default();
    format!(
        "# {name}: {} ({}), with ONNX Runtime (mobile, or desktop to check).\n\
         import numpy as np, onnxruntime as ort\n\
         session = ort.InferenceSession(\"{}\")\n\
         x = np.load(\"{golden_prefix}{}\")  # `{}`: {}\n\
         y = session.run([\"{}\"], {{\"{}\": x}})[0]  # {}\n\
         print(np.abs(y - np.load(\"{golden_prefix}{}\")).max())  # ~1e-6\n",
        t.file,
        t.precision,
        t.file,
        golden.0,
        i.name,
        spec_text(i),
        o.name,
        i.name,
        spec_text(o),
        golden.1
    )
}

/// The student and the teacher it learned from.
fn student_teacher(h: &mut String, m: &Manifest) {
    let s = &m.student;
    let _ = writeln!(
        h,
        "<h2>Student and teacher</h2>\n<table id=\"models\">\n<tr><th></th><th>width</th><th>params</th>\
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
        num(s.psnr_vs_pairs_db, 2, "dB"),
        num(s.psnr_vs_teacher_db, 2, "dB"),
        num(s.ssim, 4, ""),
        num(s.flicker_ratio, 3, ""),
    );
    let t = &m.teacher;
    let _ = writeln!(
        h,
        "<tr><td>teacher</td><td class=\"num\">{}</td><td></td><td></td>\
         <td class=\"num\">{}</td><td></td><td></td><td></td></tr>\n</table>\n\
         <p>On held-out pairs. Output = input scores {} against the pairs: the floor a net \
         must beat. Flicker ratio: frame-to-frame change of the output over that of the \
         input under small shifts (1 = no added flicker).</p>",
        t.width,
        num(t.psnr_vs_pairs_db, 2, "dB"),
        num(t.identity_psnr_db, 2, "dB"),
    );
    for line in
        crate::protocol::metric::advice(t.psnr_vs_pairs_db, t.identity_psnr_db, s.psnr_vs_pairs_db)
    {
        let _ = writeln!(
            h,
            "<p class=\"advice\"><strong>Note:</strong> {}.</p>",
            escape(&line)
        );
    }
}

/// Writes the report atomically.
pub fn write_html(input: &ReportInput, out: &Path) -> Result<(), ReportError> {
    crate::atomic::write(out, render(input).as_bytes()).map_err(|source| ReportError::Write {
        path: out.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{GoldenPair, Quantization};

    fn spec(name: &str, kind: &str, shape: Vec<usize>, layout: &str, dtype: &str) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            kind: kind.into(),
            shape,
            layout: layout.into(),
            dtype: dtype.into(),
            range: if dtype == "uint8" {
                [0.0, 255.0]
            } else {
                [-1.0, 1.0]
            },
            colour: "RGB".into(),
            quantization: None,
        }
    }

    fn manifest() -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "effect": "lego <b>",
            "version": "1.0.0",
            "recipe_digest": "abc123",
            "files": {"models/android-nnapi/model.tflite": "deadbeef"},
            "student": {"width": 16, "blocks": 4, "params": 72783, "macs_512": 829947904u64,
                        "psnr_vs_teacher_db": 31.5, "psnr_vs_pairs_db": 25.66, "ssim": 0.93, "flicker_ratio": 0.58},
            "teacher": {"width": 32, "psnr_vs_pairs_db": 26.12, "identity_psnr_db": 15.96},
            "targets": {
                "android-nnapi": {"file": "models/android-nnapi/model.tflite", "format": "tflite",
                    "precision": "int8", "psnr_db": 41.25, "min_psnr_db": 35.0, "ssim": 0.987,
                    "max_abs": 0.02, "size_bytes": 81234, "verified": true, "golden": []},
                "ios-coreml": {"file": "models/ios-coreml/model.mlpackage", "format": "mlpackage",
                    "precision": "fp16", "psnr_db": 58.5, "ssim": 0.999, "max_abs": 0.001,
                    "size_bytes": 150000, "verified": false, "golden": []}
            }
        }))
        .unwrap();
        let t = m.targets.get_mut("android-nnapi").unwrap();
        t.golden.push(GoldenPair {
            input: "golden/android-nnapi/input-0.npy".into(),
            output: "golden/android-nnapi/output-0.npy".into(),
        });
        let mut i = spec("input", "tensor", vec![1, 64, 64, 3], "NHWC", "int8");
        i.quantization = Some(Quantization {
            scale: 0.0078125,
            zero_point: 0,
        });
        t.input = Some(i);
        t.output = Some(spec("out", "tensor", vec![1, 64, 64, 3], "NHWC", "float32"));
        let c = m.targets.get_mut("ios-coreml").unwrap();
        c.input = Some(spec("image", "image", vec![64, 64, 3], "HWC", "uint8"));
        c.output = Some(spec("styled", "image", vec![64, 64, 3], "HWC", "uint8"));
        m
    }

    #[test]
    fn report_shows_targets_with_units_bars_links_code_pictures_and_escapes_text() {
        let m = manifest();
        let measurements = serde_json::json!({
            "targets": {"android-nnapi": {"latency_ms": 3.21}},
            "machine": {"cpu": "Test CPU", "cpus": 2, "os": "linux", "arch": "x86_64"}
        });
        let input = ReportInput {
            manifest: Some(&m),
            measurements: Some(&measurements),
            golden_prefix: "bundle-",
            figures: vec![Figure {
                title: "contact sheet".into(),
                caption: "source | teacher".into(),
                png: vec![1, 2, 3, 4],
            }],
            stage_times: vec![
                StageTime {
                    stage: "pairs (per item)".into(),
                    count: 6,
                    ran: 2,
                    us: 1_500_000,
                },
                // 960 crops of 0.3 ms each: not "0.00 s".
                StageTime {
                    stage: "crop (per item)".into(),
                    count: 960,
                    ran: 960,
                    us: 288_000,
                },
            ],
            dropped: vec![Dropped {
                stage: "crop".into(),
                item: "a.jpg".into(),
                what: "dropped".into(),
                reason: "no face".into(),
            }],
        };
        let html = render(&input);
        assert!(html.contains("<h1>lego &lt;b&gt;</h1>"));
        let row = html
            .lines()
            .find(|l| l.starts_with("<tr><td>android-nnapi</td><td>tflite"))
            .unwrap();
        for cell in [
            "81.2 KB",
            "41.25 dB",
            "≥ 35 dB",
            "3.21 ms",
            "<span class=\"pass\">pass</span>",
            "<a href=\"bundle-golden/android-nnapi/input-0.npy\">in</a>",
        ] {
            assert!(row.contains(cell), "{cell} missing from {row}");
        }
        assert!(!row.contains("[{"), "no JSON in a cell: {row}");
        assert!(html.contains("<span class=\"fail\">fail</span>"));
        assert!(html.contains("25.66 dB") && html.contains("0.83"));
        // The app's code names the real tensors and shapes.
        assert!(html.contains("NnApiDelegate()"), "{html}");
        assert!(
            html.contains("getOutputIndex(&quot;out&quot;)"),
            "names are escaped in the page"
        );
        assert!(
            html.contains("ByteBuffer.allocateDirect(12288)"),
            "int8 input: 1 byte each"
        );
        assert!(html.contains("MLFeatureValue(pixelBuffer: pixelBuffer)"));
        assert!(html.contains("featureValue(for: &quot;styled&quot;)"));
        assert!(html.contains("<img src=\"data:image/png;base64,AQIDBA==\""));
        assert!(html.contains("no face") && html.contains("id=\"dropped\""));
        assert!(html.contains("<td>pairs (per item)</td><td class=\"num\">6</td>"));
        assert!(html.contains("1.50 s"));
        assert!(html.contains("288.0 ms"), "sub-second stage times in ms");
        assert!(html.contains("1.79 s"), "the total");
        assert!(!html.contains("<script"));
        assert_eq!(html, render(&input));
        // Inside the tarball: no machine figures, links to golden/ as it is.
        let inner = render(&ReportInput {
            manifest: Some(&m),
            golden_prefix: "",
            ..Default::default()
        });
        assert!(!inner.contains("latency") && !inner.contains("Time per stage"));
        assert!(
            !inner.contains("Skipped and dropped"),
            "nothing to show, no section"
        );
        assert!(inner.contains("<a href=\"golden/android-nnapi/input-0.npy\">in</a>"));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report.html");
        write_html(&input, &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), html);
    }

    #[test]
    fn the_report_says_when_the_teacher_did_not_learn_the_effect() {
        let mut m = manifest();
        let input = |m: &Manifest| {
            render(&ReportInput {
                manifest: Some(m),
                ..Default::default()
            })
        };
        assert!(
            !input(&m).contains("class=\"advice\""),
            "26.1 dB over a 16.0 dB floor learned"
        );
        m.teacher.psnr_vs_pairs_db = Some(19.2);
        m.teacher.identity_psnr_db = Some(16.8);
        m.student.psnr_vs_pairs_db = Some(19.4);
        let html = input(&m);
        assert!(
            html.contains("<p class=\"advice\"><strong>Note:</strong> the teacher did not learn the effect: +2.4 dB over output = input (19.2 dB vs 16.8 dB against the pairs); more pairs, more steps or a wider teacher.</p>"),
            "{html}"
        );
        assert!(html.contains("<th>PSNR vs pairs</th><th>PSNR vs teacher</th>"));
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }
}
