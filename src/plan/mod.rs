//! The planner: lowers a checked recipe into a DAG of stages (petgraph), one node per
//! stage and per source item for per-item stages.

mod id;
pub mod lower;

pub use id::StageId;

use crate::stages::stage::stage_key_sorted;
use crate::stages::{stage_key, Params, Stage};
use std::path::PathBuf;

use crate::digest::{Digest, KeyHasher};
use crate::recipe::Recipe;
use petgraph::graph::{DiGraph, NodeIndex};

/// What a stage reads.
#[derive(Clone, Debug)]
pub enum InputRef {
    /// An output of another stage of the plan (by node index and output name).
    Stage { node: usize, output: String },
    /// Every output of another stage, as inputs named `<input name>/<output name>`
    /// (a Core ML package is a folder of files).
    StageAll { node: usize },
    /// A source file of the project, with its content digest.
    File { path: PathBuf, digest: Digest },
}

#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    pub from: InputRef,
}

pub struct PlanNode {
    /// Unique and stable across builds: `crop/synthetic-0003`, `train-teacher`.
    pub id: StageId,
    /// The source item of a per-item stage.
    pub item: Option<String>,
    /// Shared by the items whose stage is configured alike (one crop for every item), so
    /// its params are worked out once per plan, not once per item.
    pub stage: std::sync::Arc<dyn Stage>,
    pub inputs: Vec<Input>,
}

/// A node's resolved inputs: name → digest (what its key covers) and name → file.
#[derive(Debug, Default)]
pub struct ResolvedInputs {
    pub digests: std::collections::BTreeMap<String, Digest>,
    pub paths: std::collections::BTreeMap<String, PathBuf>,
}

/// Why a node's inputs cannot be resolved yet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unresolved {
    /// This upstream node has no known record yet (stale, or not built).
    #[error("its upstream stage has not been built")]
    Upstream(usize),
    /// The upstream record lacks an output the node consumes.
    #[error("stage {upstream} did not produce its declared output `{output}`")]
    MissingOutput { upstream: StageId, output: String },
    /// A per-item node whose item an upstream stage skipped: it does not run either.
    #[error("{upstream} skipped its item: {reason}")]
    Skipped { upstream: StageId, reason: String },
    /// A whole-dataset node whose items were skipped beyond the recipe's bound: the
    /// dataset is not the one meant (a wrong folder, a broken export), so nothing trains.
    #[error("{skipped} of {total} items were skipped ({percent:.0}%), over the bound `sources {{ max-skipped {max} }}` ({max_percent:.0}%); the first: {example}", percent = 100.0 * *skipped as f64 / *total as f64, max_percent = 100.0 * max)]
    TooManySkipped {
        skipped: usize,
        total: usize,
        max: f64,
        /// The first skipped item and why.
        example: String,
    },
}

impl crate::stages::stage::Tiered for Unresolved {
    /// Too much of the dataset skipped is the data's fault; an upstream record without
    /// an output this stage reads is effectc's (the stage fails loudly rather than be
    /// keyed on fewer inputs).
    fn tier(&self) -> crate::stages::stage::Tier {
        use crate::stages::stage::Tier;
        match self {
            Unresolved::TooManySkipped { .. } => Tier::Input,
            Unresolved::Upstream(_)
            | Unresolved::MissingOutput { .. }
            | Unresolved::Skipped { .. } => Tier::Bug,
        }
    }
}

/// The items a whole-dataset node reads, and the skipped ones with the first reason.
#[derive(Default)]
struct SkipCount<'a> {
    all: std::collections::HashSet<&'a str>,
    skipped: std::collections::HashSet<&'a str>,
    example: Option<String>,
}

impl<'a> SkipCount<'a> {
    fn add(&mut self, item: &'a str, skipped: Option<&str>) {
        self.all.insert(item);
        if let Some(reason) = skipped {
            if self.skipped.insert(item) && self.example.is_none() {
                self.example = Some(format!("{item}: {reason}"));
            }
        }
    }

    fn check(self, max: f64) -> Result<(), Unresolved> {
        let (skipped, total) = (self.skipped.len(), self.all.len());
        // Over the bound, or nothing left at all (whatever the bound).
        let over = skipped as f64 > max * total as f64 + 1e-9 || skipped == total;
        if total > 0 && over {
            return Err(Unresolved::TooManySkipped {
                skipped,
                total,
                max,
                example: self.example.unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// Checks that every consumed port is one its producer declares (`Stage::outputs`).
pub fn check_wiring(nodes: &[PlanNode]) -> Result<(), String> {
    for n in nodes {
        // The consumer's end: every input is one its kind declares, wired the way it
        // declares, and every required one is wired.
        let ports = n.stage.inputs();
        for inp in &n.inputs {
            let Some(port) = ports.iter().find(|p| p.matches(&inp.name)) else {
                return Err(format!(
                    "stage {} is wired an input `{}`, which its kind `{}` does not declare (it reads {:?})",
                    n.id,
                    inp.name,
                    n.stage.kind(),
                    ports.iter().map(|p| p.pattern).collect::<Vec<_>>()
                ));
            };
            if port.all != matches!(inp.from, InputRef::StageAll { .. }) {
                return Err(format!(
                    "stage {} input `{}`: {} every output of one stage, but is wired otherwise",
                    n.id,
                    inp.name,
                    if port.all {
                        "declared as"
                    } else {
                        "not declared as"
                    }
                ));
            }
        }
        for port in ports
            .iter()
            .filter(|p| p.required && !p.pattern.contains('*'))
        {
            if !n.inputs.iter().any(|i| i.name == port.pattern) {
                return Err(format!(
                    "stage {} is not wired its required input `{}`",
                    n.id, port.pattern
                ));
            }
        }
        // The producer's end.
        for inp in &n.inputs {
            if let InputRef::Stage { node: up, output } = &inp.from {
                let producer = nodes.get(*up).ok_or_else(|| {
                    format!("stage {} reads node {up}, which the plan lacks", n.id)
                })?;
                if !producer.stage.outputs().contains(&output.as_str()) {
                    return Err(format!(
                        "stage {} reads `{output}` from {}, which declares only {:?}",
                        n.id,
                        producer.id,
                        producer.stage.outputs()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A source that could not be read while planning (a clip ffmpeg cannot decode, or no
/// ffmpeg at all): the build reports it (`source-failed`), builds the other items, and
/// fails with its tier.
#[derive(Clone, Debug)]
pub struct SourceFailure {
    /// The source's name (path relative to the project).
    pub source: String,
    pub error: String,
    pub tier: crate::stages::stage::Tier,
}

pub struct Plan {
    pub effect: String,
    /// SHA-256 over the recipe text and every base it extends.
    pub recipe_digest: Digest,
    pub nodes: Vec<PlanNode>,
    pub graph: DiGraph<(), ()>,
    /// Node indices in dependency order.
    pub order: Vec<usize>,
    /// Sources left out of the plan because they could not be read.
    pub source_failures: Vec<SourceFailure>,
    /// `sources { max-skipped }`: see [`Unresolved::TooManySkipped`].
    pub max_skipped: f64,
    /// Each node's `stage.params()`, worked out once per stage object.
    params: Vec<std::sync::Arc<Params>>,
}

/// Each node's params, worked out once per distinct stage object: the items of a stage
/// share one object, and params are the costly part of 20,000 keys.
pub fn params_per_node(nodes: &[PlanNode]) -> Vec<std::sync::Arc<Params>> {
    let mut seen: std::collections::HashMap<*const (), std::sync::Arc<Params>> =
        std::collections::HashMap::new();
    nodes
        .iter()
        .map(|n| {
            seen.entry(std::sync::Arc::as_ptr(&n.stage) as *const ())
                .or_insert_with(|| std::sync::Arc::new(n.stage.params()))
                .clone()
        })
        .collect()
}

impl Plan {
    pub fn new(recipe: &Recipe, nodes: Vec<PlanNode>) -> Plan {
        let mut h = KeyHasher::new("effectc/recipe/v1");
        for f in &recipe.files {
            h.str(&f.name).str(&f.text);
        }
        let mut plan = Plan::from_parts(recipe.name.clone(), h.finish(), nodes);
        plan.max_skipped = recipe.sources.max_skipped;
        plan
    }

    /// A plan from nodes assembled directly (tests, tools); `new` is the recipe's way.
    pub fn from_parts(effect: String, recipe_digest: Digest, nodes: Vec<PlanNode>) -> Plan {
        let mut graph = DiGraph::with_capacity(nodes.len(), nodes.len() * 2);
        for _ in &nodes {
            graph.add_node(());
        }
        for (i, n) in nodes.iter().enumerate() {
            for input in &n.inputs {
                if let InputRef::Stage { node, .. } | InputRef::StageAll { node } = input.from {
                    graph.add_edge(NodeIndex::new(node), NodeIndex::new(i), ());
                }
            }
        }
        // The planner only ever points at earlier nodes, so a cycle is a bug, not a user error.
        let order = petgraph::algo::toposort(&graph, None)
            .map(|v| v.into_iter().map(|n| n.index()).collect())
            .unwrap_or_else(|_| (0..nodes.len()).collect());
        // `lower` checks the wiring once (a diagnostic); plans made here are assembled by
        // hand (tests, `retain`) and checked in debug builds.
        debug_assert!(check_wiring(&nodes).is_ok(), "{:?}", check_wiring(&nodes));
        Plan {
            effect,
            recipe_digest,
            params: params_per_node(&nodes),
            nodes,
            graph,
            order,
            source_failures: Vec::new(),
            max_skipped: crate::recipe::model::DEFAULT_MAX_SKIPPED,
        }
    }

    /// Node `i`'s inputs as its key covers them (name → digest) and, with `blob_path`,
    /// where each one is on disk: the one resolver the scheduler, dry run, transfer and
    /// watch use. Fails on the first upstream node whose record is not known, or whose
    /// record lacks an output the node consumes (never a silent skip). An upstream record
    /// that skipped its item skips a per-item node (`Unresolved::Skipped`); a
    /// whole-dataset node reads the other items without it (the input is absent, and so
    /// is its digest from the key).
    pub fn resolve_inputs<'a>(
        &self,
        i: usize,
        record_of: impl Fn(usize) -> Option<&'a crate::cache::StageRecord>,
        blob_path: Option<&dyn Fn(&Digest) -> PathBuf>,
    ) -> Result<ResolvedInputs, Unresolved> {
        let mut r = ResolvedInputs::default();
        self.visit_inputs(i, record_of, |name, digest, file| {
            if let Some(blob_path) = blob_path {
                let path = file.map_or_else(|| blob_path(&digest), |p| p.to_path_buf());
                r.paths.insert(name.to_string(), path);
            }
            r.digests.insert(name.into_owned(), digest);
        })?;
        Ok(r)
    }

    /// Node `i`'s key from its upstream records: `key_of(i, &key_inputs(..))` without
    /// building the map, for the 20,000 keys of a no-op build.
    pub fn key_from_records<'a>(
        &self,
        i: usize,
        record_of: impl Fn(usize) -> Option<&'a crate::cache::StageRecord>,
    ) -> Result<Digest, Unresolved> {
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, Digest)> =
            Vec::with_capacity(self.nodes[i].inputs.len());
        self.visit_inputs(i, record_of, |name, digest, _| inputs.push((name, digest)))?;
        // The order and the last-one-wins of the map `key_inputs` builds.
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        inputs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        let stage = &self.nodes[i].stage;
        Ok(stage_key_sorted(
            stage.kind(),
            stage.version(),
            &self.params[i],
            inputs.iter().map(|(name, digest)| (name.as_ref(), digest)),
        ))
    }

    /// Calls `visit` with each input of node `i` (name, digest, and the path of a project
    /// file), in the node's input order; the rules of `resolve_inputs`.
    fn visit_inputs<'s, 'a>(
        &'s self,
        i: usize,
        record_of: impl Fn(usize) -> Option<&'a crate::cache::StageRecord>,
        mut visit: impl FnMut(std::borrow::Cow<'s, str>, Digest, Option<&'s std::path::Path>),
    ) -> Result<(), Unresolved> {
        use std::borrow::Cow;
        // A whole-dataset node counts the items it reads and those skipped, for the bound.
        let mut items = (self.nodes[i].item.is_none()).then(|| SkipCount::default());
        for inp in &self.nodes[i].inputs {
            match &inp.from {
                InputRef::File { path, digest } => {
                    visit(Cow::Borrowed(inp.name.as_str()), *digest, Some(path));
                }
                InputRef::Stage { node: up, output } => {
                    let rec = record_of(*up).ok_or(Unresolved::Upstream(*up))?;
                    if let (Some(count), Some(item)) = (&mut items, &self.nodes[*up].item) {
                        count.add(item, rec.skipped());
                    }
                    if let Some(reason) = rec.skipped() {
                        self.skipped_input(i, *up, reason)?;
                        continue;
                    }
                    let o = rec
                        .outputs
                        .get(output)
                        .ok_or_else(|| Unresolved::MissingOutput {
                            upstream: self.nodes[*up].id.clone(),
                            output: output.clone(),
                        })?;
                    visit(Cow::Borrowed(inp.name.as_str()), o.digest, None);
                }
                InputRef::StageAll { node: up } => {
                    let rec = record_of(*up).ok_or(Unresolved::Upstream(*up))?;
                    if let (Some(count), Some(item)) = (&mut items, &self.nodes[*up].item) {
                        count.add(item, rec.skipped());
                    }
                    if let Some(reason) = rec.skipped() {
                        self.skipped_input(i, *up, reason)?;
                        continue;
                    }
                    for (output, o) in &rec.outputs {
                        visit(Cow::Owned(format!("{}/{output}", inp.name)), o.digest, None);
                    }
                }
            }
        }
        if let Some(count) = items {
            count.check(self.max_skipped)?;
        }
        Ok(())
    }

    /// Node `i` reads from `up`, which skipped its item: a per-item node is skipped too;
    /// a whole-dataset node goes on without that input.
    fn skipped_input(&self, i: usize, up: usize, reason: &str) -> Result<(), Unresolved> {
        if self.nodes[i].item.is_some() {
            return Err(Unresolved::Skipped {
                upstream: self.nodes[up].id.clone(),
                reason: reason.to_string(),
            });
        }
        Ok(())
    }

    /// The digests node `i`'s key covers (`resolve_inputs` without paths).
    pub fn key_inputs<'a>(
        &self,
        i: usize,
        record_of: impl Fn(usize) -> Option<&'a crate::cache::StageRecord>,
    ) -> Result<std::collections::BTreeMap<String, Digest>, Unresolved> {
        self.resolve_inputs(i, record_of, None).map(|r| r.digests)
    }

    /// Node `i`'s params (worked out once per stage object).
    pub fn params(&self, i: usize) -> &Params {
        &self.params[i]
    }

    /// The key of node `i` given its inputs' digests.
    pub fn key_of(&self, i: usize, inputs: &std::collections::BTreeMap<String, Digest>) -> Digest {
        let stage = &self.nodes[i].stage;
        stage_key(stage.kind(), stage.version(), &self.params[i], inputs)
    }

    /// The plan restricted to the nodes `keep` selects; a kept node must not read from a
    /// dropped one (shards keep whole per-item chains).
    pub fn retain(self, keep: impl Fn(&PlanNode) -> bool) -> Plan {
        let mut new_index = vec![usize::MAX; self.nodes.len()];
        let mut kept = Vec::new();
        for (i, node) in self.nodes.into_iter().enumerate() {
            if keep(&node) {
                new_index[i] = kept.len();
                kept.push(node);
            }
        }
        for node in &mut kept {
            for inp in &mut node.inputs {
                if let InputRef::Stage { node: up, .. } | InputRef::StageAll { node: up } =
                    &mut inp.from
                {
                    assert!(
                        new_index[*up] != usize::MAX,
                        "retain dropped an upstream node"
                    );
                    *up = new_index[*up];
                }
            }
        }
        let mut plan = Plan::from_parts(self.effect, self.recipe_digest, kept);
        plan.source_failures = self.source_failures;
        plan.max_skipped = self.max_skipped;
        plan
    }

    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id.as_str() == id)
    }

    /// Indices of the nodes that read an output of `i`.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        self.graph
            .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing)
            .map(|n| n.index())
            .collect()
    }

    /// Graphviz text of the DAG, per-item stages folded into one box per kind.
    pub fn to_dot(&self) -> String {
        use std::collections::BTreeMap;
        let label = |n: &PlanNode| {
            if n.item.is_some() {
                format!("{} (per item)", n.stage.family())
            } else {
                n.id.to_string()
            }
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for n in &self.nodes {
            *counts.entry(label(n)).or_default() += 1;
        }
        let mut edges = std::collections::BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for input in &n.inputs {
                if let InputRef::Stage { node, .. } | InputRef::StageAll { node } = input.from {
                    edges.insert((label(&self.nodes[node]), label(&self.nodes[i])));
                }
            }
        }
        let mut out = format!(
            "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
            self.effect
        );
        for (l, c) in &counts {
            let text = if *c > 1 {
                format!("{l}\\n{c} items")
            } else {
                l.clone()
            };
            out.push_str(&format!("  \"{l}\" [label=\"{text}\"];\n"));
        }
        for (a, b) in &edges {
            out.push_str(&format!("  \"{a}\" -> \"{b}\";\n"));
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{OutputRef, StageRecord};
    use crate::stages::{Params, RunContext, RunOutput, StageError};

    /// A stage that declares one output port, `image`, and one input port, `in`.
    struct Declares;
    impl Stage for Declares {
        fn kind(&self) -> &'static str {
            "declares"
        }
        fn outputs(&self) -> &'static [&'static str] {
            &["image"]
        }
        fn inputs(&self) -> &'static [crate::stages::InputPort] {
            const IN: crate::stages::InputPort = crate::stages::InputPort::optional("in");
            &[IN]
        }
        fn version(&self) -> u32 {
            1
        }
        fn params(&self) -> Params {
            Params::new()
        }
        fn run(&self, _: &mut RunContext) -> Result<RunOutput, StageError> {
            Ok(RunOutput::default())
        }
    }

    fn node(id: &str, inputs: Vec<Input>) -> PlanNode {
        PlanNode {
            id: StageId::parse(id),
            item: None,
            stage: std::sync::Arc::new(Declares),
            inputs,
        }
    }

    fn reads(output: &str) -> Vec<Input> {
        vec![Input {
            name: "in".into(),
            from: InputRef::Stage {
                node: 0,
                output: output.into(),
            },
        }]
    }

    #[test]
    fn a_consumer_of_an_undeclared_port_is_a_planner_error() {
        assert!(check_wiring(&[node("a", vec![]), node("b", reads("image"))]).is_ok());
        let e = check_wiring(&[node("a", vec![]), node("b", reads("picture"))]).unwrap_err();
        assert!(
            e.contains("stage b reads `picture` from a") && e.contains("image"),
            "{e}"
        );
    }

    #[test]
    fn a_misspelt_input_port_is_a_planner_error_at_plan_time() {
        let mut misspelt = reads("image");
        misspelt[0].name = "inn".into();
        let e = check_wiring(&[node("a", vec![]), node("b", misspelt)]).unwrap_err();
        assert!(
            e.contains("stage b is wired an input `inn`") && e.contains("[\"in\"]"),
            "{e}"
        );
    }

    #[test]
    fn a_required_input_port_left_unwired_is_a_planner_error() {
        let n = PlanNode {
            id: StageId::parse("v"),
            item: None,
            stage: std::sync::Arc::new(crate::stages::crop::CenterCrop { size_px: 8 }),
            inputs: vec![],
        };
        let e = check_wiring(&[n]).unwrap_err();
        assert!(
            e.contains("stage v is not wired its required input `image`"),
            "{e}"
        );
    }

    #[test]
    fn an_upstream_record_without_a_consumed_output_fails_resolution() {
        let plan = Plan::from_parts(
            "t".into(),
            Digest::of_bytes(b"t"),
            vec![node("a", vec![]), node("b", reads("image"))],
        );
        let record = |outputs: &[&str]| StageRecord {
            key: Digest::of_bytes(b"a"),
            stage_id: "a".into(),
            kind: "declares".into(),
            effect: "t".into(),
            outputs: outputs
                .iter()
                .map(|o| {
                    (
                        o.to_string(),
                        OutputRef {
                            digest: Digest::of_bytes(o.as_bytes()),
                            size_bytes: 1,
                        },
                    )
                })
                .collect(),
            metrics: Default::default(),
            params: Default::default(),
            inputs: Default::default(),
            duration_ms: 0,
            duration_us: 0,
            finished_at_unix: 0,
            log: String::new(),
        };
        let good = record(&["image"]);
        let inputs = plan.key_inputs(1, |_| Some(&good)).unwrap();
        assert_eq!(
            plan.key_from_records(1, |_| Some(&good)),
            Ok(plan.key_of(1, &inputs))
        );
        assert_eq!(inputs["in"], Digest::of_bytes(b"image"));
        assert_eq!(plan.key_inputs(1, |_| None), Err(Unresolved::Upstream(0)));
        let bad = record(&["other"]);
        assert_eq!(
            plan.key_inputs(1, |_| Some(&bad)),
            Err(Unresolved::MissingOutput {
                upstream: StageId::parse("a"),
                output: "image".into()
            }),
            "never keyed on fewer inputs"
        );
    }

    #[test]
    fn the_streamed_key_is_the_key_of_the_input_map() {
        // A file, one output of a stage, and every output of a stage (names made up as
        // `<input>/<output>`), given out of name order.
        let file = Input {
            name: "b-file".into(),
            from: InputRef::File {
                path: "/x.png".into(),
                digest: Digest::of_bytes(b"file"),
            },
        };
        let mut inputs = reads("image");
        inputs.insert(0, file);
        inputs.push(Input {
            name: "all".into(),
            from: InputRef::StageAll { node: 0 },
        });
        let plan = Plan::from_parts(
            "t".into(),
            Digest::of_bytes(b"t"),
            vec![node("a", vec![]), node("b", inputs)],
        );
        let mut rec = StageRecord::skipped_by_upstream("a", "declares", "t", "");
        rec.metrics.clear();
        for name in ["image", "mask", "a"] {
            rec.outputs.insert(
                name.into(),
                OutputRef {
                    digest: Digest::of_bytes(name.as_bytes()),
                    size_bytes: 1,
                },
            );
        }
        let map = plan.key_inputs(1, |_| Some(&rec)).unwrap();
        assert_eq!(map.len(), 5, "{map:?}");
        assert_eq!(
            plan.key_from_records(1, |_| Some(&rec)),
            Ok(plan.key_of(1, &map))
        );
    }
}
