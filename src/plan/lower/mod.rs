//! Lowering a checked recipe into plan nodes, in pipeline order: the source items
//! (`items.rs`) → per item the crop, control maps, attributes and pairs (`pairs.rs`; the
//! CLIP stages, attributes detection and the identity filter, in `clip.rs`) → training, export, targets and the bundle (`model.rs`). Problems that need the file
//! system (a glob that matches nothing, a pair missing from a directory teacher) are
//! diagnostics with spans too.

mod clip;
mod items;
mod model;
mod pairs;
mod scan;

pub use items::{glob_literal_prefix, image_files, is_holdout, ItemOrigin, SourceItem};
pub use model::recipe_inputs_digest;

use super::{Plan, PlanNode};
use crate::digest::Digest;
use crate::project::Project;
use crate::recipe::{Diagnostics, Recipe, RecipeDiagnostic};
use crate::video::FrameStore;
use std::path::Path;

/// Lowers `recipe` into a plan. `digest_of` hashes a source file (through the stat cache).
/// Video frames go to the project's default cache (`cache/`); the CLI names its cache
/// with [`lower_with_frames`].
pub fn lower(
    project: &Project,
    recipe: &Recipe,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
) -> Result<Plan, Diagnostics> {
    let mut frames = FrameStore::new(&project.root.join("cache"));
    lower_with(project, recipe, digest_of, Some(&mut frames), true)
}

/// Lowers `recipe`, decoding video clips into (or finding their frames in) `frames`.
pub fn lower_with_frames(
    project: &Project,
    recipe: &Recipe,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    frames: &mut FrameStore,
) -> Result<Plan, Diagnostics> {
    lower_with(project, recipe, digest_of, Some(frames), true)
}

/// `effectc check`: the same lowering, so check finds what build would, without reading
/// any file's content. A source only has to be readable (its "digest" stands for its
/// path: the plan's keys are meaningless and never used); model pins are left to the
/// build. Video clips are opened, not decoded, so their frames are not listed.
pub fn lower_for_check(project: &Project, recipe: &Recipe) -> Result<Plan, Diagnostics> {
    let mut readable = |p: &Path| -> std::io::Result<Digest> {
        std::fs::File::open(p)?;
        Ok(Digest::of_bytes(p.as_os_str().as_encoded_bytes()))
    };
    lower_with(project, recipe, &mut readable, None, false)
}

fn lower_with(
    project: &Project,
    recipe: &Recipe,
    digest_of: &mut dyn FnMut(&Path) -> std::io::Result<Digest>,
    frames: Option<&mut FrameStore>,
    verify_pins: bool,
) -> Result<Plan, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut failures = Vec::new();
    let mut frames = frames;
    let items = items::source_items(
        project,
        recipe,
        digest_of,
        frames.as_deref_mut(),
        &mut diags,
        &mut failures,
    );
    // What the plan reads from the pictures (near-duplicates, faces) needs their content:
    // `check` (no frame store) plans each picture as one item.
    let (items, duplicates) = match (recipe.sources.dedupe, frames.as_deref_mut()) {
        (Some(distance), Some(store)) => scan::near_duplicates(items, distance, store),
        _ => (items, Vec::new()),
    };
    let shared = pairs::shared_teacher(project, recipe, digest_of, verify_pins, &mut diags);
    let crop = &recipe.sources.crop;
    let items = match (crop.faces.value, frames.as_deref_mut()) {
        (crate::recipe::FaceSelection::All, Some(store)) => {
            let model = |i: usize| crop.models.get(i).and_then(|m| shared.model(&m.name));
            match (model(0), model(1)) {
                (Some(detector), Some(mesh)) => {
                    scan::one_item_per_face(items, detector, mesh, crop.size_px, store, &mut diags)
                }
                // A missing model is already a diagnostic.
                _ => items,
            }
        }
        _ => items,
    };
    let mut shared = shared;
    shared.detection =
        clip::attribute_detection(project, recipe, &items, digest_of, verify_pins, &mut diags);
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut nodes: Vec<PlanNode> = Vec::with_capacity(items.len() * 3 + 8);
    let pairs = pairs::add_item_stages(
        project, recipe, &items, &shared, digest_of, &mut nodes, &mut diags,
    );
    let identity = clip::add_identity_stages(
        project,
        recipe,
        &pairs,
        digest_of,
        verify_pins,
        &mut nodes,
        &mut diags,
    );
    if !diags.is_empty() {
        return Err(diags);
    }
    pairs::add_near_duplicates(recipe, &duplicates, &mut nodes);
    pairs::add_pairs_sheet(recipe, &pairs, &mut nodes);
    model::add_model_stages(recipe, &pairs, identity, &mut nodes);
    if let Err(d) = wiring_diagnostic(&nodes) {
        diags.push(d);
        return Err(diags);
    }
    let mut plan = Plan::new(recipe, nodes);
    plan.source_failures = failures;
    Ok(plan)
}

/// Both ends of every wire checked ([`super::check_wiring`]) before anything runs; a
/// mismatch (a misspelt port) is effectc's own bug, reported as such.
pub fn wiring_diagnostic(nodes: &[PlanNode]) -> Result<(), RecipeDiagnostic> {
    super::check_wiring(nodes).map_err(|e| {
        RecipeDiagnostic::nowhere(
            "planner-bug",
            format!("{e} (a bug in effectc's planner: please report it)"),
        )
    })
}
