//! Running one stage on a worker thread: under its key's lock, unless another build or
//! the shared cache has its record already; blobs are stored before the record, so a
//! killed build never leaves a record without its outputs.

use super::events::{Event, Reporter};
use super::scheduler::BuildOptions;
use crate::cache::{Cache, OutputRef, StageRecord};
use crate::digest::Digest;
use crate::nn::DeviceSpec;
use crate::plan::Plan;
use crate::stages::{Progress, RunContext, RunOutput, StageError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A stage to run, with its key and resolved inputs.
pub(super) struct Job {
    pub node: usize,
    /// The GPU this job holds (with `--gpus`), else None: the build's device.
    pub gpu: Option<usize>,
    pub key: Digest,
    pub inputs: BTreeMap<String, Digest>,
    pub input_paths: BTreeMap<String, PathBuf>,
}

/// A finished job, sent back to the scheduling thread.
pub(super) struct Done {
    pub node: usize,
    pub gpu: Option<usize>,
    pub result: Result<Found, StageError>,
}

/// A finished job's record: run here, or found in a cache (another build's, which ran it
/// while this one waited for the key's lock, or the shared cache).
pub(super) enum Found {
    Ran(StageRecord),
    Cached(StageRecord),
}

/// What every worker thread shares: the build it works for.
#[derive(Clone, Copy)]
pub(super) struct Worker<'a> {
    pub project_root: &'a Path,
    pub cache: &'a Cache,
    pub plan: &'a Plan,
    pub opts: &'a BuildOptions,
    pub reporter: &'a dyn Reporter,
    pub cancel: &'a AtomicBool,
}

impl Worker<'_> {
    /// Runs one job. Holds the key's lock so two builds never run the same stage at
    /// once; the second finds the first one's record.
    pub fn run(&self, job: Job) -> Result<Found, StageError> {
        let node = &self.plan.nodes[job.node];
        let _lock = self.cache.lock_key(&job.key).map_err(StageError::from)?;
        if let Some(mut rec) = self.found_elsewhere(&job.key)? {
            rec.stage_id = node.id.to_string();
            return Ok(Found::Cached(rec));
        }
        self.reporter.stage_started(
            &self.plan.effect,
            &node.id,
            node.stage.family(),
            node.item.is_some(),
        );
        let scratch = self.cache.scratch_dir().map_err(StageError::from)?;
        let started = Instant::now();
        let (output, log) = self.run_stage(&job, scratch.path())?;
        let rec = self.store(job, output, log, started)?;
        // The checkpoints served their purpose once the record exists.
        let _ = std::fs::remove_dir_all(self.cache.checkpoint_dir(&rec.key));
        Ok(Found::Ran(rec))
    }

    /// The record another build stored while this one waited for the lock, or the
    /// shared cache's; a cancelled build looks no further than its own cache.
    fn found_elsewhere(&self, key: &Digest) -> Result<Option<StageRecord>, StageError> {
        if let Some(rec) = self.cache.get_record(key).map_err(StageError::from)? {
            return Ok(Some(rec));
        }
        if self.cancel.load(Ordering::SeqCst) {
            return Err(StageError::Cancelled);
        }
        if let Some(remote) = &self.opts.remote {
            match remote.fetch(self.cache, key) {
                Ok(Some(rec)) => return Ok(Some(rec)),
                Ok(None) => {}
                Err(e) => remote.warn(&e),
            }
        }
        Ok(None)
    }

    /// Runs the stage in `out_dir`, reporting its progress; returns its output (none
    /// for a skipped item, whose metric says why) and its log.
    fn run_stage(&self, job: &Job, out_dir: &Path) -> Result<(RunOutput, String), StageError> {
        let node = &self.plan.nodes[job.node];
        let progress = |p: Progress| {
            self.reporter.event(&Event::StageProgress {
                effect: self.plan.effect.clone(),
                stage: node.id.to_string(),
                done: p.done,
                total: p.total,
                message: p.message,
            });
        };
        let mut ctx = RunContext {
            stage_id: &node.id,
            inputs: job.input_paths.clone(),
            out_dir,
            checkpoint_dir: self.cache.checkpoint_dir(&job.key),
            cancel: self.cancel,
            progress: &progress,
            log: String::new(),
            device: match job.gpu {
                Some(g) => DeviceSpec::Cuda(g),
                None => self.opts.device,
            },
            batch: self.opts.batch,
            project_root: self.project_root,
            ports: node.stage.inputs(),
        };
        let mut output = node.stage.run(&mut ctx)?;
        if let Some(reason) = output.skipped.take() {
            output.files.clear();
            output
                .metrics
                .insert(crate::cache::SKIPPED_METRIC.into(), reason.into());
        }
        Ok((output, ctx.log))
    }

    /// Stores the output's blobs, then its record (here and in the shared cache).
    fn store(
        &self,
        job: Job,
        output: RunOutput,
        log: String,
        started: Instant,
    ) -> Result<StageRecord, StageError> {
        let node = &self.plan.nodes[job.node];
        let mut outputs = BTreeMap::new();
        for (name, path) in &output.files {
            let r: OutputRef = self.cache.put_blob_file(path).map_err(StageError::from)?;
            outputs.insert(name.clone(), r);
        }
        let rec = StageRecord {
            key: job.key,
            stage_id: node.id.to_string(),
            kind: node.stage.kind().to_string(),
            effect: self.plan.effect.clone(),
            outputs,
            metrics: output.metrics,
            params: self.plan.params(job.node).clone(),
            inputs: job.inputs,
            duration_ms: started.elapsed().as_millis() as u64,
            duration_us: started.elapsed().as_micros() as u64,
            finished_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            log,
        };
        self.cache.put_record(&rec).map_err(StageError::from)?;
        if let Some(remote) = &self.opts.remote {
            if let Err(e) = remote.push(self.cache, &rec) {
                remote.warn(&e);
            }
        }
        Ok(rec)
    }
}
