//! `synthetic`: draws one deterministic portrait-like test image per item, so the demo
//! and the tests need no photos.

use super::png::write_png;
use crate::imaging::synthetic::synthetic_portrait;
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;

pub struct SyntheticSource {
    pub seed: u64,
    pub index: u64,
    pub size_px: u32,
}

impl Stage for SyntheticSource {
    fn kind(&self) -> &'static str {
        "synthetic"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["image"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P {
            #[serde(rename = "sources.synthetic.seed")]
            seed: u64,
            #[serde(rename = "item.index")]
            index: u64,
            #[serde(rename = "sources.crop.size")]
            size: u32,
        }
        params_of(&P {
            seed: self.seed,
            index: self.index,
            size: self.size_px,
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let img = synthetic_portrait(self.seed, self.index, self.size_px);
        let path = ctx.out_dir.join("image.png");
        write_png(&img, &path)?;
        let mut out = RunOutput::default();
        out.files.insert("image".into(), path);
        Ok(out)
    }
}
