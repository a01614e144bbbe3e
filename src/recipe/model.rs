//! The checked recipe: typed, resolved and with defaults filled. Nothing downstream
//! of `recipe/` reads KDL; stages and the planner read these types.

use super::diagnostic::{Loc, SourceFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A value and where the recipe set it (or the default, when `loc` is None).
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    pub value: T,
    pub loc: Option<Loc>,
}

impl<T> Spanned<T> {
    pub fn new(value: T, loc: Option<Loc>) -> Self {
        Spanned { value, loc }
    }
}

#[derive(Clone, Debug)]
pub struct Recipe {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    /// The effect file, then each base reached through `extends`, child first.
    pub files: Vec<Arc<SourceFile>>,
    pub sources: Sources,
    pub teacher: Teacher,
    /// Face attributes written into the prompt's `{attributes}`, in recipe order.
    pub attributes: Vec<AttributeUse>,
    /// The CLIP model (registry name) that detects attributes neither the recipe nor a
    /// sidecar gives (`attributes ... model="..."`, default `clip-vit-l14`).
    pub attributes_model: ClipModelSpec,
    /// `identity min-similarity=0.6 keep="glasses" ...`: the pairs filter.
    pub identity: Option<Identity>,
    pub student: Student,
    pub train: Train,
    pub targets: Vec<TargetSpec>,
}

#[derive(Clone, Debug)]
pub struct AttributeUse {
    pub name: Spanned<String>,
    /// The attribute's options (from stdlib/attributes.kdl).
    pub set: super::stdlib::AttributeSet,
    /// A value the recipe gives for every item (`attributes glasses="none"`); otherwise
    /// each item's sidecar file gives it, else CLIP detects it.
    pub fixed: Option<String>,
    /// Below this probability a detected option is left out of the prompt (the recipe's
    /// `threshold=`, else the attribute's in stdlib/attributes.kdl, else
    /// [`DEFAULT_ATTRIBUTE_THRESHOLD`]).
    pub threshold: f64,
}

/// The confidence a zero-shot attribute needs to reach the prompt when neither the recipe
/// nor stdlib/attributes.kdl says.
pub const DEFAULT_ATTRIBUTE_THRESHOLD: f64 = 0.6;
/// The CLIP model `attributes` and `identity` use unless they name one.
pub const DEFAULT_CLIP_MODEL: &str = "clip-vit-l14";

/// The identity filter: pairs whose stylized result lost the person are left out of
/// training.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Least cosine similarity of the CLIP image embeddings of source and result.
    pub min_similarity: f64,
    /// Attributes whose detected option must agree on source and result.
    pub keep: Vec<AttributeUse>,
    pub model: ClipModelSpec,
    pub loc: Option<Loc>,
}

/// A CLIP model named by `attributes` or `identity`, with its registry entries.
#[derive(Clone, Debug)]
pub struct ClipModelSpec {
    pub name: Spanned<String>,
    /// None when the registry has no such CLIP model (a diagnostic was given).
    pub entry: Option<super::stdlib::ModelEntry>,
    /// `clip-tokenizer`, for a single-file model whose vocabulary is not beside it.
    pub tokenizer: Option<super::stdlib::ModelEntry>,
}

/// The share of a dataset's items that may be skipped (undecodable, truncated, too small,
/// no face) before a whole-dataset stage refuses to run: half, so a face crop over a mixed
/// photo library goes on, and a wrong or empty folder does not train a model silently.
pub const DEFAULT_MAX_SKIPPED: f64 = 0.5;

#[derive(Clone, Debug)]
pub struct Sources {
    /// Image globs, relative to the project root.
    pub images: Vec<Spanned<String>>,
    pub synthetic: Option<Synthetic>,
    pub videos: Vec<VideoSource>,
    pub crop: Crop,
    /// Fraction of items held out from training, chosen by a stable hash of the item name.
    pub holdout: f64,
    /// `max-skipped`: the fraction of items that may be skipped (bad or faceless photos)
    /// before the build refuses to train ([`DEFAULT_MAX_SKIPPED`] when unset).
    pub max_skipped: f64,
    /// `dedupe distance=N`: items whose perceptual hashes differ in at most N of their
    /// 256 bits are left out as near-duplicates of the first (`imaging::phash`); None
    /// keeps every item.
    pub dedupe: Option<u32>,
}

/// `dedupe` without `distance=`: at most this many of the perceptual hash's 256 bits
/// differ between near-duplicates (`imaging::phash`).
pub const DEFAULT_DEDUPE_DISTANCE: u32 = 16;

#[derive(Clone, Debug)]
pub struct Synthetic {
    pub count: u32,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct VideoSource {
    pub glob: Spanned<String>,
    pub fps: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CropMode {
    Center,
    Face,
}

#[derive(Clone, Debug)]
pub struct Crop {
    pub mode: Spanned<CropMode>,
    pub size_px: u32,
    /// `crop "face"`: the face box's side is padded by this fraction of itself on each
    /// side (`margin=0.6`: the crop is 2.2 face boxes wide).
    pub margin: f64,
    /// `crop "face"`: which faces become items.
    pub faces: Spanned<FaceSelection>,
    /// `crop "face"`: the MediaPipe models it runs (registry entries), in a fixed order:
    /// face detector, face landmark, pose detector, pose landmark.
    pub models: Vec<super::stdlib::ModelEntry>,
}

/// `faces="largest"` (the default): one item per photo; `faces="all"`: one per face.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaceSelection {
    Largest,
    All,
}

#[derive(Clone, Debug)]
pub enum Teacher {
    Procedural(ProceduralTeacher),
    Directory {
        path: Spanned<String>,
    },
    Command {
        argv: Vec<String>,
        timeout_s: u64,
        loc: Option<Loc>,
    },
    Diffusion(Box<DiffusionTeacher>),
}

impl Teacher {
    pub fn kind(&self) -> &'static str {
        match self {
            Teacher::Procedural(_) => "procedural",
            Teacher::Directory { .. } => "directory",
            Teacher::Command { .. } => "command",
            Teacher::Diffusion(_) => "diffusion",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProceduralTeacher {
    pub style: String,
    pub stud_px: u32,
    pub palette: String,
    pub shading: f64,
    pub outline: f64,
}

#[derive(Clone, Debug)]
pub struct DiffusionTeacher {
    pub base: Spanned<String>,
    pub loras: Vec<Lora>,
    pub prompt: String,
    pub negative_prompt: String,
    pub controlnets: Vec<ControlNetUse>,
    pub instruct_pix2pix: Option<InstructPix2Pix>,
    pub img2img_strength: Option<f64>,
    pub steps: u32,
    pub scheduler: String,
    pub guidance: f64,
    pub seed: u64,
    /// Every model the teacher needs (base, LoRAs, ControlNets, IP2P), resolved.
    pub models: Vec<super::stdlib::ModelEntry>,
}

#[derive(Clone, Debug)]
pub struct Lora {
    pub model: Spanned<String>,
    pub weight: f64,
}

#[derive(Clone, Debug)]
pub struct ControlNetUse {
    pub preset: Spanned<String>,
    /// From the preset (stdlib/controlnets.kdl): what draws the control image, and the
    /// ControlNet model that reads it.
    pub preprocessor: String,
    pub model: String,
    pub weight: f64,
    pub start: f64,
    pub end: f64,
}

#[derive(Clone, Debug)]
pub struct InstructPix2Pix {
    pub instruction: String,
    pub image_guidance: f64,
    pub model: Spanned<String>,
}

#[derive(Clone, Debug)]
pub struct Student {
    pub width: u32,
    pub blocks: u32,
    pub teacher_width: u32,
}

/// Training hyper-parameters shared by the teacher and the distilled student.
#[derive(Clone, Debug)]
pub struct Train {
    pub teacher_steps: u32,
    pub student_steps: u32,
    pub batch: u32,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    /// Adam's beta1 for the teacher's generator and the student.
    pub beta1: f64,
    pub l1_weight: f64,
    pub ssim_weight: f64,
    pub gan_weight: f64,
    /// Fraction of the teacher's steps before the adversarial term (and its
    /// discriminator) switches on.
    pub gan_start: f64,
    pub r1_gamma: f64,
    /// Weight of the student's layer-wise feature distillation (0: outputs only).
    pub feature_weight: f64,
    pub ema_beta: f64,
    pub checkpoint_every: u32,
    pub seed: u64,
    /// Largest random shift of the augmentation, in pixels (0 for grid-locked styles).
    pub shift_px: u32,
    /// Random horizontal flips (only for effects that look the same mirrored).
    pub flip: bool,
    /// Largest random gain/offset applied alike to source and target (only for
    /// effects that commute with a brightness change).
    pub jitter: f64,
}

#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub name: Spanned<String>,
    pub precision: Precision,
    pub profile: TargetProfile,
}

/// A target profile from `targets/<name>.kdl`.
#[derive(Clone, Debug)]
pub struct TargetProfile {
    pub name: String,
    pub format: TargetFormat,
    /// Those the format has a writer for, in the profile's order (the first is the default).
    pub precisions: Vec<Precision>,
    pub default_precision: Precision,
    pub io: TargetIo,
    /// The format's own op names (`CONV_2D`, `Conv`, `conv`) the device runs: a model
    /// using any other op is refused before it is written.
    pub ops: Vec<String>,
    /// Minimum PSNR vs the trained student per precision, in dB.
    pub min_psnr_db: BTreeMap<String, f64>,
    pub calibration_size: u32,
    pub file: Arc<SourceFile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Half a cosine from `lr` down to 0 at the last step. It helps smooth effects settle;
    /// the underfitting brick teacher lost 0.7 dB with it, so it is opt-in.
    Cosine,
}

impl LrSchedule {
    /// The recipe's spelling (`lr-schedule "cosine"`).
    pub fn name(self) -> &'static str {
        match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        }
    }
}

/// Declares a closed set of names read from a profile: `parse`, `name` and `NAMES`.
macro_rules! named_enum {
    ($(#[$m:meta])* $ty:ident { $($(#[$vm:meta])* $v:ident = $n:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $ty { $($(#[$vm])* $v),+ }
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($n),+];
            pub fn parse(text: &str) -> Option<$ty> {
                match text { $($n => Some($ty::$v),)+ _ => None }
            }
            pub fn name(self) -> &'static str {
                match self { $($ty::$v => $n),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_enum!(
    /// The file a target ships.
    TargetFormat {
        Onnx = "onnx",
        Tflite = "tflite",
        /// Core ML ML Program package.
        Mlpackage = "mlpackage",
    }
);

named_enum!(
    /// How the shipped model takes and gives frames.
    TargetIo {
        TensorNchw = "tensor-nchw",
        TensorNhwc = "tensor-nhwc",
        /// Core ML image in and out (a camera CVPixelBuffer).
        Image = "image",
    }
);

named_enum!(
    /// Numeric precision of a shipped model.
    Precision {
        Fp32 = "fp32",
        Fp16 = "fp16",
        /// Integer weights and activations (calibrated).
        Int8 = "int8",
        /// Integer weights only, float compute (Core ML).
        Int8Weights = "int8-weights",
    }
);

impl TargetFormat {
    /// The precisions effectc has a writer for in this format.
    pub fn precisions(self) -> &'static [Precision] {
        match self {
            TargetFormat::Onnx => &[Precision::Fp32, Precision::Fp16, Precision::Int8],
            TargetFormat::Tflite => &[Precision::Fp32, Precision::Int8],
            TargetFormat::Mlpackage => &[Precision::Fp32, Precision::Fp16, Precision::Int8Weights],
        }
    }
}
