//! What a build did: each node's outcome, the counts a person and CI read, and the
//! snapshot the next build starts from.

use super::events::{Event, Reporter};
use crate::cache::{Cache, Snapshot, SnapshotEntry, SnapshotId, StageRecord};
use crate::plan::Plan;
use crate::stages::stage::Tier;

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

/// Remembers this build's records (one file) for the next no-op build and `explain`;
/// writes only when something changed, or when the project has no snapshot of its own.
pub(super) fn save_snapshot(
    cache: &Cache,
    id: &SnapshotId,
    old: &Snapshot,
    own_snapshot: bool,
    plan: &Plan,
    outcomes: &[NodeOutcome],
) -> Result<(), crate::cache::CacheError> {
    let unchanged = outcomes.iter().zip(&plan.nodes).all(|(o, node)| match o {
        NodeOutcome::Cached(r) | NodeOutcome::Ran(r) => old
            .entries
            .get(node.id.as_str())
            .is_some_and(|e| e.key == r.key),
        _ => true,
    }) && old.entries.len() == plan.nodes.len();
    if unchanged {
        if own_snapshot {
            cache.mark_snapshot_used(id);
            return Ok(());
        }
        // First build under this project's own name (or after damage): write it, so gc
        // sees what this project uses.
        return cache.write_snapshot(id, old);
    }
    let (next, changed) = next_snapshot(old, plan, outcomes);
    if changed || !own_snapshot {
        cache.write_snapshot(id, &next)
    } else {
        cache.mark_snapshot_used(id);
        Ok(())
    }
}

/// The snapshot after this build, and whether it differs from `old`: a built node's
/// entry (the old one while its key is the same), else what an earlier build knew, so
/// `explain` still has it.
fn next_snapshot(old: &Snapshot, plan: &Plan, outcomes: &[NodeOutcome]) -> (Snapshot, bool) {
    let mut next = Snapshot::default();
    let mut changed = false;
    for (o, node) in outcomes.iter().zip(&plan.nodes) {
        let id = node.id.as_str();
        if let NodeOutcome::Cached(r) | NodeOutcome::Ran(r) = o {
            let entry = match old.entries.get(id) {
                Some(e) if e.key == r.key => e.clone(),
                _ => {
                    changed = true;
                    SnapshotEntry::from_record(r)
                }
            };
            next.entries.insert(id.to_string(), entry);
        } else if let Some(e) = old.entries.get(id) {
            next.entries.insert(id.to_string(), e.clone());
        }
    }
    changed |= next.entries.len() != old.entries.len();
    (next, changed)
}

/// Counts the outcomes into the summary a person and CI read.
pub(super) fn summarise(
    plan: &Plan,
    outcomes: Vec<NodeOutcome>,
    cancelled: bool,
    duration_ms: u64,
) -> BuildSummary {
    let count = |f: fn(&NodeOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let skipped_items = skipped_items(plan, &outcomes);
    BuildSummary {
        effect: plan.effect.clone(),
        ran: count(|o| matches!(o, NodeOutcome::Ran(_))),
        cached: count(|o| matches!(o, NodeOutcome::Cached(_))),
        failed: count(|o| matches!(o, NodeOutcome::Failed { .. })) + plan.source_failures.len(),
        skipped: skipped_items.len(),
        skipped_items,
        not_run: count(|o| matches!(o, NodeOutcome::NotRun)),
        source_failures: plan.source_failures.iter().map(|f| f.tier).collect(),
        cancelled,
        duration_ms,
        outcomes,
    }
}

/// One entry per item, from the stage that skipped it.
fn skipped_items(plan: &Plan, outcomes: &[NodeOutcome]) -> Vec<SkippedItem> {
    let mut skipped: Vec<SkippedItem> = Vec::new();
    for (o, node) in outcomes.iter().zip(&plan.nodes) {
        let (NodeOutcome::Cached(r) | NodeOutcome::Ran(r)) = o else {
            continue;
        };
        let Some(reason) = r.skipped() else {
            continue;
        };
        let item = node.item.clone().unwrap_or_default();
        if !skipped.iter().any(|s| s.item == item) {
            skipped.push(SkippedItem {
                item,
                stage: node.id.to_string(),
                reason: reason.to_string(),
            });
        }
    }
    skipped
}

/// The build's last event: its counts, and the pairs a stage left out of training.
pub(super) fn report_finished(summary: &BuildSummary, reporter: &dyn Reporter) {
    reporter.event(&Event::BuildFinished {
        effect: summary.effect.clone(),
        ok: summary.ok(),
        ran: summary.ran,
        cached: summary.cached,
        failed: summary.failed,
        skipped: summary.skipped,
        dropped: dropped_pairs(&summary.outcomes),
        not_run: summary.not_run,
        cancelled: summary.cancelled,
        duration_ms: summary.duration_ms,
    });
}

/// Pairs a stage left out of training (the identity filter's `dropped_pairs` metric).
fn dropped_pairs(outcomes: &[NodeOutcome]) -> u64 {
    outcomes
        .iter()
        .filter_map(|o| match o {
            NodeOutcome::Ran(r) | NodeOutcome::Cached(r) => r
                .metrics
                .get(crate::protocol::metric::DROPPED_PAIRS)?
                .as_u64(),
            _ => None,
        })
        .sum()
}
