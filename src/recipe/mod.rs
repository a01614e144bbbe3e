//! Recipes: parse (KDL 2.0) → resolve `extends` → check into a typed `Recipe`.
//! Every problem is a `RecipeDiagnostic` with the span in the file it came from.

pub mod check;
pub mod decode;
pub mod diagnostic;
pub mod limits;
pub mod model;
pub mod stdlib;
pub mod tree;

pub use diagnostic::{Diagnostics, RecipeDiagnostic};
pub use model::*;

use crate::project::Project;
use check::Checker;
use decode::Decoder;
use diagnostic::SourceFile;
use std::sync::Arc;
use stdlib::Registry;
use tree::Node;

/// A loaded recipe set: the registries every recipe resolves names against.
pub struct Loader<'p> {
    pub project: &'p Project,
    pub registry: Registry,
    registry_diags: Diagnostics,
}

impl<'p> Loader<'p> {
    pub fn new(project: &'p Project) -> Loader<'p> {
        let mut registry_diags = Diagnostics::default();
        let registry = Registry::load(project, &mut registry_diags);
        Loader {
            project,
            registry,
            registry_diags,
        }
    }

    /// Loads and checks `effects/<name>.kdl` and everything it extends.
    pub fn load(&self, name: &str) -> Result<Recipe, Diagnostics> {
        let mut diags = Diagnostics::default();
        diags.0.extend(self.registry_diags.0.iter().cloned());
        let path = self.project.effect_path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let known = self.project.effect_names().unwrap_or_default();
                let mut d = RecipeDiagnostic::nowhere(
                    "unknown-effect",
                    format!("cannot read effect `{name}` from {}: {e}", path.display()),
                );
                d = d.suggest(name, known.iter().map(|s| s.as_str()));
                if d.help.is_none() && !known.is_empty() {
                    d = d.help(format!("effects here: {}", known.join(", ")));
                }
                diags.push(d);
                return Err(diags);
            }
        };
        self.check_text(name, text, diags)
    }

    /// Checks `text` as the recipe `effects/<name>.kdl` (the file need not exist): what
    /// `load` does once the file is read. `effectc check` and the fuzz test come here.
    pub fn load_text(&self, name: &str, text: String) -> Result<Recipe, Diagnostics> {
        let mut diags = Diagnostics::default();
        diags.0.extend(self.registry_diags.0.iter().cloned());
        self.check_text(name, text, diags)
    }

    fn check_text(
        &self,
        name: &str,
        text: String,
        mut diags: Diagnostics,
    ) -> Result<Recipe, Diagnostics> {
        let file = SourceFile::new(format!("effects/{name}.kdl"), text);
        let recipe = self.load_file(name, file, &mut diags);
        match recipe {
            Some(r) if diags.is_empty() => Ok(r),
            _ => Err(diags),
        }
    }

    fn load_file(
        &self,
        name: &str,
        file: Arc<SourceFile>,
        diags: &mut Diagnostics,
    ) -> Option<Recipe> {
        let nodes = stdlib::parse_file(&file, diags)?;
        let root = effect_node(&nodes, &file, Some(name), diags)?;
        // Walk the `extends` chain, child first, refusing cycles.
        let mut chain: Vec<(Arc<SourceFile>, Node)> = vec![(file.clone(), root.clone())];
        let mut seen = vec![name.to_string()];
        loop {
            let (cur_file, cur) = chain.last()?.clone();
            let mut d = Decoder { diags: &mut *diags };
            let Some(ext) = d.single(&cur.children, "extends") else {
                break;
            };
            d.known_props(ext, &[]);
            d.max_args(ext, 1);
            let Some(base_name) = d.arg_string(ext, "the name of a base recipe") else {
                return None;
            };
            if !d.plain_name(&ext.args[0], &base_name, "a base recipe") {
                return None;
            }
            let at = ext
                .args
                .first()
                .map(|v| v.loc.clone())
                .unwrap_or(ext.name_loc.clone());
            if seen.contains(&base_name) {
                let cycle = seen
                    .iter()
                    .chain(std::iter::once(&base_name))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" → ");
                diags.push(RecipeDiagnostic::at(&at, "extends-cycle", format!("`extends` cycle: {cycle}")).label("extends back into the chain").help("a base recipe cannot extend, directly or not, the recipe that extends it"));
                return None;
            }
            let base_file = match stdlib::stdlib_file(self.project, &format!("{base_name}.kdl")) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    let known = stdlib::base_names(self.project);
                    let d = RecipeDiagnostic::at(
                        &at,
                        "unknown-base",
                        format!("unknown base recipe `{base_name}`"),
                    )
                    .label("no stdlib/<name>.kdl")
                    .suggest(&base_name, known.iter().map(|s| s.as_str()));
                    let d = if d.help.is_none() {
                        d.help(format!("base recipes: {}", known.join(", ")))
                    } else {
                        d
                    };
                    diags.push(d);
                    return None;
                }
                Err(e) => {
                    diags.push(RecipeDiagnostic::at(
                        &at,
                        "io",
                        format!("cannot read stdlib/{base_name}.kdl: {e}"),
                    ));
                    return None;
                }
            };
            let _ = cur_file;
            let base_nodes = stdlib::parse_file(&base_file, diags)?;
            let base_root = effect_node(&base_nodes, &base_file, Some(&base_name), diags)?;
            seen.push(base_name);
            chain.push((base_file, base_root));
        }
        // Merge from the deepest base up to the effect itself.
        let mut merged: Vec<Node> = Vec::new();
        for (_, node) in chain.iter().rev() {
            let own: Vec<Node> = node
                .children
                .iter()
                .filter(|c| c.name != "extends")
                .cloned()
                .collect();
            merged = tree::merge(&merged, &own);
        }
        let mut checker = Checker {
            d: Decoder { diags },
            project: self.project,
            registry: &self.registry,
        };
        let mut recipe = checker.effect(name, &merged, &root)?;
        recipe.files = chain.into_iter().map(|(f, _)| f).collect();
        Some(recipe)
    }
}

/// The single `effect "name" { ... }` node of a recipe file.
fn effect_node(
    nodes: &[Node],
    file: &Arc<SourceFile>,
    expected: Option<&str>,
    diags: &mut Diagnostics,
) -> Option<Node> {
    let mut d = Decoder { diags };
    let top = Node {
        name: String::new(),
        name_loc: diagnostic::Loc::new(file, (0, 0).into()),
        loc: diagnostic::Loc::new(file, (0, 0).into()),
        args: vec![],
        props: vec![],
        children: nodes.to_vec(),
    };
    d.known_children(&top, &["effect"]);
    let Some(effect) = d.single(nodes, "effect") else {
        d.error(RecipeDiagnostic::at(
            &diagnostic::Loc::new(file, (0, file.text.len().min(1)).into()),
            "missing-node",
            format!("{} has no `effect \"name\" {{ ... }}` node", file.name),
        ));
        return None;
    };
    d.known_props(effect, &[]);
    d.max_args(effect, 1);
    let name = d.arg_string(effect, "the effect's name")?;
    if let Some(expected) = expected {
        if name != expected {
            let at = effect.args[0].loc.clone();
            d.error(
                RecipeDiagnostic::at(
                    &at,
                    "name-mismatch",
                    format!("effect is named `{name}` but its file is `{expected}.kdl`"),
                )
                .label("must match the file name")
                .help(format!("rename it `effect \"{expected}\"`")),
            );
            return None;
        }
    }
    Some(effect.clone())
}
