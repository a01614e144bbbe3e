//! A per-item stage may skip its item (a photo without a face): not a failure. Driven
//! through the scheduler with stand-in stages, so no model is needed: the skip is
//! counted and reported, the item's later per-item stages do not run, a whole-dataset
//! stage reads the other items without it, and a second build runs nothing and still
//! reports the skip. Past the recipe's bound (`sources { max-skipped }`), a
//! whole-dataset stage refuses to run. And end to end with the real binary: an
//! undecodable file, a truncated JPEG and a picture too small for the crop are skipped
//! with their reasons, listed under the summary, and too many of them fail the build.

mod common;

use effectc::cache::Cache;
use effectc::digest::Digest;
use effectc::exec::{self, BuildOptions, Event, NodeOutcome, Reporter};
use effectc::nn::DeviceSpec;
use effectc::plan::{Input, InputRef, Plan, PlanNode, StageId};
use effectc::stages::{InputPort, Params, RunContext, RunOutput, Stage, StageError};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

/// "Crops" an item: skips the one named `empty`, else writes the item's name.
struct FakeCrop {
    item: String,
}

impl Stage for FakeCrop {
    fn kind(&self) -> &'static str {
        "fake-crop"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["image"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        Params::from([("item".into(), self.item.clone())])
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        if self.item == "empty" {
            return Ok(RunOutput::skip("no face found"));
        }
        let path = ctx.out_dir.join("image.txt");
        std::fs::write(&path, &self.item).unwrap();
        let mut out = RunOutput::default();
        out.files.insert("image".into(), path);
        Ok(out)
    }
}

/// Copies its `image` input (a per-item stage after the crop).
struct FakePairs;

impl Stage for FakePairs {
    fn kind(&self) -> &'static str {
        "fake-pairs"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["target"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        const IMAGE: InputPort = InputPort::required("image");
        &[IMAGE]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        Params::new()
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let text = std::fs::read_to_string(ctx.input("image")?).unwrap();
        let path = ctx.out_dir.join("target.txt");
        std::fs::write(&path, format!("pair of {text}")).unwrap();
        let mut out = RunOutput::default();
        out.files.insert("target".into(), path);
        Ok(out)
    }
}

/// Lists the pairs it was given (a whole-dataset stage, like training).
struct FakeTrain {
    items: Vec<String>,
}

impl Stage for FakeTrain {
    fn kind(&self) -> &'static str {
        "fake-train"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["list"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        const PAIR: InputPort = InputPort::optional("pair/*");
        &[PAIR]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        Params::new()
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let mut seen = Vec::new();
        for item in &self.items {
            if let Some(p) = ctx.optional_input(&format!("pair/{item}"))? {
                seen.push(std::fs::read_to_string(p).unwrap());
            }
        }
        let path = ctx.out_dir.join("list.txt");
        std::fs::write(&path, seen.join("\n")).unwrap();
        let mut out = RunOutput::default();
        out.files.insert("list".into(), path);
        Ok(out)
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);
impl Reporter for Recorder {
    fn event(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

fn plan() -> Plan {
    plan_bounded(effectc::recipe::model::DEFAULT_MAX_SKIPPED)
}

fn plan_bounded(max_skipped: f64) -> Plan {
    let items = ["ann", "empty", "bob"];
    let mut nodes = Vec::new();
    let mut train_inputs = Vec::new();
    for item in items {
        nodes.push(PlanNode {
            id: StageId::crop(item),
            item: Some(item.into()),
            stage: std::sync::Arc::new(FakeCrop { item: item.into() }),
            inputs: vec![],
        });
        let crop = nodes.len() - 1;
        nodes.push(PlanNode {
            id: StageId::pairs(item),
            item: Some(item.into()),
            stage: std::sync::Arc::new(FakePairs),
            inputs: vec![Input {
                name: "image".into(),
                from: InputRef::Stage {
                    node: crop,
                    output: "image".into(),
                },
            }],
        });
        train_inputs.push(Input {
            name: format!("pair/{item}"),
            from: InputRef::Stage {
                node: nodes.len() - 1,
                output: "target".into(),
            },
        });
    }
    nodes.push(PlanNode {
        id: StageId::train_teacher(),
        item: None,
        stage: std::sync::Arc::new(FakeTrain {
            items: items.iter().map(|s| s.to_string()).collect(),
        }),
        inputs: train_inputs,
    });
    let mut plan = Plan::from_parts("fake".into(), Digest::of_bytes(b"fake"), nodes);
    plan.max_skipped = max_skipped;
    plan
}

#[test]
fn a_skipped_item_is_counted_reported_left_out_downstream_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let plan = plan();
    let build = || {
        let events = Recorder::default();
        let summary = exec::build(
            dir.path(),
            &cache,
            &plan,
            &BuildOptions::new(2, DeviceSpec::Cpu),
            &events,
            &AtomicBool::new(false),
        )
        .unwrap();
        (summary, events.0.into_inner().unwrap())
    };
    let (first, events) = build();
    assert!(first.ok(), "a skip is not a failure: {first:?}");
    assert_eq!((first.skipped, first.failed, first.not_run), (1, 0, 0));
    assert_eq!(first.skipped_items[0].item, "empty");
    assert_eq!(first.skipped_items[0].reason, "no face found");
    // ann, bob: crop + pairs; empty: its crop (which skipped); and training.
    assert_eq!(first.ran, 6);
    let pairs = plan.node_index("pairs/empty").unwrap();
    assert!(
        matches!(&first.outcomes[pairs], NodeOutcome::ItemSkipped(r) if r.skipped() == Some("no face found")),
        "{:?}",
        first.outcomes[pairs]
    );
    let skips: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ItemSkipped {
                item,
                stage,
                reason,
                ..
            } => Some((item.clone(), stage.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        skips,
        [(
            "empty".to_string(),
            "crop/empty".to_string(),
            "no face found".to_string()
        )]
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::BuildFinished {
            skipped: 1,
            not_run: 0,
            ok: true,
            ..
        }
    )));
    let train = first.record(&plan, "train-teacher").unwrap();
    let list = std::fs::read_to_string(cache.blob_path(&train.outputs["list"].digest)).unwrap();
    assert_eq!(
        list, "pair of ann\npair of bob",
        "training without the skipped item"
    );
    assert!(!train.inputs.contains_key("pair/empty"));

    // Cached like any outcome: nothing runs, the skip is still counted and reported.
    let (second, events) = build();
    assert_eq!((second.ran, second.skipped), (0, 1), "{second:?}");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ItemSkipped { item, .. } if item == "empty")));
}

#[test]
fn past_the_bound_the_whole_dataset_stage_fails_as_the_datas_fault_and_names_an_item() {
    // One item of three skipped (33%): within a bound of 0.5, over one of 0.2.
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let plan = plan_bounded(0.2);
    let events = Recorder::default();
    let summary = exec::build(
        dir.path(),
        &cache,
        &plan,
        &BuildOptions::new(2, DeviceSpec::Cpu),
        &events,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(!summary.ok());
    assert_eq!((summary.skipped, summary.failed), (1, 1), "{summary:?}");
    let train = plan.node_index("train-teacher").unwrap();
    match &summary.outcomes[train] {
        NodeOutcome::Failed { error, tier } => {
            assert_eq!(*tier, effectc::stages::stage::Tier::Input);
            assert!(
                error.contains("1 of 3 items were skipped (33%)")
                    && error.contains("max-skipped 0.2")
                    && error.contains("empty: no face found"),
                "{error}"
            );
        }
        other => panic!("train-teacher: {other:?}"),
    }
}

/// A recipe over `photos/*` with a center crop of 32 px and a tiny training.
fn photos_recipe(bound: &str) -> String {
    format!(
        r#"
effect "photos" {{
    sources {{
        images "photos/*"
        crop "center" size=32
        {bound}
    }}
    teacher "procedural" {{ stud-size 4; }}
    student width=4 blocks=1 teacher-width=4
    train {{ teacher-steps 4; student-steps 4; batch 2; }}
}}
"#
    )
}

/// A JPEG of `size` px, whole.
fn jpeg(size: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    bytes
}

/// Four good photos and four bad ones: bytes no decoder reads, a JPEG without its last
/// two bytes (the end-of-image marker: the decoder reads all of it without a word), a
/// JPEG cut in the middle, and a picture too small for a 32 px crop.
fn photos_project(bound: &str) -> common::TestProject {
    let p = common::TestProject::new();
    p.recipe("photos", &photos_recipe(bound));
    for i in 0..4u8 {
        common::write_png(&p.root().join(format!("photos/good{i}.png")), 10 + i, 48);
    }
    let whole = jpeg(64);
    p.write("photos/garbage.png", "this is not a picture");
    std::fs::write(
        p.root().join("photos/no-eoi.jpg"),
        &whole[..whole.len() - 2],
    )
    .unwrap();
    std::fs::write(p.root().join("photos/half.jpg"), &whole[..whole.len() / 2]).unwrap();
    common::write_png(&p.root().join("photos/tiny.png"), 3, 8);
    p
}

#[test]
fn broken_truncated_and_tiny_photos_are_skipped_with_their_reasons_and_the_build_goes_on() {
    let p = photos_project("max-skipped 0.5");
    let run = p.build("photos");
    let done = run.finished();
    assert_eq!(done["skipped"], 4, "{done}");
    assert_eq!(done["ok"], true);
    let reason = |item: &str| -> String {
        run.events
            .iter()
            .find(|e| e["event"] == "item-skipped" && e["item"] == item)
            .unwrap_or_else(|| panic!("no item-skipped for {item}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("photos/garbage.png").starts_with("not a readable image"));
    assert!(
        reason("photos/no-eoi.jpg").starts_with("truncated JPEG: the data ends at byte"),
        "{}",
        reason("photos/no-eoi.jpg")
    );
    let half = reason("photos/half.jpg");
    assert!(
        half.starts_with("truncated JPEG") || half.starts_with("not a readable image"),
        "{half}"
    );
    assert_eq!(
        reason("photos/tiny.png"),
        "too small for the crop: 8x8 px, the crop of 32 px needs a short side of at least 16 px"
    );
    // Trained on the four good photos only (their pairs ran; the bad ones' did not).
    assert_eq!(run.ran_of_kind("pairs"), 4);
    assert_eq!(run.ran_of_kind("train-teacher"), 1);

    // The human summary lists each one; a second build runs nothing and still says so.
    let human = p.run(&["build", "photos"]);
    assert_eq!(human.code(), 0, "{}", human.stderr());
    let err = human.stderr();
    assert!(err.contains("4 item(s) skipped"), "{err}");
    for item in ["garbage.png", "no-eoi.jpg", "half.jpg", "tiny.png"] {
        assert!(err.contains(&format!("skipped photos/{item}: ")), "{err}");
    }
}

#[test]
fn too_much_of_a_dataset_skipped_fails_the_build_before_training_with_a_clear_message() {
    // 4 of 8 skipped: over a bound of 0.25 (and the same photos pass at 0.5, above).
    let p = photos_project("max-skipped 0.25");
    let run = p.run(&["build", "--json", "photos"]);
    assert_eq!(
        run.code(),
        1,
        "a failed build, the data's fault: {}",
        run.stderr()
    );
    assert_eq!(run.ran_of_kind("train-teacher"), 0);
    let failed = run
        .events
        .iter()
        .find(|e| e["event"] == "stage-failed")
        .expect("a stage-failed event");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(
            "4 of 8 items were skipped (50%), over the bound `sources { max-skipped 0.25 }` (25%)"
        ),
        "{error}"
    );
    assert_eq!(failed["user_error"], true);
}

#[test]
fn a_folder_of_nothing_but_bad_files_never_trains_whatever_the_bound() {
    let p = common::TestProject::new();
    p.recipe("photos", &photos_recipe("max-skipped 1.0"));
    p.write("photos/a.png", "not a picture");
    p.write("photos/b.png", "not one either");
    // The person's view: the summary says what failed and why.
    let run = p.run(&["build", "photos"]);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(err.contains("2 of 2 items were skipped (100%)"), "{err}");
    assert!(
        err.contains("skipped photos/a.png: not a readable image"),
        "{err}"
    );
    assert!(!p
        .root()
        .join("out/photos")
        .join("bundle-report.html")
        .exists());
}
