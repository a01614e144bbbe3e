//! A KDL tree that remembers, for every node and value, the file and span it came
//! from, and the `extends` merge over such trees.
//!
//! Merge rule (documented in docs/recipes.md): a child recipe's node replaces the base's
//! node of the same name; when both are single nodes with the same arguments (or the
//! child gives none), they merge instead: properties are overridden one by one and
//! children merge by the same rule. Repeated nodes (`target`, `controlnet`, `images`...)
//! are lists: the child's list replaces the base's.

use super::diagnostic::{Loc, SourceFile};
use kdl::{KdlDocument, KdlNode, KdlValue};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Val {
    pub value: KdlValue,
    pub loc: Loc,
}

impl Val {
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            KdlValue::String(_) => "a string",
            KdlValue::Integer(_) => "an integer",
            KdlValue::Float(_) => "a number",
            KdlValue::Bool(_) => "a boolean",
            KdlValue::Null => "null",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Prop {
    pub name: String,
    pub name_loc: Loc,
    pub val: Val,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub name_loc: Loc,
    /// The whole node (for "missing X in this node" errors).
    pub loc: Loc,
    pub args: Vec<Val>,
    pub props: Vec<Prop>,
    pub children: Vec<Node>,
}

impl Node {
    pub fn from_kdl(node: &KdlNode, file: &Arc<SourceFile>) -> Node {
        let mut args = Vec::new();
        let mut props: Vec<Prop> = Vec::new();
        for entry in node.entries() {
            let val = Val {
                value: entry.value().clone(),
                loc: Loc::new(file, entry.span()),
            };
            match entry.name() {
                None => args.push(val),
                Some(name) => {
                    // KDL: a later property with the same name wins.
                    props.retain(|p| p.name != name.value());
                    props.push(Prop {
                        name: name.value().to_string(),
                        name_loc: Loc::new(file, name.span()),
                        val,
                    });
                }
            }
        }
        Node {
            name: node.name().value().to_string(),
            name_loc: Loc::new(file, node.name().span()),
            loc: Loc::new(file, node.span()),
            args,
            props,
            children: node
                .children()
                .map(|d| nodes_from_kdl(d, file))
                .unwrap_or_default(),
        }
    }

    pub fn prop(&self, name: &str) -> Option<&Val> {
        self.props.iter().find(|p| p.name == name).map(|p| &p.val)
    }

    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }
}

pub fn nodes_from_kdl(doc: &KdlDocument, file: &Arc<SourceFile>) -> Vec<Node> {
    doc.nodes()
        .iter()
        .map(|n| Node::from_kdl(n, file))
        .collect()
}

fn same_args(a: &[Val], b: &[Val]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.value == y.value)
}

/// Merges a child's nodes over a base's, by the rule in the module comment.
pub fn merge(base: &[Node], child: &[Node]) -> Vec<Node> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for n in base.iter().chain(child) {
        if !names.contains(&n.name.as_str()) {
            names.push(&n.name);
        }
    }
    for name in names {
        let b: Vec<&Node> = base.iter().filter(|n| n.name == name).collect();
        let c: Vec<&Node> = child.iter().filter(|n| n.name == name).collect();
        match (b.as_slice(), c.as_slice()) {
            (_, []) => out.extend(b.into_iter().cloned()),
            ([], _) => out.extend(c.into_iter().cloned()),
            ([bn], [cn]) if cn.args.is_empty() || same_args(&bn.args, &cn.args) => {
                out.push(merge_node(bn, cn))
            }
            _ => out.extend(c.into_iter().cloned()),
        }
    }
    out
}

fn merge_node(base: &Node, child: &Node) -> Node {
    let mut props = base.props.clone();
    for p in &child.props {
        props.retain(|q| q.name != p.name);
        props.push(p.clone());
    }
    Node {
        name: child.name.clone(),
        name_loc: child.name_loc.clone(),
        loc: child.loc.clone(),
        args: if child.args.is_empty() {
            base.args.clone()
        } else {
            child.args.clone()
        },
        props,
        children: merge(&base.children, &child.children),
    }
}
