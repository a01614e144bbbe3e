//! CLIP text transformer (transformers' CLIPTextModel: pre-LayerNorm, causal self-attention,
//! quick_gelu MLP, final LayerNorm). SD uses its last hidden state as the UNet's context.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::error::{DiffusionError, Result};
use super::layers::{multi_head_attention, LayerNorm, Linear};
use super::weights::{read_json, Params, WeightMap};

#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: i64,
    #[serde(default = "d_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_inter")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Where CLIPModel pools the text: the first `eos_token_id`; 2 (the configs before
    /// transformers PR #24773, openai's included) means the largest id, as transformers reads it.
    #[serde(default)]
    pub eos_token_id: Option<i64>,
}

fn d_vocab() -> i64 {
    49408
}
fn d_hidden() -> i64 {
    512
}
fn d_inter() -> i64 {
    2048
}
fn d_layers() -> i64 {
    12
}
fn d_heads() -> i64 {
    8
}
fn d_pos() -> i64 {
    77
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// The ViT-L/14 text tower SD 1.5 uses (openai/clip-vit-large-patch14).
    pub fn vit_l14() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: Some(2),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let config: ClipTextConfig = read_json(path)?;
        if config.hidden_act != "quick_gelu" && config.hidden_act != "gelu" {
            return Err(DiffusionError::UnsupportedConfig {
                path: path.to_path_buf(),
                message: format!("hidden_act `{}`", config.hidden_act),
            });
        }
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(DiffusionError::UnsupportedConfig {
                path: path.to_path_buf(),
                message: "hidden_size is not a multiple of num_attention_heads".into(),
            });
        }
        Ok(config)
    }
}

/// One pre-LayerNorm transformer layer, shared by CLIP's text tower (causal) and its
/// vision tower (`crate::clip`, not causal).
pub struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    /// `lp` points at `encoder.layers.N`; `h` hidden size, `inter` the MLP's.
    pub fn new(lp: &Params, h: i64, inter: i64, eps: f64) -> Result<Self> {
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::new(&lp.pp("layer_norm1"), h, eps)?,
            q_proj: Linear::new(&lp.pp("self_attn.q_proj"), h, h, true)?,
            k_proj: Linear::new(&lp.pp("self_attn.k_proj"), h, h, true)?,
            v_proj: Linear::new(&lp.pp("self_attn.v_proj"), h, h, true)?,
            out_proj: Linear::new(&lp.pp("self_attn.out_proj"), h, h, true)?,
            layer_norm2: LayerNorm::new(&lp.pp("layer_norm2"), h, eps)?,
            fc1: Linear::new(&lp.pp("mlp.fc1"), h, inter, true)?,
            fc2: Linear::new(&lp.pp("mlp.fc2"), inter, h, true)?,
        })
    }

    /// (B, T, h) → (B, T, h). `quick`: quick_gelu (x·σ(1.702x)), else exact gelu.
    pub fn forward(&self, x: &Tensor, heads: i64, quick: bool, causal: bool) -> Tensor {
        let h = self.layer_norm1.forward(x);
        let attn = multi_head_attention(
            &self.q_proj.forward(&h),
            &self.k_proj.forward(&h),
            &self.v_proj.forward(&h),
            heads,
            causal,
        );
        let x = x + self.out_proj.forward(&attn);
        let h = self.fc1.forward(&self.layer_norm2.forward(&x));
        let h = if quick {
            &h * (&h * 1.702).sigmoid()
        } else {
            h.gelu("none")
        };
        x + self.fc2.forward(&h)
    }
}

pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Weights named as transformers 4 saves them (`text_model.…`) or without that prefix
    /// (transformers 5, and CLIPTextModel state dicts saved directly).
    pub fn new(weights: &WeightMap, config: &ClipTextConfig) -> Result<Self> {
        let root = weights.root();
        let p = if weights.contains("text_model.embeddings.token_embedding.weight") {
            root.pp("text_model")
        } else {
            root
        };
        let (h, inter, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let lp: Params = p.pp("encoder.layers").pp(i);
            layers.push(EncoderLayer::new(&lp, h, inter, eps)?);
        }
        Ok(ClipTextModel {
            config: config.clone(),
            token_embedding: p.get("embeddings.token_embedding.weight", &[config.vocab_size, h])?,
            position_embedding: p.get(
                "embeddings.position_embedding.weight",
                &[config.max_position_embeddings, h],
            )?,
            layers,
            final_layer_norm: LayerNorm::new(&p.pp("final_layer_norm"), h, eps)?,
        })
    }

    /// Loads a transformers `text_encoder` folder (config.json + model.safetensors).
    pub fn load(folder: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = ClipTextConfig::from_file(&folder.join("config.json"))?;
        let weights = WeightMap::load_folder_file(folder, "model.safetensors")?.to(device, kind)?;
        Self::new(&weights, &config)
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// (B, T) int64 token ids -> last hidden state (B, T, hidden), after the final LayerNorm.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        let seq = input_ids.size()[1];
        let positions = Tensor::arange(seq, (Kind::Int64, input_ids.device()));
        let mut x = Tensor::embedding(&self.token_embedding, input_ids, -1, false, false)
            + Tensor::embedding(&self.position_embedding, &positions, -1, false, false)
                .unsqueeze(0);
        let heads = self.config.num_attention_heads;
        let quick = self.config.hidden_act == "quick_gelu";
        for layer in &self.layers {
            x = layer.forward(&x, heads, quick, true);
        }
        self.final_layer_norm.forward(&x)
    }
}
