//! `effectc cache push|pull EFFECT`: move one effect's artifacts between the local cache
//! and the shared one explicitly (builds with `--remote-cache` do it as they go).

use crate::cache::remote::{RemoteCache, RemoteError};
use crate::cache::{Cache, CacheError, StageRecord};
use crate::plan::Plan;

#[derive(Debug, Default)]
pub struct TransferReport {
    /// Stages whose record (and blobs) moved.
    pub moved: usize,
    /// Stages already on the other side.
    pub present: usize,
    /// Stages neither side has (not built yet, or upstream of one that is not).
    pub missing: usize,
}

/// Records of the plan's stages as the local cache knows them, in plan order; a stage
/// whose inputs are unknown is missing, and so is everything downstream of it.
fn walk(
    plan: &Plan,
    mut find: impl FnMut(&crate::digest::Digest) -> Result<Option<StageRecord>, RemoteError>,
) -> Result<(Vec<Option<StageRecord>>, usize), RemoteError> {
    let mut records: Vec<Option<StageRecord>> = vec![None; plan.nodes.len()];
    let mut missing = 0;
    for &i in &plan.order {
        let inputs = match plan.key_inputs(i, |up| records[up].as_ref()) {
            Ok(inputs) => inputs,
            // Skipped with its item: nothing of it to move.
            Err(crate::plan::Unresolved::Skipped { reason, .. }) => {
                let node = &plan.nodes[i];
                records[i] = Some(StageRecord::skipped_by_upstream(
                    &node.id,
                    node.stage.kind(),
                    &plan.effect,
                    &reason,
                ));
                continue;
            }
            Err(_) => {
                missing += 1;
                continue;
            }
        };
        let key = plan.key_of(i, &inputs);
        match find(&key)? {
            Some(r) => records[i] = Some(r),
            None => missing += 1,
        }
    }
    Ok((records, missing))
}

/// Uploads every stage of the plan the local cache holds.
pub fn push(cache: &Cache, plan: &Plan, remote: &RemoteCache) -> Result<TransferReport, String> {
    let local = |key: &crate::digest::Digest| {
        cache
            .get_record(key)
            .map_err(|e: CacheError| RemoteError::Local(e.to_string()))
    };
    let (records, missing) = walk(plan, local).map_err(|e| e.to_string())?;
    let mut report = TransferReport {
        missing,
        ..Default::default()
    };
    for rec in records.iter().flatten() {
        remote.push(cache, rec).map_err(|e| e.to_string())?;
        report.moved += 1;
    }
    Ok(report)
}

/// Downloads every stage of the plan the remote holds (and the local cache lacks).
pub fn pull(cache: &Cache, plan: &Plan, remote: &RemoteCache) -> Result<TransferReport, String> {
    let mut report = TransferReport::default();
    let find = |key: &crate::digest::Digest| {
        if let Some(r) = cache
            .get_record(key)
            .map_err(|e| RemoteError::Local(e.to_string()))?
        {
            report.present += 1;
            return Ok(Some(r));
        }
        let r = remote.fetch(cache, key)?;
        if r.is_some() {
            report.moved += 1;
        }
        Ok(r)
    };
    let (_, missing) = walk(plan, find).map_err(|e| e.to_string())?;
    report.missing = missing;
    Ok(report)
}
