//! `pairs` with the diffusion teacher (SD 1.5 + LoRA + ControlNets + InstructPix2Pix).
//! Before any work, every model it names must be in the models directory.

use crate::plan::{Params, RunContext, RunOutput, Stage, StageError};
use crate::recipe::{Diagnostics, DiffusionTeacher, Recipe, RecipeDiagnostic, Teacher};
use std::path::PathBuf;

/// `$EFFECTC_MODELS`, or `~/.cache/effectc/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EFFECTC_MODELS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/effectc/models")
}

/// One diagnostic listing every missing model: name, file, expected SHA-256, path searched.
pub fn check_models_present(recipe: &Recipe, diags: &mut Diagnostics) {
    let Teacher::Diffusion(t) = &recipe.teacher else {
        return;
    };
    let dir = models_dir();
    let mut missing = Vec::new();
    for m in &t.models {
        let path = dir.join(&m.file);
        if !path.is_file() {
            missing.push(format!(
                "  {} — file {} (sha256 {}) not found at {}",
                m.name,
                m.file,
                m.sha256.as_deref().unwrap_or("not pinned"),
                path.display()
            ));
        }
    }
    if !missing.is_empty() {
        let d = match &t.base.loc {
            Some(loc) => RecipeDiagnostic::at(
                loc,
                "missing-models",
                format!(
                    "{} model(s) missing for the diffusion teacher:\n{}",
                    missing.len(),
                    missing.join("\n")
                ),
            )
            .label("this teacher needs them"),
            None => RecipeDiagnostic::nowhere(
                "missing-models",
                format!("models missing:\n{}", missing.join("\n")),
            ),
        };
        diags.push(d.help(format!(
            "put the files in {} (or set EFFECTC_MODELS), or `effectc models import FILE`",
            dir.display()
        )));
    }
}

pub struct DiffusionPairs {
    item: String,
    teacher: DiffusionTeacher,
}

impl DiffusionPairs {
    pub fn new(teacher: &DiffusionTeacher, item: &str) -> DiffusionPairs {
        DiffusionPairs {
            item: item.to_string(),
            teacher: teacher.clone(),
        }
    }
}

impl Stage for DiffusionPairs {
    fn kind(&self) -> &'static str {
        "pairs"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        let t = &self.teacher;
        Params::from([
            ("teacher.kind".into(), "diffusion".into()),
            ("teacher.base".into(), t.base.value.clone()),
            ("teacher.prompt".into(), t.prompt.clone()),
            ("teacher.negative-prompt".into(), t.negative_prompt.clone()),
            ("teacher.steps".into(), t.steps.to_string()),
            ("teacher.scheduler".into(), t.scheduler.clone()),
            ("teacher.guidance".into(), format!("{:?}", t.guidance)),
            ("teacher.seed".into(), t.seed.to_string()),
        ])
    }
    fn run(&self, _ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        Err(StageError::user(format!(
            "pairs/{}: the diffusion teacher's pipeline is not wired into builds yet; use the procedural, directory or command teacher",
            self.item
        )))
    }
}
