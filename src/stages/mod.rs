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

use crate::plan::PlanNode;
use crate::plan::lower::SourceItem;
use crate::recipe::Recipe;

/// Adds the whole-dataset stages after the pairs (training, export, verification,
/// bundle) as they are built. `pairs` is (item, crop node, pairs node) per item.
pub fn add_model_stages(_recipe: &Recipe, _pairs: &[(SourceItem, usize, usize)], _nodes: &mut Vec<PlanNode>) {}
