//! The full-size project (tests/projects/fullsize: the lego recipe's shape over real
//! photos, procedural teacher) and the table of its stages' times. Shared by
//! tests/fullsize.rs (a small sibling in the suite) and benches/fullsize.rs (512 px).

use crate::common::{samples_dir, TestProject};
use serde_json::Value;
use std::collections::BTreeMap;

/// The project's recipe, compiled in: the bench also runs on a machine that has only
/// the binaries (scripts/gpu-check.sh).
pub const RECIPE: &str = include_str!("../projects/fullsize/effects/fullsize.kdl");

/// The full-size project (tests/projects/fullsize) with `count` photos cut from the shared samples:
/// square-ish windows of 55-100% of each sample at varied places, every other one
/// mirrored, so the items differ but all are real photographs.
pub fn fullsize_project(count: u32) -> TestProject {
    let p = TestProject::new();
    p.recipe("fullsize", RECIPE);
    let dir = p.root().join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    let mut samples: Vec<_> = std::fs::read_dir(samples_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", samples_dir().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")))
        .collect();
    samples.sort();
    assert!(
        !samples.is_empty(),
        "no sample photos in {}",
        samples_dir().display()
    );
    let images: Vec<image::RgbImage> = samples
        .iter()
        .map(|s| image::open(s).unwrap().to_rgb8())
        .collect();
    for i in 0..count {
        let img = &images[i as usize % images.len()];
        let (w, h) = img.dimensions();
        // A fixed walk over scales and places (no randomness: the items are the same
        // in every run, so the cache and the figures compare).
        let k = i / images.len() as u32;
        let scale = 1.0 - 0.45 * ((k * 7 % 10) as f64 / 10.0);
        let side = ((w.min(h) as f64) * scale) as u32;
        let x = ((w - side) as f64 * ((k * 3 % 5) as f64 / 4.0)) as u32;
        let y = ((h - side) as f64 * ((k * 2 % 3) as f64 / 2.0)) as u32;
        let mut crop = image::imageops::crop_imm(img, x, y, side, side).to_image();
        if i % 2 == 1 {
            crop = image::imageops::flip_horizontal(&crop);
        }
        crop.save(dir.join(format!("item{i:03}.png"))).unwrap();
    }
    p
}

/// One row of the stage table: a stage (or a per-item kind, summed over its items).
#[derive(Debug, Clone)]
pub struct Row {
    pub stage: String,
    pub count: u32,
    pub seconds: f64,
    pub note: String,
}

/// The time of every stage that ran, from a build's `--json` events: whole-dataset
/// stages by name, per-item stages (`kind/item`) summed by kind; failures listed.
pub fn stage_table(events: &[Value]) -> Vec<Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for e in events {
        let (stage, kind) = (
            e["stage"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
        );
        let name = if stage.contains('/') {
            format!("{kind} (per item)")
        } else {
            stage.to_string()
        };
        match e["event"].as_str() {
            Some("stage-finished") => {
                let row = rows.entry(name.clone()).or_insert(Row {
                    stage: name,
                    count: 0,
                    seconds: 0.0,
                    note: String::new(),
                });
                row.count += 1;
                row.seconds += e["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
                let m = &e["metrics"];
                let mut notes = vec![];
                if let Some(s) = m["steps_per_s"].as_f64() {
                    notes.push(format!("{s:.3} steps/s"));
                }
                if let Some(s) = m["memory_plan"].as_str() {
                    notes.push(s.to_string());
                }
                if let Some(s) = m["psnr_db"].as_f64() {
                    notes.push(format!("PSNR {s:.1} dB"));
                }
                if !notes.is_empty() {
                    row.note = notes.join("; ");
                }
            }
            Some("stage-failed") => {
                rows.insert(
                    name.clone(),
                    Row {
                        stage: name,
                        count: 1,
                        seconds: f64::NAN,
                        note: format!(
                            "FAILED: {}",
                            e["error"]
                                .as_str()
                                .unwrap_or("")
                                .lines()
                                .next()
                                .unwrap_or("")
                        ),
                    },
                );
            }
            _ => {}
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

/// The table as Markdown (docs/performance.md's format).
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from("| stage | runs | seconds | notes |\n|---|---:|---:|---|\n");
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            r.stage,
            r.count,
            if r.seconds.is_nan() {
                "-".to_string()
            } else {
                format!("{:.1}", r.seconds)
            },
            r.note
        );
    }
    s
}
