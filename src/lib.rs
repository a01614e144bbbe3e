//! effectc: an effect compiler. Folders mirror the pipeline:
//! recipe (parse, extends, check) → plan (DAG, keys) → cache → exec (scheduler, events)
//! → stages (one file per stage kind; `imaging` their pixel work) → nn / train (tch models) → export (IR, writers,
//! quantization; `tflite` the TFLite model they and `vision` read and write) → verify (tract) → bundle. `diffusion` is the diffusion teacher, `clip`
//! CLIP for face attributes and the identity filter,
//! `models` the models directory it reads (fetched and pinned), `video` the frames of video sources, `process` the child processes that die with
//! effectc.

pub mod atomic;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod clip;
pub mod diffusion;
pub mod digest;
pub mod exec;
pub mod export;
pub mod imaging;
pub mod ir;
pub mod models;
pub mod nn;
pub mod plan;
pub mod preview;
pub mod process;
pub mod project;
pub mod protocol;
pub mod recipe;
pub mod stages;
pub mod tflite;
pub mod train;
pub mod verify;
pub mod video;
pub mod vision;
