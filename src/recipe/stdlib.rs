//! The standard library of recipe parts. It ships inside the binary so a team's own
//! repository of recipes needs no copy; a project's `stdlib/<file>.kdl` replaces a base
//! recipe of the same name, and adds to or overrides the registries entry by entry.

use super::decode::Decoder;
use super::diagnostic::{Diagnostics, Loc, RecipeDiagnostic, SourceFile};
use super::model::{Precision, TargetFormat, TargetIo, TargetProfile};
use super::tree::{nodes_from_kdl, Node};
use crate::project::Project;
use std::collections::BTreeMap;
use std::sync::Arc;

/// (file name, text) of every stdlib and target file compiled into the binary.
const EMBEDDED_STDLIB: &[(&str, &str)] = &[
    ("models.kdl", include_str!("../../stdlib/models.kdl")),
    (
        "controlnets.kdl",
        include_str!("../../stdlib/controlnets.kdl"),
    ),
    (
        "attributes.kdl",
        include_str!("../../stdlib/attributes.kdl"),
    ),
    ("face-mask.kdl", include_str!("../../stdlib/face-mask.kdl")),
    ("portrait.kdl", include_str!("../../stdlib/portrait.kdl")),
];
const EMBEDDED_TARGETS: &[(&str, &str)] = &[
    (
        "ios-coreml.kdl",
        include_str!("../../targets/ios-coreml.kdl"),
    ),
    (
        "android-nnapi.kdl",
        include_str!("../../targets/android-nnapi.kdl"),
    ),
    ("onnx.kdl", include_str!("../../targets/onnx.kdl")),
];
/// The weight layouts effectc reads (see stdlib/models.kdl).
pub const MODEL_ARCHS: &[&str] = &[
    "sd15",
    "sd15-diffusers",
    "sd15-ip2p",
    "sd15-ip2p-diffusers",
    "controlnet-sd15",
    "lora-sd15",
    "clip-tokenizer",
    "clip-vit-l14",
    "clip",
    "mediapipe-face-detector",
    "mediapipe-face-landmark",
    "mediapipe-pose-detector",
    "mediapipe-pose-landmark",
];

const REGISTRY_FILES: &[&str] = &["models.kdl", "controlnets.kdl", "attributes.kdl"];

/// Parses KDL text into a located tree, turning syntax errors into diagnostics.
pub fn parse_file(file: &Arc<SourceFile>, diags: &mut Diagnostics) -> Option<Vec<Node>> {
    use super::limits;
    if file.text.len() > limits::MAX_FILE_BYTES {
        diags.push(
            RecipeDiagnostic::at(
                &Loc::new(file, (0, 0).into()),
                "too-large",
                format!(
                    "{} is {} bytes; recipe files are at most {} KiB (a recipe is a few KiB)",
                    file.name,
                    file.text.len(),
                    limits::MAX_FILE_BYTES / 1024
                ),
            )
            .label("this file"),
        );
        return None;
    }
    // The parser recurses per nesting level: refuse what would overflow its stack.
    if let Err(e) = limits::scan(&file.text) {
        let mut d =
            RecipeDiagnostic::at(&Loc::new(file, (e.offset, e.len).into()), e.code, e.message)
                .label(e.label);
        if let Some(h) = e.help {
            d = d.help(h);
        }
        diags.push(d);
        return None;
    }
    // Its error recovery also recurses, once per bad token (`))))...`), in ways no
    // pre-scan can list: parse on a thread whose stack grows with the text, so a
    // hostile file gets diagnostics, never a stack overflow.
    let stack = limits::PARSE_STACK_BASE + limits::PARSE_STACK_PER_BYTE * file.text.len();
    let parsed = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("kdl-parse".into())
            .stack_size(stack)
            .spawn_scoped(s, || parse_on_this_thread(file))
            .ok()
            .and_then(|h| h.join().ok())
    });
    let parsed = parsed.unwrap_or_else(|| {
        Err(vec![RecipeDiagnostic::at(
            &Loc::new(file, (0, 0).into()),
            "syntax",
            "the KDL parser failed on this file",
        )])
    });
    match parsed {
        Ok(nodes) => Some(nodes),
        Err(found) => {
            let total = found.len();
            diags
                .0
                .extend(found.into_iter().take(limits::MAX_SYNTAX_ERRORS));
            if total > limits::MAX_SYNTAX_ERRORS {
                diags.push(RecipeDiagnostic::nowhere(
                    "syntax",
                    format!(
                        "{} more KDL syntax errors in {} not shown",
                        total - limits::MAX_SYNTAX_ERRORS,
                        file.name
                    ),
                ));
            }
            None
        }
    }
}

fn parse_on_this_thread(file: &Arc<SourceFile>) -> Result<Vec<Node>, Vec<RecipeDiagnostic>> {
    match file.text.parse::<kdl::KdlDocument>() {
        Ok(doc) => {
            let nodes = nodes_from_kdl(&doc, file);
            // The pre-scan can be fooled by text the parser reads differently: measure
            // the tree too (deep trees are also dropped here, on the big stack).
            match too_deep(&nodes, 1) {
                Some(loc) => Err(vec![RecipeDiagnostic::at(
                    &loc,
                    "too-deep",
                    format!(
                        "nodes nest deeper than {} levels (a recipe needs 3 or 4)",
                        super::limits::MAX_DEPTH
                    ),
                )
                .label("one level too deep")]),
                None => Ok(nodes),
            }
        }
        Err(err) => {
            let mut out = Vec::new();
            for d in &err.diagnostics {
                let message = d.message.clone().unwrap_or_else(|| "invalid KDL".into());
                let mut diag = RecipeDiagnostic::at(
                    &Loc::new(file, d.span),
                    "syntax",
                    format!("KDL syntax error: {message}"),
                )
                .label(d.label.clone().unwrap_or_else(|| "here".into()));
                if let Some(h) = &d.help {
                    diag = diag.help(h.clone());
                }
                out.push(diag);
            }
            if out.is_empty() {
                out.push(RecipeDiagnostic::at(
                    &Loc::new(file, (0, 0).into()),
                    "syntax",
                    "KDL syntax error",
                ));
            }
            Err(out)
        }
    }
}

/// The name of the first node deeper than `MAX_DEPTH` levels, if any.
fn too_deep(nodes: &[Node], depth: usize) -> Option<Loc> {
    for n in nodes {
        if depth > super::limits::MAX_DEPTH {
            return Some(n.name_loc.clone());
        }
        if let Some(loc) = too_deep(&n.children, depth + 1) {
            return Some(loc);
        }
    }
    None
}

/// Finds a stdlib file: the project's `stdlib/` first, then the built-in copy.
pub fn stdlib_file(
    project: &Project,
    name: &str,
) -> Result<Option<Arc<SourceFile>>, std::io::Error> {
    lookup(project, "stdlib", EMBEDDED_STDLIB, name)
}

pub fn target_file(
    project: &Project,
    name: &str,
) -> Result<Option<Arc<SourceFile>>, std::io::Error> {
    lookup(project, "targets", EMBEDDED_TARGETS, name)
}

fn lookup(
    project: &Project,
    dir: &str,
    embedded: &[(&str, &str)],
    name: &str,
) -> Result<Option<Arc<SourceFile>>, std::io::Error> {
    let local = project.root.join(dir).join(name);
    if local.is_file() {
        let text = std::fs::read_to_string(&local)?;
        return Ok(Some(SourceFile::new(format!("{dir}/{name}"), text)));
    }
    Ok(embedded
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| SourceFile::new(format!("<builtin>/{dir}/{n}"), *text)))
}

/// Names of base recipes available to `extends` (built-in and the project's).
pub fn base_names(project: &Project) -> Vec<String> {
    let mut names: Vec<String> = EMBEDDED_STDLIB
        .iter()
        .map(|(n, _)| n.trim_end_matches(".kdl").to_string())
        .filter(|n| !REGISTRY_FILES.contains(&format!("{n}.kdl").as_str()))
        .collect();
    if let Ok(entries) = std::fs::read_dir(project.root.join("stdlib")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".kdl") {
                if !REGISTRY_FILES.contains(&name.as_str()) && !names.iter().any(|n| n == stem) {
                    names.push(stem.to_string());
                }
            }
        }
    }
    names.sort();
    names
}

pub fn target_names(project: &Project) -> Vec<String> {
    let mut names: Vec<String> = EMBEDDED_TARGETS
        .iter()
        .map(|(n, _)| n.trim_end_matches(".kdl").to_string())
        .collect();
    if let Ok(entries) = std::fs::read_dir(project.root.join("targets")) {
        for e in entries.flatten() {
            if let Some(stem) = e.file_name().to_string_lossy().strip_suffix(".kdl") {
                if !names.iter().any(|n| n == stem) {
                    names.push(stem.to_string());
                }
            }
        }
    }
    names.sort();
    names
}

#[derive(Clone, Debug)]
pub struct ModelEntry {
    pub name: String,
    pub file: String,
    pub arch: String,
    pub sha256: Option<String>,
    pub url: Option<String>,
    /// Where `effectc models fetch` downloads it: the file's URL, or for a folder the
    /// base URL its `files` are under (see src/models/fetch.rs).
    pub fetch: Option<String>,
    /// A folder's files (`file "unet/config.json"` children), relative to it.
    pub files: Vec<String>,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct ControlNetPreset {
    pub name: String,
    pub preprocessor: String,
    pub model: String,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct AttributeOption {
    pub name: String,
    /// CLIP text queries (`query="..."` and/or `query "..." "..."` children); several are
    /// averaged (prompt ensembling).
    pub queries: Vec<String>,
    pub prompt: String,
}

#[derive(Clone, Debug)]
pub struct AttributeSet {
    pub name: String,
    pub options: Vec<AttributeOption>,
    /// `attribute "x" threshold=0.7`: this attribute's confidence threshold, unless the
    /// recipe sets one.
    pub threshold: Option<f64>,
    pub loc: Loc,
}

/// Models, ControlNet presets and attribute sets, built-in entries overridden by the project's.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub models: BTreeMap<String, ModelEntry>,
    pub controlnets: BTreeMap<String, ControlNetPreset>,
    pub attributes: BTreeMap<String, AttributeSet>,
}

impl Registry {
    pub fn load(project: &Project, diags: &mut Diagnostics) -> Registry {
        let mut reg = Registry::default();
        for file_name in REGISTRY_FILES {
            let builtin = EMBEDDED_STDLIB
                .iter()
                .find(|(n, _)| n == file_name)
                .map(|(n, t)| SourceFile::new(format!("<builtin>/stdlib/{n}"), *t));
            let local_path = project.root.join("stdlib").join(file_name);
            let local = if local_path.is_file() {
                match std::fs::read_to_string(&local_path) {
                    Ok(text) => Some(SourceFile::new(format!("stdlib/{file_name}"), text)),
                    Err(e) => {
                        diags.push(RecipeDiagnostic::nowhere(
                            "io",
                            format!("cannot read {}: {e}", local_path.display()),
                        ));
                        None
                    }
                }
            } else {
                None
            };
            for file in builtin.iter().chain(local.iter()) {
                if let Some(nodes) = parse_file(file, diags) {
                    reg.add(&nodes, diags);
                }
            }
        }
        reg
    }

    fn add(&mut self, nodes: &[Node], diags: &mut Diagnostics) {
        let mut d = Decoder { diags };
        for node in nodes {
            match node.name.as_str() {
                "model" => {
                    d.known_props(node, &["file", "arch", "sha256", "url", "fetch"]);
                    d.known_children(node, &["file"]);
                    let Some(name) = d.arg_string(node, "a model name") else {
                        continue;
                    };
                    let file = node.prop("file").and_then(|v| d.string(v, "`file`"));
                    if let (Some(f), Some(v)) = (&file, node.prop("file")) {
                        if !d.path_inside(v, f, "the models directory") {
                            continue;
                        }
                    }
                    let Some(file) = file else {
                        d.error(RecipeDiagnostic::at(
                            &node.name_loc,
                            "missing-property",
                            format!("model `{name}` needs file=\"...\""),
                        ));
                        continue;
                    };
                    let sha256 = node.prop("sha256").and_then(|v| d.string(v, "`sha256`"));
                    if let (Some(h), Some(v)) = (&sha256, node.prop("sha256")) {
                        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                            d.error(
                                RecipeDiagnostic::at(
                                    &v.loc,
                                    "bad-digest",
                                    "sha256 must be 64 hex characters",
                                )
                                .label("not a SHA-256"),
                            );
                        }
                    }
                    let arch = node
                        .prop("arch")
                        .and_then(|v| d.string(v, "`arch`"))
                        .unwrap_or_default();
                    if !MODEL_ARCHS.contains(&arch.as_str()) {
                        let at = node.prop("arch").map(|v| &v.loc).unwrap_or(&node.name_loc);
                        d.error(
                            RecipeDiagnostic::at(
                                at,
                                "unknown-arch",
                                format!("model `{name}`: unknown arch `{arch}`"),
                            )
                            .label("not an architecture effectc reads")
                            .suggest(&arch, MODEL_ARCHS.iter().copied()),
                        );
                        continue;
                    }
                    let url = node.prop("url").and_then(|v| d.string(v, "`url`"));
                    let fetch = node.prop("fetch").and_then(|v| d.string(v, "`fetch`"));
                    let mut files = Vec::new();
                    for child in node.children.iter().filter(|c| c.name == "file") {
                        if let (Some(f), Some(v)) =
                            (d.arg_string(child, "a file path"), child.args.first())
                        {
                            if d.path_inside(v, &f, "the model's folder") {
                                files.push(f);
                            }
                        }
                    }
                    self.models.insert(
                        name.clone(),
                        ModelEntry {
                            name,
                            file,
                            arch,
                            sha256,
                            url,
                            fetch,
                            files,
                            loc: node.loc.clone(),
                        },
                    );
                }
                "controlnet" => {
                    d.known_props(node, &["preprocessor", "model"]);
                    let Some(name) = d.arg_string(node, "a preset name") else {
                        continue;
                    };
                    let pre = node
                        .prop("preprocessor")
                        .and_then(|v| d.string(v, "`preprocessor`"));
                    let model = node.prop("model").and_then(|v| d.string(v, "`model`"));
                    match (pre, model) {
                        (Some(preprocessor), Some(model)) => {
                            self.controlnets.insert(name.clone(), ControlNetPreset { name, preprocessor, model, loc: node.loc.clone() });
                        }
                        _ => d.error(RecipeDiagnostic::at(&node.name_loc, "missing-property", format!("controlnet preset `{name}` needs preprocessor=\"...\" and model=\"...\""))),
                    }
                }
                "attribute" => {
                    d.known_children(node, &["option"]);
                    d.known_props(node, &["threshold"]);
                    let Some(name) = d.arg_string(node, "an attribute name") else {
                        continue;
                    };
                    let threshold = node
                        .prop("threshold")
                        .and_then(|v| d.float(v, "`threshold`", 0.0, 1.0));
                    let mut options = Vec::new();
                    for opt in node.children.iter().filter(|c| c.name == "option") {
                        d.known_props(opt, &["query", "prompt"]);
                        d.known_children(opt, &["query"]);
                        let Some(oname) = d.arg_string(opt, "an option name") else {
                            continue;
                        };
                        let mut queries: Vec<String> = opt
                            .prop("query")
                            .and_then(|v| d.string(v, "`query`"))
                            .into_iter()
                            .collect();
                        for q in opt.children.iter().filter(|c| c.name == "query") {
                            d.known_props(q, &[]);
                            queries.extend(q.args.iter().filter_map(|v| d.string(v, "a query")));
                        }
                        if queries.is_empty() {
                            d.error(
                                RecipeDiagnostic::at(
                                    &opt.name_loc,
                                    "missing-property",
                                    format!("option `{oname}` of attribute `{name}` needs a CLIP query"),
                                )
                                .help("query=\"a photo of ...\", or several: `option \"x\" prompt=\"...\" { query \"...\" \"...\" }`"),
                            );
                        }
                        let prompt = opt
                            .prop("prompt")
                            .and_then(|v| d.string(v, "`prompt`"))
                            .unwrap_or_default();
                        options.push(AttributeOption {
                            name: oname,
                            queries,
                            prompt,
                        });
                    }
                    self.attributes.insert(
                        name.clone(),
                        AttributeSet {
                            name,
                            options,
                            threshold,
                            loc: node.loc.clone(),
                        },
                    );
                }
                other => {
                    let known = ["model", "controlnet", "attribute"];
                    d.error(
                        RecipeDiagnostic::at(
                            &node.name_loc,
                            "unknown-node",
                            format!("unknown node `{other}` in the registry"),
                        )
                        .suggest(other, known),
                    );
                }
            }
        }
    }
}

/// Reads and checks `targets/<name>.kdl`.
pub fn load_target_profile(
    project: &Project,
    name: &str,
    diags: &mut Diagnostics,
) -> Option<TargetProfile> {
    let file = match target_file(project, &format!("{name}.kdl")) {
        Ok(Some(f)) => f,
        Ok(None) => return None,
        Err(e) => {
            diags.push(RecipeDiagnostic::nowhere(
                "io",
                format!("cannot read targets/{name}.kdl: {e}"),
            ));
            return None;
        }
    };
    let nodes = parse_file(&file, diags)?;
    let mut d = Decoder { diags };
    let node = nodes.iter().find(|n| n.name == "target")?;
    d.known_children(
        node,
        &[
            "format",
            "precision",
            "io",
            "ops",
            "min-psnr-db",
            "calibration-size",
        ],
    );
    let format = d
        .choice(node, "format", TargetFormat::NAMES)
        .and_then(|f| TargetFormat::parse(&f));
    let strings = |d: &mut Decoder, n: Option<&Node>| -> Vec<String> {
        n.map(|n| {
            n.args
                .iter()
                .filter_map(|v| d.string(v, "a name"))
                .collect()
        })
        .unwrap_or_default()
    };
    let precision_node = d.single(&node.children, "precision");
    let mut precisions = Vec::new();
    if let Some(n) = precision_node {
        for v in &n.args {
            let Some(p) = d.string(v, "a precision") else {
                continue;
            };
            match (Precision::parse(&p), format) {
                (Some(p), Some(f)) if f.precisions().contains(&p) => precisions.push(p),
                (_, Some(f)) => d.error(
                    RecipeDiagnostic::at(
                        &v.loc,
                        "unknown-value",
                        format!("effectc has no {f} writer for precision `{p}`"),
                    )
                    .label("not offered")
                    .help(format!(
                        "{f} offers: {}",
                        f.precisions()
                            .iter()
                            .map(|p| p.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                ),
                (_, None) => {}
            }
        }
    }
    let ops_node = d.single(&node.children, "ops");
    let ops = strings(&mut d, ops_node);
    let given = |n: &str| node.prop(n).is_some() || node.children.iter().any(|c| c.name == n);
    let io = match given("io") {
        false => Some(TargetIo::TensorNchw),
        true => d
            .choice(node, "io", TargetIo::NAMES)
            .and_then(|i| TargetIo::parse(&i)),
    };
    let mut min_psnr_db = BTreeMap::new();
    if let Some(n) = d.single(&node.children, "min-psnr-db") {
        for p in &n.props {
            if let Some(v) = d.float(&p.val, "a PSNR bar in dB", 0.0, 200.0) {
                min_psnr_db.insert(p.name.clone(), v);
            }
        }
    }
    let calibration_size = d.setting_u32(node, "calibration-size", 32, 0, 100_000);
    let Some(format) = format else {
        if !given("format") {
            d.error(
                RecipeDiagnostic::at(
                    &node.name_loc,
                    "missing-node",
                    format!("target profile `{name}` needs `format`"),
                )
                .help(format!("one of: {}", TargetFormat::NAMES.join(", "))),
            );
        }
        return None;
    };
    let io = io?;
    // Precisions given but refused were reported one by one above.
    let refused = precision_node.is_some_and(|n| !n.args.is_empty());
    if precisions.is_empty() && refused {
        return None;
    }
    if precisions.is_empty() {
        d.error(RecipeDiagnostic::at(
            &node.name_loc,
            "missing-node",
            format!("target profile `{name}` needs `precision` with at least one value"),
        ));
        return None;
    }
    Some(TargetProfile {
        name: name.to_string(),
        format,
        default_precision: precisions[0],
        precisions,
        io,
        ops,
        min_psnr_db,
        calibration_size,
        file,
    })
}
