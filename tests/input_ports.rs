//! Inputs are declared like outputs (`Stage::inputs`), and the planner checks both ends
//! of every wire before anything runs: a misspelt input name is a planner-bug diagnostic
//! at plan time, not a report row or a training pair silently missing at run time.

use effectc::digest::Digest;
use effectc::plan::lower::{lower, wiring_diagnostic};
use effectc::plan::Plan;
use effectc::project::Project;
use effectc::recipe::Loader;

fn brick() -> Plan {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = Project::discover(root).unwrap();
    let recipe = Loader::new(&project).load("brick").unwrap();
    lower(&project, &recipe, &mut |p| Digest::of_file(p)).unwrap()
}

/// Renames input `from` of stage `id` to `to`, as a typo in lowering would.
fn misspell(plan: &mut Plan, id: &str, from: &str, to: &str) {
    let i = plan.node_index(id).unwrap();
    let input = plan.nodes[i]
        .inputs
        .iter_mut()
        .find(|inp| inp.name == from)
        .unwrap_or_else(|| panic!("{id} has no input {from}"));
    input.name = to.into();
}

#[test]
fn the_demo_is_wired_to_declared_ports() {
    assert!(wiring_diagnostic(&brick().nodes).is_ok());
}

#[test]
fn a_misspelt_input_port_fails_at_plan_time_as_a_planner_bug() {
    let mut plan = brick();
    misspell(&mut plan, "export", "student-weights", "student-weight");
    let d = wiring_diagnostic(&plan.nodes).unwrap_err();
    assert_eq!(d.code, "planner-bug");
    assert!(
        d.message
            .contains("stage export is wired an input `student-weight`, which its kind `export` does not declare"),
        "{}",
        d.message
    );
}

#[test]
fn a_misspelt_per_target_input_fails_too() {
    let mut plan = brick();
    misspell(
        &mut plan,
        "bundle",
        "verify/onnx/check.json",
        "verify/onnx/check.jsn",
    );
    let d = wiring_diagnostic(&plan.nodes).unwrap_err();
    assert_eq!(d.code, "planner-bug");
    assert!(
        d.message.contains("`verify/onnx/check.jsn`"),
        "{}",
        d.message
    );
}

#[test]
fn a_required_input_left_unwired_fails_at_plan_time() {
    let mut plan = brick();
    let i = plan.node_index("export").unwrap();
    plan.nodes[i]
        .inputs
        .retain(|inp| inp.name != "teacher-weights");
    let d = wiring_diagnostic(&plan.nodes).unwrap_err();
    assert_eq!(d.code, "planner-bug");
    assert!(
        d.message
            .contains("stage export is not wired its required input `teacher-weights`"),
        "{}",
        d.message
    );
}
