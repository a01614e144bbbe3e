//! `watch --preview N`: when an edit makes pairs stale, the pairs of a few items are
//! rebuilt first (through the normal scheduler and cache, so the full rebuild that
//! follows finds them cached) and shown beside the previous ones in
//! `out/EFFECT/preview.html`, seconds after the save instead of after training.

use crate::cache::{Cache, Snapshot};
use crate::digest::Digest;
use crate::exec::dry::DryStatus;
use crate::exec::{BuildSummary, Event, NodeOutcome, Reporter};
use crate::plan::{Plan, StageId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The first `n` holdout items by name (what the report judges the effect on), filled
/// with the first other items by name when there are fewer holdout items.
pub fn choose_items(plan: &Plan, n: usize) -> Vec<String> {
    let mut all: Vec<String> = plan
        .nodes
        .iter()
        .filter(|node| node.item.is_some())
        .filter_map(|node| node.item.clone())
        .filter(|item| plan.node_index(StageId::pairs(item).as_str()).is_some())
        .collect();
    all.sort();
    all.dedup();
    // The teacher's training reads `holdout/ITEM/target` for each holdout item.
    let holdout: BTreeSet<String> = plan
        .node_index(StageId::train_teacher().as_str())
        .map(|t| {
            plan.nodes[t]
                .inputs
                .iter()
                .filter_map(|i| i.name.strip_prefix("holdout/")?.strip_suffix("/target"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut chosen: Vec<String> = all
        .iter()
        .filter(|i| holdout.contains(*i))
        .take(n)
        .cloned()
        .collect();
    for item in &all {
        if chosen.len() >= n {
            break;
        }
        if !chosen.contains(item) {
            chosen.push(item.clone());
        }
    }
    chosen
}

/// What a preview rebuilds: the chosen items whose pairs are not cached, every stage
/// their pairs need (by id), and each one's previous target from the last build.
pub struct PreviewSet {
    pub items: Vec<String>,
    pub stages: BTreeSet<String>,
    pub before: Vec<Option<Digest>>,
}

/// `None` when the edit leaves the chosen items' pairs cached (nothing new to show).
pub fn prepare(
    cache: &Cache,
    plan: &Plan,
    status: &[DryStatus],
    snapshot: &Snapshot,
    n: usize,
) -> Option<PreviewSet> {
    let items = choose_items(plan, n);
    let pairs: Vec<usize> = items
        .iter()
        .filter_map(|i| plan.node_index(StageId::pairs(i).as_str()))
        .collect();
    if !pairs
        .iter()
        .any(|&p| !matches!(status[p], DryStatus::Cached { .. }))
    {
        return None;
    }
    // Every ancestor of the chosen pairs: crop, control maps, attributes, the pairs.
    let mut stages = BTreeSet::new();
    let mut todo = pairs;
    while let Some(i) = todo.pop() {
        if stages.insert(plan.nodes[i].id.to_string()) {
            todo.extend(
                plan.graph
                    .neighbors_directed(
                        petgraph::graph::NodeIndex::new(i),
                        petgraph::Direction::Incoming,
                    )
                    .map(|n| n.index()),
            );
        }
    }
    let before = items
        .iter()
        .map(|item| {
            let e = snapshot.entries.get(StageId::pairs(item).as_str())?;
            let (_, o) = e.outputs.iter().find(|(name, _)| name == "target")?;
            cache.has_blob(&o.digest).then_some(o.digest)
        })
        .collect();
    Some(PreviewSet {
        items,
        stages,
        before,
    })
}

/// The preview's pictures, copied out of the cache into `out/EFFECT/watch-preview/`
/// (the previous target first, so a later collection of the cache cannot lose it), and
/// the HTML section that shows them. Returns (section, [(item, before, after)]).
pub fn publish(
    cache: &Cache,
    out_dir: &Path,
    set: &PreviewSet,
    plan: &Plan,
    summary: &BuildSummary,
    when: u64,
) -> std::io::Result<(String, Vec<serde_json::Value>)> {
    let dir = out_dir.join("watch-preview");
    // Old pictures of items no longer previewed would be shown as current otherwise.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut rows = String::new();
    let mut files = Vec::new();
    for (item, before) in set.items.iter().zip(&set.before) {
        let id = StageId::pairs(item);
        let after = plan
            .node_index(id.as_str())
            .and_then(|i| match &summary.outcomes[i] {
                NodeOutcome::Ran(r) | NodeOutcome::Cached(r) => {
                    r.outputs.get("target").map(|o| o.digest)
                }
                _ => None,
            });
        let copy = |digest: &Option<Digest>, which: &str| -> std::io::Result<Option<String>> {
            let Some(d) = digest else { return Ok(None) };
            let name = id.out_file_name(&format!("{which}.png"));
            std::fs::copy(cache.blob_path(d), dir.join(&name))?;
            Ok(Some(format!("watch-preview/{name}")))
        };
        let b = copy(before, "before")?;
        let a = copy(&after, "after")?;
        let cell = |f: &Option<String>| match f {
            Some(f) => format!(
                "<img src=\"{f}?t={when}\" style=\"width:256px;image-rendering:pixelated\">"
            ),
            None => "(none)".to_string(),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            html_escape(item),
            cell(&b),
            cell(&a)
        ));
        files.push(serde_json::json!({"item": item, "before": b, "after": a}));
    }
    let section = format!(
        "<h2>preview: teacher output before | after the edit</h2>\n<table>\n\
         <tr><th>item</th><th>before</th><th>after</th></tr>\n{rows}</table>\n"
    );
    Ok((section, files))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The preview build's events: its stages as they run (progress, fresh results and
/// failures), but not as a build of its own (no build-started/finished, no totals), so
/// a change still reads as one rebuild and cached stages are reported once, by the full
/// build.
pub struct PreviewReporter<'a>(pub &'a dyn Reporter);

impl Reporter for PreviewReporter<'_> {
    fn event(&self, e: &Event) {
        match e {
            Event::BuildStarted { .. } | Event::BuildFinished { .. } => {}
            Event::StageFinished { cached: true, .. } => {}
            _ => self.0.event(e),
        }
    }
    fn stage_finished(
        &self,
        effect: &str,
        stage: &str,
        kind: &str,
        rec: &crate::cache::StageRecord,
        cached: bool,
    ) {
        if !cached {
            self.0.stage_finished(effect, stage, kind, rec, cached);
        }
    }
    fn totals(&self, _effect: &str, _per_kind: &BTreeMap<String, u64>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::Project;
    use crate::recipe::Loader;

    /// A procedural recipe over `count` synthetic items, lowered.
    fn plan(count: usize, holdout: f32) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("effects")).unwrap();
        std::fs::write(
            dir.path().join("effects/p.kdl"),
            format!(
                "effect \"p\" {{\n sources {{ synthetic count={count} seed=1; crop \"center\" size=16; holdout {holdout}; }}\n \
                 teacher \"procedural\" {{ stud-size 4; }}\n student width=4 blocks=1 teacher-width=4\n \
                 train {{ teacher-steps 1; student-steps 1; batch 1; }}\n}}\n"
            ),
        )
        .unwrap();
        let project = Project {
            root: dir.path().to_path_buf(),
        };
        let recipe = Loader::new(&project).load("p").unwrap();
        crate::plan::lower::lower(&project, &recipe, &mut |p| Digest::of_file(p)).unwrap()
    }

    fn holdout_of(plan: &Plan) -> Vec<String> {
        let t = plan.node_index(StageId::train_teacher().as_str()).unwrap();
        let mut v: Vec<String> = plan.nodes[t]
            .inputs
            .iter()
            .filter_map(|i| i.name.strip_prefix("holdout/")?.strip_suffix("/target"))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn holdout_items_come_first_by_name_then_the_first_others() {
        let plan = plan(10, 0.3);
        let holdout = holdout_of(&plan);
        assert!(!holdout.is_empty() && holdout.len() < 10, "{holdout:?}");
        // Fewer than the holdout: its first ones by name.
        assert_eq!(choose_items(&plan, 1), holdout[..1].to_vec());
        // More: every holdout item, then the first other items by name.
        let chosen = choose_items(&plan, holdout.len() + 2);
        assert_eq!(chosen[..holdout.len()], holdout[..]);
        let mut others: Vec<String> = (0..10)
            .map(|i| format!("synthetic-{i:04}"))
            .filter(|i| !holdout.contains(i))
            .collect();
        others.truncate(2);
        assert_eq!(chosen[holdout.len()..], others[..]);
        // More than there are: every item once.
        assert_eq!(choose_items(&plan, 50).len(), 10);
        assert!(choose_items(&plan, 0).is_empty());
    }
}
