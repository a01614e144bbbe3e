//! CLIP (transformers' `CLIPModel`) in tch: both towers and projections (`model`), the
//! image preprocessing of `CLIPImageProcessor` (`preprocess`), and the worker side of the
//! zero-shot requests the `attributes` and `identity` stages send (`job`). The text tower
//! and the BPE tokenizer are SD's (`diffusion::clip`, `diffusion::tokenizer`). Checked
//! against transformers on tiny random configs by tests/clip_equivalence.rs (fixtures
//! from scripts/make_clip_fixtures.py).

pub mod job;
pub mod model;
pub mod preprocess;

pub use job::{AttributeQueries, ClipAnswer, ClipJob, ClipWorker, ImageAnswer};
pub use model::{ClipConfig, ClipModel};
