//! Stage kinds, one file each. A kind is one `plan::Stage` impl: its params, its
//! version, its run.

pub mod command_teacher;
pub mod crop;
pub mod diffusion_pairs;
pub mod directory_teacher;
pub mod imaging;
pub mod pairs_sheet;
pub mod png;
pub mod procedural;
pub mod synthetic;
pub mod train;

use crate::plan::PlanNode;
use crate::plan::lower::SourceItem;
use crate::recipe::Recipe;

/// Adds the whole-dataset stages after the pairs (training, export, verification,
/// bundle) as they are built. `pairs` is (item, crop node, pairs node) per item.
pub fn add_model_stages(recipe: &Recipe, pairs: &[(SourceItem, usize, usize)], nodes: &mut Vec<PlanNode>) {
    use crate::plan::{Input, InputRef};
    use train::{input_name, Role, TrainStage};
    if pairs.is_empty() {
        return;
    }
    let items: Vec<(String, bool)> = pairs.iter().map(|(item, _, _)| (item.name.clone(), item.holdout)).collect();
    let mut data_inputs = Vec::new();
    for (item, crop, pair) in pairs {
        data_inputs.push(Input { name: input_name(&item.name, item.holdout, "source"), from: InputRef::Stage { node: *crop, output: "image".into() } });
        data_inputs.push(Input { name: input_name(&item.name, item.holdout, "target"), from: InputRef::Stage { node: *pair, output: "target".into() } });
    }
    nodes.push(PlanNode {
        id: "train-teacher".into(),
        item: None,
        stage: Box::new(TrainStage { role: Role::Teacher, student: recipe.student.clone(), train: recipe.train.clone(), items: items.clone() }),
        inputs: data_inputs.clone(),
    });
    let teacher = nodes.len() - 1;
    let mut student_inputs = data_inputs;
    student_inputs.push(Input { name: "teacher-weights".into(), from: InputRef::Stage { node: teacher, output: "weights.safetensors".into() } });
    nodes.push(PlanNode {
        id: "distill-student".into(),
        item: None,
        stage: Box::new(TrainStage { role: Role::Student, student: recipe.student.clone(), train: recipe.train.clone(), items }),
        inputs: student_inputs,
    });
}
