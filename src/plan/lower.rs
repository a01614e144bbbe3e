//! Lowering a checked recipe into plan nodes: sources → crop → pairs (per item) →
//! whole-dataset stages. Problems that need the file system (a glob that matches
//! nothing, a pair missing from a directory teacher) are diagnostics with spans too.

use super::{Input, InputRef, Plan, PlanNode};
use crate::digest::{Digest, KeyHasher};
use crate::project::Project;
use crate::recipe::{CropMode, Diagnostics, Recipe, RecipeDiagnostic, Teacher};
use crate::stages;
use std::path::{Path, PathBuf};

/// A source item: a name stable across builds (relative path, or `synthetic-0007`).
#[derive(Clone, Debug)]
pub struct SourceItem {
    pub name: String,
    pub origin: ItemOrigin,
    pub holdout: bool,
}

#[derive(Clone, Debug)]
pub enum ItemOrigin {
    File { path: PathBuf, digest: Digest },
    Synthetic { seed: u64, index: u64 },
}

/// Held-out items are chosen by a stable hash of the item's name, so adding or removing
/// items never moves another item between splits.
pub fn is_holdout(item: &str, fraction: f64) -> bool {
    let mut h = KeyHasher::new("effectc/holdout/v1");
    h.str(item);
    let d = h.finish();
    let x = u64::from_le_bytes(d.0[..8].try_into().unwrap_or([0; 8]));
    (x as f64 / u64::MAX as f64) < fraction
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

/// The folders of a glob before its first wildcard (`data/*/x.jpg` → `data`).
pub fn glob_literal_prefix(pattern: &str) -> PathBuf {
    Path::new(pattern)
        .components()
        .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
        .collect()
}

/// Expands the recipe's image globs (relative to the project root), sorted by name.
pub fn image_files(project: &Project, recipe: &Recipe, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for glob in &recipe.sources.images {
        let pattern = &glob.value;
        let mut matched = 0;
        if !is_glob(pattern) {
            files.push(project.root.join(pattern));
            continue;
        }
        let Ok(g) = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
        else {
            continue;
        };
        let matcher = g.compile_matcher();
        // Walk only below the glob's literal prefix.
        let prefix = glob_literal_prefix(pattern);
        let start = project.root.join(&prefix);
        for entry in walkdir::WalkDir::new(&start)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_map(|e| e.ok())
        {
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = project.relative(entry.path());
            if matcher.is_match(&rel) {
                files.push(entry.path().to_path_buf());
                matched += 1;
            }
        }
        if matched == 0 {
            let d = match &glob.loc {
                Some(loc) => {
                    RecipeDiagnostic::at(loc, "empty-glob", format!("`{pattern}` matches no files"))
                        .label("no match")
                }
                None => {
                    RecipeDiagnostic::nowhere("empty-glob", format!("`{pattern}` matches no files"))
                }
            };
            diags.push(d.help(format!(
                "paths are relative to the project root {}",
                project.root.display()
            )));
        }
    }
    files.sort();
    files.dedup();
    files
}

/// Lowers `recipe` into a plan. `digest_of` hashes a source file (through the stat cache).
pub fn lower(
    project: &Project,
    recipe: &Recipe,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
) -> Result<Plan, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut items = Vec::new();
    let holdout = recipe.sources.holdout;
    if let Some(s) = &recipe.sources.synthetic {
        for index in 0..s.count as u64 {
            let name = format!("synthetic-{index:04}");
            items.push(SourceItem {
                holdout: is_holdout(&name, holdout),
                name,
                origin: ItemOrigin::Synthetic {
                    seed: s.seed,
                    index,
                },
            });
        }
    }
    for path in image_files(project, recipe, &mut diags) {
        let name = project.relative(&path);
        match digest_of(&path) {
            Ok(digest) => items.push(SourceItem {
                holdout: is_holdout(&name, holdout),
                name,
                origin: ItemOrigin::File { path, digest },
            }),
            Err(e) => diags.push(RecipeDiagnostic::nowhere(
                "unreadable-source",
                format!("cannot read source image {}: {e}", path.display()),
            )),
        }
    }
    for v in &recipe.sources.videos {
        let d = match &v.glob.loc {
            Some(loc) => {
                RecipeDiagnostic::at(loc, "not-built-yet", "video sources are not built yet")
                    .label("video")
            }
            None => RecipeDiagnostic::nowhere("not-built-yet", "video sources are not built yet"),
        };
        diags.push(d.help("extract frames to images (e.g. `ffmpeg -i clip.mp4 -vf fps=2 frames/%04d.png`) and list them with `images`"));
    }
    if recipe.sources.crop.mode.value == CropMode::Face {
        let d = match &recipe.sources.crop.mode.loc {
            Some(loc) => RecipeDiagnostic::at(
                loc,
                "not-built-yet",
                "the `face` crop needs the face detector, which is not built yet",
            )
            .label("face crop"),
            None => RecipeDiagnostic::nowhere("not-built-yet", "the `face` crop is not built yet"),
        };
        diags.push(d.help("use `crop \"center\" size=...` until face detection lands"));
    }
    // One copy of the teacher and its models, shared by every item's pair stage.
    let mut models = std::sync::Arc::default();
    let mut teacher = None;
    if let Teacher::Diffusion(t) = &recipe.teacher {
        // Checked before any work: every model the teacher names is present and pinned,
        // every control image can be drawn.
        models = std::sync::Arc::new(crate::models::check_models(
            project, recipe, digest_of, &mut diags,
        ));
        teacher = Some(std::sync::Arc::new((**t).clone()));
        for c in &t.controlnets {
            if stages::control_map::BUILT_PREPROCESSORS.contains(&c.preprocessor.as_str()) {
                continue;
            }
            let message = format!(
                "ControlNet preset `{}` needs the `{}` preprocessor, which is not built yet",
                c.preset.value, c.preprocessor
            );
            let d = match &c.preset.loc {
                Some(loc) => RecipeDiagnostic::at(loc, "not-built-yet", message)
                    .label("preprocessor not built yet"),
                None => RecipeDiagnostic::nowhere("not-built-yet", message),
            };
            diags.push(d.help(format!(
                "presets whose preprocessors exist: those using {}",
                stages::control_map::BUILT_PREPROCESSORS.join(", ")
            )));
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }

    let mut nodes: Vec<PlanNode> = Vec::with_capacity(items.len() * 3 + 8);
    let size_px = recipe.sources.crop.size_px;
    let mut pairs = Vec::new();
    for item in &items {
        let image_input = match &item.origin {
            ItemOrigin::Synthetic { seed, index } => {
                nodes.push(PlanNode {
                    id: format!("synthetic/{}", item.name),
                    item: Some(item.name.clone()),
                    stage: Box::new(stages::synthetic::SyntheticSource {
                        seed: *seed,
                        index: *index,
                        size_px,
                    }),
                    inputs: vec![],
                });
                InputRef::Stage {
                    node: nodes.len() - 1,
                    output: "image".into(),
                }
            }
            ItemOrigin::File { path, digest } => InputRef::File {
                path: path.clone(),
                digest: *digest,
            },
        };
        nodes.push(PlanNode {
            id: format!("crop/{}", item.name),
            item: Some(item.name.clone()),
            stage: Box::new(stages::crop::CenterCrop { size_px }),
            inputs: vec![Input {
                name: "image".into(),
                from: image_input,
            }],
        });
        let crop = nodes.len() - 1;
        let source = Input {
            name: "source".into(),
            from: InputRef::Stage {
                node: crop,
                output: "image".into(),
            },
        };
        let (stage, mut inputs): (Box<dyn super::Stage>, Vec<Input>) = match &recipe.teacher {
            Teacher::Procedural(p) => (
                Box::new(stages::procedural::ProceduralPairs::new(p)),
                vec![source],
            ),
            Teacher::Command {
                argv, timeout_s, ..
            } => (
                Box::new(stages::command_teacher::CommandPairs {
                    argv: argv.clone(),
                    timeout_s: *timeout_s,
                }),
                vec![source],
            ),
            Teacher::Directory { path } => {
                let dir = project.root.join(&path.value);
                let stem = Path::new(&item.name)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match stages::directory_teacher::find_target(&dir, &stem) {
                    Ok(Some(target)) => match digest_of(&target) {
                        Ok(digest) => (
                            Box::new(stages::directory_teacher::DirectoryPairs { size_px }),
                            vec![
                                source,
                                Input {
                                    name: "target-file".into(),
                                    from: InputRef::File {
                                        path: target,
                                        digest,
                                    },
                                },
                            ],
                        ),
                        Err(e) => {
                            diags.push(RecipeDiagnostic::nowhere(
                                "unreadable-source",
                                format!("cannot read pair target {}: {e}", target.display()),
                            ));
                            continue;
                        }
                    },
                    Ok(None) => {
                        let d = match &path.loc {
                            Some(loc) => RecipeDiagnostic::at(loc, "missing-pair", format!("no pair for source `{}` in `{}` (looked for {stem}.png/.jpg/.jpeg)", item.name, path.value)).label("pair directory"),
                            None => RecipeDiagnostic::nowhere("missing-pair", format!("no pair for source `{}`", item.name)),
                        };
                        diags.push(d);
                        continue;
                    }
                    Err(msg) => {
                        diags.push(RecipeDiagnostic::nowhere("ambiguous-pair", msg));
                        continue;
                    }
                }
            }
            Teacher::Diffusion(t) => {
                let mut inputs = vec![source];
                let with_attributes = !recipe.attributes.is_empty();
                if with_attributes {
                    let sidecar = match &item.origin {
                        ItemOrigin::File { path, .. } => {
                            let p = stages::attributes::sidecar_path(path);
                            p.is_file().then_some(p)
                        }
                        ItemOrigin::Synthetic { .. } => None,
                    };
                    let mut attr_inputs = Vec::new();
                    if let Some(path) = &sidecar {
                        match digest_of(path) {
                            Ok(digest) => attr_inputs.push(Input {
                                name: "sidecar".into(),
                                from: InputRef::File {
                                    path: path.clone(),
                                    digest,
                                },
                            }),
                            Err(e) => {
                                diags.push(RecipeDiagnostic::nowhere(
                                    "unreadable-source",
                                    format!("cannot read {}: {e}", path.display()),
                                ));
                                continue;
                            }
                        }
                    }
                    nodes.push(PlanNode {
                        id: format!("attributes/{}", item.name),
                        item: Some(item.name.clone()),
                        stage: Box::new(stages::attributes::ItemAttributes {
                            item: item.name.clone(),
                            uses: recipe.attributes.clone(),
                            has_sidecar: sidecar.is_some(),
                        }),
                        inputs: attr_inputs,
                    });
                    inputs.push(Input {
                        name: "attributes".into(),
                        from: InputRef::Stage {
                            node: nodes.len() - 1,
                            output: "attributes".into(),
                        },
                    });
                }
                // One control map per preprocessor, shared by presets that use it.
                let mut drawn: Vec<(String, usize)> = Vec::new();
                for c in &t.controlnets {
                    let node = match drawn.iter().find(|(p, _)| *p == c.preprocessor) {
                        Some((_, n)) => *n,
                        None => {
                            nodes.push(PlanNode {
                                id: format!("control:{}/{}", c.preprocessor, item.name),
                                item: Some(item.name.clone()),
                                stage: Box::new(stages::control_map::ControlMap {
                                    preprocessor: c.preprocessor.clone(),
                                }),
                                inputs: vec![Input {
                                    name: "image".into(),
                                    from: InputRef::Stage {
                                        node: crop,
                                        output: "image".into(),
                                    },
                                }],
                            });
                            drawn.push((c.preprocessor.clone(), nodes.len() - 1));
                            nodes.len() - 1
                        }
                    };
                    inputs.push(Input {
                        name: stages::diffusion_pairs::control_input(&c.preset.value),
                        from: InputRef::Stage {
                            node,
                            output: "control".into(),
                        },
                    });
                }
                (
                    Box::new(stages::diffusion_pairs::DiffusionPairs {
                        item: item.name.clone(),
                        teacher: teacher.clone().expect("set above for a diffusion teacher"),
                        models: models.clone(),
                        with_attributes,
                    }) as Box<dyn super::Stage>,
                    inputs,
                )
            }
        };
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.push(PlanNode {
            id: format!("pairs/{}", item.name),
            item: Some(item.name.clone()),
            stage,
            inputs,
        });
        pairs.push((item.clone(), crop, nodes.len() - 1));
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    // A contact sheet of the first pairs, so a person sees what the teacher made.
    let shown: Vec<_> = pairs.iter().take(8).collect();
    let controls: Vec<String> = match &recipe.teacher {
        Teacher::Diffusion(t) => t
            .controlnets
            .iter()
            .map(|c| c.preset.value.clone())
            .collect(),
        _ => Vec::new(),
    };
    let mut inputs = Vec::new();
    for (i, (_, crop, pair)) in shown.iter().enumerate() {
        inputs.push(Input {
            name: format!("{i:02}-source"),
            from: InputRef::Stage {
                node: *crop,
                output: "image".into(),
            },
        });
        for c in &controls {
            if let Some(from) = nodes[*pair]
                .inputs
                .iter()
                .find(|inp| inp.name == stages::diffusion_pairs::control_input(c))
            {
                inputs.push(Input {
                    name: format!("{i:02}-control-{c}"),
                    from: from.from.clone(),
                });
            }
        }
        inputs.push(Input {
            name: format!("{i:02}-target"),
            from: InputRef::Stage {
                node: *pair,
                output: "target".into(),
            },
        });
    }
    if !inputs.is_empty() {
        nodes.push(PlanNode {
            id: "pairs-sheet".into(),
            item: None,
            stage: Box::new(stages::pairs_sheet::PairsSheet {
                rows: shown.len(),
                controls,
            }),
            inputs,
        });
    }
    stages::add_model_stages(recipe, &pairs, &mut nodes);
    Ok(Plan::new(recipe, nodes))
}
