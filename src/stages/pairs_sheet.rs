//! `pairs-sheet`: a contact sheet (source | control maps | teacher) of the first pairs,
//! a PNG a person opens to judge the teacher before training on it.

use super::png::{read_rgb, write_png};
use crate::imaging::contact_sheet::contact_sheet;
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;

pub struct PairsSheet {
    pub rows: usize,
    /// Control maps shown between source and teacher (inputs `NN-control-PRESET`).
    pub controls: Vec<String>,
}

/// Row `*` (two digits): the crop, each control map, the teacher's picture. A skipped
/// item has no row.
pub const ROW_SOURCE: InputPort = InputPort::optional("*-source");
pub const ROW_CONTROL: InputPort = InputPort::optional("*-control-*");
pub const ROW_TARGET: InputPort = InputPort::optional("*-target");

impl Stage for PairsSheet {
    fn kind(&self) -> &'static str {
        "pairs-sheet"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["pairs.png"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[ROW_SOURCE, ROW_CONTROL, ROW_TARGET]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P<'a> {
            rows: usize,
            controls: &'a [String],
        }
        params_of(&P {
            rows: self.rows,
            controls: &self.controls,
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let mut rows = Vec::new();
        for i in 0..self.rows {
            // A skipped item has no row.
            let Some(src) = ctx.optional_input(&ROW_SOURCE.name(&format!("{i:02}")))? else {
                continue;
            };
            let src = read_rgb(src)?;
            let mut row = vec![src];
            for c in &self.controls {
                row.push(read_rgb(ctx.input(&format!("{i:02}-control-{c}"))?)?);
            }
            row.push(read_rgb(ctx.input(&ROW_TARGET.name(&format!("{i:02}")))?)?);
            rows.push(row);
        }
        let mut titles = vec!["source"];
        titles.extend(self.controls.iter().map(|c| c.as_str()));
        titles.push("teacher");
        let sheet = contact_sheet(&rows, &titles, 128);
        let path = ctx.out_dir.join("pairs.png");
        write_png(&sheet, &path)?;
        let mut out = RunOutput::default();
        out.files.insert("pairs.png".into(), path);
        Ok(out)
    }
}
