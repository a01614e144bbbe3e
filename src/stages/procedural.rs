//! `pairs` with the procedural teacher: a LEGO brick mosaic of each crop, on CPU, no models.

use super::png::{read_rgb, write_png};
use crate::imaging::brick::{brick_mosaic, BrickStyle, Palette};
use crate::recipe::ProceduralTeacher;
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;

pub struct ProceduralPairs {
    teacher: ProceduralTeacher,
}

impl ProceduralPairs {
    pub fn new(teacher: &ProceduralTeacher) -> ProceduralPairs {
        ProceduralPairs {
            teacher: teacher.clone(),
        }
    }
}

/// The cropped source picture a teacher makes its pair from.
pub const SOURCE: InputPort = InputPort::required("source");

impl Stage for ProceduralPairs {
    fn kind(&self) -> &'static str {
        "pairs-procedural"
    }
    fn family(&self) -> &'static str {
        "pairs"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["target"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[SOURCE]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P<'a> {
            kind: &'static str,
            style: &'a str,
            #[serde(rename = "stud-size")]
            stud_size: u32,
            palette: &'a str,
            shading: f64,
            outline: f64,
        }
        let t = &self.teacher;
        params_of(&serde_json::json!({ "teacher": P {
            kind: "procedural",
            style: &t.style,
            stud_size: t.stud_px,
            palette: &t.palette,
            shading: t.shading,
            outline: t.outline,
        }}))
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let src = read_rgb(ctx.input(SOURCE.pattern)?)?;
        let palette = Palette::from_name(&self.teacher.palette).ok_or_else(|| {
            StageError::input(format!("unknown palette `{}`", self.teacher.palette))
        })?;
        let style = BrickStyle {
            stud_px: self.teacher.stud_px,
            palette,
            shading: self.teacher.shading as f32,
            outline: self.teacher.outline as f32,
        };
        let img = brick_mosaic(&src, &style);
        let path = ctx.out_dir.join("target.png");
        write_png(&img, &path)?;
        let mut out = RunOutput::default();
        out.files.insert("target".into(), path);
        Ok(out)
    }
}
