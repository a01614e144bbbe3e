//! `pairs-sheet`: a contact sheet (source | teacher) of the first pairs, a PNG a person
//! opens to judge the teacher before training on it.

use super::imaging::contact_sheet::contact_sheet;
use super::png::{read_rgb, write_png};
use crate::plan::{Params, RunContext, RunOutput, Stage, StageError};

pub struct PairsSheet {
    pub rows: usize,
}

impl Stage for PairsSheet {
    fn kind(&self) -> &'static str {
        "pairs-sheet"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        Params::from([("rows".into(), self.rows.to_string())])
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let mut rows = Vec::new();
        for i in 0..self.rows {
            let src = read_rgb(ctx.input(&format!("{i:02}-source"))?)?;
            let tgt = read_rgb(ctx.input(&format!("{i:02}-target"))?)?;
            rows.push(vec![src, tgt]);
        }
        let sheet = contact_sheet(&rows, &["source", "teacher"], 128);
        let path = ctx.out_dir.join("pairs.png");
        write_png(&sheet, &path)?;
        let mut out = RunOutput::default();
        out.files.insert("pairs.png".into(), path);
        Ok(out)
    }
}
