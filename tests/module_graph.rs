//! The top-level modules of `src/` depend on each other in one direction only (the
//! renovation of the middle, issue 12): a `use crate::x` that closes a cycle fails here,
//! naming the cycle and the files that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its files name as `crate::NAME`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut tops = BTreeSet::new();
    for e in std::fs::read_dir(src).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        match name.strip_suffix(".rs") {
            Some(m) if m != "lib" && m != "main" => {
                tops.insert(m.to_string());
            }
            None if name != "bin" => {
                tops.insert(name);
            }
            _ => {}
        }
    }
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for e in walk(src) {
        let rel = e.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if !tops.contains(&top) {
            continue;
        }
        let text: String = std::fs::read_to_string(&e)
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            // `crate::x::...` or `crate::{x, y::z}`
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|p| p.trim().split("::").next().unwrap_or("").to_string())
                    .collect()
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                vec![rest[..end].to_string()]
            };
            for n in names {
                if tops.contains(&n) && n != top {
                    graph
                        .entry(top.clone())
                        .or_default()
                        .entry(n)
                        .or_default()
                        .insert(rel.display().to_string());
                }
            }
        }
    }
    graph
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.contains_key("stages") && graph["plan"].contains_key("stages"));
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            let cycle: Vec<String> = path[at..].iter().cloned().chain([m.to_string()]).collect();
            let files: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {}: {:?}", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!("import cycle {}:\n{}", cycle.join(" -> "), files.join("\n"));
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flat_map(|d| d.keys()) {
            visit(next, graph, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
