//! The per-item stages: crop, then per teacher kind the pairs (with a diffusion
//! teacher: the item's attributes and one control map per preprocessor first), and the
//! pairs sheet a person opens to see what the teacher made.

use super::items::{ItemOrigin, SourceItem};
use crate::digest::Digest;
use crate::plan::{Input, InputRef, PlanNode, StageId};
use crate::project::Project;
use crate::recipe::{CropMode, Diagnostics, Recipe, RecipeDiagnostic, Teacher};
use crate::stages::{self, Stage};
use std::path::Path;
use std::sync::Arc;

/// One copy of the diffusion teacher and its checked models, shared by every item's
/// pair stage.
#[derive(Default)]
pub struct SharedTeacher {
    teacher: Option<Arc<crate::recipe::DiffusionTeacher>>,
    models: Arc<std::collections::BTreeMap<String, crate::models::ResolvedModel>>,
    /// Which items' attributes CLIP detects, and with which model (`clip.rs`).
    pub detection: super::clip::AttributeDetection,
}

impl SharedTeacher {
    /// A checked model the recipe names (present and pinned), by registry name.
    pub fn model(&self, name: &str) -> Option<&crate::models::ResolvedModel> {
        self.models.get(name)
    }
}

/// Checked before any work: every model the teacher names is present and pinned, every
/// control image can be drawn.
pub fn shared_teacher(
    project: &Project,
    recipe: &Recipe,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    verify_pins: bool,
    diags: &mut Diagnostics,
) -> SharedTeacher {
    // The teacher's and the face crop's models.
    let mut shared = SharedTeacher {
        teacher: None,
        models: Arc::new(crate::models::check_models(
            project,
            recipe,
            digest_of,
            verify_pins,
            diags,
        )),
        detection: Default::default(),
    };
    let Teacher::Diffusion(t) = &recipe.teacher else {
        return shared;
    };
    shared.teacher = Some(Arc::new((**t).clone()));
    for c in &t.controlnets {
        let from_landmarks = stages::control_map::FROM_LANDMARKS.contains(&c.preprocessor.as_str());
        if from_landmarks && recipe.sources.crop.mode.value != CropMode::Face {
            let message = format!(
                "ControlNet preset `{}` draws the landmarks the face crop finds, but the sources use `crop \"center\"`",
                c.preset.value
            );
            let d = match &c.preset.loc {
                Some(loc) => RecipeDiagnostic::at(loc, "needs-face-crop", message)
                    .label("needs crop \"face\""),
                None => RecipeDiagnostic::nowhere("needs-face-crop", message),
            };
            diags.push(d.help("write `crop \"face\" size=...` in `sources`"));
            continue;
        }
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
    shared
}

/// Adds each item's stages; returns (item, crop node, pairs node) per item.
pub fn add_item_stages(
    project: &Project,
    recipe: &Recipe,
    items: &[SourceItem],
    shared: &SharedTeacher,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    nodes: &mut Vec<PlanNode>,
    diags: &mut Diagnostics,
) -> Vec<(SourceItem, usize, usize)> {
    let size_px = recipe.sources.crop.size_px;
    let crop_spec = &recipe.sources.crop;
    // The face crop's model files (inputs, so their digests are in its key), and one
    // loaded copy of them for every item.
    let face_models: Option<(Vec<Input>, Arc<stages::face_crop::FaceModels>)> =
        (crop_spec.mode.value == CropMode::Face).then(|| {
            let inputs = crop_spec
                .models
                .iter()
                .zip(stages::face_crop::MODEL_PORTS)
                .filter_map(|(m, name)| {
                    shared.models.get(&m.name).map(|r| Input {
                        name: name.pattern.into(),
                        from: InputRef::File {
                            path: r.path.clone(),
                            digest: r.digest,
                        },
                    })
                })
                .collect();
            (inputs, Arc::new(stages::face_crop::FaceModels::default()))
        });
    // Stages configured alike for every item are one shared object, so the plan works
    // out their params once (`Plan::key_of`), not once per item.
    let crop_stage: Arc<dyn Stage> = match &face_models {
        Some((_, loaded)) => Arc::new(stages::face_crop::FaceCrop {
            size_px,
            margin: crop_spec.margin,
            models: loaded.clone(),
            face: None,
        }),
        None => Arc::new(stages::crop::CenterCrop { size_px }),
    };
    // `faces="all"`: the crop of face k, one stage object per k.
    let mut face_stages: Vec<Arc<dyn Stage>> = Vec::new();
    let mut crop_of = |face: Option<u32>| -> Arc<dyn Stage> {
        let (Some(k), Some((_, loaded))) = (face, &face_models) else {
            return crop_stage.clone();
        };
        while face_stages.len() < k as usize {
            face_stages.push(Arc::new(stages::face_crop::FaceCrop {
                size_px,
                margin: crop_spec.margin,
                models: loaded.clone(),
                face: Some(face_stages.len() as u32 + 1),
            }));
        }
        face_stages[k as usize - 1].clone()
    };
    let shared_teacher_stage: Option<Arc<dyn Stage>> = match &recipe.teacher {
        Teacher::Procedural(p) => Some(Arc::new(stages::procedural::ProceduralPairs::new(p))),
        Teacher::Command {
            argv, timeout_s, ..
        } => Some(Arc::new(stages::command_teacher::CommandPairs {
            argv: argv.clone(),
            timeout_s: *timeout_s,
        })),
        Teacher::Directory { .. } => Some(Arc::new(stages::directory_teacher::DirectoryPairs {
            size_px,
        })),
        Teacher::Diffusion(_) => None,
    };
    let mut control_stages: Vec<(String, Arc<dyn Stage>)> = Vec::new();
    let mut pairs = Vec::new();
    for item in items {
        let image_input = match &item.origin {
            ItemOrigin::Synthetic { seed, index } => {
                nodes.push(PlanNode {
                    id: StageId::synthetic(&item.name),
                    item: Some(item.name.clone()),
                    stage: Arc::new(stages::synthetic::SyntheticSource {
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
            ItemOrigin::File { path, digest } | ItemOrigin::Frame { path, digest, .. } => {
                InputRef::File {
                    path: path.clone(),
                    digest: *digest,
                }
            }
        };
        let image = Input {
            name: stages::crop::IMAGE.pattern.into(),
            from: image_input,
        };
        let crop_inputs = match &face_models {
            Some((model_inputs, _)) => std::iter::once(image)
                .chain(model_inputs.iter().cloned())
                .collect(),
            None => vec![image],
        };
        nodes.push(PlanNode {
            id: StageId::crop(&item.name),
            item: Some(item.name.clone()),
            stage: crop_of(item.face),
            inputs: crop_inputs,
        });
        let crop = nodes.len() - 1;
        let source = Input {
            name: stages::procedural::SOURCE.pattern.into(),
            from: InputRef::Stage {
                node: crop,
                output: "image".into(),
            },
        };
        let (stage, mut inputs): (Arc<dyn Stage>, Vec<Input>) = match &recipe.teacher {
            Teacher::Procedural(_) | Teacher::Command { .. } => (
                shared_teacher_stage
                    .clone()
                    .expect("made above for this teacher"),
                vec![source],
            ),
            Teacher::Directory { path } => {
                let dir = project.root.join(&path.value);
                // A frame's pair is named after the whole frame name (`a.mp4@0.500s.png`).
                let name = Path::new(&item.name);
                let stem = match item.origin {
                    ItemOrigin::Frame { .. } => name.file_name(),
                    _ => name.file_stem(),
                }
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
                match stages::directory_teacher::find_target(&dir, &stem) {
                    Ok(Some(target)) => match digest_of(&target) {
                        Ok(digest) => (
                            shared_teacher_stage
                                .clone()
                                .expect("made above for this teacher"),
                            vec![
                                source,
                                Input {
                                    name: stages::directory_teacher::TARGET_FILE.pattern.into(),
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
                        // A clip's sidecar describes every frame of it.
                        ItemOrigin::File { path, .. } | ItemOrigin::Frame { clip: path, .. } => {
                            let p = stages::attributes::sidecar_path(path);
                            p.is_file().then_some(p)
                        }
                        ItemOrigin::Synthetic { .. } => None,
                    };
                    let mut attr_inputs = Vec::new();
                    if let Some(path) = &sidecar {
                        match digest_of(path) {
                            Ok(digest) => attr_inputs.push(Input {
                                name: stages::attributes::SIDECAR.pattern.into(),
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
                    let node = super::clip::add_attributes(
                        recipe,
                        item,
                        crop,
                        attr_inputs.pop(),
                        &shared.detection,
                        nodes,
                    );
                    inputs.push(Input {
                        name: stages::diffusion_pairs::ATTRIBUTES.pattern.into(),
                        from: InputRef::Stage {
                            node,
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
                                id: StageId::control(&c.preprocessor, &item.name),
                                item: Some(item.name.clone()),
                                stage: control_stage(&mut control_stages, &c.preprocessor),
                                inputs: control_inputs(crop, &c.preprocessor),
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
                    Arc::new(stages::diffusion_pairs::DiffusionPairs {
                        item: item.name.clone(),
                        teacher: shared
                            .teacher
                            .clone()
                            .expect("set above for a diffusion teacher"),
                        models: shared.models.clone(),
                        with_attributes,
                    }) as Arc<dyn Stage>,
                    inputs,
                )
            }
        };
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.push(PlanNode {
            id: StageId::pairs(&item.name),
            item: Some(item.name.clone()),
            stage,
            inputs,
        });
        pairs.push((item.clone(), crop, nodes.len() - 1));
    }
    pairs
}

/// `dedupe`: each near-duplicate item is one stage that skips it, naming its twin, so
/// the build lists it with the other skipped items.
pub fn add_near_duplicates(
    recipe: &Recipe,
    duplicates: &[(SourceItem, String)],
    nodes: &mut Vec<PlanNode>,
) {
    let distance = recipe.sources.dedupe.unwrap_or_default();
    for (item, of) in duplicates {
        nodes.push(PlanNode {
            id: StageId::crop(&item.name),
            item: Some(item.name.clone()),
            stage: Arc::new(stages::crop::NearDuplicate {
                of: of.clone(),
                distance,
            }),
            inputs: vec![],
        });
    }
}

/// The one control-map stage of `preprocessor`, shared by every item.
fn control_stage(made: &mut Vec<(String, Arc<dyn Stage>)>, preprocessor: &str) -> Arc<dyn Stage> {
    if let Some((_, stage)) = made.iter().find(|(p, _)| p == preprocessor) {
        return stage.clone();
    }
    let stage: Arc<dyn Stage> = Arc::new(stages::control_map::ControlMap {
        preprocessor: preprocessor.to_string(),
    });
    made.push((preprocessor.to_string(), stage.clone()));
    stage
}

/// A control map reads the crop, and the crop's landmarks when it draws them.
fn control_inputs(crop: usize, preprocessor: &str) -> Vec<Input> {
    let mut inputs = vec![Input {
        name: stages::control_map::IMAGE.pattern.into(),
        from: InputRef::Stage {
            node: crop,
            output: "image".into(),
        },
    }];
    if stages::control_map::FROM_LANDMARKS.contains(&preprocessor) {
        inputs.push(Input {
            name: stages::control_map::LANDMARKS.pattern.into(),
            from: InputRef::Stage {
                node: crop,
                output: "landmarks".into(),
            },
        });
    }
    inputs
}

/// A contact sheet of the first pairs (with their control maps), so a person sees what
/// the teacher made.
pub fn add_pairs_sheet(
    recipe: &Recipe,
    pairs: &[(SourceItem, usize, usize)],
    nodes: &mut Vec<PlanNode>,
) {
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
            name: stages::pairs_sheet::ROW_SOURCE.name(&format!("{i:02}")),
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
            name: stages::pairs_sheet::ROW_TARGET.name(&format!("{i:02}")),
            from: InputRef::Stage {
                node: *pair,
                output: "target".into(),
            },
        });
    }
    if !inputs.is_empty() {
        nodes.push(PlanNode {
            id: StageId::pairs_sheet(),
            item: None,
            stage: Arc::new(stages::pairs_sheet::PairsSheet {
                rows: shown.len(),
                controls,
            }),
            inputs,
        });
    }
}
