//! `pairs` a team already has: a folder of stylized images matched to sources by stem.

use super::png::{read_rgb, write_png};
use crate::imaging::crop::center_crop_resize;
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub struct DirectoryPairs {
    pub size_px: u32,
}

/// The pair target for a source stem (`.png`, `.jpg` or `.jpeg`, any case); an
/// error message when two files match.
pub fn find_target(dir: &Path, stem: &str) -> Result<Option<PathBuf>, String> {
    crate::imaging::external::find_pair_target(dir, stem).map_err(|e| e.to_string())
}

/// The teacher's picture found beside the source in the directory.
pub const TARGET_FILE: InputPort = InputPort::required("target-file");

impl Stage for DirectoryPairs {
    fn kind(&self) -> &'static str {
        "pairs-directory"
    }
    fn family(&self) -> &'static str {
        "pairs"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["target"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[super::procedural::SOURCE, TARGET_FILE]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P {
            #[serde(rename = "teacher.kind")]
            kind: &'static str,
            #[serde(rename = "sources.crop.size")]
            size: u32,
        }
        params_of(&P {
            kind: "directory",
            size: self.size_px,
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let target = read_rgb(ctx.input(TARGET_FILE.pattern)?)?;
        let img = center_crop_resize(&target, self.size_px);
        let path = ctx.out_dir.join("target.png");
        write_png(&img, &path)?;
        let mut out = RunOutput::default();
        out.files.insert("target".into(), path);
        Ok(out)
    }
}
