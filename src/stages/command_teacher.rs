//! `pairs` from an external command run per item (see `imaging::external` for the
//! argv / stdin / stdout contract).

use crate::imaging::external::{run_command_teacher, CommandTeacherError};
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;
use std::time::Duration;

pub struct CommandPairs {
    pub argv: Vec<String>,
    pub timeout_s: u64,
}

impl Stage for CommandPairs {
    fn kind(&self) -> &'static str {
        "pairs-command"
    }
    fn family(&self) -> &'static str {
        "pairs"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["target"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[super::procedural::SOURCE]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P<'a> {
            kind: &'static str,
            run: &'a [String],
            #[serde(rename = "timeout-s")]
            timeout_s: u64,
        }
        params_of(&serde_json::json!({ "teacher": P {
            kind: "command",
            run: &self.argv,
            timeout_s: self.timeout_s,
        }}))
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        // Programs may go by the file extension: hand them a real `.png` path.
        let input = ctx.out_dir.join("source.png");
        std::fs::copy(ctx.input(super::procedural::SOURCE.pattern)?, &input)
            .map_err(|e| StageError::io(&input, e))?;
        let path = ctx.out_dir.join("target.png");
        run_command_teacher(
            &self.argv,
            &input,
            &path,
            Duration::from_secs(self.timeout_s),
        )
        .map_err(StageError::from)?;
        let mut out = RunOutput::default();
        out.files.insert("target".into(), path);
        Ok(out)
    }
}

impl From<CommandTeacherError> for StageError {
    /// The command is the recipe's: its failures, time-outs and bad images are input
    /// errors; only I/O around it is judged by the I/O error's kind.
    fn from(e: CommandTeacherError) -> StageError {
        match e {
            CommandTeacherError::Io { path, source } => StageError::io(&path, source),
            e => StageError::input(e.to_string()),
        }
    }
}
