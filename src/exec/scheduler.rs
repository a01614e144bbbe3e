//! Scheduling. The main thread owns all state: it computes a stage's key once its
//! inputs' digests are known (early cutoff: keys use upstream *output* digests), answers
//! it from the cache when it can, and otherwise hands it to a worker. Workers run a
//! stage in a scratch folder, then store blobs before the record, so a killed build
//! never leaves a record without its outputs.

use super::events::{Event, Reporter};
use super::job::{Done, Found, Job, Worker};
use super::slots::{Need, Slots};
use super::summary::{report_finished, save_snapshot, summarise, BuildSummary, NodeOutcome};
use crate::cache::remote::RemoteCache;
use crate::cache::{Cache, Snapshot, SnapshotId, StageRecord};
use crate::digest::Digest;
use crate::nn::DeviceSpec;
use crate::plan::{InputRef, Plan, PlanNode, Unresolved};
use crate::stages::stage::Tier;
use crate::stages::{Resource, Stage, StageError};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone)]
pub struct BuildOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub device: DeviceSpec,
    /// A shared cache: misses are looked up there, fresh results pushed there.
    pub remote: Option<Arc<RemoteCache>>,
    /// Whether this build's outcome is written as its snapshot.
    pub write_snapshot: bool,
    /// `--shard I/N`: the slice this build is; its snapshot is the slice's own, so the
    /// effect's whole-build snapshot is untouched while gc still sees what it built.
    pub shard: Option<(usize, usize)>,
    /// `--gpus 0,1`: per-item exclusive (GPU) stages run side by side, one per device;
    /// whole-dataset exclusive stages (training) still run alone. Empty: one at a time
    /// on `device`.
    pub gpus: Vec<usize>,
    /// `--batch N`: stages that batch (pair generation) run up to N at once on the
    /// build's device, so their work can share one batch. 1: one at a time.
    pub batch: usize,
}

impl BuildOptions {
    pub fn new(jobs: usize, device: DeviceSpec) -> BuildOptions {
        BuildOptions {
            jobs,
            keep_going: false,
            device,
            remote: None,
            write_snapshot: true,
            shard: None,
            gpus: Vec::new(),
            batch: 1,
        }
    }
}

/// The record of a finished node (its own, or the in-memory one of an item skipped
/// upstream), for resolving its dependents' inputs.
fn record_of(o: &Option<NodeOutcome>) -> Option<&StageRecord> {
    match o {
        Some(NodeOutcome::Cached(r) | NodeOutcome::Ran(r) | NodeOutcome::ItemSkipped(r)) => Some(r),
        _ => None,
    }
}

/// Says so when a finished stage skipped its item.
fn report_skip(plan: &Plan, i: usize, rec: &StageRecord, reporter: &dyn Reporter) {
    if let Some(reason) = rec.skipped() {
        reporter.event(&Event::ItemSkipped {
            effect: plan.effect.clone(),
            item: plan.nodes[i].item.clone().unwrap_or_default(),
            stage: plan.nodes[i].id.to_string(),
            reason: reason.to_string(),
        });
    }
}

/// Builds `plan` against `cache`. Never returns early on a stage failure: the summary
/// says what ran, what was cached, what failed and what was skipped.
pub fn build(
    project_root: &Path,
    cache: &Cache,
    plan: &Plan,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
) -> Result<BuildSummary, crate::cache::CacheError> {
    let started = Instant::now();
    let _build_lock = cache.build_lock()?;
    let snapshot_id = SnapshotId::new(project_root, &plan.effect).with_shard(opts.shard);
    let (snapshot, own_snapshot) = cache.read_snapshot(&snapshot_id)?;
    let snapshot = snapshot.unwrap_or_default();
    announce(plan, reporter);
    let worker = Worker {
        project_root,
        cache,
        plan,
        opts,
        reporter,
        cancel,
    };
    let mut schedule = Schedule::new(plan, opts, reporter);
    schedule.run(worker, &Lookup::new(cache, &snapshot));
    let outcomes = schedule.into_outcomes();
    if opts.write_snapshot {
        save_snapshot(
            cache,
            &snapshot_id,
            &snapshot,
            own_snapshot,
            plan,
            &outcomes,
        )?;
    }
    let cancelled = cancel.load(Ordering::SeqCst);
    let summary = summarise(
        plan,
        outcomes,
        cancelled,
        started.elapsed().as_millis() as u64,
    );
    report_finished(&summary, reporter);
    Ok(summary)
}

/// The build's first events: how many stages of each kind, and the sources that could
/// not be read (a clip ffmpeg cannot decode), said before the other items build.
fn announce(plan: &Plan, reporter: &dyn Reporter) {
    reporter.event(&Event::BuildStarted {
        effect: plan.effect.clone(),
        stages: plan.nodes.len(),
    });
    let mut per_kind: BTreeMap<String, u64> = BTreeMap::new();
    for node in &plan.nodes {
        *per_kind.entry(node.stage.family().to_string()).or_default() += 1;
    }
    reporter.totals(&plan.effect, &per_kind);
    for f in &plan.source_failures {
        reporter.event(&Event::SourceFailed {
            effect: plan.effect.clone(),
            source: f.source.clone(),
            error: f.error.clone(),
            tier: f.tier,
        });
    }
}

/// Where a stage's record may be before anything runs: the last build's snapshot
/// (while its blobs are still stored), else the cache's records.
struct Lookup<'a> {
    cache: &'a Cache,
    snapshot: &'a Snapshot,
    /// Big builds check blobs against one listing of the store instead of a stat each.
    blob_index: Option<HashSet<Digest>>,
}

impl<'a> Lookup<'a> {
    fn new(cache: &'a Cache, snapshot: &'a Snapshot) -> Lookup<'a> {
        Lookup {
            cache,
            snapshot,
            blob_index: (snapshot.entries.len() > 2000).then(|| cache.blob_index()),
        }
    }

    fn blob_present(&self, d: &Digest) -> bool {
        match &self.blob_index {
            Some(set) => set.contains(d),
            None => self.cache.has_blob(d),
        }
    }

    /// The record of `node` under `key`, named as this plan names the node.
    fn record(&self, node: &PlanNode, effect: &str, key: &Digest) -> Option<StageRecord> {
        let mut rec = match self.snapshot.entries.get(node.id.as_str()) {
            Some(e)
                if e.key == *key && e.outputs.iter().all(|(_, o)| self.blob_present(&o.digest)) =>
            {
                e.to_record(&node.id, effect)
            }
            _ => self.cache.get_record(key).ok().flatten()?,
        };
        rec.stage_id = node.id.to_string();
        Some(rec)
    }
}

/// What the scheduling loop shares: how many inputs each node still waits for, the
/// nodes ready to resolve, the jobs queued for a slot, and each node's outcome.
struct Schedule<'a> {
    plan: &'a Plan,
    opts: &'a BuildOptions,
    reporter: &'a dyn Reporter,
    waiting: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    outcomes: Vec<Option<NodeOutcome>>,
    ready: VecDeque<usize>,
    queued: VecDeque<Job>,
    slots: Slots,
    /// Start nothing more: a failure (without `--keep-going`) or a cancel.
    stop: bool,
}

impl<'a> Schedule<'a> {
    fn new(plan: &'a Plan, opts: &'a BuildOptions, reporter: &'a dyn Reporter) -> Schedule<'a> {
        let waiting: Vec<usize> = plan
            .nodes
            .iter()
            .map(|node| {
                node.inputs
                    .iter()
                    .filter(|inp| {
                        matches!(inp.from, InputRef::Stage { .. } | InputRef::StageAll { .. })
                    })
                    .count()
            })
            .collect();
        let ready = plan
            .order
            .iter()
            .copied()
            .filter(|&i| waiting[i] == 0)
            .collect();
        // A machine's problem with a source (no ffmpeg) stops the build as a failed
        // stage would; an unreadable source of its own does not.
        let machine_failed = plan.source_failures.iter().any(|f| f.tier != Tier::Input);
        Schedule {
            plan,
            opts,
            reporter,
            dependents: (0..plan.nodes.len()).map(|i| plan.dependents(i)).collect(),
            outcomes: vec![None; plan.nodes.len()],
            waiting,
            ready,
            queued: VecDeque::new(),
            slots: Slots::new(opts.jobs, &opts.gpus),
            stop: machine_failed && !opts.keep_going,
        }
    }

    /// Runs the plan on worker threads until nothing is ready, queued or running.
    fn run(&mut self, worker: Worker, lookup: &Lookup) {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        std::thread::scope(|scope| {
            for _ in 0..self.slots.threads() {
                let job_rx = job_rx.clone();
                let done_tx = done_tx.clone();
                scope.spawn(move || loop {
                    let job = {
                        let rx = job_rx.lock().unwrap_or_else(|p| p.into_inner());
                        rx.recv()
                    };
                    let Ok(job) = job else { break };
                    let (node, gpu) = (job.node, job.gpu);
                    let result = worker.run(job);
                    if done_tx.send(Done { node, gpu, result }).is_err() {
                        break;
                    }
                });
            }
            drop(done_tx);
            loop {
                if worker.cancel.load(Ordering::SeqCst) {
                    self.stop = true;
                }
                while let Some(i) = self.ready.pop_front() {
                    if !self.stop {
                        self.resolve(i, lookup);
                    }
                }
                self.start_queued(&job_tx);
                let drained = self.queued.is_empty() || self.stop;
                if self.slots.idle() && self.ready.is_empty() && drained {
                    break;
                }
                let Ok(done) = done_rx.recv() else { break };
                self.complete(done);
            }
            drop(job_tx);
        });
    }

    /// Works out a ready node's key from its inputs' records (early cutoff: keys use
    /// upstream *output* digests); a cache hit completes at once, a miss is queued.
    fn resolve(&mut self, i: usize, lookup: &Lookup) {
        let plan = self.plan;
        let node = &plan.nodes[i];
        // The key only: the inputs' map and where they lie on disk matter only on a miss.
        let key = match plan.key_from_records(i, |up| record_of(&self.outcomes[up])) {
            Ok(key) => key,
            Err(Unresolved::Upstream(_)) => unreachable_input(),
            // Its item was skipped upstream: neither run nor a failure.
            Err(Unresolved::Skipped { reason, .. }) => {
                let rec = StageRecord::skipped_by_upstream(
                    &node.id,
                    node.stage.kind(),
                    &plan.effect,
                    &reason,
                );
                self.outcomes[i] = Some(NodeOutcome::ItemSkipped(rec));
                self.release(i);
                return;
            }
            // Its tier by its type (`Unresolved`'s `Tiered`).
            Err(e) => return self.fail(i, &StageError::from(e)),
        };
        if let Some(rec) = lookup.record(node, &plan.effect, &key) {
            return self.finished(i, rec, true);
        }
        // Resolved above, so this cannot fail.
        let resolved = plan
            .resolve_inputs(
                i,
                |up| record_of(&self.outcomes[up]),
                Some(&|d: &Digest| lookup.cache.blob_path(d)),
            )
            .unwrap_or_else(|_| unreachable_input());
        self.queued.push_back(Job {
            node: i,
            gpu: None,
            key,
            inputs: resolved.digests,
            input_paths: resolved.paths,
        });
    }

    /// Starts the queued work the slots allow (`slots.rs`), first queued first.
    fn start_queued(&mut self, job_tx: &mpsc::Sender<Job>) {
        while !self.stop {
            let Some(pos) = self
                .queued
                .iter()
                .position(|j| self.slots.fits(self.need_of(j.node)))
            else {
                break;
            };
            let Some(mut job) = self.queued.remove(pos) else {
                break;
            };
            job.gpu = self.slots.start(self.need_of(job.node));
            if job_tx.send(job).is_err() {
                break;
            }
        }
    }

    /// Takes in a worker's finished job: gives its slot back and records its outcome.
    fn complete(&mut self, done: Done) {
        let need = self.need_of(done.node);
        self.slots.finish(need, done.gpu);
        let i = done.node;
        match done.result {
            Ok(Found::Ran(rec)) => self.finished(i, rec, false),
            // Not run here: no time of this build's spent on it.
            Ok(Found::Cached(rec)) => self.finished(
                i,
                StageRecord {
                    duration_ms: 0,
                    ..rec
                },
                true,
            ),
            Err(StageError::Cancelled) => {
                self.stop = true;
                self.outcomes[i] = Some(NodeOutcome::NotRun);
            }
            Err(e) => self.fail(i, &e),
        }
    }

    /// A node's record is known (run, or found cached): says so and readies its
    /// dependents.
    fn finished(&mut self, i: usize, rec: StageRecord, cached: bool) {
        let node = &self.plan.nodes[i];
        self.reporter.stage_finished(
            &self.plan.effect,
            &node.id,
            node.stage.family(),
            &rec,
            cached,
        );
        report_skip(self.plan, i, &rec, self.reporter);
        self.outcomes[i] = Some(if cached {
            NodeOutcome::Cached(rec)
        } else {
            NodeOutcome::Ran(rec)
        });
        self.release(i);
    }

    /// A node failed: says why, with its tier, and stops the build unless it keeps going.
    fn fail(&mut self, i: usize, error: &StageError) {
        let tier = error.tier().unwrap_or(Tier::Bug);
        let node = &self.plan.nodes[i];
        self.reporter.event(&Event::StageFailed {
            effect: self.plan.effect.clone(),
            stage: node.id.to_string(),
            kind: node.stage.family().into(),
            error: error.to_string(),
            user_error: tier == Tier::Input,
            tier,
        });
        self.outcomes[i] = Some(NodeOutcome::Failed {
            error: error.to_string(),
            tier,
        });
        if !self.opts.keep_going {
            self.stop = true;
        }
    }

    /// One input of each of `i`'s dependents is now known; those with none left are ready.
    fn release(&mut self, i: usize) {
        for &d in &self.dependents[i] {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 {
                self.ready.push_back(d);
            }
        }
    }

    /// The slot node `i` needs in this build.
    fn need_of(&self, i: usize) -> Need {
        let node = &self.plan.nodes[i];
        Need::of(
            resource_of(node.stage.as_ref(), self.opts),
            node.item.is_some(),
            self.opts.gpus.len(),
        )
    }

    /// Each node's outcome; a node never reached did not run.
    fn into_outcomes(self) -> Vec<NodeOutcome> {
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or(NodeOutcome::NotRun))
            .collect()
    }
}

/// How a stage shares the machine in this build: batchable stages run side by side when
/// batching is on (their batcher serialises the device).
fn resource_of(stage: &dyn Stage, opts: &BuildOptions) -> Resource {
    if opts.batch > 1 && stage.batchable() {
        Resource::Cpu
    } else {
        stage.resource()
    }
}

fn unreachable_input() -> ! {
    // A node becomes ready only when every upstream node finished successfully.
    panic!("scheduler invariant broken: a stage became ready before its inputs")
}
