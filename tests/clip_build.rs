//! CLIP through the stage graph on tiny random weights (tests/fixtures/clip/model_a as
//! `tiny-clip`): zero-shot attributes (deterministic, the threshold leaves low-confidence
//! ones out, sidecars win), what an edit of the attribute list re-runs, and the identity
//! filter (scores cached, the bar re-runs only the filter and training, dropped pairs
//! counted and listed).

mod common;

use common::{Run, TestProject, TINY_DIFFUSION};
use std::collections::BTreeMap;

/// A copy of the tiny-diffusion project.
fn tiny_project() -> TestProject {
    TestProject::copy_of(TINY_DIFFUSION)
}

/// The tiny diffusion recipe on three photos, attributes detected by the tiny CLIP.
fn photos_project(attributes: &str) -> TestProject {
    let p = tiny_project();
    p.edit(
        "effects/tiny.kdl",
        "synthetic count=6 seed=3",
        "images \"photos/*.png\"",
    );
    p.edit(
        "effects/tiny.kdl",
        "attributes gender=\"woman\" glasses=\"none\"",
        attributes,
    );
    for (i, name) in ["anna", "ben", "cleo"].iter().enumerate() {
        common::write_png(
            &p.root().join(format!("photos/{name}.png")),
            i as u8 * 70 + 5,
            40,
        );
    }
    p
}

/// (item, attribute) → (option, probability, kept) from each attributes stage's output.
fn detections(p: &TestProject, run: &Run) -> BTreeMap<(String, String), (String, f64, bool)> {
    let mut out = BTreeMap::new();
    for e in run
        .events
        .iter()
        .filter(|e| e["event"] == "stage-finished" && e["kind"] == "attributes")
    {
        let stage = e["stage"].as_str().unwrap();
        let item = stage.strip_prefix("attributes/").unwrap().to_string();
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob_of(p, e, "attributes")).unwrap()).unwrap();
        for (name, a) in file["attributes"].as_object().unwrap() {
            if a["from"] != "clip" {
                continue;
            }
            let d = &a["detection"];
            out.insert(
                (item.clone(), name.clone()),
                (
                    d["option"].as_str().unwrap().to_string(),
                    d["probability"].as_f64().unwrap(),
                    !a["option"].is_null(),
                ),
            );
        }
    }
    out
}

/// Each ran stage of `kind`'s duration in ms, for the docs' per-item figures.
fn durations(run: &Run, kind: &str) -> Vec<u64> {
    run.events
        .iter()
        .filter(|e| e["event"] == "stage-finished" && e["kind"] == kind && e["cached"] == false)
        .map(|e| e["duration_ms"].as_u64().unwrap())
        .collect()
}

/// The cache blob of one output of a finished stage (through its record).
fn blob_of(p: &TestProject, event: &serde_json::Value, output: &str) -> std::path::PathBuf {
    let key = event["key"].as_str().unwrap();
    let cache = effectc::cache::Cache::open(&p.cache_dir()).unwrap();
    let rec = cache
        .get_record(&effectc::digest::Digest::parse(key).unwrap())
        .unwrap()
        .unwrap();
    cache.blob_path(&rec.outputs[output].digest)
}

#[test]
fn zero_shot_attributes_are_deterministic_and_the_threshold_leaves_unsure_ones_out() {
    let p = photos_project(
        "attributes \"gender\" \"hair-color\" \"glasses\" model=\"tiny-clip\" threshold=0",
    );
    let first = p.build("tiny");
    assert_eq!(first.ran_of_kind("attributes"), 3);
    eprintln!(
        "attributes per item (ms, tiny CLIP, first loads it): {:?}",
        durations(&first, "attributes")
    );
    let all = detections(&p, &first);
    assert_eq!(all.len(), 9, "three attributes of three photos: {all:?}");
    assert!(
        all.values().all(|(_, _, kept)| *kept),
        "threshold 0 keeps all"
    );
    // The prompt holds each detected option's words.
    let prompt = first.stage("pairs/photos/anna.png")["metrics"]["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    let hair = &all[&("photos/anna.png".to_string(), "hair-color".to_string())].0;
    assert!(
        prompt.contains(&format!("{hair} hair")) || hair == "bald",
        "{prompt}"
    );

    // Deterministic: an empty cache finds the same options with the same probabilities.
    let fresh = tempfile::tempdir().unwrap();
    let again = p.run(&[
        "build",
        "--json",
        "--cache",
        fresh.path().to_str().unwrap(),
        "tiny",
    ]);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    let keys = |r: &Run| -> Vec<String> {
        r.events
            .iter()
            .filter(|e| e["event"] == "stage-finished" && e["kind"] == "attributes")
            .map(|e| format!("{} {}", e["stage"], e["metrics"]))
            .collect()
    };
    let mut a = keys(&first);
    let mut b = keys(&again);
    a.sort();
    b.sort();
    let strip = |v: Vec<String>| -> Vec<String> {
        // Timings differ run to run; the verdicts may not.
        v.into_iter()
            .map(|s| {
                let m: serde_json::Value =
                    serde_json::from_str(s.split_once(' ').unwrap().1).unwrap();
                let verdicts: BTreeMap<_, _> = m
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| k.starts_with("attribute."))
                    .collect();
                format!("{} {verdicts:?}", s.split_once(' ').unwrap().0)
            })
            .collect()
    };
    assert_eq!(strip(a), strip(b));

    // A threshold between the probabilities seen leaves out exactly those below it.
    let mut probs: Vec<f64> = all.values().map(|v| v.1).collect();
    probs.sort_by(f64::total_cmp);
    let (lo, hi) = (probs[0], probs[probs.len() - 1]);
    assert!(
        hi > lo,
        "random weights give distinct probabilities: {probs:?}"
    );
    let t = probs
        .windows(2)
        .find(|w| w[1] - w[0] > 1e-6 && w[0] < hi)
        .map(|w| (w[0] + w[1]) / 2.0)
        .unwrap();
    p.edit(
        "effects/tiny.kdl",
        "threshold=0",
        &format!("threshold={t:.9}"),
    );
    let strict = p.build("tiny");
    assert_eq!(strict.ran_of_kind("attributes"), 3);
    assert_eq!(strict.ran_of_kind("crop"), 0);
    let now = detections(&p, &strict);
    let mut left_out = 0;
    for (k, (option, prob, kept)) in &now {
        assert_eq!(*kept, *prob >= t, "{k:?}: {prob} vs {t}");
        assert_eq!((option, prob), (&all[k].0, &all[k].1), "same detection");
        if !kept {
            left_out += 1;
            let m = &strict.stage(&format!("attributes/{}", k.0))["metrics"];
            let said = m[&format!("attribute.{}", k.1)].as_str().unwrap();
            assert!(said.starts_with("left out (clip:"), "{said}");
        }
    }
    assert!(
        left_out > 0 && left_out < now.len(),
        "{left_out} of {}",
        now.len()
    );
    // `explain` shows one item's verdicts.
    let explain = p.run(&["explain", "tiny", "attributes/photos/anna.png"]);
    assert_eq!(explain.code(), 0, "{}", explain.stderr());
    assert!(
        explain.stdout().contains("attribute.gender:") && explain.stdout().contains("(clip"),
        "{}",
        explain.stdout()
    );
}

#[test]
fn a_sidecar_wins_over_detection_and_editing_the_list_reruns_attributes_pairs_training_only() {
    let p = photos_project("attributes \"gender\" \"hair-color\" model=\"tiny-clip\" threshold=0");
    p.write("photos/ben.png.attributes", "gender = man\n");
    let first = p.build("tiny");
    let ben = &first.stage("attributes/photos/ben.png")["metrics"];
    assert_eq!(ben["attribute.gender"], "man (sidecar)");
    assert!(ben["attribute.hair-color"]
        .as_str()
        .unwrap()
        .contains("(clip "));
    let prompt = first.stage("pairs/photos/ben.png")["metrics"]["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains("plastic toy, a man, "), "{prompt}");

    // A sidecar that gives every attribute: no CLIP run for that photo at all.
    p.write(
        "photos/ben.png.attributes",
        "gender = man\nhair-color = red\n",
    );
    let full = p.build("tiny");
    assert_eq!(full.ran_of_kind("attributes"), 1);
    let ben = &full.stage("attributes/photos/ben.png")["metrics"];
    assert_eq!(ben["attribute.hair-color"], "red (sidecar)");
    assert!(ben.get("clip_load_s").is_none(), "{ben}");

    // Another attribute list: attributes, pairs and training re-run; crops and control
    // maps do not.
    p.edit(
        "effects/tiny.kdl",
        "\"gender\" \"hair-color\"",
        "\"gender\" \"glasses\"",
    );
    let edited = p.build("tiny");
    assert_eq!(edited.ran_of_kind("attributes"), 3);
    assert_eq!(edited.ran_of_kind("pairs"), 3);
    assert_eq!(edited.ran_of_kind("train-teacher"), 1);
    assert_eq!(edited.ran_of_kind("crop"), 0);
    assert_eq!(edited.ran_of_kind("control"), 0);
}

/// A procedural teacher (no diffusion needed) with the identity filter.
fn identity_project(bar: f64) -> TestProject {
    let p = tiny_project();
    p.write(
        "effects/idf.kdl",
        &format!(
            r#"
effect "idf" {{
    sources {{
        synthetic count=8 seed=5
        crop "center" size=32
        holdout 0.2
    }}
    teacher "procedural" {{ stud-size 4; }}
    identity min-similarity={bar} keep="glasses" "gender" model="tiny-clip"
    student width=8 blocks=1 teacher-width=8
    train {{ teacher-steps 10; student-steps 10; batch 2; checkpoint-every 10; }}
}}
"#
        ),
    );
    p
}

fn verdicts(p: &TestProject) -> Vec<serde_json::Value> {
    let text = std::fs::read(p.root().join("out/idf/identity-filter-identity.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    v["pairs"].as_array().unwrap().clone()
}

#[test]
fn the_identity_bar_reruns_only_the_filter_and_training_and_dropped_pairs_are_counted() {
    let p = identity_project(-1.0);
    let first = p.build("idf");
    assert_eq!(first.ran_of_kind("identity"), 8);
    eprintln!(
        "identity per item (ms, tiny CLIP, first loads it): {:?}",
        durations(&first, "identity")
    );
    assert_eq!(first.ran_of_kind("identity-filter"), 1);
    let rows = verdicts(&p);
    assert_eq!(rows.len(), 8);
    // Disagreeing kept attributes drop a pair whatever the bar.
    let disagree = |r: &serde_json::Value| {
        r["attributes"]
            .as_object()
            .unwrap()
            .values()
            .any(|a| a["agree"] == false)
    };
    let base = rows.iter().filter(|r| disagree(r)).count();
    eprintln!(
        "similarities {:?}, {base} pair(s) with a kept attribute changed",
        rows.iter()
            .map(|r| r["similarity"].as_f64().unwrap())
            .collect::<Vec<_>>()
    );
    assert_eq!(first.finished()["dropped"], base as u64);
    for r in &rows {
        assert_eq!(r["dropped"], disagree(r), "{r}");
    }

    // A bar between the similarities: the pairs below it are dropped too.
    let mut sims: Vec<f64> = rows
        .iter()
        .filter(|r| !disagree(r))
        .map(|r| r["similarity"].as_f64().unwrap())
        .collect();
    sims.sort_by(f64::total_cmp);
    assert!(sims.len() >= 3, "{rows:?}");
    let bar = (sims[0] + sims[1]) / 2.0;
    p.edit(
        "effects/idf.kdl",
        "min-similarity=-1",
        &format!("min-similarity={bar:.9}"),
    );
    let raised = p.build("idf");
    let ran: Vec<String> = raised.ran_stages();
    assert_eq!(raised.ran_of_kind("identity"), 0, "{ran:?}");
    assert_eq!(raised.ran_of_kind("pairs"), 0, "{ran:?}");
    assert_eq!(raised.ran_of_kind("identity-filter"), 1);
    assert_eq!(raised.ran_of_kind("train-teacher"), 1);
    assert!(
        ran.iter()
            .all(|s| ["identity-filter", "train-teacher", "distill-student"].contains(&s.as_str())),
        "only the filter and training: {ran:?}"
    );
    assert_eq!(raised.finished()["dropped"], base as u64 + 1);
    let rows = verdicts(&p);
    let low = rows
        .iter()
        .find(|r| r["similarity"].as_f64().unwrap() == sims[0])
        .unwrap();
    assert_eq!(low["dropped"], true);
    assert!(
        low["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("similarity"),
        "{low}"
    );

    // A bar that drops the same pairs re-runs the filter and no training.
    let same = (bar + sims[1]) / 2.0;
    p.edit(
        "effects/idf.kdl",
        &format!("min-similarity={bar:.9}"),
        &format!("min-similarity={same:.9}"),
    );
    let moved = p.build("idf");
    assert_eq!(moved.ran_stages(), vec!["identity-filter".to_string()]);
    assert_eq!(moved.finished()["dropped"], base as u64 + 1);
}

#[test]
fn an_unknown_kept_attribute_is_a_diagnostic_with_a_suggestion() {
    let p = identity_project(0.5);
    p.edit("effects/idf.kdl", "keep=\"glasses\"", "keep=\"glases\"");
    let r = p.run(&["check", "idf"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("unknown attribute `glases` in `keep`"),
        "{err}"
    );
    assert!(err.contains("did you mean `glasses`?"), "{err}");
    assert!(err.contains("idf.kdl"), "points at the file: {err}");
}
