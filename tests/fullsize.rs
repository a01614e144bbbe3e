//! The full-size project's small sibling: tests/projects/fullsize (the lego recipe's shape:
//! face-mask base, student 32/6, teacher 128, batch 8, all three targets, real photos,
//! procedural teacher) with its crops at 128 px instead of 512 and a dozen items, built
//! end to end. `cargo bench --bench fullsize` builds it at 512 px and prints the table.

mod common;
#[path = "common/fullsize.rs"]
mod fullsize;

use fullsize::{fullsize_project, markdown, stage_table};

#[test]
fn the_lego_shaped_project_builds_every_stage_and_its_table() {
    let p = fullsize_project(12);
    p.edit(
        "effects/fullsize.kdl",
        r#"crop "center" size=512"#,
        r#"crop "center" size=128"#,
    );
    let r = p.build("fullsize");
    let rows = stage_table(&r.events);
    eprintln!("{}", markdown(&rows));
    let mut expected: Vec<String> = ["train-teacher", "distill-student", "export", "bundle"]
        .map(String::from)
        .to_vec();
    expected.push("crop (per item)".into());
    for t in ["onnx", "ios-coreml", "android-nnapi"] {
        expected.push(format!("target:{t}"));
        expected.push(format!("verify:{t}"));
    }
    for stage in &expected {
        let row = rows
            .iter()
            .find(|row| &row.stage == stage)
            .unwrap_or_else(|| panic!("no {stage} in the table:\n{}", markdown(&rows)));
        assert!(row.seconds >= 0.0 && row.count >= 1, "{row:?}");
    }
    // Every photo became an item, and the base's shape survived the merge: the teacher
    // is width 128 (5.3 M parameters), the student 32/6 (3.65 GMACs at 512 px, 0.61 of them the full-resolution `fine` block).
    assert_eq!(
        rows.iter()
            .find(|r| r.stage == "crop (per item)")
            .unwrap()
            .count,
        12
    );
    let params = |stage: &str| r.stage(stage)["metrics"]["params"].as_f64().unwrap();
    assert!(
        params("train-teacher") > 5e6,
        "{}",
        r.stage("train-teacher")
    );
    let macs = r.stage("distill-student")["metrics"]["macs_512"]
        .as_f64()
        .unwrap();
    assert!(
        (3.2e9..4.0e9).contains(&macs),
        "student MACs at 512 px: {macs}"
    );
}
