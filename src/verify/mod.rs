//! Verification: run each written artifact (with tract, or for CoreML by decoding it
//! back) and compare its output with the reference; measure latency and size.
pub mod artifact;
pub mod compare;
pub mod coreml;
#[cfg(test)]
mod export_tests;
pub mod fp16;
pub mod int8;
pub mod io;
pub mod tract_run;

pub use artifact::{
    verify_artifact, Artifact, ArtifactCheck, ChecksTable, VerifyError, VerifyOptions,
};
pub use compare::{compare, Comparison, Thresholds};
pub use tract_run::{Latency, RunError, TractModel};
