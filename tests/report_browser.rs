//! The report as a person sees it: rendered by a real browser (Debian's headless
//! `chromium`; `make test` installs it), in out/EFFECT/ and inside the unpacked
//! tarball. Every picture must have loaded (naturalWidth > 0), the tables must be
//! there, and every link must name a file that exists beside the report.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("chromium not found: install Debian's `chromium` (scripts/test-deps.sh, run by make test, does)")
}

/// Loads `report` in an iframe of a wrapper page (same file:// origin) whose script
/// writes what it found into its own DOM; returns that text. The script is the test's,
/// not the product's: the report itself has none.
fn inspect_in_chromium(report: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("inspect.html");
    let url = format!("file://{}", report.canonicalize().unwrap().display());
    std::fs::write(
        &wrapper,
        format!(
            r#"<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="f" src="{url}" width="1200" height="800"></iframe>
<script>
document.getElementById('f').addEventListener('load', () => {{
  const doc = document.getElementById('f').contentDocument;
  const lines = [];
  if (!doc) {{ lines.push('NO-DOCUMENT'); }} else {{
    for (const img of doc.images) {{
      const ok = img.complete && img.naturalWidth > 0;
      lines.push((ok ? 'IMG-OK ' : 'IMG-BROKEN ') + img.naturalWidth + 'x' + img.naturalHeight + ' ' + img.alt);
    }}
    for (const t of doc.querySelectorAll('table')) {{
      lines.push('TABLE ' + t.id + ' ' + t.rows.length);
    }}
    lines.push('TITLE ' + doc.title);
  }}
  document.getElementById('result').textContent = lines.join('\n');
}});
</script></body></html>"#
        ),
    )
    .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--allow-file-access-from-files",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", wrapper.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = dom.find("<pre id=\"result\">").unwrap_or_else(|| {
        panic!(
            "chromium gave no page:\n{dom}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    }) + "<pre id=\"result\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    dom[start..end]
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// Asserts that every picture loaded and that the report's tables are there; returns
/// how many pictures there were.
fn assert_renders(report: &Path, tables: &[&str]) -> usize {
    let found = inspect_in_chromium(report);
    assert!(
        !found.contains("pending") && !found.contains("NO-DOCUMENT"),
        "{found}"
    );
    assert!(
        !found.contains("IMG-BROKEN"),
        "{}: a picture did not load:\n{found}",
        report.display()
    );
    for t in tables {
        let line = found
            .lines()
            .find(|l| l.starts_with(&format!("TABLE {t} ")))
            .unwrap_or_else(|| panic!("{}: no table `{t}`:\n{found}", report.display()));
        let rows: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(rows >= 2, "table {t} has no data rows: {line}");
    }
    found.lines().filter(|l| l.starts_with("IMG-OK")).count()
}

/// Every `href` of the report names a file beside it.
fn assert_links_resolve(report: &Path) -> usize {
    let html = std::fs::read_to_string(report).unwrap();
    let dir = report.parent().unwrap();
    let mut n = 0;
    for part in html.split("href=\"").skip(1) {
        let target = &part[..part.find('"').unwrap()];
        assert!(
            dir.join(target).is_file(),
            "{} links to {target}, which is not beside it",
            report.display()
        );
        n += 1;
    }
    n
}

#[test]
fn the_report_renders_in_a_browser_with_every_picture_in_out_and_in_the_tarball() {
    let p = TestProject::new();
    p.recipe(
        "small",
        &SMALL_BRICK.replace(
            "    train {",
            "    target \"ios-coreml\" quantize=\"fp16\"\n    target \"android-nnapi\" quantize=\"int8\"\n    train {",
        ),
    );
    p.build("small");
    let tables = ["targets", "io", "models", "files"];

    // Where the README sends people: out/small/bundle-report.html, with this build's
    // times per stage.
    let out = p.root().join("out/small");
    let report = out.join("bundle-report.html");
    let mut with_times = tables.to_vec();
    with_times.push("stage-times");
    let pictures = assert_renders(&report, &with_times);
    assert_eq!(pictures, 4, "loss curves, contact sheet and pairs sheet");
    assert!(
        assert_links_resolve(&report) >= 4,
        "golden frames are links"
    );
    let html = std::fs::read_to_string(&report).unwrap();
    for shown in [
        " KB</td>",
        " dB</td>",
        " ms</td>",
        "≥ 35 dB",
        "NnApiDelegate",
        "MLModel(",
    ] {
        assert!(html.contains(shown), "the report lacks {shown}");
    }
    // No stage reported a skipped or dropped item, so there is no such section.
    assert!(!html.contains("id=\"dropped\""));
    // A last look for people: a screenshot, kept when EFFECTC_REPORT_SCREENSHOT names a file.
    if let Ok(shot) = std::env::var("EFFECTC_REPORT_SCREENSHOT") {
        let profile = tempfile::tempdir().unwrap();
        let status = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--window-size=1280,4000")
            .arg(format!("--screenshot={shot}"))
            .arg(format!("file://{}", report.display()))
            .status()
            .unwrap();
        assert!(status.success());
    }

    // Inside the tarball, unpacked as the app engineer gets it.
    let unpacked = tempfile::tempdir().unwrap();
    let tar = std::fs::read(out.join("bundle-bundle.tar.gz")).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(&tar[..]))
        .unpack(unpacked.path())
        .unwrap();
    let inner = unpacked.path().join("report.html");
    assert_eq!(assert_renders(&inner, &tables), 4);
    assert!(assert_links_resolve(&inner) >= 4);

    // The check is real: a report with one damaged picture fails it.
    let broken = unpacked.path().join("broken.html");
    let html = std::fs::read_to_string(&inner).unwrap();
    let at = html.find("base64,").unwrap() + "base64,".len();
    std::fs::write(&broken, format!("{}AAAA{}", &html[..at], &html[at + 40..])).unwrap();
    let found = inspect_in_chromium(&broken);
    assert!(
        found.contains("IMG-BROKEN"),
        "a damaged picture must show as broken:\n{found}"
    );
}
