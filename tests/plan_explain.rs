//! `plan`, `explain` and `graph` tell a person what would run and why, without running it.

mod common;
use common::*;

#[test]
fn plan_names_the_changed_param_and_explain_follows_it_downstream() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let fresh = p.run(&["plan", "small"]);
    assert!(fresh.stdout().contains("never built"), "{}", fresh.stdout());
    p.build("small");
    let clean = p.run(&["plan", "small"]);
    assert!(
        clean
            .stdout()
            .starts_with("small: 21 stages, 21 cached, 0 stale"),
        "{}",
        clean.stdout()
    );

    p.recipe("small", &SMALL_BRICK.replace("stud-size 4", "stud-size 6"));
    let plan = p.run(&["plan", "small"]);
    insta::assert_snapshot!("plan_after_stud_size_edit", plan.stdout());
    let explain = p.run(&["explain", "small", "pairs/synthetic-0001"]);
    assert!(
        explain
            .stdout()
            .contains("teacher.stud-size changed: 4 → 6"),
        "{}",
        explain.stdout()
    );
    let sheet = p.run(&["explain", "small", "pairs-sheet"]);
    assert!(
        sheet
            .stdout()
            .contains("stale unless upstream `pairs/synthetic-0000` reproduces its outputs"),
        "{}",
        sheet.stdout()
    );
    assert!(
        sheet.stdout().contains("teacher.stud-size changed"),
        "explain walks up to the cause: {}",
        sheet.stdout()
    );
    // Nothing ran: planning is free.
    assert_eq!(p.build("small").ran_of_kind("pairs"), 6);
}

#[test]
fn explain_suggests_a_stage_name() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let r = p.run(&["explain", "small", "pairs-shet"]);
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr().contains("did you mean `pairs-sheet`?"),
        "{}",
        r.stderr()
    );
}

#[test]
fn graph_prints_the_dag_as_dot() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let r = p.run(&["graph", "small", "--dot"]);
    assert_eq!(r.code(), 0);
    let dot = r.stdout();
    assert!(dot.starts_with("digraph \"small\""));
    assert!(
        dot.contains("\"crop (per item)\" -> \"pairs (per item)\""),
        "{dot}"
    );
    assert!(dot.contains("6 items"));
}

#[test]
fn a_new_lr_schedule_retrains_teacher_and_student_but_draws_no_pair() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    p.build("small");
    p.recipe(
        "small",
        &SMALL_BRICK.replace("batch 2;", "batch 2; lr-schedule \"cosine\"; beta1 0.9;"),
    );
    let explain = p.run(&["explain", "small", "train-teacher"]);
    assert!(
        explain
            .stdout()
            .contains("train.lr-schedule changed: constant → cosine"),
        "{}",
        explain.stdout()
    );
    let r = p.build("small");
    assert_eq!(r.ran_of_kind("pairs"), 0);
    let ran = r.ran_stages();
    for stage in ["train-teacher", "distill-student"] {
        assert!(
            ran.iter().any(|s| s == stage),
            "{stage} must retrain: {ran:?}"
        );
    }
}

#[test]
fn a_long_changed_value_shows_the_part_that_changed_in_context() {
    // A command teacher whose script is one long line; one number in it changes.
    let script = |high: &str| {
        format!("cat # ffmpeg -loglevel error -i in.png -vf split[a][b];[b]edgedetect=low=0.05:high={high},negate[e];[a][e]blend=all_mode=multiply out.png")
    };
    let recipe = |high: &str| {
        format!(
            r#"
effect "long" {{
    sources {{
        synthetic count=3 seed=1
        crop "center" size=32
    }}
    teacher "command" {{
        run "sh" "-c" "{}"
    }}
    student width=4 blocks=1 teacher-width=4
    train {{ teacher-steps 2; student-steps 2; batch 2; }}
}}
"#,
            script(high)
        )
    };
    let p = TestProject::new();
    p.recipe("long", &recipe("0.15"));
    p.build("long");
    p.recipe("long", &recipe("0.25"));
    let change = "teacher.run.2 changed: …edgedetect=low=0.05:high=[0.15 → 0.25],negate[e];[a][e]blend=all_mode…";
    let plan = p.run(&["plan", "long"]);
    assert!(plan.stdout().contains(change), "{}", plan.stdout());
    assert!(
        !plan.stdout().contains(&script("0.15")),
        "{}",
        plan.stdout()
    );
    let explain = p.run(&["explain", "long", "pairs/synthetic-0001"]);
    assert!(explain.stdout().contains(change), "{}", explain.stdout());
}
