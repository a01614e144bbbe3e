//! `export`: lowers the trained student to the graph IR (equalized-lr scales and blurs
//! folded into plain convs) and computes the tch student's outputs on the held-out
//! frames — the references every target is verified against. Runs in the tensor worker.

use super::worker::run_worker;
use crate::nn::config::AccordionConfig;
use crate::stages::{params_of, Params, Resource, RunContext, RunOutput, Stage, StageError};
use crate::train::job::ExportJob;
use serde::Serialize;

pub struct ExportStudent {
    pub arch: AccordionConfig,
    pub resolution_px: u32,
    /// Input names of the held-out and calibration crops, in order.
    pub holdout: Vec<String>,
    pub calibration: Vec<String>,
}

impl Stage for ExportStudent {
    fn kind(&self) -> &'static str {
        "export"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "student.ir",
            "holdout-inputs.npy",
            "holdout-reference.npy",
            "calibration-inputs.npy",
        ]
    }
    fn version(&self) -> u32 {
        1
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
        let paths = |names: &[String], ctx: &RunContext| {
            names
                .iter()
                .map(|n| ctx.input(n).map(|p| p.to_path_buf()))
                .collect::<Result<Vec<_>, _>>()
        };
        let job = ExportJob {
            weights: ctx.input("student-weights")?.to_path_buf(),
            arch: self.arch,
            resolution_px: self.resolution_px,
            holdout: paths(&self.holdout, ctx)?,
            calibration: paths(&self.calibration, ctx)?,
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
        })
    }
}
