//! The CLIP stages: per item the `attributes` stage (with an `image` input and the CLIP
//! model only when some attribute is neither in the recipe nor in the item's sidecar),
//! per pair the `identity` score, and the whole-dataset `identity-filter` whose dropped
//! list training reads. The CLIP weights are checked before any work, and only when some
//! stage will run them.

use super::items::{ItemOrigin, SourceItem};
use crate::digest::Digest;
use crate::models::{find_model, model_digest, searched, ResolvedModel};
use crate::plan::{Input, InputRef, PlanNode, StageId};
use crate::project::Project;
use crate::recipe::stdlib::ModelEntry;
use crate::recipe::{ClipModelSpec, Diagnostics, Recipe, RecipeDiagnostic, Teacher};
use crate::stages::attributes::{parse_sidecar, sidecar_path, undetermined, ClipModelUse};
use crate::stages::identity::{score_input, IdentityFilter, ItemIdentity};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What the attributes stages need from CLIP: the model, and which items need it.
#[derive(Default)]
pub struct AttributeDetection {
    pub clip: Option<ClipModelUse>,
    /// Items with an attribute neither the recipe nor their sidecar gives.
    pub items: BTreeSet<String>,
}

/// The sidecar of a file item, read at plan time (a few bytes); unreadable or malformed
/// ones count as empty here, and the stage reports them.
fn sidecar_values(item: &SourceItem) -> BTreeMap<String, String> {
    let ItemOrigin::File { path, .. } = &item.origin else {
        return BTreeMap::new();
    };
    let p = sidecar_path(path);
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|t| parse_sidecar(&t, &p).ok())
        .unwrap_or_default()
}

/// Which items need CLIP for their attributes, and the model when any does.
pub fn attribute_detection(
    project: &Project,
    recipe: &Recipe,
    items: &[SourceItem],
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    verify_pins: bool,
    diags: &mut Diagnostics,
) -> AttributeDetection {
    let mut out = AttributeDetection::default();
    if !matches!(recipe.teacher, Teacher::Diffusion(_)) || recipe.attributes.is_empty() {
        return out;
    }
    if recipe.attributes.iter().all(|u| u.fixed.is_some()) {
        return out;
    }
    for item in items {
        if !undetermined(&recipe.attributes, &sidecar_values(item)).is_empty() {
            out.items.insert(item.name.clone());
        }
    }
    if let Some(first) = out.items.iter().next() {
        let why = format!(
            "detecting attributes ({} item(s) without every value in a sidecar, e.g. {first})",
            out.items.len()
        );
        out.clip = resolve(
            project,
            &recipe.attributes_model,
            &why,
            digest_of,
            verify_pins,
            diags,
        );
    }
    out
}

/// A registry model found in the models directory, its pin checked; a diagnostic naming
/// the file, its SHA-256 and where it was looked for otherwise.
fn resolve_entry(
    project: &Project,
    entry: &ModelEntry,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    verify_pins: bool,
    problems: &mut Vec<String>,
) -> Option<ResolvedModel> {
    let Some(path) = find_model(project, &entry.file) else {
        problems.push(format!(
            "  {} — file {} (sha256 {}) not found in {}",
            entry.name,
            entry.file,
            entry.sha256.as_deref().unwrap_or("not pinned"),
            searched(project)
        ));
        return None;
    };
    match model_digest(&path, digest_of) {
        Ok(d) => {
            if let Some(want) = entry.sha256.as_ref().filter(|_| verify_pins) {
                if !d.hex().eq_ignore_ascii_case(want) {
                    problems.push(format!(
                        "  {} — {} has sha256 {}, expected {}",
                        entry.name,
                        path.display(),
                        d.hex(),
                        want
                    ));
                    return None;
                }
            }
            Some(ResolvedModel {
                entry: entry.clone(),
                path,
                digest: d,
            })
        }
        Err(e) => {
            problems.push(format!(
                "  {} — cannot read {}: {e}",
                entry.name,
                path.display()
            ));
            None
        }
    }
}

/// The CLIP model of `spec` (and the tokenizer a single file needs), or a diagnostic.
pub fn resolve(
    project: &Project,
    spec: &ClipModelSpec,
    why: &str,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    verify_pins: bool,
    diags: &mut Diagnostics,
) -> Option<ClipModelUse> {
    let Some(entry) = &spec.entry else {
        // The checker said why (unknown or not a CLIP model), unless it is the default.
        if spec.name.loc.is_none() {
            diags.push(RecipeDiagnostic::nowhere(
                "missing-models",
                format!(
                    "the registry has no CLIP model `{}`, needed for {why}",
                    spec.name.value
                ),
            ));
        }
        return None;
    };
    let mut problems = Vec::new();
    let model = resolve_entry(project, entry, digest_of, verify_pins, &mut problems);
    let mut tokenizer = None;
    if let Some(m) = &model {
        let has_vocab = m.path.is_dir() && m.path.join("vocab.json").is_file();
        if !has_vocab {
            match &spec.tokenizer {
                Some(t) => {
                    tokenizer = resolve_entry(project, t, digest_of, verify_pins, &mut problems)
                }
                None => problems.push(format!(
                    "  {} — a single-file CLIP model needs the `clip-tokenizer` registry entry",
                    entry.name
                )),
            }
        }
    }
    if !problems.is_empty() {
        let message = format!(
            "{} CLIP model file(s) missing or not the pinned ones, needed for {why}:\n{}",
            problems.len(),
            problems.join("\n")
        );
        let d = match &spec.name.loc {
            Some(loc) => {
                RecipeDiagnostic::at(loc, "missing-models", message).label("this CLIP model")
            }
            None => RecipeDiagnostic::nowhere("missing-models", message),
        };
        diags.push(d.help(format!(
            "put the files in {} (or set EFFECTC_MODELS), or `effectc models import PATH --name NAME`; or give the values in sidecars / the recipe",
            searched(project)
        )));
        return None;
    }
    Some(ClipModelUse {
        model: model?,
        tokenizer,
    })
}

/// One item's `attributes` node; `crop` is its crop node. Returns the node's index.
pub fn add_attributes(
    recipe: &Recipe,
    item: &SourceItem,
    crop: usize,
    sidecar: Option<Input>,
    detection: &AttributeDetection,
    nodes: &mut Vec<PlanNode>,
) -> usize {
    let detect = detection.items.contains(&item.name);
    let mut inputs: Vec<Input> = sidecar.into_iter().collect();
    if detect {
        inputs.push(Input {
            name: crate::stages::attributes::IMAGE.pattern.into(),
            from: InputRef::Stage {
                node: crop,
                output: "image".into(),
            },
        });
    }
    nodes.push(PlanNode {
        id: StageId::attributes(&item.name),
        item: Some(item.name.clone()),
        stage: std::sync::Arc::new(crate::stages::attributes::ItemAttributes {
            item: item.name.clone(),
            uses: recipe.attributes.clone(),
            has_sidecar: inputs.iter().any(|i| i.name == "sidecar"),
            clip: if detect { detection.clip.clone() } else { None },
        }),
        inputs,
    });
    nodes.len() - 1
}

/// With an `identity` node: an `identity/ITEM` score per pair and the `identity-filter`
/// over all of them. Returns the filter's node (training reads its `dropped.json`).
#[allow(clippy::too_many_arguments)]
pub fn add_identity_stages(
    project: &Project,
    recipe: &Recipe,
    pairs: &[(SourceItem, usize, usize)],
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    verify_pins: bool,
    nodes: &mut Vec<PlanNode>,
    diags: &mut Diagnostics,
) -> Option<usize> {
    let identity = recipe.identity.as_ref()?;
    if pairs.is_empty() {
        return None;
    }
    let clip = resolve(
        project,
        &identity.model,
        "the identity filter",
        digest_of,
        verify_pins,
        diags,
    )?;
    let attributes: BTreeMap<String, usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.stage.kind() == "attributes")
        .filter_map(|(i, n)| n.item.clone().map(|item| (item, i)))
        .collect();
    let mut filter_inputs = Vec::new();
    let mut items = Vec::new();
    for (item, crop, pair) in pairs {
        let mut inputs = vec![
            Input {
                name: crate::stages::identity::SOURCE.pattern.into(),
                from: InputRef::Stage {
                    node: *crop,
                    output: "image".into(),
                },
            },
            Input {
                name: crate::stages::identity::RESULT.pattern.into(),
                from: InputRef::Stage {
                    node: *pair,
                    output: "target".into(),
                },
            },
        ];
        let with_attributes = match attributes.get(&item.name) {
            Some(&a) => {
                inputs.push(Input {
                    name: crate::stages::identity::ATTRIBUTES.pattern.into(),
                    from: InputRef::Stage {
                        node: a,
                        output: "attributes".into(),
                    },
                });
                true
            }
            None => false,
        };
        nodes.push(PlanNode {
            id: StageId::identity(&item.name),
            item: Some(item.name.clone()),
            stage: std::sync::Arc::new(ItemIdentity {
                item: item.name.clone(),
                keep: identity.keep.clone(),
                clip: clip.clone(),
                with_attributes,
            }),
            inputs,
        });
        filter_inputs.push(Input {
            name: score_input(&item.name),
            from: InputRef::Stage {
                node: nodes.len() - 1,
                output: "score.json".into(),
            },
        });
        items.push(item.name.clone());
    }
    nodes.push(PlanNode {
        id: StageId::identity_filter(),
        item: None,
        stage: std::sync::Arc::new(IdentityFilter {
            min_similarity: identity.min_similarity,
            items,
        }),
        inputs: filter_inputs,
    });
    Some(nodes.len() - 1)
}
