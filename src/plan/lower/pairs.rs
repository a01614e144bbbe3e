//! The per-item stages: crop, then per teacher kind the pairs (with a diffusion
//! teacher: the item's attributes and one control map per preprocessor first), and the
//! pairs sheet a person opens to see what the teacher made.

use super::items::{ItemOrigin, SourceItem};
use crate::digest::Digest;
use crate::plan::{Input, InputRef, PlanNode, StageId};
use crate::project::Project;
use crate::recipe::{CropMode, Diagnostics, Recipe, RecipeDiagnostic, Spanned, Teacher};
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
    let mut lower = ItemLowering::new(project, recipe, shared, digest_of, nodes, diags);
    let mut pairs = Vec::new();
    for item in items {
        let crop = lower.add_crop(item);
        // An item whose pair cannot be made has a diagnostic; the others go on.
        let Some((stage, mut inputs)) = lower.pairs_stage(item, crop) else {
            continue;
        };
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        lower.nodes.push(PlanNode {
            id: StageId::pairs(&item.name),
            item: Some(item.name.clone()),
            stage,
            inputs,
        });
        pairs.push((item.clone(), crop, lower.nodes.len() - 1));
    }
    pairs
}

/// What lowering each item reads and adds to: the recipe, the stage objects configured
/// alike for every item (one shared object each, so the plan works out their params
/// once, `Plan::key_of`, not once per item), and the plan's nodes and diagnostics.
struct ItemLowering<'a> {
    project: &'a Project,
    recipe: &'a Recipe,
    shared: &'a SharedTeacher,
    digest_of: &'a mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    nodes: &'a mut Vec<PlanNode>,
    diags: &'a mut Diagnostics,
    /// The face crop's model files (inputs, so their digests are in its key), and one
    /// loaded copy of them for every item.
    face_models: Option<(Vec<Input>, Arc<stages::face_crop::FaceModels>)>,
    crop_stage: Arc<dyn Stage>,
    /// `faces="all"`: the crop of face k, one stage object per k.
    face_stages: Vec<Arc<dyn Stage>>,
    /// The pairs stage of every teacher but diffusion's (whose stage names its item).
    teacher_stage: Option<Arc<dyn Stage>>,
    control_stages: Vec<(String, Arc<dyn Stage>)>,
}

impl<'a> ItemLowering<'a> {
    fn new(
        project: &'a Project,
        recipe: &'a Recipe,
        shared: &'a SharedTeacher,
        digest_of: &'a mut dyn FnMut(&Path) -> std::io::Result<Digest>,
        nodes: &'a mut Vec<PlanNode>,
        diags: &'a mut Diagnostics,
    ) -> ItemLowering<'a> {
        let crop_spec = &recipe.sources.crop;
        let face_models = (crop_spec.mode.value == CropMode::Face).then(|| {
            let inputs = face_model_inputs(recipe, shared);
            (inputs, Arc::new(stages::face_crop::FaceModels::default()))
        });
        let crop_stage: Arc<dyn Stage> = match &face_models {
            Some((_, loaded)) => Arc::new(stages::face_crop::FaceCrop {
                size_px: crop_spec.size_px,
                margin: crop_spec.margin,
                models: loaded.clone(),
                face: None,
            }),
            None => Arc::new(stages::crop::CenterCrop {
                size_px: crop_spec.size_px,
            }),
        };
        ItemLowering {
            project,
            recipe,
            shared,
            digest_of,
            nodes,
            diags,
            face_models,
            crop_stage,
            face_stages: Vec::new(),
            teacher_stage: shared_pairs_stage(recipe),
            control_stages: Vec::new(),
        }
    }

    /// The item's image (a synthetic one is a stage of its own), then its crop; returns
    /// the crop's node.
    fn add_crop(&mut self, item: &SourceItem) -> usize {
        let image_input = match &item.origin {
            ItemOrigin::Synthetic { seed, index } => {
                self.nodes.push(PlanNode {
                    id: StageId::synthetic(&item.name),
                    item: Some(item.name.clone()),
                    stage: Arc::new(stages::synthetic::SyntheticSource {
                        seed: *seed,
                        index: *index,
                        size_px: self.recipe.sources.crop.size_px,
                    }),
                    inputs: vec![],
                });
                InputRef::Stage {
                    node: self.nodes.len() - 1,
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
        let inputs = match &self.face_models {
            Some((model_inputs, _)) => std::iter::once(image)
                .chain(model_inputs.iter().cloned())
                .collect(),
            None => vec![image],
        };
        let stage = self.crop_stage_of(item.face);
        self.nodes.push(PlanNode {
            id: StageId::crop(&item.name),
            item: Some(item.name.clone()),
            stage,
            inputs,
        });
        self.nodes.len() - 1
    }

    /// The crop stage of face k (`faces="all"`), else the one crop stage.
    fn crop_stage_of(&mut self, face: Option<u32>) -> Arc<dyn Stage> {
        let (Some(k), Some((_, loaded))) = (face, &self.face_models) else {
            return self.crop_stage.clone();
        };
        let crop_spec = &self.recipe.sources.crop;
        while self.face_stages.len() < k as usize {
            self.face_stages.push(Arc::new(stages::face_crop::FaceCrop {
                size_px: crop_spec.size_px,
                margin: crop_spec.margin,
                models: loaded.clone(),
                face: Some(self.face_stages.len() as u32 + 1),
            }));
        }
        self.face_stages[k as usize - 1].clone()
    }

    /// The item's pairs stage and its inputs, per teacher kind; None (with a
    /// diagnostic) when the item's pair cannot be made.
    fn pairs_stage(
        &mut self,
        item: &SourceItem,
        crop: usize,
    ) -> Option<(Arc<dyn Stage>, Vec<Input>)> {
        let source = Input {
            name: stages::procedural::SOURCE.pattern.into(),
            from: InputRef::Stage {
                node: crop,
                output: "image".into(),
            },
        };
        match &self.recipe.teacher {
            Teacher::Procedural(_) | Teacher::Command { .. } => {
                Some((self.teacher_stage(), vec![source]))
            }
            Teacher::Directory { path } => {
                let target = self.directory_target(item, path)?;
                Some((self.teacher_stage(), vec![source, target]))
            }
            Teacher::Diffusion(t) => self.diffusion_pairs(item, t, crop, source),
        }
    }

    fn teacher_stage(&self) -> Arc<dyn Stage> {
        self.teacher_stage
            .clone()
            .expect("made in `new` for this teacher")
    }

    /// The item's target file in the pair directory, as an input; None (with a
    /// diagnostic) when it is missing, ambiguous or unreadable.
    fn directory_target(&mut self, item: &SourceItem, path: &Spanned<String>) -> Option<Input> {
        let dir = self.project.root.join(&path.value);
        // A frame's pair is named after the whole frame name (`a.mp4@0.500s.png`).
        let name = Path::new(&item.name);
        let stem = match item.origin {
            ItemOrigin::Frame { .. } => name.file_name(),
            _ => name.file_stem(),
        }
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
        let target = match stages::directory_teacher::find_target(&dir, &stem) {
            Ok(Some(target)) => target,
            Ok(None) => {
                let d = match &path.loc {
                    Some(loc) => RecipeDiagnostic::at(
                        loc,
                        "missing-pair",
                        format!(
                            "no pair for source `{}` in `{}` (looked for {stem}.png/.jpg/.jpeg)",
                            item.name, path.value
                        ),
                    )
                    .label("pair directory"),
                    None => RecipeDiagnostic::nowhere(
                        "missing-pair",
                        format!("no pair for source `{}`", item.name),
                    ),
                };
                self.diags.push(d);
                return None;
            }
            Err(msg) => {
                self.diags
                    .push(RecipeDiagnostic::nowhere("ambiguous-pair", msg));
                return None;
            }
        };
        let digest = match (self.digest_of)(&target) {
            Ok(digest) => digest,
            Err(e) => {
                self.diags.push(RecipeDiagnostic::nowhere(
                    "unreadable-source",
                    format!("cannot read pair target {}: {e}", target.display()),
                ));
                return None;
            }
        };
        Some(Input {
            name: stages::directory_teacher::TARGET_FILE.pattern.into(),
            from: InputRef::File {
                path: target,
                digest,
            },
        })
    }

    /// A diffusion teacher's pairs: the crop, the item's attributes (when the recipe
    /// names any) and one control map per ControlNet.
    fn diffusion_pairs(
        &mut self,
        item: &SourceItem,
        t: &crate::recipe::DiffusionTeacher,
        crop: usize,
        source: Input,
    ) -> Option<(Arc<dyn Stage>, Vec<Input>)> {
        let mut inputs = vec![source];
        let with_attributes = !self.recipe.attributes.is_empty();
        if with_attributes {
            inputs.push(self.attributes_input(item, crop)?);
        }
        inputs.extend(self.add_control_maps(item, t, crop));
        let stage: Arc<dyn Stage> = Arc::new(stages::diffusion_pairs::DiffusionPairs {
            item: item.name.clone(),
            teacher: self
                .shared
                .teacher
                .clone()
                .expect("set for a diffusion teacher"),
            models: self.shared.models.clone(),
            with_attributes,
        });
        Some((stage, inputs))
    }

    /// Adds the item's attributes stage (reading its sidecar file when there is one);
    /// returns the pairs stage's input from it. None (with a diagnostic) when the
    /// sidecar cannot be read.
    fn attributes_input(&mut self, item: &SourceItem, crop: usize) -> Option<Input> {
        let sidecar = match &item.origin {
            // A clip's sidecar describes every frame of it.
            ItemOrigin::File { path, .. } | ItemOrigin::Frame { clip: path, .. } => {
                let p = stages::attributes::sidecar_path(path);
                p.is_file().then_some(p)
            }
            ItemOrigin::Synthetic { .. } => None,
        };
        let mut sidecar_input = None;
        if let Some(path) = sidecar {
            match (self.digest_of)(&path) {
                Ok(digest) => {
                    sidecar_input = Some(Input {
                        name: stages::attributes::SIDECAR.pattern.into(),
                        from: InputRef::File { path, digest },
                    })
                }
                Err(e) => {
                    self.diags.push(RecipeDiagnostic::nowhere(
                        "unreadable-source",
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    return None;
                }
            }
        }
        let node = super::clip::add_attributes(
            self.recipe,
            item,
            crop,
            sidecar_input,
            &self.shared.detection,
            self.nodes,
        );
        Some(Input {
            name: stages::diffusion_pairs::ATTRIBUTES.pattern.into(),
            from: InputRef::Stage {
                node,
                output: "attributes".into(),
            },
        })
    }

    /// Adds one control map per preprocessor, shared by the presets that use it;
    /// returns the pairs stage's input per preset.
    fn add_control_maps(
        &mut self,
        item: &SourceItem,
        t: &crate::recipe::DiffusionTeacher,
        crop: usize,
    ) -> Vec<Input> {
        let mut drawn: Vec<(String, usize)> = Vec::new();
        let mut inputs = Vec::new();
        for c in &t.controlnets {
            let node = match drawn.iter().find(|(p, _)| *p == c.preprocessor) {
                Some((_, n)) => *n,
                None => {
                    let stage = control_stage(&mut self.control_stages, &c.preprocessor);
                    self.nodes.push(PlanNode {
                        id: StageId::control(&c.preprocessor, &item.name),
                        item: Some(item.name.clone()),
                        stage,
                        inputs: control_inputs(crop, &c.preprocessor),
                    });
                    drawn.push((c.preprocessor.clone(), self.nodes.len() - 1));
                    self.nodes.len() - 1
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
        inputs
    }
}

/// The face crop's model files as its inputs, by the ports it reads them from.
fn face_model_inputs(recipe: &Recipe, shared: &SharedTeacher) -> Vec<Input> {
    recipe
        .sources
        .crop
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
        .collect()
}

/// The one pairs stage of a teacher configured alike for every item (all but
/// diffusion, whose stage names its item).
fn shared_pairs_stage(recipe: &Recipe) -> Option<Arc<dyn Stage>> {
    let size_px = recipe.sources.crop.size_px;
    match &recipe.teacher {
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
    }
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
