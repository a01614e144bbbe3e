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
        let mut h = KeyHasher::new("effectc/recipe/v1");
        for f in &recipe.files {
            h.str(&f.name).str(&f.text);
        }
        Plan {
            effect: recipe.name.clone(),
            recipe_digest: h.finish(),
            nodes,
            graph,
            order,
        }
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
