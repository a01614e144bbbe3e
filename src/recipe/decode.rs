//! Small typed readers over `tree::Node` that record a diagnostic (with the span in the
//! right file) instead of failing, so one `check` reports every problem at once.

use super::diagnostic::{Diagnostics, RecipeDiagnostic};
use super::tree::{Node, Val};
use kdl::KdlValue;

pub struct Decoder<'a> {
    pub diags: &'a mut Diagnostics,
}

impl<'a> Decoder<'a> {
    pub fn error(&mut self, d: RecipeDiagnostic) {
        self.diags.push(d);
    }

    /// Reports children whose name is not in `known`, with a "did you mean".
    pub fn known_children(&mut self, node: &Node, known: &[&str]) {
        for child in &node.children {
            if !known.contains(&child.name.as_str()) {
                let where_ = if node.name.is_empty() {
                    String::new()
                } else {
                    format!(" in `{}`", node.name)
                };
                let d = RecipeDiagnostic::at(
                    &child.name_loc,
                    "unknown-node",
                    format!("unknown node `{}`{where_}", child.name),
                )
                .label("not a known node")
                .suggest(&child.name, known.iter().copied());
                let d = if d.help.is_none() {
                    d.help(format!("known here: {}", known.join(", ")))
                } else {
                    d
                };
                self.error(d);
            }
        }
    }

    pub fn known_props(&mut self, node: &Node, known: &[&str]) {
        for p in &node.props {
            if !known.contains(&p.name.as_str()) {
                let d = RecipeDiagnostic::at(
                    &p.name_loc,
                    "unknown-property",
                    format!("unknown property `{}` on `{}`", p.name, node.name),
                )
                .label("not a known property")
                .suggest(&p.name, known.iter().copied());
                let d = if d.help.is_none() {
                    if known.is_empty() {
                        d.help(format!("`{}` takes no properties", node.name))
                    } else {
                        d.help(format!("known properties: {}", known.join(", ")))
                    }
                } else {
                    d
                };
                self.error(d);
            }
        }
    }

    /// Reports more arguments than `max`.
    pub fn max_args(&mut self, node: &Node, max: usize) {
        if node.args.len() > max {
            let extra = &node.args[max];
            self.error(
                RecipeDiagnostic::at(
                    &extra.loc,
                    "extra-argument",
                    format!(
                        "`{}` takes {max} argument(s), got {}",
                        node.name,
                        node.args.len()
                    ),
                )
                .label("unexpected"),
            );
        }
    }

    /// A node that must appear at most once in a block.
    pub fn single<'n>(&mut self, parent: &'n [Node], name: &str) -> Option<&'n Node> {
        let mut found = parent.iter().filter(|n| n.name == name);
        let first = found.next();
        for dup in found {
            self.error(
                RecipeDiagnostic::at(
                    &dup.name_loc,
                    "duplicate-node",
                    format!("`{name}` is given twice"),
                )
                .label("second one here")
                .help(format!("keep one `{name}` node")),
            );
        }
        first
    }

    pub fn string(&mut self, val: &Val, what: &str) -> Option<String> {
        match &val.value {
            KdlValue::String(s) => Some(s.clone()),
            _ => {
                self.type_error(val, what, "a string");
                None
            }
        }
    }

    pub fn int(&mut self, val: &Val, what: &str, min: i128, max: i128) -> Option<i128> {
        match &val.value {
            KdlValue::Integer(i) if *i >= min && *i <= max => Some(*i),
            KdlValue::Integer(i) => {
                self.error(
                    RecipeDiagnostic::at(
                        &val.loc,
                        "out-of-range",
                        format!("{what} must be between {min} and {max}, got {i}"),
                    )
                    .label("out of range"),
                );
                None
            }
            _ => {
                self.type_error(val, what, "an integer");
                None
            }
        }
    }

    pub fn float(&mut self, val: &Val, what: &str, min: f64, max: f64) -> Option<f64> {
        let v = match &val.value {
            KdlValue::Float(f) => *f,
            KdlValue::Integer(i) => *i as f64,
            _ => {
                self.type_error(val, what, "a number");
                return None;
            }
        };
        if !(v >= min && v <= max) {
            self.error(
                RecipeDiagnostic::at(
                    &val.loc,
                    "out-of-range",
                    format!("{what} must be between {min} and {max}, got {v}"),
                )
                .label("out of range"),
            );
            return None;
        }
        Some(v)
    }

    fn type_error(&mut self, val: &Val, what: &str, expected: &str) {
        self.error(
            RecipeDiagnostic::at(
                &val.loc,
                "wrong-type",
                format!("{what} must be {expected}, got {}", val.type_name()),
            )
            .label(format!("expected {expected}")),
        );
    }

    /// The first argument of `node` as a string, or a diagnostic naming what is missing.
    pub fn arg_string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.args.first() {
            Some(v) => self.string(v, what),
            None => {
                self.error(
                    RecipeDiagnostic::at(
                        &node.name_loc,
                        "missing-argument",
                        format!("`{}` needs {what}", node.name),
                    )
                    .label("argument missing"),
                );
                None
            }
        }
    }

    /// A scalar setting written either as `name value` child node or `name=value` property.
    pub fn setting<'n>(&mut self, node: &'n Node, name: &str) -> Option<&'n Val> {
        if let Some(p) = node.prop(name) {
            return Some(p);
        }
        let child = self.single(&node.children, name)?;
        self.max_args(child, 1);
        self.known_props(child, &[]);
        match child.args.first() {
            Some(v) => Some(v),
            None => {
                self.error(
                    RecipeDiagnostic::at(
                        &child.name_loc,
                        "missing-argument",
                        format!("`{name}` needs a value"),
                    )
                    .label("value missing"),
                );
                None
            }
        }
    }

    pub fn setting_u32(
        &mut self,
        node: &Node,
        name: &str,
        default: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        match self.setting(node, name) {
            Some(v) => self
                .int(v, &format!("`{name}`"), min as i128, max as i128)
                .map(|i| i as u32)
                .unwrap_or(default),
            None => default,
        }
    }

    pub fn setting_u64(&mut self, node: &Node, name: &str, default: u64) -> u64 {
        match self.setting(node, name) {
            Some(v) => self
                .int(v, &format!("`{name}`"), 0, u64::MAX as i128)
                .map(|i| i as u64)
                .unwrap_or(default),
            None => default,
        }
    }

    pub fn setting_f64(
        &mut self,
        node: &Node,
        name: &str,
        default: f64,
        min: f64,
        max: f64,
    ) -> f64 {
        match self.setting(node, name) {
            Some(v) => self
                .float(v, &format!("`{name}`"), min, max)
                .unwrap_or(default),
            None => default,
        }
    }

    pub fn setting_bool(&mut self, node: &Node, name: &str, default: bool) -> bool {
        match self.setting(node, name) {
            Some(v) => match &v.value {
                KdlValue::Bool(b) => *b,
                _ => {
                    self.type_error(v, &format!("`{name}`"), "#true or #false");
                    default
                }
            },
            None => default,
        }
    }

    /// The one path rule (see `limits::path_escape`): `path`, written at `val`, must
    /// stay inside `folder` ("the project", "the models directory"). False after
    /// reporting it.
    pub fn path_inside(&mut self, val: &Val, path: &str, folder: &str) -> bool {
        let Some(why) = super::limits::path_escape(path) else {
            return true;
        };
        self.error(
            RecipeDiagnostic::at(
                &val.loc,
                "bad-path",
                format!("`{path}` {why}: paths are relative to {folder} and stay inside it"),
            )
            .label(format!("outside {folder}"))
            .help("a symlink inside the folder can point elsewhere, e.g. at a big dataset disk"),
        );
        false
    }

    /// A name that becomes a file name (`extends "BASE"`, `target "PROFILE"`).
    pub fn plain_name(&mut self, val: &Val, name: &str, what: &str) -> bool {
        let Some(why) = super::limits::name_escape(name) else {
            return true;
        };
        self.error(
            RecipeDiagnostic::at(&val.loc, "bad-path", format!("{what} `{name}` {why}"))
                .label("must be a plain name")
                .help("the name becomes a file name: no folders, no `..`"),
        );
        false
    }

    /// Reports every `{name}` in the string at `val` that is not in `known`, with a
    /// "did you mean". `only_typos`: leave alone names far from every known one (shell
    /// arguments use braces of their own).
    pub fn placeholders(
        &mut self,
        val: &Val,
        text: &str,
        known: &[&str],
        only_typos: bool,
        what: &str,
    ) {
        for (_, name) in super::limits::placeholders(text) {
            if known.contains(&name) {
                continue;
            }
            let close = super::diagnostic::closest(name, known.iter().copied());
            if only_typos && close.is_none() {
                continue;
            }
            // Point at the placeholder itself when it is written as is in the file.
            let written = format!("{{{name}}}");
            let (start, len) = (val.loc.span.offset(), val.loc.span.len());
            let loc = val
                .loc
                .file
                .text
                .get(start..start + len)
                .and_then(|src| src.find(&written))
                .map(|at| {
                    super::diagnostic::Loc::new(&val.loc.file, (start + at, written.len()).into())
                })
                .unwrap_or_else(|| val.loc.clone());
            let d = RecipeDiagnostic::at(
                &loc,
                "unknown-placeholder",
                format!("unknown placeholder `{{{name}}}` in {what}"),
            )
            .label("not filled in: it would reach the teacher as text");
            let d = match close {
                Some(best) => d.help(format!("did you mean `{{{best}}}`?")),
                None if known.is_empty() => d.help(format!("{what} takes no placeholders")),
                None => d.help(format!(
                    "{what} takes {}",
                    known
                        .iter()
                        .map(|k| format!("`{{{k}}}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            };
            self.error(d);
        }
    }

    /// A setting that must be one of `allowed` (with a did-you-mean); None when absent
    /// or wrong (the error is reported).
    pub fn choice(&mut self, node: &Node, name: &str, allowed: &[&str]) -> Option<String> {
        let v = self.setting(node, name)?;
        let s = self.string(v, &format!("`{name}`"))?;
        if allowed.contains(&s.as_str()) {
            return Some(s);
        }
        let d = RecipeDiagnostic::at(&v.loc, "unknown-value", format!("unknown {name} `{s}`"))
            .label(format!("not a known {name}"))
            .suggest(&s, allowed.iter().copied());
        let d = if d.help.is_none() {
            d.help(format!("one of: {}", allowed.join(", ")))
        } else {
            d
        };
        self.error(d);
        None
    }

    pub fn setting_string(&mut self, node: &Node, name: &str, default: &str) -> String {
        match self.setting(node, name) {
            Some(v) => self
                .string(v, &format!("`{name}`"))
                .unwrap_or_else(|| default.to_string()),
            None => default.to_string(),
        }
    }
}
