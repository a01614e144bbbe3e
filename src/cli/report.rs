//! `out/EFFECT/bundle-report.html`: the bundle's report plus what only this build knows —
//! the latency this machine measured, the time of every stage, and the items stages
//! skipped or dropped (read from their records). Written after `materialize` copied
//! the outputs, from the files in out/EFFECT/, so its golden-frame links resolve there.

use std::path::Path;

use crate::bundle::report::{write_html, Dropped, Figure, ReportInput, StageTime};
use crate::bundle::Manifest;
use crate::exec::{BuildSummary, NodeOutcome};
use crate::plan::{Plan, StageId};

/// Writes the report when the build made a bundle; false when there is none to report.
pub fn write_out_report(dir: &Path, plan: &Plan, summary: &BuildSummary) -> std::io::Result<bool> {
    let bundle = StageId::bundle();
    let Ok(bytes) = std::fs::read(dir.join(bundle.out_file_name("manifest.json"))) else {
        return Ok(false);
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let measurements: Option<serde_json::Value> =
        std::fs::read(dir.join(bundle.out_file_name("measurements.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    let mut figures = Vec::new();
    for (file, title, caption) in [
        (
            StageId::train_teacher().out_file_name("loss.png"),
            "Teacher loss",
            "The wide teacher's training loss per step.",
        ),
        (
            StageId::distill_student().out_file_name("loss.png"),
            "Student loss",
            "The real-time student's distillation loss per step.",
        ),
        (
            bundle.out_file_name("contact-sheet.png"),
            "Contact sheet",
            crate::stages::bundle::CONTACT_SHEET_CAPTION,
        ),
        (
            StageId::pairs_sheet().out_file_name("pairs.png"),
            "Pairs",
            "Training pairs: source | each control map the teacher uses | teacher output.",
        ),
    ] {
        if let Ok(png) = std::fs::read(dir.join(&file)) {
            figures.push(Figure {
                title: title.into(),
                caption: caption.into(),
                png,
            });
        }
    }
    let input = ReportInput {
        manifest: Some(&manifest),
        measurements: measurements.as_ref(),
        golden_prefix: "bundle-",
        figures,
        stage_times: stage_times(plan, summary),
        dropped: dropped_items(plan, summary),
    };
    write_html(&input, &dir.join(bundle.out_file_name("report.html")))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(true)
}

/// One row per whole-dataset stage, one per kind of per-item stage (summed), in plan
/// order: how long what ran in this build took. A cached stage took no time now (and
/// its record read back from a snapshot does not say how long it once took).
pub fn stage_times(plan: &Plan, summary: &BuildSummary) -> Vec<StageTime> {
    let mut rows: Vec<StageTime> = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        let (us, ran) = match &summary.outcomes[i] {
            NodeOutcome::Ran(r) => (r.run_time_us(), true),
            NodeOutcome::Cached(_) => (0, false),
            _ => continue,
        };
        let label = match &node.item {
            Some(_) => format!("{} (per item)", node.stage.family()),
            None => node.id.to_string(),
        };
        match rows.iter_mut().find(|r| r.stage == label) {
            Some(row) => {
                row.count += 1;
                row.ran += ran as usize;
                row.us += us;
            }
            None => rows.push(StageTime {
                stage: label,
                count: 1,
                ran: ran as usize,
                us,
            }),
        }
    }
    rows
}

/// What stages said they left out, in plan order.
pub fn dropped_items(plan: &Plan, summary: &BuildSummary) -> Vec<Dropped> {
    let mut out = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        if let NodeOutcome::Ran(rec) | NodeOutcome::Cached(rec) = &summary.outcomes[i] {
            out.extend(dropped_in(&node.id, node.item.as_deref(), &rec.metrics));
        }
    }
    out
}

/// A stage reports what it left out in its record's metrics, under `skipped` or
/// `dropped`: a string (its own item, with that reason), or a list of
/// `{"item": ..., "reason": ...}` objects (or of item names).
pub fn dropped_in(
    stage: &str,
    own_item: Option<&str>,
    metrics: &serde_json::Map<String, serde_json::Value>,
) -> Vec<Dropped> {
    use serde_json::Value;
    let own = own_item.unwrap_or(stage);
    let mut out = Vec::new();
    for what in ["skipped", "dropped"] {
        let entries: Vec<(String, String)> = match metrics.get(what) {
            Some(Value::String(reason)) => vec![(own.to_string(), reason.clone())],
            Some(Value::Array(list)) => list
                .iter()
                .map(|e| match e {
                    Value::String(item) => (item.clone(), String::new()),
                    other => (
                        other["item"].as_str().unwrap_or(own).to_string(),
                        other["reason"].as_str().unwrap_or_default().to_string(),
                    ),
                })
                .collect(),
            _ => Vec::new(),
        };
        out.extend(entries.into_iter().map(|(item, reason)| Dropped {
            stage: stage.to_string(),
            item,
            what: what.to_string(),
            reason,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_and_skipped_items_come_from_the_metrics_a_stage_wrote() {
        let metrics = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(dropped_in(
            "crop/a",
            Some("a"),
            &metrics(serde_json::json!({"psnr_db": 3}))
        )
        .is_empty());
        let own = dropped_in(
            "crop/a",
            Some("a"),
            &metrics(serde_json::json!({"dropped": "no face found"})),
        );
        assert_eq!(
            own,
            vec![Dropped {
                stage: "crop/a".into(),
                item: "a".into(),
                what: "dropped".into(),
                reason: "no face found".into()
            }]
        );
        let listed = dropped_in(
            "sources",
            None,
            &metrics(serde_json::json!({
                "skipped": [{"item": "clip.mp4#12", "reason": "too dark"}, "b.jpg"],
                "dropped": [{"item": "c.jpg", "reason": "identity mismatch"}]
            })),
        );
        let shown: Vec<(&str, &str, &str)> = listed
            .iter()
            .map(|d| (d.item.as_str(), d.what.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("clip.mp4#12", "skipped", "too dark"),
                ("b.jpg", "skipped", ""),
                ("c.jpg", "dropped", "identity mismatch")
            ]
        );
    }
}
