//! Stage keys are the cache's contract across releases: the same recipe and the same
//! inputs must give the same key tomorrow, or every user's cache goes cold (or, worse,
//! two different computations share a key). These pin the hex keys of a few stages of
//! the shipped demo, `effects/brick.kdl`, so any change to a kind, a version, a param's
//! spelling or encoding, or an input's name fails here first. A deliberate change
//! (a version bump) updates the pinned value in the same commit.

use effectc::digest::Digest;
use effectc::plan::lower::lower;
use effectc::project::Project;
use effectc::recipe::Loader;
use std::collections::BTreeMap;

/// Each stage's key over fixed stand-in digests for its inputs (the first stages read no
/// stage outputs, so theirs are the real keys).
fn keys_of_brick(ids: &[&str]) -> BTreeMap<String, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = Project::discover(root).unwrap();
    let loader = Loader::new(&project);
    let recipe = loader.load("brick").unwrap();
    let plan = lower(&project, &recipe, &mut |p| Digest::of_file(p)).unwrap();
    ids.iter()
        .map(|id| {
            let i = plan
                .node_index(id)
                .unwrap_or_else(|| panic!("brick has no stage {id}"));
            let inputs: BTreeMap<String, Digest> = plan.nodes[i]
                .inputs
                .iter()
                .map(|inp| (inp.name.clone(), Digest::of_bytes(inp.name.as_bytes())))
                .collect();
            (id.to_string(), plan.key_of(i, &inputs).hex())
        })
        .collect()
}

#[test]
fn the_demo_stage_keys_do_not_change_by_accident() {
    let keys = keys_of_brick(&[
        "synthetic/synthetic-0000",
        "crop/synthetic-0000",
        "pairs/synthetic-0000",
        "train-teacher",
        "distill-student",
        "export",
        "target:onnx",
        "bundle",
    ]);
    let pinned: BTreeMap<String, String> = [
        ("synthetic/synthetic-0000", "PIN"),
        ("crop/synthetic-0000", "PIN"),
        ("pairs/synthetic-0000", "PIN"),
        ("train-teacher", "PIN"),
        ("distill-student", "PIN"),
        ("export", "PIN"),
        ("target:onnx", "PIN"),
        ("bundle", "PIN"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        keys, pinned,
        "a stage key changed: if deliberate (a version bump), pin the new value"
    );
}

#[test]
fn a_key_moves_with_its_params_and_inputs_and_nothing_else() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = Project::discover(root).unwrap();
    let loader = Loader::new(&project);
    let recipe = loader.load("brick").unwrap();
    let plan = lower(&project, &recipe, &mut |p| Digest::of_file(p)).unwrap();
    let i = plan.node_index("crop/synthetic-0000").unwrap();
    let inputs = |d: &[u8]| BTreeMap::from([("image".to_string(), Digest::of_bytes(d))]);
    assert_eq!(plan.key_of(i, &inputs(b"a")), plan.key_of(i, &inputs(b"a")));
    assert_ne!(plan.key_of(i, &inputs(b"a")), plan.key_of(i, &inputs(b"b")));
    // Two items' crops with the same input bytes share their key (content, not name).
    let j = plan.node_index("crop/synthetic-0001").unwrap();
    assert_eq!(plan.key_of(i, &inputs(b"a")), plan.key_of(j, &inputs(b"a")));
}
