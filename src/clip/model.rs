//! transformers' `CLIPModel`: the text tower (SD's text encoder, `diffusion::clip`), the
//! vision tower (a ViT: patch conv, class token, position embedding, pre-LayerNorm,
//! encoder, post-LayerNorm of the class token), both projections and the logit scale.
//! ViT-L/14 and ViT-B/32 differ only in their config.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::diffusion::clip::{ClipTextConfig, ClipTextModel, EncoderLayer};
use crate::diffusion::error::{DiffusionError, Result};
use crate::diffusion::layers::{LayerNorm, Linear};
use crate::diffusion::weights::{read_json, WeightMap};

#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default = "d_channels")]
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

fn d_channels() -> i64 {
    3
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_scale() -> f64 {
    2.6592
}

/// A `CLIPModel` config.json (transformers writes every field; these are the ones read).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: i64,
    #[serde(default = "d_scale")]
    pub logit_scale_init_value: f64,
}

impl ClipConfig {
    /// openai/clip-vit-large-patch14.
    pub fn vit_l14() -> Self {
        ClipConfig {
            text_config: ClipTextConfig::vit_l14(),
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                num_channels: 3,
                image_size: 224,
                patch_size: 14,
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: 768,
            logit_scale_init_value: d_scale(),
        }
    }

    /// openai/clip-vit-base-patch32.
    pub fn vit_b32() -> Self {
        let mut text = ClipTextConfig::vit_l14();
        text.hidden_size = 512;
        text.intermediate_size = 2048;
        text.num_attention_heads = 8;
        ClipConfig {
            text_config: text,
            vision_config: ClipVisionConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                num_channels: 3,
                image_size: 224,
                patch_size: 32,
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: 512,
            logit_scale_init_value: d_scale(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let config: ClipConfig = read_json(path)?;
        let unsupported = |message: String| DiffusionError::UnsupportedConfig {
            path: path.to_path_buf(),
            message,
        };
        for (tower, act, h, heads) in [
            (
                "text",
                &config.text_config.hidden_act,
                config.text_config.hidden_size,
                config.text_config.num_attention_heads,
            ),
            (
                "vision",
                &config.vision_config.hidden_act,
                config.vision_config.hidden_size,
                config.vision_config.num_attention_heads,
            ),
        ] {
            if act != "quick_gelu" && act != "gelu" {
                return Err(unsupported(format!("{tower} hidden_act `{act}`")));
            }
            if heads <= 0 || h % heads != 0 {
                return Err(unsupported(format!(
                    "{tower} hidden_size is not a multiple of num_attention_heads"
                )));
            }
        }
        let v = &config.vision_config;
        if v.patch_size <= 0 || v.image_size % v.patch_size != 0 {
            return Err(unsupported(
                "vision image_size is not a multiple of patch_size".into(),
            ));
        }
        Ok(config)
    }
}

pub struct ClipVisionModel {
    config: ClipVisionConfig,
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl ClipVisionModel {
    /// `p` points at `vision_model`.
    fn new(p: &crate::diffusion::weights::Params, c: &ClipVisionConfig) -> Result<Self> {
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let patches = (c.image_size / c.patch_size).pow(2);
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            layers.push(EncoderLayer::new(
                &p.pp("encoder.layers").pp(i),
                h,
                c.intermediate_size,
                eps,
            )?);
        }
        Ok(ClipVisionModel {
            config: c.clone(),
            patch_embedding: p.get(
                "embeddings.patch_embedding.weight",
                &[h, c.num_channels, c.patch_size, c.patch_size],
            )?,
            class_embedding: p.get("embeddings.class_embedding", &[h])?,
            position_embedding: p.get("embeddings.position_embedding.weight", &[patches + 1, h])?,
            // (sic: transformers' name)
            pre_layrnorm: LayerNorm::new(&p.pp("pre_layrnorm"), h, eps)?,
            layers,
            post_layernorm: LayerNorm::new(&p.pp("post_layernorm"), h, eps)?,
        })
    }

    /// (B, 3, S, S) normalised pixels → the post-LayerNormed class token (B, hidden).
    pub fn pooled(&self, pixels: &Tensor) -> Tensor {
        let b = pixels.size()[0];
        let ps = self.config.patch_size;
        let patches = pixels
            .to_kind(self.patch_embedding.kind())
            .conv2d::<Tensor>(&self.patch_embedding, None, [ps, ps], [0, 0], [1, 1], 1)
            .flatten(2, -1)
            .transpose(1, 2);
        let class = self
            .class_embedding
            .view([1, 1, -1])
            .expand([b, 1, self.config.hidden_size], false);
        let mut x = Tensor::cat(&[class, patches], 1) + self.position_embedding.unsqueeze(0);
        x = self.pre_layrnorm.forward(&x);
        let quick = self.config.hidden_act == "quick_gelu";
        for layer in &self.layers {
            x = layer.forward(&x, self.config.num_attention_heads, quick, false);
        }
        self.post_layernorm.forward(&x.select(1, 0))
    }
}

pub struct ClipModel {
    pub config: ClipConfig,
    text: ClipTextModel,
    vision: ClipVisionModel,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: f64,
}

impl ClipModel {
    /// From `CLIPModel` weights (`text_model.…`, `vision_model.…`, `visual_projection`,
    /// `text_projection`, `logit_scale`).
    pub fn new(weights: &WeightMap, config: &ClipConfig) -> Result<Self> {
        let root = weights.root();
        let text = ClipTextModel::new(weights, &config.text_config)?;
        let vision = ClipVisionModel::new(&root.pp("vision_model"), &config.vision_config)?;
        let pd = config.projection_dim;
        let logit_scale = if weights.contains("logit_scale") {
            root.get("logit_scale", &[])?
                .to_kind(Kind::Double)
                .double_value(&[])
        } else {
            config.logit_scale_init_value
        };
        Ok(ClipModel {
            config: config.clone(),
            text,
            vision,
            visual_projection: Linear::new(
                &root.pp("visual_projection"),
                config.vision_config.hidden_size,
                pd,
                false,
            )?,
            text_projection: Linear::new(
                &root.pp("text_projection"),
                config.text_config.hidden_size,
                pd,
                false,
            )?,
            logit_scale,
        })
    }

    /// A `CLIPModel` folder (config.json + model.safetensors) or, for a single
    /// safetensors file, openai/clip-vit-large-patch14's config.
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let (weights, config) = if path.is_dir() {
            (
                WeightMap::load_folder_file(path, "model.safetensors")?,
                ClipConfig::from_file(&path.join("config.json"))?,
            )
        } else {
            (WeightMap::load(path)?, ClipConfig::vit_l14())
        };
        Self::new(&weights.to(device, kind)?, &config)
    }

    /// exp(logit_scale): what cosine similarities are multiplied by before a softmax.
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale.exp()
    }

    pub fn image_size(&self) -> i64 {
        self.config.vision_config.image_size
    }

    /// `get_image_features`: (B, 3, S, S) → (B, projection_dim), not normalised.
    pub fn image_features(&self, pixels: &Tensor) -> Tensor {
        self.visual_projection.forward(&self.vision.pooled(pixels))
    }

    /// `get_text_features`: (B, T) ids → (B, projection_dim), not normalised. The text is
    /// pooled at its end-of-text token, as transformers does (the causal mask makes the
    /// padding after it irrelevant, so no attention mask is needed).
    pub fn text_features(&self, input_ids: &Tensor) -> Tensor {
        let hidden = self.text.forward(input_ids);
        let eos = self.config.text_config.eos_token_id.unwrap_or(2);
        let positions = if eos == 2 {
            input_ids.argmax(-1, false)
        } else {
            input_ids.eq(eos).to_kind(Kind::Int).argmax(-1, false)
        };
        let b = input_ids.size()[0];
        let rows = Tensor::arange(b, (Kind::Int64, input_ids.device()));
        let pooled = hidden.index(&[Some(rows), Some(positions)]);
        self.text_projection.forward(&pooled)
    }
}

/// Rows scaled to unit length.
pub fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}
