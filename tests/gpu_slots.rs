//! `--gpus 0,1`: per-item GPU stages run one per device, never more at once than there
//! are devices, each told its device; whole-dataset GPU stages (training) still run alone.
//! Driven through the scheduler with stand-in stages, so no GPU is needed to check it.

use effectc::cache::Cache;
use effectc::digest::Digest;
use effectc::exec::{self, BuildOptions, Event, Reporter};
use effectc::nn::DeviceSpec;
use effectc::plan::{Plan, PlanNode, StageId};
use effectc::stages::{Params, Resource, RunContext, RunOutput, Stage, StageError};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Board {
    gpu_running: AtomicUsize,
    gpu_max: AtomicUsize,
    training: AtomicBool,
    overlapped: AtomicBool,
    devices: Mutex<BTreeSet<String>>,
    /// With two devices: hold each GPU job until two have run at once, so "both GPUs
    /// busy" is an event the test waits for, not a race a busy machine can lose.
    rendezvous: bool,
    met: (Mutex<bool>, Condvar),
}

struct FakeGpuStage {
    board: Arc<Board>,
    whole_dataset: bool,
    n: usize,
}

impl Stage for FakeGpuStage {
    fn kind(&self) -> &'static str {
        if self.whole_dataset {
            "fake-train"
        } else {
            "fake-pairs"
        }
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["out"]
    }
    fn inputs(&self) -> &'static [effectc::stages::InputPort] {
        &[]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        Params::from([("n".into(), self.n.to_string())])
    }
    fn resource(&self) -> Resource {
        Resource::Exclusive
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let b = &self.board;
        if self.whole_dataset {
            b.training.store(true, Ordering::SeqCst);
            if b.gpu_running.load(Ordering::SeqCst) > 0 {
                b.overlapped.store(true, Ordering::SeqCst);
            }
        } else {
            let now = b.gpu_running.fetch_add(1, Ordering::SeqCst) + 1;
            b.gpu_max.fetch_max(now, Ordering::SeqCst);
            if b.training.load(Ordering::SeqCst) {
                b.overlapped.store(true, Ordering::SeqCst);
            }
            b.devices.lock().unwrap().insert(ctx.device.to_string());
            if b.rendezvous {
                let (met, cv) = &b.met;
                let mut met = met.lock().unwrap();
                if now >= 2 {
                    *met = true;
                    cv.notify_all();
                }
                // The guard only bounds a scheduler that never runs two at once.
                let (met, _) = cv
                    .wait_timeout_while(met, Duration::from_secs(60), |m| !*m)
                    .unwrap();
                drop(met);
            }
        }
        // Slow stages, so that an overlap the scheduler wrongly allowed is seen.
        std::thread::sleep(Duration::from_millis(150));
        if self.whole_dataset {
            b.training.store(false, Ordering::SeqCst);
        } else {
            b.gpu_running.fetch_sub(1, Ordering::SeqCst);
        }
        let path = ctx.out_dir.join("out.txt");
        std::fs::write(&path, self.n.to_string()).unwrap();
        let mut out = RunOutput::default();
        out.files.insert("out".into(), path);
        Ok(out)
    }
}

struct Quiet;
impl Reporter for Quiet {
    fn event(&self, _e: &Event) {}
}

fn run(gpus: Vec<usize>) -> Arc<Board> {
    let board = Arc::new(Board {
        rendezvous: gpus.len() >= 2,
        ..Board::default()
    });
    let mut nodes = Vec::new();
    for n in 0..6 {
        nodes.push(PlanNode {
            id: StageId::parse(&format!("fake-pairs/item-{n}")),
            item: Some(format!("item-{n}")),
            stage: std::sync::Arc::new(FakeGpuStage {
                board: board.clone(),
                whole_dataset: false,
                n,
            }),
            inputs: vec![],
        });
    }
    nodes.push(PlanNode {
        id: StageId::parse("fake-train"),
        item: None,
        stage: std::sync::Arc::new(FakeGpuStage {
            board: board.clone(),
            whole_dataset: true,
            n: 99,
        }),
        inputs: vec![],
    });
    let plan = Plan::from_parts("fake".into(), Digest::of_bytes(b"fake"), nodes);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let mut opts = BuildOptions::new(4, DeviceSpec::Cpu);
    opts.gpus = gpus;
    let summary = exec::build(
        dir.path(),
        &cache,
        &plan,
        &opts,
        &Quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(summary.ok());
    assert_eq!(summary.ran, 7);
    board
}

#[test]
fn per_item_gpu_stages_run_one_per_device_and_training_runs_alone() {
    let two = run(vec![0, 1]);
    assert_eq!(
        two.gpu_max.load(Ordering::SeqCst),
        2,
        "both GPUs busy, never more"
    );
    assert_eq!(
        *two.devices.lock().unwrap(),
        BTreeSet::from(["cuda:0".to_string(), "cuda:1".to_string()])
    );
    assert!(
        !two.overlapped.load(Ordering::SeqCst),
        "training overlapped a GPU job"
    );

    // Without --gpus: one GPU stage at a time, on the build's device.
    let one = run(vec![]);
    assert_eq!(one.gpu_max.load(Ordering::SeqCst), 1);
    assert_eq!(
        *one.devices.lock().unwrap(),
        BTreeSet::from(["cpu".to_string()])
    );
    assert!(!one.overlapped.load(Ordering::SeqCst));
}
