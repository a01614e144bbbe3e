//! `crop`: scales each source so its short side is the recipe's size and centre-crops
//! it square. (The face crop comes with face detection.) A source that is not a whole
//! picture, or too small, skips its item (`png::read_source`).

use super::png::{read_source, write_png};
use crate::imaging::crop::center_crop_resize;
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;

pub struct CenterCrop {
    pub size_px: u32,
}

/// The source picture (a file, or a video frame).
pub const IMAGE: InputPort = InputPort::required("image");

impl Stage for CenterCrop {
    fn kind(&self) -> &'static str {
        "crop"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["image"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[IMAGE]
    }
    fn version(&self) -> u32 {
        // 2: skips an undecodable, truncated or too-small source instead of failing.
        2
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P {
            #[serde(rename = "sources.crop.mode")]
            mode: &'static str,
            #[serde(rename = "sources.crop.size")]
            size: u32,
        }
        params_of(&P {
            mode: "center",
            size: self.size_px,
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let src = match read_source(ctx.input(IMAGE.pattern)?, self.size_px)? {
            Ok(src) => src,
            Err(why) => return Ok(RunOutput::skip(why)),
        };
        let img = center_crop_resize(&src, self.size_px);
        let path = ctx.out_dir.join("image.png");
        write_png(&img, &path)?;
        let mut out = RunOutput::default();
        out.files.insert("image".into(), path);
        Ok(out)
    }
}

/// The reason a near-duplicate item is left out starts with this (then its twin's name).
pub const NEAR_DUPLICATE: &str = "near-duplicate of ";

/// `sources { dedupe }`: an item whose picture is a near-duplicate of an earlier one
/// (`plan::lower::scan`) is skipped here, in place of its crop, saying which; nothing
/// after it is planned, so it neither trains nor counts toward `max-skipped`.
pub struct NearDuplicate {
    /// The kept item it duplicates.
    pub of: String,
    /// The recipe's `dedupe distance=`.
    pub distance: u32,
}

impl Stage for NearDuplicate {
    fn kind(&self) -> &'static str {
        "crop-near-duplicate"
    }
    fn family(&self) -> &'static str {
        "crop"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["image"]
    }
    /// It reads nothing: the plan found the duplicate.
    fn inputs(&self) -> &'static [InputPort] {
        &[]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P<'a> {
            #[serde(rename = "sources.dedupe.distance")]
            distance: u32,
            #[serde(rename = "sources.dedupe.of")]
            of: &'a str,
        }
        params_of(&P {
            distance: self.distance,
            of: &self.of,
        })
    }
    fn run(&self, _ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        Ok(RunOutput::skip(format!("{}{}", NEAR_DUPLICATE, self.of)))
    }
}
