//! The planner: lowers a checked recipe into a DAG of stages (petgraph), one node per
//! stage and per source item for per-item stages.

pub mod lower;
pub mod stage;

pub use stage::{
    stage_key, DeviceSpec, Input, InputRef, Params, Progress, Resource, RunContext, RunOutput,
    Stage, StageError,
};

use crate::digest::{Digest, KeyHasher};
use crate::recipe::Recipe;
use petgraph::graph::{DiGraph, NodeIndex};

pub struct PlanNode {
    /// Unique and stable across builds: `crop/synthetic-0003`, `train-teacher`.
    pub id: String,
    /// The source item of a per-item stage.
    pub item: Option<String>,
    pub stage: Box<dyn Stage>,
    pub inputs: Vec<Input>,
}

pub struct Plan {
    pub effect: String,
    /// SHA-256 over the recipe text and every base it extends.
    pub recipe_digest: Digest,
    pub nodes: Vec<PlanNode>,
    pub graph: DiGraph<(), ()>,
    /// Node indices in dependency order.
    pub order: Vec<usize>,
}

impl Plan {
    pub fn new(recipe: &Recipe, nodes: Vec<PlanNode>) -> Plan {
        let mut h = KeyHasher::new("effectc/recipe/v1");
        for f in &recipe.files {
            h.str(&f.name).str(&f.text);
        }
        Plan::from_parts(recipe.name.clone(), h.finish(), nodes)
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
        Plan {
            effect,
            recipe_digest,
            nodes,
            graph,
            order,
        }
    }

    /// The input digests node `i`'s key covers, read from its upstream records; Err with
    /// the first upstream node whose record is not known.
    pub fn key_inputs<'a>(
        &self,
        i: usize,
        record_of: impl Fn(usize) -> Option<&'a crate::cache::StageRecord>,
    ) -> Result<std::collections::BTreeMap<String, Digest>, usize> {
        let mut inputs = std::collections::BTreeMap::new();
        for inp in &self.nodes[i].inputs {
            match &inp.from {
                InputRef::File { digest, .. } => {
                    inputs.insert(inp.name.clone(), *digest);
                }
                InputRef::Stage { node: up, output } => {
                    let r = record_of(*up).ok_or(*up)?;
                    if let Some(o) = r.outputs.get(output) {
                        inputs.insert(inp.name.clone(), o.digest);
                    }
                }
                InputRef::StageAll { node: up } => {
                    let r = record_of(*up).ok_or(*up)?;
                    for (output, o) in &r.outputs {
                        inputs.insert(format!("{}/{output}", inp.name), o.digest);
                    }
                }
            }
        }
        Ok(inputs)
    }

    /// The key of node `i` given its inputs' digests.
    pub fn key_of(&self, i: usize, inputs: &std::collections::BTreeMap<String, Digest>) -> Digest {
        let stage = &self.nodes[i].stage;
        stage_key(stage.kind(), stage.version(), &stage.params(), inputs)
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
        Plan::from_parts(self.effect, self.recipe_digest, kept)
    }

    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
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
                format!("{} (per item)", n.stage.kind())
            } else {
                n.id.clone()
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
