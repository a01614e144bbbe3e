//! The diffusion teacher through the stage graph, on the tiny random models of
//! tests/projects/tiny-diffusion: pairs built end to end, rebuilt only where a change
//! reaches, models checked before any work, `effectc models` keeping the folder honest.

mod common;

use common::{TestProject, TINY_DIFFUSION};
use std::path::Path;

/// A copy of the tiny-diffusion project.
fn tiny_project() -> TestProject {
    TestProject::copy_of(TINY_DIFFUSION)
}

#[test]
fn tiny_diffusion_builds_pairs_end_to_end_and_rebuilds_only_what_an_edit_reaches() {
    let p = tiny_project();
    let first = p.build("tiny");
    assert_eq!(first.ran_of_kind("pairs"), 6);
    assert_eq!(
        first.ran_of_kind("control"),
        12,
        "canny and softedge per item"
    );
    // The recipe fixes every attribute of synthetic items: one key, computed once.
    assert_eq!(first.ran_of_kind("attributes"), 1);
    assert_eq!(first.ran_of_kind("bundle"), 1, "the pairs train and ship");
    let pair = first.stage("pairs/synthetic-0000");
    assert_eq!(
        pair["metrics"]["prompt"],
        "make it a lego minifigure, a lego minifigure, plastic toy, a woman",
        "instruction first, attributes filled, the empty `glasses` option leaves no comma"
    );
    let sheet = image::open(p.root().join("out/tiny/pairs-sheet-pairs.png")).unwrap();
    assert!(
        sheet.width() > 3 * 128,
        "source | two control maps | teacher"
    );

    let sheet_bytes = std::fs::read(p.root().join("out/tiny/pairs-sheet-pairs.png")).unwrap();

    let again = p.build("tiny");
    assert_eq!(again.ran(), 0, "{:?}", again.ran_stages());

    // The prompt reaches the pairs (and what trains on them), never the control maps.
    p.edit("effects/tiny.kdl", "plastic toy", "shiny plastic toy");
    let prompt = p.build("tiny");
    assert_eq!(prompt.ran_of_kind("pairs"), 6);
    assert_eq!(prompt.ran_of_kind("control"), 0);
    assert_eq!(prompt.ran_of_kind("attributes"), 0);

    // A ControlNet's weight reaches the pairs only.
    p.edit("effects/tiny.kdl", "weight=0.7", "weight=0.6");
    let weight = p.build("tiny");
    assert_eq!(weight.ran_of_kind("pairs"), 6);
    assert_eq!(weight.ran_of_kind("control"), 0);

    // Back to the first recipe: every pair comes from the cache, bit for bit.
    p.edit("effects/tiny.kdl", "weight=0.6", "weight=0.7");
    p.edit("effects/tiny.kdl", "shiny plastic toy", "plastic toy");
    let back = p.build("tiny");
    assert_eq!(back.ran(), 0, "{:?}", back.ran_stages());

    // Pairs are deterministic: an empty cache draws the same pairs, byte for byte.
    let fresh = tempfile::tempdir().unwrap();
    let r = p.run(&[
        "build",
        "--json",
        "--cache",
        fresh.path().to_str().unwrap(),
        "tiny",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.ran_of_kind("pairs"), 6);
    assert_eq!(
        std::fs::read(p.root().join("out/tiny/pairs-sheet-pairs.png")).unwrap(),
        sheet_bytes
    );
}

#[test]
fn a_sidecar_gives_each_photo_its_attributes_and_clip_detects_the_rest() {
    let p = tiny_project();
    p.edit(
        "effects/tiny.kdl",
        "synthetic count=6 seed=3",
        "images \"photos/*.png\"",
    );
    p.edit(
        "effects/tiny.kdl",
        "attributes gender=\"woman\" glasses=\"none\"",
        "attributes \"hair-color\" gender=\"woman\"",
    );
    for (i, name) in ["anna", "ben"].iter().enumerate() {
        common::write_png(
            &p.root().join(format!("photos/{name}.png")),
            i as u8 * 40,
            40,
        );
    }
    p.write("photos/anna.png.attributes", "hair-color = blond\n");
    // Ben has no sidecar: CLIP must detect his hair colour, and the default CLIP model
    // is not in this project's models folder. Said before any work, naming him.
    let failed = p.run(&["build", "--json", "tiny"]);
    assert_eq!(failed.code(), 2, "{}", failed.stderr());
    let err = failed.stderr();
    assert!(
        err.contains("clip-vit-l14") && err.contains("photos/ben.png"),
        "names the CLIP model and the item that needs it:\n{err}"
    );
    assert!(
        !failed.events.iter().any(|e| e["event"] == "stage-finished"),
        "nothing ran"
    );
    // With the tiny CLIP, ben's hair colour is detected; anna's sidecar is not overruled.
    p.edit(
        "effects/tiny.kdl",
        "attributes \"hair-color\" gender=\"woman\"",
        "attributes \"hair-color\" gender=\"woman\" model=\"tiny-clip\" threshold=0",
    );
    let detected = p.build("tiny");
    let anna = detected.stage("attributes/photos/anna.png");
    assert_eq!(anna["metrics"]["attribute.hair-color"], "blond (sidecar)");
    assert!(
        anna["metrics"].get("clip_load_s").is_none(),
        "no CLIP run for anna"
    );
    let ben = detected.stage("attributes/photos/ben.png");
    let said = ben["metrics"]["attribute.hair-color"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(said.contains("(clip "), "{said}");

    p.write(
        "photos/ben.png.attributes",
        "# checked by hand\nhair-color = red\ngender = man\n",
    );
    let ok = p.build("tiny");
    assert_eq!(
        ok.stage("attributes/photos/ben.png")["metrics"]["attribute.hair-color"],
        "red (sidecar)"
    );
    assert_eq!(
        ok.stage("pairs/photos/ben.png")["metrics"]["prompt"],
        "make it a lego minifigure, a lego minifigure, plastic toy, red hair, a man",
        "the sidecar overrides the recipe's gender"
    );

    // Editing one sidecar re-generates that item's pair only.
    p.write("photos/anna.png.attributes", "hair-color = gray\n");
    let one = p.build("tiny");
    assert_eq!(one.ran_of_kind("attributes"), 1);
    assert_eq!(one.ran_of_kind("pairs"), 1);
    assert_eq!(one.ran_of_kind("control"), 0);
}

#[test]
fn a_model_that_is_not_the_pinned_file_fails_before_any_work() {
    let p = tiny_project();
    let lora = p.root().join("models/tiny-lora.safetensors");
    let mut bytes = std::fs::read(&lora).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&lora, &bytes).unwrap();
    let run = p.run(&["build", "--json", "tiny"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let err = run.stderr();
    assert!(err.contains("tiny-lora"), "{err}");
    assert!(
        err.contains("a4a236c46ae6d68542967371058389a12718f0fdbabedb44b09f21f0b45a9b1f"),
        "the pinned digest is shown:\n{err}"
    );
    assert!(
        !run.events.iter().any(|e| e["event"] == "stage-finished"),
        "nothing ran"
    );
    let verify = p.run(&["models", "verify"]);
    assert_eq!(verify.code(), 1);
    assert!(
        verify.stdout().contains("MISMATCH tiny-lora"),
        "{}",
        verify.stdout()
    );
}

#[test]
fn models_import_checks_the_pin_and_verify_accepts_the_shipped_tiny_models() {
    let p = tiny_project();
    let verify = p.run(&["models", "verify"]);
    assert_eq!(verify.code(), 0, "{}", verify.stdout());
    // The project's six tiny models, plus the MediaPipe models when set-up's folder (searched
    // after the project's `models/`) has them.
    let out = verify.stdout();
    let summary = out
        .lines()
        .find(|l| l.ends_with(" present model(s) checked, 0 mismatch(es)"))
        .unwrap_or_else(|| panic!("no summary line without mismatches:\n{out}"));
    let checked: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(checked >= 6, "{out}");

    // Into an empty models directory: the pinned LoRA goes in under its registry name...
    let models = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusion/lora_kohya.safetensors");
    let import = |what: &Path, name: &str| {
        p.command(&["models", "import", what.to_str().unwrap(), "--name", name])
            .env("EFFECTC_MODELS", models.path())
            .output()
            .unwrap()
    };
    let ok = import(&fixture, "tiny-lora");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        std::fs::read(models.path().join("tiny-lora.safetensors")).unwrap(),
        std::fs::read(&fixture).unwrap()
    );
    // ...a diffusers folder too, with the same digest the registry pins...
    let folder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/controlnet_a");
    let ok = import(&folder, "tiny-control-a");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // ...and a file that is not the pinned one is refused, leaving nothing behind.
    let other = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusion/lora_peft.safetensors");
    let refused = import(&other, "tiny-sd");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pinned"));
    assert!(!models.path().join("tiny-sd").exists());
}

#[test]
fn one_worker_loads_the_models_once_and_batch_groups_pairs_without_changing_them() {
    let p = tiny_project();
    let single = p.build("tiny");
    let pairs = |run: &common::Run| -> Vec<serde_json::Value> {
        run.events
            .iter()
            .filter(|e| e["event"] == "stage-finished" && e["kind"] == "pairs")
            .map(|e| e["metrics"].clone())
            .collect()
    };
    let loads = |m: &[serde_json::Value]| m.iter().filter(|m| m["models_loaded"] == true).count();
    assert_eq!(loads(&pairs(&single)), 1, "six pairs, one model load");
    let sheet_single = image::open(p.root().join("out/tiny/pairs-sheet-pairs.png"))
        .unwrap()
        .to_rgb8();

    let fresh = tempfile::tempdir().unwrap();
    let batched = p.run(&[
        "build",
        "--json",
        "--batch",
        "3",
        "--cache",
        fresh.path().to_str().unwrap(),
        "tiny",
    ]);
    assert_eq!(batched.code(), 0, "{}", batched.stderr());
    let metrics = pairs(&batched);
    assert_eq!(metrics.len(), 6);
    assert!(
        metrics.iter().any(|m| m["batch"].as_u64().unwrap() > 1),
        "pairs shared a batch: {metrics:?}"
    );
    assert!(metrics.iter().all(|m| m["batch"].as_u64().unwrap() <= 3));
    let loaded: Vec<_> = metrics
        .iter()
        .filter(|m| m["models_loaded"] == true)
        .collect();
    assert_eq!(
        loaded.len() as u64,
        loaded[0]["batch"].as_u64().unwrap(),
        "only the first batch loads the models: {metrics:?}"
    );
    // Batching is an execution choice, not part of the key: the pairs agree to within
    // one level of rounding.
    let sheet_batched = image::open(p.root().join("out/tiny/pairs-sheet-pairs.png"))
        .unwrap()
        .to_rgb8();
    let worst = sheet_single
        .as_raw()
        .iter()
        .zip(sheet_batched.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 2, "batched pairs differ by {worst} levels");
}
