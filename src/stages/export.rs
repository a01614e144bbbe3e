//! `export`: lowers the trained student to the graph IR (equalized-lr scales and blurs
//! folded into plain convs) and computes the tch student's outputs on the held-out
//! frames — the references every target is verified against. Runs in the tensor worker.

use super::worker::run_worker;
use crate::nn::config::AccordionConfig;
use crate::stages::{
    params_of, InputPort, Params, Resource, RunContext, RunOutput, Stage, StageError,
};
use crate::train::job::ExportJob;
use serde::Serialize;

pub struct ExportStudent {
    pub arch: AccordionConfig,
    /// The teacher net's shape (its weights are the input `teacher-weights`).
    pub teacher_arch: AccordionConfig,
    pub resolution_px: u32,
    /// Input names of the held-out and calibration crops, in order.
    pub holdout: Vec<String>,
    pub calibration: Vec<String>,
}

/// The distilled student, and the teacher it learnt from (whose outputs on the held-out
/// frames are the contact sheet's teacher column).
pub const STUDENT_WEIGHTS: InputPort = InputPort::required("student-weights");
pub const TEACHER_WEIGHTS: InputPort = InputPort::required("teacher-weights");
/// The crops of the held-out and calibration items (`*` is the index, `000`); a skipped
/// item's is absent.
pub const HOLDOUT: InputPort = InputPort::optional("holdout/*");
pub const CALIBRATION: InputPort = InputPort::optional("calibration/*");

impl Stage for ExportStudent {
    fn kind(&self) -> &'static str {
        "export"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "student.ir",
            "holdout-inputs.npy",
            "holdout-reference.npy",
            "holdout-teacher.npy",
            "calibration-inputs.npy",
        ]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[STUDENT_WEIGHTS, TEACHER_WEIGHTS, HOLDOUT, CALIBRATION]
    }
    fn version(&self) -> u32 {
        // 2: the teacher net's outputs on the held-out frames too (the contact sheet's
        //    teacher column).
        2
    }
    fn resource(&self) -> Resource {
        Resource::Exclusive
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P {
            #[serde(rename = "student.width")]
            width: i64,
            #[serde(rename = "student.blocks")]
            blocks: i64,
            #[serde(rename = "sources.crop.size")]
            size: u32,
        }
        params_of(&P {
            width: self.arch.width,
            blocks: self.arch.blocks,
            size: self.resolution_px,
        })
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        // Crops of skipped items are absent: the others stand in.
        let paths = |names: &[String], ctx: &RunContext| -> Result<Vec<_>, StageError> {
            let mut found = Vec::new();
            for n in names {
                found.extend(ctx.optional_input(n)?.map(|p| p.to_path_buf()));
            }
            Ok(found)
        };
        let (holdout, calibration) = (paths(&self.holdout, ctx)?, paths(&self.calibration, ctx)?);
        if holdout.is_empty() || calibration.is_empty() {
            return Err(StageError::input(
                "every held-out or calibration item was skipped: no frames to export with",
            ));
        }
        let job = ExportJob {
            weights: ctx.input(STUDENT_WEIGHTS.pattern)?.to_path_buf(),
            arch: self.arch,
            teacher: Some((
                ctx.input(TEACHER_WEIGHTS.pattern)?.to_path_buf(),
                self.teacher_arch,
            )),
            resolution_px: self.resolution_px,
            holdout,
            calibration,
            device: "cpu".into(),
            out_dir: ctx.out_dir.join("out"),
        };
        let report = run_worker(
            ctx,
            "export",
            &serde_json::to_value(&job).unwrap_or_default(),
        )?;
        Ok(RunOutput {
            files: report.files,
            metrics: report.metrics,
            ..Default::default()
        })
    }
}
