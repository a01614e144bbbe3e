//! The diffusion teacher: Stable Diffusion 1.5 (CLIP text encoder and its BPE tokenizer,
//! UNet, VAE), ControlNet, InstructPix2Pix guidance, LoRA merging, DDIM / Euler-ancestral /
//! DPM++ 2M schedulers, img2img and the model-free control maps (canny, softedge), in tch.
//!
//! Every model reads diffusers' config.json and safetensors layout (or the original
//! single-file checkpoint), and is checked against diffusers on tiny random models by
//! tests/diffusion_*.rs (fixtures from scripts/make_diffusion_fixtures.py).

// `x = x + y` on tch tensors allocates; `x += y` would add in place into storage that skip
// connections share. Block loops index several per-block lists at once, as diffusers' do.
#![allow(clippy::assign_op_pattern, clippy::needless_range_loop)]

pub mod clip;
pub mod control_image;
pub mod controlnet;
pub mod error;
pub mod job;
pub mod layers;
pub mod lora;
pub mod pipeline;
pub mod scheduler;
pub mod single_file;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use error::DiffusionError;
pub use pipeline::{generate_pair, ControlInput, DiffusionModels, ModelFiles, PairRequest};
pub use scheduler::{Scheduler, SchedulerKind};
