//! Stage kinds, one file each. A kind is one `Stage` impl (`stage.rs`): its params,
//! its version, its run. The planner (`plan/lower/`) decides which stages a recipe
//! needs and wires them; nothing here knows the plan.

pub mod attributes;
pub mod bundle;
pub mod command_teacher;
pub mod control_map;
pub mod crop;
pub mod diffusion_pairs;
pub mod diffusion_worker;
pub mod directory_teacher;
pub mod export;
pub mod face_crop;
pub mod identity;
pub mod pairs_sheet;
pub mod png;
pub mod procedural;
pub mod stage;
pub mod synthetic;
pub mod target;
pub mod train;
pub mod verify;
pub mod worker;

pub use stage::{
    params_of, stage_key, InputPort, Params, Progress, Resource, RunContext, RunOutput, Stage,
    StageError,
};
