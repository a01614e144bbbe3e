//! Answers "what would run, and why" without running anything: keys are computed as far
//! as known digests allow, and each stale stage is compared with the record of the same
//! stage from the effect's last build.

use crate::cache::{Cache, Snapshot, SnapshotId, StageRecord};
use crate::digest::Digest;
use crate::plan::{Plan, Unresolved};
use crate::stages::stage::show_param;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub enum DryStatus {
    Cached {
        key: Digest,
    },
    /// Stale, with the reasons found against the last build of this stage.
    Stale {
        key: Digest,
        reasons: Vec<String>,
    },
    /// Its inputs come from stale stages: it will run unless they reproduce their outputs.
    Blocked {
        upstream: String,
    },
    /// An earlier stage of its item skipped the item: it will not run.
    Skipped {
        reason: String,
    },
}

pub fn dry_run(
    cache: &Cache,
    project_root: &std::path::Path,
    plan: &Plan,
) -> Result<(Vec<DryStatus>, Snapshot), crate::cache::CacheError> {
    let id = SnapshotId::new(project_root, &plan.effect);
    let snapshot = cache.read_snapshot(&id)?.0.unwrap_or_default();
    let mut records: Vec<Option<StageRecord>> = vec![None; plan.nodes.len()];
    let mut status: Vec<Option<DryStatus>> = vec![None; plan.nodes.len()];
    for &i in &plan.order {
        let node = &plan.nodes[i];
        let inputs = match plan.key_inputs(i, |up| records[up].as_ref()) {
            Ok(inputs) => inputs,
            Err(Unresolved::Upstream(up)) => {
                status[i] = Some(DryStatus::Blocked {
                    upstream: plan.nodes[up].id.to_string(),
                });
                continue;
            }
            Err(Unresolved::Skipped { reason, .. }) => {
                records[i] = Some(StageRecord::skipped_by_upstream(
                    &node.id,
                    node.stage.kind(),
                    &plan.effect,
                    &reason,
                ));
                status[i] = Some(DryStatus::Skipped { reason });
                continue;
            }
            // Too many of its items skipped: the build will fail it (no key: never run).
            Err(e @ Unresolved::TooManySkipped { .. }) => {
                status[i] = Some(DryStatus::Stale {
                    key: Digest([0; 32]),
                    reasons: vec![format!("will fail: {e}")],
                });
                continue;
            }
            // Its upstream record lacks an output it reads: the build fails it.
            Err(Unresolved::MissingOutput { upstream, .. }) => {
                status[i] = Some(DryStatus::Blocked {
                    upstream: upstream.to_string(),
                });
                continue;
            }
        };
        let params = plan.params(i);
        let key = plan.key_of(i, &inputs);
        let hit = match snapshot.entries.get(node.id.as_str()) {
            Some(e) if e.key == key && e.outputs.iter().all(|(_, o)| cache.has_blob(&o.digest)) => {
                Some(e.to_record(&node.id, &plan.effect))
            }
            _ => cache.get_record(&key).ok().flatten(),
        };
        match hit {
            Some(r) => {
                records[i] = Some(r);
                status[i] = Some(DryStatus::Cached { key });
            }
            None => {
                let reasons = match snapshot.entries.get(node.id.as_str()) {
                    None => vec!["never built".to_string()],
                    Some(old) => match cache.read_record_raw(&old.key) {
                        Some(old) => diff_reasons(&old, key, params, &inputs),
                        None if old.key == key => vec!["outputs missing from the cache (damaged or collected)".to_string()],
                        None => vec!["changed since the last build (its record was collected, so the change cannot be named)".to_string()],
                    },
                };
                status[i] = Some(DryStatus::Stale { key, reasons });
            }
        }
    }
    Ok((
        status
            .into_iter()
            .map(|s| {
                s.unwrap_or(DryStatus::Blocked {
                    upstream: "?".into(),
                })
            })
            .collect(),
        snapshot,
    ))
}

/// Why a stage's key differs from its last build: changed params by recipe path,
/// changed inputs by name.
pub fn diff_reasons(
    old: &StageRecord,
    key: Digest,
    params: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, Digest>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for (k, v) in params {
        match old.params.get(k) {
            Some(o) if o != v => reasons.push(format!(
                "{k} changed: {}",
                super::change::show_change(&show_param(o), &show_param(v))
            )),
            None => reasons.push(format!("{k} added: {}", show_param(v))),
            _ => {}
        }
    }
    for k in old.params.keys() {
        if !params.contains_key(k) {
            reasons.push(format!("{k} removed"));
        }
    }
    let mut changed_inputs = 0;
    for (k, d) in inputs {
        match old.inputs.get(k) {
            Some(o) if o != d => {
                changed_inputs += 1;
                if changed_inputs <= 5 {
                    reasons.push(format!("input `{k}` changed"));
                }
            }
            None => {
                changed_inputs += 1;
                if changed_inputs <= 5 {
                    reasons.push(format!("input `{k}` added"));
                }
            }
            _ => {}
        }
    }
    let removed = old
        .inputs
        .keys()
        .filter(|k| !inputs.contains_key(*k))
        .count();
    if changed_inputs > 5 {
        reasons.push(format!("… {} more inputs changed", changed_inputs - 5));
    }
    if removed > 0 {
        reasons.push(format!("{removed} input(s) removed"));
    }
    if reasons.is_empty() {
        if old.key == key {
            reasons.push("outputs missing from the cache (damaged or collected)".into());
        } else {
            reasons.push("implementation version changed".into());
        }
    }
    reasons
}
