//! A per-item stage may skip its item (a photo without a face): not a failure. Driven
//! through the scheduler with stand-in stages, so no model is needed: the skip is
//! counted and reported, the item's later per-item stages do not run, a whole-dataset
//! stage reads the other items without it, and a second build runs nothing and still
//! reports the skip.

use effectc::cache::Cache;
use effectc::digest::Digest;
use effectc::exec::{self, BuildOptions, Event, NodeOutcome, Reporter};
use effectc::plan::{
    DeviceSpec, Input, InputRef, Params, Plan, PlanNode, RunContext, RunOutput, Stage, StageError,
    StageId,
};
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
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        Params::new()
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let mut seen = Vec::new();
        for item in &self.items {
            if let Some(p) = ctx.optional_input(&format!("pair/{item}")) {
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
    Plan::from_parts("fake".into(), Digest::of_bytes(b"fake"), nodes)
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
