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
        (
            "synthetic/synthetic-0000",
            "1968a700bd102679a37784b114cbd67c295835bd63d06ee2dc88cd2854f9bb3b",
        ),
        (
            // crop v2: skips an undecodable, truncated or too-small source.
            "crop/synthetic-0000",
            "ba121552114b64cc6e488b02b6daef3411c9af2016aca96ac828066dd927acea",
        ),
        (
            "pairs/synthetic-0000",
            "316587769e2f51f2d3ce4e167e476e5124b7b89a21b1505c585c8b6c93d15195",
        ),
        (
            "train-teacher",
            "5c1b48599694d8357d5f76c4354a5e6864b92de7f04863049c367aa7f4e63ed7",
        ),
        (
            "distill-student",
            "a40de448c2533c0645fe797c3aa33180c312c4f7a2aa854bdc9e895edef95569",
        ),
        (
            // export v2 reading the teacher's weights: its outputs on the held-out frames.
            "export",
            "a4990d00be157149641e9f8c65f22ae4032fac0f4d85ebadddff4d4a49ebf41d",
        ),
        (
            "target:onnx",
            "2fbb9d237b25e336a9d6abe1cef08a215ffe953db9fa4d2f94b09cadc912377a",
        ),
        (
            // bundle v7: the contact sheet's teacher column (reads holdout-teacher.npy);
            // moved again with target v3 for int8 (requantized ADD inputs) upstream.
            "bundle",
            "17435d3dc8ab5d961a9db4c4b57204fdd534403147dc13dc8d3fff43f9ec0cdb",
        ),
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
