//! Lowers a merged recipe tree into the typed `Recipe`, reporting every problem with
//! its span: unknown nodes and properties (with "did you mean"), wrong types, values out
//! of range, unknown models / presets / attributes / targets, missing files, bad globs.

use super::decode::Decoder;
use super::diagnostic::RecipeDiagnostic;
use super::model::*;
use super::stdlib::{self, Registry};
use super::tree::{Node, Val};
use crate::project::Project;

/// The registry entry single-file SD checkpoints take their tokenizer from.
pub const CLIP_TOKENIZER: &str = "clip-tokenizer";
/// The registry names of the models `crop "face"` runs, in the order `Crop::models` keeps.
pub const FACE_CROP_MODELS: [&str; 4] = [
    "mediapipe-face-detector",
    "mediapipe-face-landmark",
    "mediapipe-pose-detector",
    "mediapipe-pose-landmark",
];

pub const EFFECT_NODES: &[&str] = &[
    "extends",
    "version",
    "description",
    "sources",
    "teacher",
    "attributes",
    "identity",
    "student",
    "train",
    "target",
];
pub const TEACHER_KINDS: &[&str] = &["procedural", "directory", "command", "diffusion"];
pub const PROCEDURAL_STYLES: &[&str] = &["brick-mosaic"];
pub const PALETTES: &[&str] = &["lego-classic", "lego-grayscale"];
/// What a diffusion prompt may hold, filled per item by the `pairs` stage.
pub const PROMPT_PLACEHOLDERS: &[&str] = &["attributes"];
pub const SCHEDULERS: &[&str] = &["ddim", "euler-a", "dpm++2m", "dpm++2m-karras"];

pub struct Checker<'a> {
    pub d: Decoder<'a>,
    pub project: &'a Project,
    pub registry: &'a Registry,
}

/// Whether a source path is a glob pattern rather than one file.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl<'a> Checker<'a> {
    pub fn effect(&mut self, name: &str, body: &[Node], root: &Node) -> Option<Recipe> {
        let top = Node {
            children: body.to_vec(),
            ..root.clone()
        };
        self.d.known_children(&top, EFFECT_NODES);
        let version = self
            .d
            .setting(&top, "version")
            .and_then(|v| self.d.string(v, "`version`"));
        let description = self
            .d
            .setting(&top, "description")
            .and_then(|v| self.d.string(v, "`description`"));

        let sources = match self.d.single(body, "sources") {
            Some(n) => self.sources(n),
            None => {
                self.d.error(RecipeDiagnostic::at(&root.name_loc, "missing-node", format!("effect `{name}` has no `sources`")).help("add `sources { images \"photos/*.jpg\" }` or `sources { synthetic count=48 }`"));
                None
            }
        };
        let teacher = match self.d.single(body, "teacher") {
            Some(n) => self.teacher(n),
            None => {
                self.d.error(RecipeDiagnostic::at(&root.name_loc, "missing-node", format!("effect `{name}` has no `teacher`")).help("add `teacher \"procedural\" { ... }`, `teacher \"diffusion\" { ... }`, `teacher \"directory\"` or `teacher \"command\"`"));
                None
            }
        };
        let attributes_node = self.d.single(body, "attributes");
        let attributes = attributes_node
            .map(|n| self.attributes(n))
            .unwrap_or_default();
        let attributes_model = self.clip_model(attributes_node);
        let identity = self.d.single(body, "identity").map(|n| self.identity(n));
        let student_node = self.d.single(body, "student");
        let student = self.student(student_node);
        let train_node = self.d.single(body, "train");
        let train = self.train(train_node);
        let targets = self.targets(body);
        Some(Recipe {
            name: name.to_string(),
            version,
            description,
            files: Vec::new(),
            sources: sources?,
            teacher: teacher?,
            attributes,
            attributes_model,
            identity,
            student,
            train,
            targets,
        })
    }

    fn sources(&mut self, node: &Node) -> Option<Sources> {
        self.d.known_children(
            node,
            &[
                "images",
                "synthetic",
                "video",
                "crop",
                "holdout",
                "max-skipped",
                "dedupe",
            ],
        );
        self.d.known_props(node, &[]);
        let images = self.source_images(node);
        let synthetic = self
            .d
            .single(&node.children, "synthetic")
            .map(|n| self.synthetic(n));
        let videos = self.source_videos(node);
        self.require_a_source(node);
        let crop = match self.d.single(&node.children, "crop") {
            Some(n) => self.crop(n),
            None => Crop {
                mode: Spanned::new(CropMode::Center, None),
                size_px: 256,
                margin: 0.6,
                faces: Spanned::new(FaceSelection::Largest, None),
                models: Vec::new(),
            },
        };
        let holdout = self.d.setting_f64(node, "holdout", 0.1, 0.0, 0.9);
        let max_skipped = self.d.setting_f64(
            node,
            "max-skipped",
            super::model::DEFAULT_MAX_SKIPPED,
            0.0,
            1.0,
        );
        let dedupe = self
            .d
            .single(&node.children, "dedupe")
            .and_then(|n| self.dedupe(n));
        Some(Sources {
            images,
            synthetic,
            videos,
            crop,
            holdout,
            max_skipped,
            dedupe,
        })
    }

    /// Every `images` line's paths and globs, in order; a line without one is an error.
    fn source_images(&mut self, node: &Node) -> Vec<Spanned<String>> {
        let mut images = Vec::new();
        for n in node.children.iter().filter(|c| c.name == "images") {
            self.d.known_props(n, &[]);
            if n.args.is_empty() {
                self.d.error(
                    RecipeDiagnostic::at(
                        &n.name_loc,
                        "missing-argument",
                        "`images` needs at least one path or glob",
                    )
                    .help("e.g. images \"photos/**/*.jpg\""),
                );
            }
            for v in &n.args {
                if let Some(g) = self.glob(v) {
                    images.push(Spanned::new(g, Some(v.loc.clone())));
                }
            }
        }
        images
    }

    /// `synthetic count=N seed=S`.
    fn synthetic(&mut self, n: &Node) -> Synthetic {
        self.d.known_props(n, &["count", "seed"]);
        self.d.max_args(n, 0);
        let count = self.d.setting_u32(n, "count", 48, 1, 1_000_000);
        let seed = self.d.setting_u64(n, "seed", 0);
        Synthetic { count, seed }
    }

    /// Every `video "GLOB" fps=F` line, in order; a line without its glob is an error.
    fn source_videos(&mut self, node: &Node) -> Vec<VideoSource> {
        let mut videos = Vec::new();
        for n in node.children.iter().filter(|c| c.name == "video") {
            self.d.known_props(n, &["fps"]);
            self.d.max_args(n, 1);
            let fps = self.d.setting_f64(n, "fps", 1.0, 0.001, 240.0);
            if let Some(v) = n.args.first() {
                if let Some(g) = self.glob(v) {
                    videos.push(VideoSource {
                        glob: Spanned::new(g, Some(v.loc.clone())),
                        fps,
                    });
                }
            } else {
                self.d.error(RecipeDiagnostic::at(
                    &n.name_loc,
                    "missing-argument",
                    "`video` needs a path or glob",
                ));
            }
        }
        videos
    }

    /// `sources` must name at least one kind of input, even if its paths are wrong.
    fn require_a_source(&mut self, node: &Node) {
        let named_any = node
            .children
            .iter()
            .any(|c| ["images", "synthetic", "video"].contains(&c.name.as_str()));
        if !named_any {
            self.d.error(
                RecipeDiagnostic::at(
                    &node.name_loc,
                    "missing-node",
                    "`sources` names no images, videos or synthetic source",
                )
                .help("add `images \"photos/*.jpg\"` or `synthetic count=48`"),
            );
        }
    }

    /// `crop "center"|"face" size=N margin=F faces=...`; the face-only settings are
    /// errors on a centre crop, and a face crop takes its models from the registry.
    fn crop(&mut self, n: &Node) -> Crop {
        self.d.known_props(n, &["size", "margin", "faces"]);
        self.d.max_args(n, 1);
        let mode = self.crop_mode(n);
        let size_px = self.d.setting_u32(n, "size", 256, 16, 4096);
        if size_px % 8 != 0 {
            if let Some(v) = n.prop("size") {
                self.d.error(RecipeDiagnostic::at(&v.loc, "out-of-range", format!("crop size must be a multiple of 8 (the student downsamples 8x), got {size_px}")).label("not a multiple of 8"));
            }
        }
        let margin = self.d.setting_f64(n, "margin", 0.6, 0.0, 4.0);
        let faces = self.face_selection(n);
        if mode.value != CropMode::Face {
            for prop in ["margin", "faces"] {
                if let Some(v) = n.prop(prop) {
                    self.d.error(
                        RecipeDiagnostic::at(
                            &v.loc,
                            "unknown-property",
                            format!("`{prop}` applies only to `crop \"face\"`"),
                        )
                        .label("needs crop \"face\""),
                    );
                }
            }
        }
        let models = self.face_crop_models(&mode);
        Crop {
            mode,
            size_px,
            margin,
            faces,
            models,
        }
    }

    /// The crop's mode argument; centre when absent or unknown (unknown is an error).
    fn crop_mode(&mut self, n: &Node) -> Spanned<CropMode> {
        let Some(v) = n.args.first() else {
            return Spanned::new(CropMode::Center, None);
        };
        match self.d.string(v, "the crop mode").as_deref() {
            Some("center") => Spanned::new(CropMode::Center, Some(v.loc.clone())),
            Some("face") => Spanned::new(CropMode::Face, Some(v.loc.clone())),
            Some(other) => {
                self.d.error(
                    RecipeDiagnostic::at(
                        &v.loc,
                        "unknown-value",
                        format!("unknown crop mode `{other}`"),
                    )
                    .suggest(other, ["center", "face"])
                    .label("expected \"center\" or \"face\""),
                );
                Spanned::new(CropMode::Center, None)
            }
            None => Spanned::new(CropMode::Center, None),
        }
    }

    /// The registry entries a written `crop "face"` runs (FACE_CROP_MODELS); none for a
    /// centre crop. A missing entry is an error at the mode.
    fn face_crop_models(&mut self, mode: &Spanned<CropMode>) -> Vec<stdlib::ModelEntry> {
        let mut models = Vec::new();
        if let (CropMode::Face, Some(loc)) = (&mode.value, &mode.loc) {
            for name in FACE_CROP_MODELS {
                match self.registry.models.get(name) {
                    Some(m) => models.push(m.clone()),
                    None => self.d.error(
                        RecipeDiagnostic::at(loc, "unknown-model", format!("the face crop needs the model `{name}`, which the registry (stdlib/models.kdl) does not name"))
                            .label("face crop")
                            .help("keep the mediapipe-* entries of effectc's stdlib/models.kdl in the project's own copy"),
                    ),
                }
            }
        }
        models
    }

    /// `dedupe [#true|#false] distance=N`: the distance when on, None when off.
    fn dedupe(&mut self, n: &Node) -> Option<u32> {
        self.d.known_props(n, &["distance"]);
        self.d.max_args(n, 1);
        let on = match n.args.first().map(|v| &v.value) {
            None => true,
            Some(kdl::KdlValue::Bool(b)) => *b,
            Some(_) => {
                let v = &n.args[0];
                self.d.error(
                    RecipeDiagnostic::at(&v.loc, "type-mismatch", "`dedupe` takes #true or #false")
                        .label("expected #true or #false")
                        .help("e.g. dedupe distance=16"),
                );
                true
            }
        };
        let distance =
            self.d
                .setting_u32(n, "distance", super::model::DEFAULT_DEDUPE_DISTANCE, 0, 255);
        on.then_some(distance)
    }

    /// `faces="largest"|"all"` on `crop "face"`.
    fn face_selection(&mut self, n: &Node) -> Spanned<FaceSelection> {
        let Some(v) = n.prop("faces") else {
            return Spanned::new(FaceSelection::Largest, None);
        };
        match self.d.string(v, "`faces`").as_deref() {
            Some("largest") => Spanned::new(FaceSelection::Largest, Some(v.loc.clone())),
            Some("all") => Spanned::new(FaceSelection::All, Some(v.loc.clone())),
            Some(other) => {
                self.d.error(
                    RecipeDiagnostic::at(
                        &v.loc,
                        "unknown-value",
                        format!("unknown `faces` value `{other}`"),
                    )
                    .suggest(other, ["largest", "all"])
                    .label("expected \"largest\" or \"all\""),
                );
                Spanned::new(FaceSelection::Largest, None)
            }
            None => Spanned::new(FaceSelection::Largest, None),
        }
    }

    /// A path or glob relative to the project root: valid syntax, and a plain path must exist.
    fn glob(&mut self, v: &Val) -> Option<String> {
        let g = self.d.string(v, "a path or glob")?;
        if !self.d.path_inside(v, &g, "the project") {
            return None;
        }
        if is_glob(&g) {
            if let Err(e) = globset::Glob::new(&g) {
                self.d.error(
                    RecipeDiagnostic::at(
                        &v.loc,
                        "bad-glob",
                        format!("invalid glob `{g}`: {}", e.kind()),
                    )
                    .label("invalid glob"),
                );
                return None;
            }
        } else if !self.project.root.join(&g).exists() {
            self.d.error(
                RecipeDiagnostic::at(
                    &v.loc,
                    "missing-file",
                    format!(
                        "`{g}` does not exist (looked in {})",
                        self.project.root.display()
                    ),
                )
                .label("no such file"),
            );
            return None;
        }
        Some(g)
    }

    fn teacher(&mut self, node: &Node) -> Option<Teacher> {
        self.d.max_args(node, 1);
        self.d.known_props(node, &[]);
        let kind_val = match node.args.first() {
            Some(v) => v,
            None => {
                self.d.error(
                    RecipeDiagnostic::at(
                        &node.name_loc,
                        "missing-argument",
                        "`teacher` needs a kind",
                    )
                    .help(format!("one of: {}", TEACHER_KINDS.join(", "))),
                );
                return None;
            }
        };
        let kind = self.d.string(kind_val, "the teacher kind")?;
        match kind.as_str() {
            "procedural" => {
                self.d.known_children(
                    node,
                    &["style", "stud-size", "palette", "shading", "outline"],
                );
                let style = self.choice(node, "style", "brick-mosaic", PROCEDURAL_STYLES);
                let stud_px = self.d.setting_u32(node, "stud-size", 8, 2, 256);
                let palette = self.choice(node, "palette", "lego-classic", PALETTES);
                let shading = self.d.setting_f64(node, "shading", 0.6, 0.0, 1.0);
                let outline = self.d.setting_f64(node, "outline", 0.5, 0.0, 1.0);
                Some(Teacher::Procedural(ProceduralTeacher {
                    style,
                    stud_px,
                    palette,
                    shading,
                    outline,
                }))
            }
            "directory" => {
                self.d.known_children(node, &["path"]);
                let v = self.d.setting(node, "path");
                let Some(v) = v else {
                    self.d.error(RecipeDiagnostic::at(
                        &node.name_loc,
                        "missing-node",
                        "a `directory` teacher needs `path \"pairs/\"`",
                    ));
                    return None;
                };
                let path = self.d.string(v, "`path`")?;
                if !self.d.path_inside(v, &path, "the project") {
                    return None;
                }
                if !self.project.root.join(&path).is_dir() {
                    self.d.error(
                        RecipeDiagnostic::at(
                            &v.loc,
                            "missing-file",
                            format!("pair directory `{path}` does not exist"),
                        )
                        .label("no such folder"),
                    );
                    return None;
                }
                Some(Teacher::Directory {
                    path: Spanned::new(path, Some(v.loc.clone())),
                })
            }
            "command" => {
                self.d.known_children(node, &["run", "timeout-s"]);
                let timeout_s = self.d.setting_u64(node, "timeout-s", 300);
                let Some(run) = self.d.single(&node.children, "run") else {
                    self.d.error(RecipeDiagnostic::at(&node.name_loc, "missing-node", "a `command` teacher needs `run \"program\" \"arg\"...`").help("`{input}` and `{output}` in arguments are replaced by PNG paths; without them the PNG goes through stdin / stdout"));
                    return None;
                };
                let mut argv: Vec<String> = Vec::new();
                for v in &run.args {
                    if let Some(a) = self.d.string(v, "a command argument") {
                        // The program and its arguments are commands, not project paths:
                        // no path rule; `{inptu}` is still caught as a typo.
                        self.d
                            .placeholders(v, &a, &["input", "output"], true, "a `run` argument");
                        argv.push(a);
                    }
                }
                if argv.is_empty() {
                    self.d.error(RecipeDiagnostic::at(
                        &run.name_loc,
                        "missing-argument",
                        "`run` needs the program to run",
                    ));
                    return None;
                }
                Some(Teacher::Command {
                    argv,
                    timeout_s,
                    loc: Some(run.loc.clone()),
                })
            }
            "diffusion" => self
                .diffusion(node)
                .map(|t| Teacher::Diffusion(Box::new(t))),
            other => {
                self.d.error(
                    RecipeDiagnostic::at(
                        &kind_val.loc,
                        "unknown-value",
                        format!("unknown teacher kind `{other}`"),
                    )
                    .label("unknown kind")
                    .suggest(other, TEACHER_KINDS.iter().copied()),
                );
                None
            }
        }
    }

    /// A prompt setting, its `{placeholders}` checked against `known`.
    fn prompt(&mut self, node: &Node, name: &str, known: &[&str], what: &str) -> String {
        let Some(v) = self.d.setting(node, name) else {
            return String::new();
        };
        let Some(text) = self.d.string(v, &format!("`{name}`")) else {
            return String::new();
        };
        self.d.placeholders(v, &text, known, false, what);
        text
    }

    fn choice(&mut self, node: &Node, name: &str, default: &str, allowed: &[&str]) -> String {
        self.d
            .choice(node, name, allowed)
            .unwrap_or_else(|| default.to_string())
    }

    fn model_ref(&mut self, v: &Val, what: &str) -> Option<Spanned<String>> {
        let name = self.d.string(v, what)?;
        if !self.registry.models.contains_key(&name) {
            let d =
                RecipeDiagnostic::at(&v.loc, "unknown-model", format!("unknown model `{name}`"))
                    .label("not in stdlib/models.kdl")
                    .suggest(&name, self.registry.models.keys().map(|s| s.as_str()));
            let d = if d.help.is_none() {
                d.help(format!(
                    "models known: {}; add one to stdlib/models.kdl",
                    self.registry
                        .models
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            } else {
                d
            };
            self.d.error(d);
            return None;
        }
        Some(Spanned::new(name, Some(v.loc.clone())))
    }

    fn diffusion(&mut self, node: &Node) -> Option<DiffusionTeacher> {
        self.d.known_children(
            node,
            &[
                "base",
                "lora",
                "prompt",
                "negative-prompt",
                "controlnet",
                "instruct-pix2pix",
                "img2img",
                "steps",
                "guidance",
            ],
        );
        let base = match self
            .d
            .single(&node.children, "base")
            .and_then(|n| n.args.first())
        {
            Some(v) => self.model_ref(v, "the base model"),
            None => {
                self.d.error(RecipeDiagnostic::at(
                    &node.name_loc,
                    "missing-node",
                    "a diffusion teacher needs `base \"sd15\"`",
                ));
                None
            }
        };
        let mut loras = Vec::new();
        for n in node.children.iter().filter(|c| c.name == "lora") {
            self.d.known_props(n, &["weight"]);
            let weight = self.d.setting_f64(n, "weight", 1.0, -4.0, 4.0);
            if let Some(m) = n
                .args
                .first()
                .and_then(|v| self.model_ref(v, "a LoRA model"))
            {
                loras.push(Lora { model: m, weight });
            }
        }
        let prompt = self.prompt(node, "prompt", PROMPT_PLACEHOLDERS, "a prompt");
        if prompt.is_empty() {
            self.d.error(RecipeDiagnostic::at(
                &node.name_loc,
                "missing-node",
                "a diffusion teacher needs a `prompt`",
            ));
        }
        // Only the prompt is filled per item; a placeholder elsewhere would stay text.
        let negative_prompt = self.prompt(node, "negative-prompt", &[], "a negative prompt");
        let mut controlnets = Vec::new();
        for n in node.children.iter().filter(|c| c.name == "controlnet") {
            self.d.known_props(n, &["weight", "start", "end"]);
            let weight = self.d.setting_f64(n, "weight", 1.0, 0.0, 4.0);
            let start = self.d.setting_f64(n, "start", 0.0, 0.0, 1.0);
            let end = self.d.setting_f64(n, "end", 1.0, 0.0, 1.0);
            let Some(v) = n.args.first() else {
                self.d.error(RecipeDiagnostic::at(
                    &n.name_loc,
                    "missing-argument",
                    "`controlnet` needs a preset name",
                ));
                continue;
            };
            let Some(preset) = self.d.string(v, "a ControlNet preset") else {
                continue;
            };
            let Some(found) = self.registry.controlnets.get(&preset) else {
                self.d.error(
                    RecipeDiagnostic::at(
                        &v.loc,
                        "unknown-preset",
                        format!("unknown ControlNet preset `{preset}`"),
                    )
                    .label("not in stdlib/controlnets.kdl")
                    .suggest(
                        &preset,
                        self.registry.controlnets.keys().map(|s| s.as_str()),
                    ),
                );
                continue;
            };
            let (preprocessor, model) = (found.preprocessor.clone(), found.model.clone());
            controlnets.push(ControlNetUse {
                preset: Spanned::new(preset, Some(v.loc.clone())),
                preprocessor,
                model,
                weight,
                start,
                end,
            });
        }
        let instruct_pix2pix = match self.d.single(&node.children, "instruct-pix2pix") {
            Some(n) => {
                self.d.known_props(n, &["image-guidance", "model"]);
                let instruction = self.d.arg_string(n, "the instruction").unwrap_or_default();
                if let Some(v) = n.args.first() {
                    self.d.placeholders(
                        v,
                        &instruction,
                        &[],
                        false,
                        "an InstructPix2Pix instruction",
                    );
                }
                let image_guidance = self.d.setting_f64(n, "image-guidance", 1.5, 0.0, 20.0);
                let model = match n.prop("model") {
                    Some(v) => self.model_ref(v, "the InstructPix2Pix model"),
                    None => Some(Spanned::new("instruct-pix2pix".to_string(), None)),
                };
                model.map(|model| InstructPix2Pix {
                    instruction,
                    image_guidance,
                    model,
                })
            }
            None => None,
        };
        let img2img_strength = self.d.single(&node.children, "img2img").map(|n| {
            self.d.known_props(n, &["strength"]);
            self.d.setting_f64(n, "strength", 0.6, 0.0, 1.0)
        });
        let (mut steps, mut scheduler, mut seed) = (30, "dpm++2m".to_string(), 0);
        if let Some(n) = self.d.single(&node.children, "steps") {
            self.d.known_props(n, &["scheduler", "seed"]);
            if let Some(v) = n.args.first() {
                steps = self.d.int(v, "`steps`", 1, 1000).unwrap_or(30) as u32;
            }
            scheduler = self.choice(n, "scheduler", "dpm++2m", SCHEDULERS);
            seed = self.d.setting_u64(n, "seed", 0);
        }
        let guidance = self.d.setting_f64(node, "guidance", 7.5, 0.0, 50.0);
        let base = base?;
        let mut model_names = vec![base.value.clone()];
        model_names.extend(loras.iter().map(|l| l.model.value.clone()));
        model_names.extend(
            controlnets
                .iter()
                .filter_map(|c| self.registry.controlnets.get(&c.preset.value))
                .map(|p| p.model.clone()),
        );
        model_names.extend(instruct_pix2pix.iter().map(|ip| ip.model.value.clone()));
        // An original single-file checkpoint carries no tokenizer: CLIP's vocabulary
        // comes from its own registry entry.
        if self
            .registry
            .models
            .get(&base.value)
            .is_some_and(|m| m.arch == "sd15")
        {
            model_names.push(CLIP_TOKENIZER.to_string());
        }
        let mut seen = std::collections::BTreeSet::new();
        model_names.retain(|n| seen.insert(n.clone()));
        let models = model_names
            .iter()
            .filter_map(|n| self.registry.models.get(n).cloned())
            .collect();
        Some(DiffusionTeacher {
            base,
            loras,
            prompt,
            negative_prompt,
            controlnets,
            instruct_pix2pix,
            img2img_strength,
            steps,
            scheduler,
            guidance,
            seed,
            models,
        })
    }

    /// `model="..."` of `attributes` / `identity`: a registry model CLIP reads.
    fn clip_model(&mut self, node: Option<&Node>) -> ClipModelSpec {
        let is_clip = |arch: &str| arch == "clip" || arch == "clip-vit-l14";
        let mut name = Spanned::new(DEFAULT_CLIP_MODEL.to_string(), None);
        if let Some(v) = node.and_then(|n| n.prop("model")) {
            if let Some(n) = self.d.string(v, "`model`") {
                let known = self
                    .registry
                    .models
                    .get(&n)
                    .is_some_and(|m| is_clip(&m.arch));
                if !known {
                    let clip_models: Vec<&str> = self
                        .registry
                        .models
                        .values()
                        .filter(|m| is_clip(&m.arch))
                        .map(|m| m.name.as_str())
                        .collect();
                    let d = RecipeDiagnostic::at(
                        &v.loc,
                        "unknown-model",
                        format!("`{n}` is not a CLIP model of stdlib/models.kdl"),
                    )
                    .label("not a CLIP model")
                    .suggest(&n, clip_models);
                    self.d.error(d);
                }
                name = Spanned::new(n, Some(v.loc.clone()));
            }
        }
        ClipModelSpec {
            entry: self
                .registry
                .models
                .get(&name.value)
                .filter(|m| is_clip(&m.arch))
                .cloned(),
            tokenizer: self.registry.models.get(CLIP_TOKENIZER).cloned(),
            name,
        }
    }

    /// `identity min-similarity=0.6 keep="glasses" "beard"`: `keep` is a property (its
    /// first attribute) followed by arguments (the others).
    fn identity(&mut self, node: &Node) -> Identity {
        self.d
            .known_props(node, &["min-similarity", "keep", "model"]);
        self.d.known_children(node, &[]);
        let min_similarity = self.d.setting_f64(node, "min-similarity", 0.6, -1.0, 1.0);
        let mut keep = Vec::new();
        let named = node.prop("keep").into_iter().chain(node.args.iter());
        for v in named {
            let Some(name) = self.d.string(v, "an attribute name") else {
                continue;
            };
            let Some(set) = self.registry.attributes.get(&name) else {
                self.d.error(
                    RecipeDiagnostic::at(
                        &v.loc,
                        "unknown-attribute",
                        format!("unknown attribute `{name}` in `keep`"),
                    )
                    .label("not in stdlib/attributes.kdl")
                    .suggest(&name, self.registry.attributes.keys().map(|s| s.as_str())),
                );
                continue;
            };
            if keep.iter().any(|k: &AttributeUse| k.name.value == name) {
                continue;
            }
            keep.push(AttributeUse {
                name: Spanned::new(name, Some(v.loc.clone())),
                set: set.clone(),
                fixed: None,
                threshold: set.threshold.unwrap_or(DEFAULT_ATTRIBUTE_THRESHOLD),
            });
        }
        Identity {
            min_similarity,
            keep,
            model: self.clip_model(Some(node)),
            loc: Some(node.name_loc.clone()),
        }
    }

    /// `attributes "gender" "hair-color" glasses="none" threshold=0.7`: arguments are
    /// attributes each item's sidecar gives or CLIP detects; properties fix an attribute's
    /// option for every item, except `threshold` (the confidence a detection needs) and
    /// `model` (the CLIP model).
    fn attributes(&mut self, node: &Node) -> Vec<AttributeUse> {
        let mut out = Vec::new();
        let threshold = node
            .prop("threshold")
            .and_then(|v| self.d.float(v, "`threshold`", 0.0, 1.0));
        let named = node.args.iter().map(|v| (v, None));
        let fixed = node
            .props
            .iter()
            .filter(|p| p.name != "threshold" && p.name != "model")
            .map(|p| (&p.val, Some(p.name.clone())));
        for (v, prop) in named.chain(fixed) {
            let (name, loc, fixed) = match prop {
                None => match self.d.string(v, "an attribute name") {
                    Some(n) => (n, v.loc.clone(), None),
                    None => continue,
                },
                Some(key) => match self.d.string(v, "an attribute option") {
                    Some(option) => (key, v.loc.clone(), Some(option)),
                    None => continue,
                },
            };
            let Some(set) = self.registry.attributes.get(&name) else {
                self.d.error(
                    RecipeDiagnostic::at(
                        &loc,
                        "unknown-attribute",
                        format!("unknown attribute `{name}`"),
                    )
                    .label("not in stdlib/attributes.kdl")
                    .suggest(&name, self.registry.attributes.keys().map(|s| s.as_str())),
                );
                continue;
            };
            if let Some(option) = &fixed {
                if !set.options.iter().any(|o| &o.name == option) {
                    self.d.error(
                        RecipeDiagnostic::at(
                            &loc,
                            "unknown-option",
                            format!("attribute `{name}` has no option `{option}`"),
                        )
                        .label("not an option")
                        .suggest(option, set.options.iter().map(|o| o.name.as_str())),
                    );
                    continue;
                }
            }
            out.push(AttributeUse {
                name: Spanned::new(name, Some(loc)),
                threshold: threshold
                    .or(set.threshold)
                    .unwrap_or(DEFAULT_ATTRIBUTE_THRESHOLD),
                set: set.clone(),
                fixed,
            });
        }
        out
    }

    fn student(&mut self, node: Option<&Node>) -> Student {
        let Some(n) = node else {
            return Student {
                width: 32,
                blocks: 6,
                teacher_width: 128,
            };
        };
        self.d.known_props(n, &["width", "blocks", "teacher-width"]);
        self.d
            .known_children(n, &["width", "blocks", "teacher-width"]);
        Student {
            width: self.d.setting_u32(n, "width", 32, 4, 512),
            blocks: self.d.setting_u32(n, "blocks", 6, 0, 64),
            teacher_width: self.d.setting_u32(n, "teacher-width", 128, 4, 1024),
        }
    }

    fn train(&mut self, node: Option<&Node>) -> Train {
        let empty = Node {
            name: "train".into(),
            name_loc: dummy_loc(),
            loc: dummy_loc(),
            args: vec![],
            props: vec![],
            children: vec![],
        };
        let n = node.unwrap_or(&empty);
        let known = [
            "teacher-steps",
            "student-steps",
            "batch",
            "lr",
            "lr-schedule",
            "beta1",
            "l1",
            "ssim",
            "gan",
            "gan-start",
            "r1-gamma",
            "features",
            "ema",
            "checkpoint-every",
            "seed",
            "shift-px",
            "flip",
            "jitter",
        ];
        self.d.known_children(n, &known);
        self.d.known_props(n, &known);
        Train {
            teacher_steps: self.d.setting_u32(n, "teacher-steps", 2000, 1, 10_000_000),
            student_steps: self.d.setting_u32(n, "student-steps", 2000, 1, 10_000_000),
            batch: self.d.setting_u32(n, "batch", 4, 1, 4096),
            // 0.01: with equalized-lr convs, 0.002 left short CPU runs far from converged
            // (a 300-step colour grade: 21.4 dB at 0.002, 24.9 dB at 0.01).
            lr: self.d.setting_f64(n, "lr", 0.01, 1e-8, 1e6),
            // Constant lr and beta1 0 stay the defaults: on the 960-portrait brick demo a
            // cosine schedule cost 0.7 dB and beta1 0.9 another 0.15 (docs/design-notes.md).
            lr_schedule: match self
                .choice(n, "lr-schedule", "constant", &["constant", "cosine"])
                .as_str()
            {
                "cosine" => crate::recipe::LrSchedule::Cosine,
                _ => crate::recipe::LrSchedule::Constant,
            },
            beta1: self.d.setting_f64(n, "beta1", 0.0, 0.0, 0.999),
            l1_weight: self.d.setting_f64(n, "l1", 1.0, 0.0, 1e6),
            ssim_weight: self.d.setting_f64(n, "ssim", 0.5, 0.0, 1e6),
            gan_weight: self.d.setting_f64(n, "gan", 0.05, 0.0, 1e6),
            // Half the teacher's steps on reconstruction alone, then the GAN sharpens: on
            // the brick teacher the same dB (25.26 vs 25.30) in about 0.7x the time.
            gan_start: self.d.setting_f64(n, "gan-start", 0.5, 0.0, 1.0),
            r1_gamma: self.d.setting_f64(n, "r1-gamma", 1.0, 0.0, 1e6),
            // Layer-wise distillation: each student stage matches the teacher's (through
            // a 1x1 adapter). 0 keeps only the outputs, and then, without augmentation,
            // the teacher's outputs are computed once instead of at every step.
            feature_weight: self.d.setting_f64(n, "features", 0.1, 0.0, 1e6),
            ema_beta: self.d.setting_f64(n, "ema", 0.99, 0.0, 1.0),
            checkpoint_every: self
                .d
                .setting_u32(n, "checkpoint-every", 100, 1, 10_000_000),
            seed: self.d.setting_u64(n, "seed", 0),
            // Augmentations default off: each must commute with the teacher, and most
            // effects have a grid, a light direction or a palette that they would blur.
            shift_px: self.d.setting_u32(n, "shift-px", 0, 0, 64),
            flip: self.d.setting_bool(n, "flip", false),
            jitter: self.d.setting_f64(n, "jitter", 0.0, 0.0, 0.5),
        }
    }

    fn targets(&mut self, body: &[Node]) -> Vec<TargetSpec> {
        let mut out: Vec<TargetSpec> = Vec::new();
        let known = stdlib::target_names(self.project);
        for n in body.iter().filter(|c| c.name == "target") {
            self.d.known_props(n, &["quantize"]);
            self.d.max_args(n, 1);
            let Some(v) = n.args.first() else {
                self.d.error(
                    RecipeDiagnostic::at(
                        &n.name_loc,
                        "missing-argument",
                        "`target` needs a profile name",
                    )
                    .help(format!("one of: {}", known.join(", "))),
                );
                continue;
            };
            let Some(name) = self.d.string(v, "a target profile name") else {
                continue;
            };
            if !self.d.plain_name(v, &name, "a target profile") {
                continue;
            }
            let Some(profile) = stdlib::load_target_profile(self.project, &name, self.d.diags)
            else {
                if !known.contains(&name) {
                    self.d.error(
                        RecipeDiagnostic::at(
                            &v.loc,
                            "unknown-target",
                            format!("unknown target `{name}`"),
                        )
                        .label("no targets/<name>.kdl profile")
                        .suggest(&name, known.iter().map(|s| s.as_str())),
                    );
                }
                continue;
            };
            if out.iter().any(|t| t.name.value == name) {
                self.d.error(
                    RecipeDiagnostic::at(
                        &v.loc,
                        "duplicate-node",
                        format!("target `{name}` is given twice"),
                    )
                    .label("second one"),
                );
                continue;
            }
            let precision = match n.prop("quantize") {
                Some(q) => match self.d.string(q, "`quantize`") {
                    Some(p) if profile.precisions.iter().any(|o| o.name() == p) => {
                        Precision::parse(&p).expect("a profile's precisions are known names")
                    }
                    Some(p) => {
                        self.d.error(
                            RecipeDiagnostic::at(
                                &q.loc,
                                "unknown-value",
                                format!("target `{name}` has no precision `{p}`"),
                            )
                            .label("not offered by the profile")
                            .help(format!(
                                "`{name}` offers: {}",
                                profile
                                    .precisions
                                    .iter()
                                    .map(|p| p.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        );
                        continue;
                    }
                    None => continue,
                },
                None => profile.default_precision,
            };
            out.push(TargetSpec {
                name: Spanned::new(name, Some(v.loc.clone())),
                precision,
                profile,
            });
        }
        out
    }
}

fn dummy_loc() -> super::diagnostic::Loc {
    super::diagnostic::Loc::new(
        &super::diagnostic::SourceFile::new("<default>", ""),
        (0, 0).into(),
    )
}
