//! The whole-dataset stages after the pairs: teacher training, the student's
//! distillation, its export, one target and one verification per target profile, and
//! the bundle.

use super::items::SourceItem;
use crate::digest::{Digest, KeyHasher};
use crate::plan::{Input, InputRef, PlanNode, StageId};
use crate::recipe::{Recipe, TargetSpec};
use crate::stages::train::{input_name, TrainStage};
use crate::stages::{bundle, export, target, verify, InputPort};
use crate::train::job::Role;

/// Adds the whole-dataset stages after the pairs (training, export, verification,
/// bundle) as they are built. `pairs` is (item, crop node, pairs node) per item.
pub fn add_model_stages(
    recipe: &Recipe,
    pairs: &[(SourceItem, usize, usize)],
    identity_filter: Option<usize>,
    nodes: &mut Vec<PlanNode>,
) {
    if pairs.is_empty() {
        return;
    }
    let (teacher, student) = add_trainings(recipe, pairs, identity_filter, nodes);
    if recipe.targets.is_empty() {
        return;
    }
    let (export, holdout) = add_export(recipe, pairs, teacher, student, nodes);
    let rows = holdout.len().min(4);
    let mut bundle_inputs = report_inputs(nodes, export, (teacher, student), &holdout[..rows]);
    let mut target_list = Vec::new();
    for t in &recipe.targets {
        bundle_inputs.extend(add_target(t, export, nodes));
        target_list.push((
            t.name.value.clone(),
            t.profile.format.name().to_string(),
            t.precision.name().to_string(),
        ));
    }
    let recipe_digest = recipe_inputs_digest(nodes);
    nodes.push(PlanNode {
        id: StageId::bundle(),
        item: None,
        stage: std::sync::Arc::new(bundle::BundleStage {
            recipe_digest,
            effect: recipe.name.clone(),
            version: recipe.version.clone(),
            student: recipe.student.clone(),
            targets: target_list,
            rows,
        }),
        inputs: bundle_inputs,
    });
}

/// An input read from one output of `node`.
fn output_of(name: String, node: usize, output: &str) -> Input {
    Input {
        name,
        from: InputRef::Stage {
            node,
            output: output.into(),
        },
    }
}

/// An output of the export, read under its own name.
fn from_export(export: usize, port: InputPort) -> Input {
    output_of(port.pattern.into(), export, port.pattern)
}

/// The bundle's inputs for its report, before any target's: the held-out frames, both
/// trainings' metrics and loss curves, the pairs sheet (if planned) and the teacher's
/// output for each shown held-out row.
fn report_inputs(
    nodes: &[PlanNode],
    export: usize,
    (teacher, student): (usize, usize),
    rows: &[&(SourceItem, usize, usize)],
) -> Vec<Input> {
    let mut inputs = vec![
        from_export(export, verify::HOLDOUT_INPUTS),
        from_export(export, verify::HOLDOUT_REFERENCE),
        from_export(export, bundle::HOLDOUT_TEACHER),
        output_of(
            bundle::STUDENT_METRICS.pattern.into(),
            student,
            "metrics.json",
        ),
        output_of(
            bundle::TEACHER_METRICS.pattern.into(),
            teacher,
            "metrics.json",
        ),
        output_of(bundle::TEACHER_LOSS.pattern.into(), teacher, "loss.png"),
        output_of(bundle::STUDENT_LOSS.pattern.into(), student, "loss.png"),
    ];
    if let Some(sheet) = nodes.iter().position(|n| n.id == StageId::pairs_sheet()) {
        inputs.push(output_of(
            bundle::PAIRS_SHEET.pattern.into(),
            sheet,
            "pairs.png",
        ));
    }
    for (i, (_, _, pair)) in rows.iter().enumerate() {
        inputs.push(output_of(
            bundle::TEACHER_ROW.name(&i.to_string()),
            *pair,
            "target",
        ));
    }
    inputs
}

/// Adds one target's `target:NAME` and `verify:NAME` stages; returns what the bundle
/// reads of them (the target's files, the check and the verified outputs).
fn add_target(t: &TargetSpec, export: usize, nodes: &mut Vec<PlanNode>) -> [Input; 3] {
    let name = &t.name.value;
    nodes.push(PlanNode {
        id: StageId::target(name),
        item: None,
        stage: std::sync::Arc::new(target::WriteTarget { target: t.clone() }),
        inputs: vec![
            from_export(export, target::STUDENT_IR),
            from_export(export, target::CALIBRATION_INPUTS),
        ],
    });
    let target_node = nodes.len() - 1;
    nodes.push(PlanNode {
        id: StageId::verify(name),
        item: None,
        stage: std::sync::Arc::new(verify::VerifyTarget {
            target: t.clone(),
            latency_runs: 5,
        }),
        inputs: vec![
            from_export(export, target::STUDENT_IR),
            from_export(export, verify::HOLDOUT_INPUTS),
            from_export(export, verify::HOLDOUT_REFERENCE),
            Input {
                name: verify::MODEL.pattern.into(),
                from: InputRef::StageAll { node: target_node },
            },
        ],
    });
    let verify_node = nodes.len() - 1;
    [
        Input {
            name: bundle::TARGET.name(name),
            from: InputRef::StageAll { node: target_node },
        },
        output_of(bundle::VERIFY_CHECK.name(name), verify_node, "check.json"),
        output_of(
            bundle::VERIFY_OUTPUTS.name(name),
            verify_node,
            "outputs.npy",
        ),
    ]
}

/// The teacher's training on the pairs and the student's distillation from it (both
/// without the pairs the identity filter dropped): their node indices.
fn add_trainings(
    recipe: &Recipe,
    pairs: &[(SourceItem, usize, usize)],
    identity_filter: Option<usize>,
    nodes: &mut Vec<PlanNode>,
) -> (usize, usize) {
    let items: Vec<(String, bool)> = pairs
        .iter()
        .map(|(item, _, _)| (item.name.clone(), item.holdout))
        .collect();
    let mut data_inputs = Vec::new();
    for (item, crop, pair) in pairs {
        data_inputs.push(Input {
            name: input_name(&item.name, item.holdout, "source"),
            from: InputRef::Stage {
                node: *crop,
                output: "image".into(),
            },
        });
        data_inputs.push(Input {
            name: input_name(&item.name, item.holdout, "target"),
            from: InputRef::Stage {
                node: *pair,
                output: "target".into(),
            },
        });
    }
    // The pairs the identity filter dropped stay out of both trainings.
    if let Some(filter) = identity_filter {
        data_inputs.push(Input {
            name: crate::stages::identity::DROPPED.pattern.into(),
            from: InputRef::Stage {
                node: filter,
                output: "dropped.json".into(),
            },
        });
    }
    nodes.push(PlanNode {
        id: StageId::train_teacher(),
        item: None,
        stage: std::sync::Arc::new(TrainStage {
            role: Role::Teacher,
            student: recipe.student.clone(),
            train: recipe.train.clone(),
            items: items.clone(),
        }),
        inputs: data_inputs.clone(),
    });
    let teacher = nodes.len() - 1;
    let mut student_inputs = data_inputs;
    student_inputs.push(Input {
        name: crate::stages::train::TEACHER_WEIGHTS.pattern.into(),
        from: InputRef::Stage {
            node: teacher,
            output: "weights.safetensors".into(),
        },
    });
    nodes.push(PlanNode {
        id: StageId::distill_student(),
        item: None,
        stage: std::sync::Arc::new(TrainStage {
            role: Role::Student,
            student: recipe.student.clone(),
            train: recipe.train.clone(),
            items,
        }),
        inputs: student_inputs,
    });
    let student = nodes.len() - 1;
    (teacher, student)
}

/// The export of the student, with the held-out crops (references, golden frames) and
/// training crops (calibration): its node index and the held-out items.
fn add_export<'p>(
    recipe: &Recipe,
    pairs: &'p [(SourceItem, usize, usize)],
    teacher: usize,
    student: usize,
    nodes: &mut Vec<PlanNode>,
) -> (usize, Vec<&'p (SourceItem, usize, usize)>) {
    // Export: held-out crops (references, golden frames) and training crops (calibration).
    let holdout: Vec<&(SourceItem, usize, usize)> =
        pairs.iter().filter(|(i, _, _)| i.holdout).take(8).collect();
    let holdout: Vec<&(SourceItem, usize, usize)> = if holdout.is_empty() {
        pairs.iter().take(1).collect()
    } else {
        holdout
    };
    let cal_size = recipe
        .targets
        .iter()
        .map(|t| t.profile.calibration_size as usize)
        .max()
        .unwrap_or(0)
        .max(1);
    let calibration: Vec<&(SourceItem, usize, usize)> = pairs
        .iter()
        .filter(|(i, _, _)| !i.holdout)
        .take(cal_size)
        .collect();
    let mut inputs = vec![
        Input {
            name: export::STUDENT_WEIGHTS.pattern.into(),
            from: InputRef::Stage {
                node: student,
                output: "weights.safetensors".into(),
            },
        },
        Input {
            name: export::TEACHER_WEIGHTS.pattern.into(),
            from: InputRef::Stage {
                node: teacher,
                output: "weights.safetensors".into(),
            },
        },
    ];
    let mut holdout_names = Vec::new();
    for (k, (_, crop, _)) in holdout.iter().enumerate() {
        holdout_names.push(export::HOLDOUT.name(&format!("{k:03}")));
        inputs.push(Input {
            name: export::HOLDOUT.name(&format!("{k:03}")),
            from: InputRef::Stage {
                node: *crop,
                output: "image".into(),
            },
        });
    }
    let mut cal_names = Vec::new();
    for (k, (_, crop, _)) in calibration.iter().enumerate() {
        cal_names.push(export::CALIBRATION.name(&format!("{k:03}")));
        inputs.push(Input {
            name: export::CALIBRATION.name(&format!("{k:03}")),
            from: InputRef::Stage {
                node: *crop,
                output: "image".into(),
            },
        });
    }
    let arch = crate::nn::config::AccordionConfig {
        width: recipe.student.width as i64,
        blocks: recipe.student.blocks as i64,
    };
    nodes.push(PlanNode {
        id: StageId::export(),
        item: None,
        stage: std::sync::Arc::new(export::ExportStudent {
            arch,
            teacher_arch: crate::nn::config::AccordionConfig {
                width: recipe.student.teacher_width as i64,
                blocks: recipe.student.blocks as i64,
            },
            resolution_px: recipe.sources.crop.size_px,
            holdout: holdout_names,
            calibration: cal_names,
        }),
        inputs,
    });
    let export = nodes.len() - 1;
    (export, holdout)
}

/// What a bundle is a function of: every stage of the plan before it (kind,
/// implementation version, canonical params, how its inputs are wired) and every file
/// the plan reads, by content. Not the stages' outputs: those carry measurements
/// (latency) that differ from machine to machine. Canonical params, so a comment in the
/// recipe changes nothing; no absolute paths, so two checkouts agree.
pub fn recipe_inputs_digest(nodes: &[PlanNode]) -> Digest {
    let mut h = KeyHasher::new("effectc/recipe-inputs/v1");
    let params_of = crate::plan::params_per_node(nodes);
    for (node, params) in nodes.iter().zip(params_of) {
        h.str(&node.id)
            .str(node.stage.kind())
            .u64(node.stage.version() as u64);
        h.u64(params.len() as u64);
        for (k, v) in params.iter() {
            h.str(k).str(v);
        }
        h.u64(node.inputs.len() as u64);
        for inp in &node.inputs {
            h.str(&inp.name);
            match &inp.from {
                InputRef::Stage { node: up, output } => {
                    h.str("stage").str(&nodes[*up].id).str(output);
                }
                InputRef::StageAll { node: up } => {
                    h.str("stage-all").str(&nodes[*up].id);
                }
                InputRef::File { digest, .. } => {
                    h.str("file").digest(digest);
                }
            }
        }
    }
    h.finish()
}
