//! Scheduling. The main thread owns all state: it computes a stage's key once its
//! inputs' digests are known (early cutoff: keys use upstream *output* digests), answers
//! it from the cache when it can, and otherwise hands it to a worker. Workers run a
//! stage in a scratch folder, then store blobs before the record, so a killed build
//! never leaves a record without its outputs.

use super::events::{Event, Reporter};
use super::slots::{Need, Slots};
use crate::cache::remote::RemoteCache;
use crate::cache::{Cache, OutputRef, Snapshot, SnapshotEntry, SnapshotId, StageRecord};
use crate::digest::Digest;
use crate::nn::DeviceSpec;
use crate::plan::{InputRef, Plan, Unresolved};
use crate::stages::stage::Tier;
use crate::stages::{Progress, Resource, RunContext, Stage, StageError};
use std::collections::{BTreeMap, VecDeque};
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

#[derive(Clone, Debug)]
pub enum NodeOutcome {
    Cached(StageRecord),
    Ran(StageRecord),
    Failed {
        error: String,
        tier: Tier,
    },
    /// A per-item stage not run because an earlier stage of its item skipped the item
    /// (the in-memory record says why; nothing is stored).
    ItemSkipped(StageRecord),
    /// Not run: an upstream stage failed, or the build stopped first.
    NotRun,
}

/// An item a stage skipped (a photo without a face), with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedItem {
    pub item: String,
    pub stage: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct BuildSummary {
    pub effect: String,
    pub outcomes: Vec<NodeOutcome>,
    pub ran: usize,
    pub cached: usize,
    pub failed: usize,
    /// Items skipped (not failures): `skipped_items.len()`.
    pub skipped: usize,
    /// The tiers of the sources that could not be read (counted in `failed`).
    pub source_failures: Vec<Tier>,
    pub skipped_items: Vec<SkippedItem>,
    /// Stages not run because something failed or the build stopped.
    pub not_run: usize,
    pub cancelled: bool,
    pub duration_ms: u64,
}

impl BuildSummary {
    /// Skipped items do not make a build fail; failures and stages left unrun do.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.not_run == 0 && !self.cancelled
    }
    /// The worst tier among the failed stages (None when nothing failed): what the
    /// build's exit code says.
    pub fn worst_tier(&self) -> Option<Tier> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                NodeOutcome::Failed { tier, .. } => Some(*tier),
                _ => None,
            })
            .chain(self.source_failures.iter().copied())
            .max()
    }
    pub fn record(&self, plan: &Plan, id: &str) -> Option<&StageRecord> {
        match &self.outcomes[plan.node_index(id)?] {
            NodeOutcome::Cached(r) | NodeOutcome::Ran(r) => Some(r),
            _ => None,
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

struct Job {
    node: usize,
    /// The GPU this job holds (with `--gpus`), else None: the build's device.
    gpu: Option<usize>,
    key: Digest,
    inputs: BTreeMap<String, Digest>,
    input_paths: BTreeMap<String, std::path::PathBuf>,
}

struct Done {
    node: usize,
    gpu: Option<usize>,
    result: Result<Found, StageError>,
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
    // Big builds check blobs against one listing of the store instead of a stat each.
    let blob_index = (snapshot.entries.len() > 2000).then(|| cache.blob_index());
    let blob_present = |d: &Digest| match &blob_index {
        Some(set) => set.contains(d),
        None => cache.has_blob(d),
    };
    let n = plan.nodes.len();
    reporter.event(&Event::BuildStarted {
        effect: plan.effect.clone(),
        stages: n,
    });
    let mut per_kind: BTreeMap<String, u64> = BTreeMap::new();
    for node in &plan.nodes {
        *per_kind.entry(node.stage.family().to_string()).or_default() += 1;
    }
    reporter.totals(&plan.effect, &per_kind);
    // Sources that could not be read (a clip ffmpeg cannot decode) are said first; the
    // other items build. A machine's problem (no ffmpeg) stops the build as a failed
    // stage would.
    for f in &plan.source_failures {
        reporter.event(&Event::SourceFailed {
            effect: plan.effect.clone(),
            source: f.source.clone(),
            error: f.error.clone(),
            tier: f.tier,
        });
    }
    let machine_failed = plan.source_failures.iter().any(|f| f.tier != Tier::Input);

    let mut waiting: Vec<usize> = vec![0; n];
    for (i, node) in plan.nodes.iter().enumerate() {
        waiting[i] = node
            .inputs
            .iter()
            .filter(|inp| matches!(inp.from, InputRef::Stage { .. } | InputRef::StageAll { .. }))
            .count();
    }
    let dependents: Vec<Vec<usize>> = (0..n).map(|i| plan.dependents(i)).collect();
    let mut outcomes: Vec<Option<NodeOutcome>> = vec![None; n];
    let mut ready: VecDeque<usize> = plan
        .order
        .iter()
        .copied()
        .filter(|&i| waiting[i] == 0)
        .collect();
    let mut queued: VecDeque<Job> = VecDeque::new();
    let mut slots = Slots::new(opts.jobs, &opts.gpus);
    let need_of = |i: usize| {
        let node = &plan.nodes[i];
        Need::of(
            resource_of(node.stage.as_ref(), opts),
            node.item.is_some(),
            opts.gpus.len(),
        )
    };
    let mut stop = machine_failed && !opts.keep_going;

    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();

    std::thread::scope(|scope| {
        for _ in 0..slots.threads() {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || loop {
                let job = {
                    let rx = job_rx.lock().unwrap_or_else(|p| p.into_inner());
                    rx.recv()
                };
                let Ok(job) = job else { break };
                let (node, gpu) = (job.node, job.gpu);
                let result = run_job(project_root, cache, plan, opts, reporter, cancel, job);
                if done_tx.send(Done { node, gpu, result }).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);

        loop {
            if cancel.load(Ordering::SeqCst) {
                stop = true;
            }
            // Resolve every ready node: a cache hit completes at once, a miss is queued.
            while let Some(i) = ready.pop_front() {
                if stop {
                    continue;
                }
                let node = &plan.nodes[i];
                // The key only: the inputs' map and where they lie on disk matter only
                // on a miss.
                let key = match plan.key_from_records(i, |up| record_of(&outcomes[up])) {
                    Ok(key) => key,
                    Err(Unresolved::Upstream(_)) => unreachable_input(),
                    // Its item was skipped upstream: neither run nor a failure.
                    Err(Unresolved::Skipped { reason, .. }) => {
                        outcomes[i] =
                            Some(NodeOutcome::ItemSkipped(StageRecord::skipped_by_upstream(
                                &node.id,
                                node.stage.kind(),
                                &plan.effect,
                                &reason,
                            )));
                        release(i, &dependents, &mut waiting, &mut ready);
                        continue;
                    }
                    // Its tier by its type (`Unresolved`'s `Tiered`).
                    Err(e) => {
                        let error = StageError::from(e);
                        let tier = error.tier().unwrap_or(Tier::Bug);
                        reporter.event(&Event::StageFailed {
                            effect: plan.effect.clone(),
                            stage: node.id.to_string(),
                            kind: node.stage.family().into(),
                            error: error.to_string(),
                            user_error: tier == Tier::Input,
                            tier,
                        });
                        outcomes[i] = Some(NodeOutcome::Failed {
                            error: error.to_string(),
                            tier,
                        });
                        if !opts.keep_going {
                            stop = true;
                        }
                        continue;
                    }
                };
                let hit = match snapshot.entries.get(node.id.as_str()) {
                    Some(e)
                        if e.key == key
                            && e.outputs.iter().all(|(_, o)| blob_present(&o.digest)) =>
                    {
                        Some(e.to_record(&node.id, &plan.effect))
                    }
                    _ => cache.get_record(&key).ok().flatten(),
                };
                match hit {
                    Some(mut rec) => {
                        rec.stage_id = node.id.to_string();
                        reporter.stage_finished(
                            &plan.effect,
                            &node.id,
                            node.stage.family(),
                            &rec,
                            true,
                        );
                        report_skip(plan, i, &rec, reporter);
                        outcomes[i] = Some(NodeOutcome::Cached(rec));
                        release(i, &dependents, &mut waiting, &mut ready);
                    }
                    None => {
                        // Resolved above, so this cannot fail.
                        let resolved = plan
                            .resolve_inputs(
                                i,
                                |up| record_of(&outcomes[up]),
                                Some(&|d: &Digest| cache.blob_path(d)),
                            )
                            .unwrap_or_else(|_| unreachable_input());
                        queued.push_back(Job {
                            node: i,
                            gpu: None,
                            key,
                            inputs: resolved.digests,
                            input_paths: resolved.paths,
                        })
                    }
                }
            }
            // Start the queued work the slots allow (`slots.rs`), first queued first.
            while !stop {
                let Some(pos) = queued.iter().position(|j| slots.fits(need_of(j.node))) else {
                    break;
                };
                let Some(mut job) = queued.remove(pos) else {
                    break;
                };
                job.gpu = slots.start(need_of(job.node));
                if job_tx.send(job).is_err() {
                    break;
                }
            }
            if slots.idle() && (ready.is_empty() && (queued.is_empty() || stop)) {
                break;
            }
            let Ok(done) = done_rx.recv() else { break };
            slots.finish(need_of(done.node), done.gpu);
            let i = done.node;
            match done.result {
                Ok(found) => {
                    let (rec, cached) = match found {
                        Found::Ran(rec) => (rec, false),
                        // Not run here: no time of this build's spent on it.
                        Found::Cached(rec) => (
                            StageRecord {
                                duration_ms: 0,
                                ..rec
                            },
                            true,
                        ),
                    };
                    let node = &plan.nodes[i];
                    reporter.stage_finished(
                        &plan.effect,
                        &node.id,
                        node.stage.family(),
                        &rec,
                        cached,
                    );
                    report_skip(plan, i, &rec, reporter);
                    outcomes[i] = Some(if cached {
                        NodeOutcome::Cached(rec)
                    } else {
                        NodeOutcome::Ran(rec)
                    });
                    release(i, &dependents, &mut waiting, &mut ready);
                }
                Err(StageError::Cancelled) => {
                    stop = true;
                    outcomes[i] = Some(NodeOutcome::NotRun);
                }
                Err(e) => {
                    let tier = e.tier().unwrap_or(Tier::Bug);
                    let node = &plan.nodes[i];
                    reporter.event(&Event::StageFailed {
                        effect: plan.effect.clone(),
                        stage: node.id.to_string(),
                        kind: node.stage.family().into(),
                        error: e.to_string(),
                        user_error: tier == Tier::Input,
                        tier,
                    });
                    outcomes[i] = Some(NodeOutcome::Failed {
                        error: e.to_string(),
                        tier,
                    });
                    if !opts.keep_going {
                        stop = true;
                    }
                }
            }
        }
        drop(job_tx);
    });

    let outcomes: Vec<NodeOutcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or(NodeOutcome::NotRun))
        .collect();
    // Remember this build's records (one file) for the next no-op build and `explain`.
    let unchanged = outcomes.iter().zip(&plan.nodes).all(|(o, node)| match o {
        NodeOutcome::Cached(r) | NodeOutcome::Ran(r) => snapshot
            .entries
            .get(node.id.as_str())
            .is_some_and(|e| e.key == r.key),
        _ => true,
    }) && snapshot.entries.len() == plan.nodes.len();
    let mut next = Snapshot::default();
    let mut changed = false;
    for (i, o) in outcomes.iter().enumerate().filter(|_| !unchanged) {
        if let NodeOutcome::Cached(r) | NodeOutcome::Ran(r) = o {
            let id = &plan.nodes[i].id;
            let entry = match snapshot.entries.get(id.as_str()) {
                Some(old) if old.key == r.key => old.clone(),
                _ => {
                    changed = true;
                    SnapshotEntry::from_record(r)
                }
            };
            next.entries.insert(id.to_string(), entry);
        } else if let Some(old) = snapshot.entries.get(plan.nodes[i].id.as_str()) {
            // Keep what an earlier build knew, so `explain` still has it.
            next.entries
                .insert(plan.nodes[i].id.to_string(), old.clone());
        }
    }
    changed |= !unchanged && next.entries.len() != snapshot.entries.len();
    if opts.write_snapshot {
        if !own_snapshot {
            // First build under this project's own name (or after damage): write it,
            // so gc sees what this project uses.
            let next = if unchanged { snapshot.clone() } else { next };
            cache.write_snapshot(&snapshot_id, &next)?;
        } else if changed {
            cache.write_snapshot(&snapshot_id, &next)?;
        } else {
            cache.mark_snapshot_used(&snapshot_id);
        }
    }
    let count = |f: fn(&NodeOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    // One entry per item, from the stage that skipped it.
    let mut skipped_items: Vec<SkippedItem> = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        if let NodeOutcome::Cached(r) | NodeOutcome::Ran(r) = o {
            if let Some(reason) = r.skipped() {
                let item = plan.nodes[i].item.clone().unwrap_or_default();
                if !skipped_items.iter().any(|s| s.item == item) {
                    skipped_items.push(SkippedItem {
                        item,
                        stage: plan.nodes[i].id.to_string(),
                        reason: reason.to_string(),
                    });
                }
            }
        }
    }
    let summary = BuildSummary {
        effect: plan.effect.clone(),
        ran: count(|o| matches!(o, NodeOutcome::Ran(_))),
        cached: count(|o| matches!(o, NodeOutcome::Cached(_))),
        failed: count(|o| matches!(o, NodeOutcome::Failed { .. })) + plan.source_failures.len(),
        skipped: skipped_items.len(),
        skipped_items,
        not_run: count(|o| matches!(o, NodeOutcome::NotRun)),
        source_failures: plan.source_failures.iter().map(|f| f.tier).collect(),
        cancelled: cancel.load(Ordering::SeqCst),
        duration_ms: started.elapsed().as_millis() as u64,
        outcomes,
    };
    // Pairs a stage left out of training (the identity filter's `dropped_pairs` metric).
    let dropped = summary
        .outcomes
        .iter()
        .filter_map(|o| match o {
            NodeOutcome::Ran(r) | NodeOutcome::Cached(r) => r
                .metrics
                .get(crate::protocol::metric::DROPPED_PAIRS)?
                .as_u64(),
            _ => None,
        })
        .sum();
    reporter.event(&Event::BuildFinished {
        effect: summary.effect.clone(),
        ok: summary.ok(),
        ran: summary.ran,
        cached: summary.cached,
        failed: summary.failed,
        skipped: summary.skipped,
        dropped,
        not_run: summary.not_run,
        cancelled: summary.cancelled,
        duration_ms: summary.duration_ms,
    });
    Ok(summary)
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

fn release(
    i: usize,
    dependents: &[Vec<usize>],
    waiting: &mut [usize],
    ready: &mut VecDeque<usize>,
) {
    for &d in &dependents[i] {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.push_back(d);
        }
    }
}

/// A finished job's record: run here, or found in a cache (another build's, which ran it
/// while this one waited for the key's lock, or the shared cache).
enum Found {
    Ran(StageRecord),
    Cached(StageRecord),
}

/// Runs one stage on a worker thread. Holds the key's lock so two builds never run the
/// same stage at once; the second finds the first one's record.
fn run_job(
    project_root: &Path,
    cache: &Cache,
    plan: &Plan,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
    job: Job,
) -> Result<Found, StageError> {
    let node = &plan.nodes[job.node];
    let infra = StageError::from;
    let _lock = cache.lock_key(&job.key).map_err(infra)?;
    if let Some(mut rec) = cache.get_record(&job.key).map_err(infra)? {
        rec.stage_id = node.id.to_string();
        return Ok(Found::Cached(rec));
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(StageError::Cancelled);
    }
    if let Some(remote) = &opts.remote {
        match remote.fetch(cache, &job.key) {
            Ok(Some(mut rec)) => {
                rec.stage_id = node.id.to_string();
                return Ok(Found::Cached(rec));
            }
            Ok(None) => {}
            Err(e) => remote.warn(&e),
        }
    }
    reporter.stage_started(
        &plan.effect,
        &node.id,
        node.stage.family(),
        node.item.is_some(),
    );
    let scratch = cache.scratch_dir().map_err(infra)?;
    let started = Instant::now();
    let progress = |p: Progress| {
        reporter.event(&Event::StageProgress {
            effect: plan.effect.clone(),
            stage: node.id.to_string(),
            done: p.done,
            total: p.total,
            message: p.message,
        });
    };
    let mut ctx = RunContext {
        stage_id: &node.id,
        inputs: job.input_paths.clone(),
        out_dir: scratch.path(),
        checkpoint_dir: cache.checkpoint_dir(&job.key),
        cancel,
        progress: &progress,
        log: String::new(),
        device: match job.gpu {
            Some(g) => DeviceSpec::Cuda(g),
            None => opts.device,
        },
        batch: opts.batch,
        project_root,
        ports: node.stage.inputs(),
    };
    let mut output = node.stage.run(&mut ctx)?;
    if let Some(reason) = output.skipped.take() {
        // A skipped item's record has no outputs; its metric says why.
        output.files.clear();
        output
            .metrics
            .insert(crate::cache::SKIPPED_METRIC.into(), reason.into());
    }
    let mut outputs = BTreeMap::new();
    for (name, path) in &output.files {
        let r: OutputRef = cache.put_blob_file(path).map_err(infra)?;
        outputs.insert(name.clone(), r);
    }
    let rec = StageRecord {
        key: job.key,
        stage_id: node.id.to_string(),
        kind: node.stage.kind().to_string(),
        effect: plan.effect.clone(),
        outputs,
        metrics: output.metrics,
        params: plan.params(job.node).clone(),
        inputs: job.inputs,
        duration_ms: started.elapsed().as_millis() as u64,
        duration_us: started.elapsed().as_micros() as u64,
        finished_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        log: ctx.log,
    };
    cache.put_record(&rec).map_err(infra)?;
    if let Some(remote) = &opts.remote {
        if let Err(e) = remote.push(cache, &rec) {
            remote.warn(&e);
        }
    }
    // The checkpoints served their purpose once the record exists.
    let _ = std::fs::remove_dir_all(cache.checkpoint_dir(&job.key));
    Ok(Found::Ran(rec))
}
