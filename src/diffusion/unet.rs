//! UNet2DConditionModel (SD 1.x/2.x layout, any size its diffusers config.json describes),
//! with ControlNet residual inputs. The down path (conv_in, time embedding, down blocks, mid
//! block) is shared with ControlNetModel.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::error::{DiffusionError, Result};
use super::layers::{
    timestep_embedding, Conv2d, Downsample2D, GroupNorm, LayerNorm, Linear, ResnetBlock2D,
    Upsample2D,
};
use super::weights::{read_json, Params, WeightMap};

/// A config value diffusers accepts as one value or one per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    pub fn expand(&self, blocks: usize) -> Vec<T> {
        match self {
            PerBlock::One(v) => vec![v.clone(); blocks],
            PerBlock::Many(v) => v.clone(),
        }
    }
}

/// The fields of diffusers' UNet2DConditionModel / ControlNetModel config.json this
/// implementation reads; options it does not implement are rejected by `validate`.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_in")]
    pub in_channels: i64,
    #[serde(default = "d_in")]
    pub out_channels: i64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<i64>,
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock<i64>,
    #[serde(default = "d_one")]
    pub downsample_padding: i64,
    #[serde(default = "d_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: i64,
    #[serde(default = "d_heads")]
    pub attention_head_dim: PerBlock<i64>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<i64>>,
    #[serde(default = "d_tlayers")]
    pub transformer_layers_per_block: PerBlock<i64>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default)]
    pub only_cross_attention: PerBlockBool,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim: Option<i64>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default = "d_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default = "d_three")]
    pub conv_in_kernel: i64,
    #[serde(default = "d_three")]
    pub conv_out_kernel: i64,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    // ControlNet only
    #[serde(default = "d_cond_channels")]
    pub conditioning_embedding_out_channels: Vec<i64>,
    #[serde(default = "d_three")]
    pub conditioning_channels: i64,
    #[serde(default)]
    pub global_pool_conditions: bool,
    #[serde(default = "d_rgb")]
    pub controlnet_conditioning_channel_order: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum PerBlockBool {
    #[default]
    No,
    One(bool),
    Many(Vec<bool>),
}

fn d_in() -> i64 {
    4
}
fn d_true() -> bool {
    true
}
fn d_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_channels() -> Vec<i64> {
    vec![320, 640, 1280, 1280]
}
fn d_layers() -> PerBlock<i64> {
    PerBlock::One(2)
}
fn d_one() -> i64 {
    1
}
fn d_one_f() -> f64 {
    1.0
}
fn d_groups() -> i64 {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> i64 {
    1280
}
fn d_heads() -> PerBlock<i64> {
    PerBlock::One(8)
}
fn d_tlayers() -> PerBlock<i64> {
    PerBlock::One(1)
}
fn d_act() -> String {
    "silu".into()
}
fn d_shift() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_three() -> i64 {
    3
}
fn d_cond_channels() -> Vec<i64> {
    vec![16, 32, 96, 256]
}
fn d_rgb() -> String {
    "rgb".into()
}

impl UNetConfig {
    /// Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json).
    pub fn sd15() -> Self {
        serde_json::from_str(
            r#"{"cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64}"#,
        )
        .expect("the built-in SD 1.5 config parses")
    }

    /// SD 1.5's ControlNet (lllyasviel/control_v11*_sd15 config.json).
    pub fn sd15_controlnet() -> Self {
        serde_json::from_str(r#"{"cross_attention_dim": 768, "attention_head_dim": 8}"#)
            .expect("the built-in config parses")
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let config: UNetConfig = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |message: String| {
            Err(DiffusionError::UnsupportedConfig {
                path: path.to_path_buf(),
                message,
            })
        };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n {
            return unsupported(format!(
                "{} down blocks for {} block_out_channels",
                self.down_block_types.len(),
                self.block_out_channels.len()
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return unsupported(format!("down block type `{t}`"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return unsupported(format!("up block type `{t}`"));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => return unsupported(format!("mid block type {other:?}")),
        }
        let checks: [(bool, &str); 13] = [
            (self.act_fn != "silu", "act_fn other than silu"),
            (self.center_input_sample, "center_input_sample"),
            (self.dual_cross_attention, "dual_cross_attention"),
            (self.class_embed_type.is_some(), "class_embed_type"),
            (
                self.addition_embed_type.is_some(),
                "addition_embed_type (SDXL)",
            ),
            (self.encoder_hid_dim.is_some(), "encoder_hid_dim"),
            (self.time_cond_proj_dim.is_some(), "time_cond_proj_dim"),
            (
                self.resnet_time_scale_shift != "default",
                "resnet_time_scale_shift other than default",
            ),
            (
                self.time_embedding_type != "positional",
                "time_embedding_type other than positional",
            ),
            (
                self.conv_in_kernel != 3 || self.conv_out_kernel != 3,
                "conv kernels other than 3",
            ),
            (self.global_pool_conditions, "global_pool_conditions"),
            (
                self.controlnet_conditioning_channel_order != "rgb",
                "BGR conditioning channel order",
            ),
            (
                self.mid_block_scale_factor != 1.0,
                "mid_block_scale_factor other than 1",
            ),
        ];
        for (bad, what) in checks {
            if bad {
                return unsupported(what.to_string());
            }
        }
        if !matches!(
            self.only_cross_attention,
            PerBlockBool::No | PerBlockBool::One(false)
        ) && !matches!(&self.only_cross_attention, PerBlockBool::Many(v) if v.iter().all(|b| !b))
        {
            return unsupported("only_cross_attention".into());
        }
        for (what, len) in [
            ("layers_per_block", self.layers_per_block.expand(n).len()),
            ("attention_head_dim", self.heads().len()),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.expand(n).len(),
            ),
        ] {
            if len != n {
                return unsupported(format!("{what} has {len} entries for {n} blocks"));
            }
        }
        for (c, h) in self.block_out_channels.iter().zip(self.heads()) {
            if h <= 0 || c % h != 0 || c % self.norm_num_groups != 0 {
                return unsupported(format!(
                    "{c} channels do not split into {h} heads / {} groups",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }

    /// Attention heads per block: diffusers' SD configs name the head count
    /// `attention_head_dim` (a historical misnomer) unless `num_attention_heads` is set.
    pub fn heads(&self) -> Vec<i64> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(n),
            None => self.attention_head_dim.expand(n),
        }
    }

    pub fn time_embed_dim(&self) -> i64 {
        self.block_out_channels[0] * 4
    }
}

/// Transformer2DModel: GroupNorm, proj_in (1x1 conv or linear), BasicTransformerBlocks, proj_out, residual.
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in_conv: Option<Conv2d>,
    proj_in_linear: Option<Linear>,
    blocks: Vec<BasicTransformerBlock>,
    proj_out_conv: Option<Conv2d>,
    proj_out_linear: Option<Linear>,
}

struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl CrossAttention {
    fn new(p: &Params, dim: i64, context_dim: i64, heads: i64) -> Result<Self> {
        Ok(CrossAttention {
            to_q: Linear::new(&p.pp("to_q"), dim, dim, false)?,
            to_k: Linear::new(&p.pp("to_k"), context_dim, dim, false)?,
            to_v: Linear::new(&p.pp("to_v"), context_dim, dim, false)?,
            to_out: Linear::new(&p.pp("to_out.0"), dim, dim, true)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let ctx = context.unwrap_or(x);
        let out = super::layers::multi_head_attention(
            &self.to_q.forward(x),
            &self.to_k.forward(ctx),
            &self.to_v.forward(ctx),
            self.heads,
            false,
        );
        self.to_out.forward(&out)
    }
}

struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn new(p: &Params, dim: i64, context_dim: i64, heads: i64) -> Result<Self> {
        let inner = dim * 4;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::new(&p.pp("norm1"), dim, 1e-5)?,
            attn1: CrossAttention::new(&p.pp("attn1"), dim, dim, heads)?,
            norm2: LayerNorm::new(&p.pp("norm2"), dim, 1e-5)?,
            attn2: CrossAttention::new(&p.pp("attn2"), dim, context_dim, heads)?,
            norm3: LayerNorm::new(&p.pp("norm3"), dim, 1e-5)?,
            ff_proj: Linear::new(&p.pp("ff.net.0.proj"), dim, inner * 2, true)?,
            ff_out: Linear::new(&p.pp("ff.net.2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let x = self.attn2.forward(&self.norm2.forward(&x), Some(context)) + &x;
        // GEGLU: half the projection gates the other half through exact GELU
        let h = self.ff_proj.forward(&self.norm3.forward(&x));
        let parts = h.chunk(2, -1);
        self.ff_out.forward(&(&parts[0] * parts[1].gelu("none"))) + x
    }
}

impl Transformer2D {
    fn new(
        p: &Params,
        channels: i64,
        heads: i64,
        layers: i64,
        config: &UNetConfig,
    ) -> Result<Self> {
        let linear = config.use_linear_projection;
        let mut blocks = Vec::new();
        for i in 0..layers {
            blocks.push(BasicTransformerBlock::new(
                &p.pp("transformer_blocks").pp(i),
                channels,
                config.cross_attention_dim,
                heads,
            )?);
        }
        Ok(Transformer2D {
            norm: GroupNorm::new(&p.pp("norm"), config.norm_num_groups, channels, 1e-6)?,
            proj_in_conv: if linear {
                None
            } else {
                Some(Conv2d::new(&p.pp("proj_in"), channels, channels, 1, 1, 0)?)
            },
            proj_in_linear: if linear {
                Some(Linear::new(&p.pp("proj_in"), channels, channels, true)?)
            } else {
                None
            },
            blocks,
            proj_out_conv: if linear {
                None
            } else {
                Some(Conv2d::new(&p.pp("proj_out"), channels, channels, 1, 1, 0)?)
            },
            proj_out_linear: if linear {
                Some(Linear::new(&p.pp("proj_out"), channels, channels, true)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("transformer input is NCHW");
        let mut hs = self.norm.forward(x);
        // (B, C, H, W) -> (B, H·W, C)
        hs = match &self.proj_in_conv {
            Some(conv) => conv
                .forward(&hs)
                .permute([0, 2, 3, 1])
                .reshape([b, h * w, c]),
            None => {
                let flat = hs.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
                self.proj_in_linear
                    .as_ref()
                    .expect("linear proj_in")
                    .forward(&flat)
            }
        };
        for block in &self.blocks {
            hs = block.forward(&hs, context);
        }
        let out = match &self.proj_out_conv {
            Some(conv) => conv.forward(&hs.reshape([b, h, w, c]).permute([0, 3, 1, 2])),
            None => self
                .proj_out_linear
                .as_ref()
                .expect("linear proj_out")
                .forward(&hs)
                .reshape([b, h, w, c])
                .permute([0, 3, 1, 2]),
        };
        out + x
    }
}

pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Runs the block, pushing every output the up path (or ControlNet) takes as a skip.
    pub(crate) fn forward(
        &self,
        mut x: Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Tensor {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(&x, context);
            }
            skips.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x);
            skips.push(x.shallow_clone());
        }
        x
    }
}

pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
}

impl MidBlock {
    pub(crate) fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Tensor {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(&x, context);
            x = resnet.forward(&x, Some(temb));
        }
        x
    }
}

struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

/// conv_in, the time embedding, the down blocks and the mid block: the part of the UNet
/// that ControlNet copies.
pub struct DownPath {
    pub config: UNetConfig,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
}

impl DownPath {
    pub fn new(p: &Params, config: &UNetConfig) -> Result<Self> {
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb = config.time_embed_dim();
        let heads = config.heads();
        let layers = config.layers_per_block.expand(n);
        let tlayers = config.transformer_layers_per_block.expand(n);
        let groups = config.norm_num_groups;
        let eps = config.norm_eps;
        let mut down_blocks = Vec::new();
        let mut out_ch = ch[0];
        for i in 0..n {
            let in_ch = out_ch;
            out_ch = ch[i];
            let bp = p.pp("down_blocks").pp(i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers[i] {
                let r_in = if j == 0 { in_ch } else { out_ch };
                resnets.push(ResnetBlock2D::new(
                    &bp.pp("resnets").pp(j),
                    r_in,
                    out_ch,
                    Some(temb),
                    groups,
                    eps,
                )?);
                if config.down_block_types[i] == "CrossAttnDownBlock2D" {
                    attentions.push(Transformer2D::new(
                        &bp.pp("attentions").pp(j),
                        out_ch,
                        heads[i],
                        tlayers[i],
                        config,
                    )?);
                }
            }
            let downsampler = if i + 1 < n {
                Some(Downsample2D::new(
                    &bp.pp("downsamplers.0"),
                    out_ch,
                    config.downsample_padding,
                )?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }
        let mid_ch = ch[n - 1];
        let mp = p.pp("mid_block");
        let mid_block = MidBlock {
            resnets: vec![
                ResnetBlock2D::new(&mp.pp("resnets.0"), mid_ch, mid_ch, Some(temb), groups, eps)?,
                ResnetBlock2D::new(&mp.pp("resnets.1"), mid_ch, mid_ch, Some(temb), groups, eps)?,
            ],
            attentions: vec![Transformer2D::new(
                &mp.pp("attentions.0"),
                mid_ch,
                heads[n - 1],
                tlayers[n - 1],
                config,
            )?],
        };
        Ok(DownPath {
            config: config.clone(),
            conv_in: Conv2d::new(&p.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            time_linear_1: Linear::new(&p.pp("time_embedding.linear_1"), ch[0], temb, true)?,
            time_linear_2: Linear::new(&p.pp("time_embedding.linear_2"), temb, temb, true)?,
            down_blocks,
            mid_block,
        })
    }

    /// (B,) timesteps (or one, broadcast) -> (B, time_embed_dim) in the sample's dtype.
    pub fn time_embedding(&self, timesteps: &Tensor, batch: i64, kind: Kind) -> Tensor {
        let t = if timesteps.dim() == 0 || timesteps.size()[0] == 1 {
            timesteps.reshape([1]).expand([batch], true)
        } else {
            timesteps.shallow_clone()
        };
        let emb = timestep_embedding(
            &t,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )
        .to_kind(kind);
        self.time_linear_2
            .forward(&self.time_linear_1.forward(&emb).silu())
    }

    pub fn conv_in(&self, sample: &Tensor) -> Tensor {
        self.conv_in.forward(sample)
    }
}

pub struct UNet2DConditionModel {
    pub down: DownPath,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    pub fn new(weights: &WeightMap, config: &UNetConfig) -> Result<Self> {
        config.validate(weights.source())?;
        let p = weights.root();
        let down = DownPath::new(&p, config)?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        if config.up_block_types.len() != n {
            return Err(DiffusionError::UnsupportedConfig {
                path: weights.source().to_path_buf(),
                message: format!(
                    "{} up blocks for {n} down blocks",
                    config.up_block_types.len()
                ),
            });
        }
        let rev_ch: Vec<i64> = ch.iter().rev().copied().collect();
        let rev_heads: Vec<i64> = config.heads().into_iter().rev().collect();
        let rev_layers: Vec<i64> = config
            .layers_per_block
            .expand(n)
            .into_iter()
            .rev()
            .collect();
        let rev_tlayers: Vec<i64> = config
            .transformer_layers_per_block
            .expand(n)
            .into_iter()
            .rev()
            .collect();
        let temb = config.time_embed_dim();
        let (groups, eps) = (config.norm_num_groups, config.norm_eps);
        let mut up_blocks = Vec::new();
        let mut out_ch = rev_ch[0];
        for i in 0..n {
            let prev_out = out_ch;
            out_ch = rev_ch[i];
            let in_ch = rev_ch[(i + 1).min(n - 1)];
            let bp = p.pp("up_blocks").pp(i);
            let num = rev_layers[i] + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..num {
                let skip_ch = if j == num - 1 { in_ch } else { out_ch };
                let r_in = if j == 0 { prev_out } else { out_ch };
                resnets.push(ResnetBlock2D::new(
                    &bp.pp("resnets").pp(j),
                    r_in + skip_ch,
                    out_ch,
                    Some(temb),
                    groups,
                    eps,
                )?);
                if config.up_block_types[i] == "CrossAttnUpBlock2D" {
                    attentions.push(Transformer2D::new(
                        &bp.pp("attentions").pp(j),
                        out_ch,
                        rev_heads[i],
                        rev_tlayers[i],
                        config,
                    )?);
                }
            }
            let upsampler = if i + 1 < n {
                Some(Upsample2D::new(&bp.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }
        Ok(UNet2DConditionModel {
            down,
            up_blocks,
            conv_norm_out: GroupNorm::new(&p.pp("conv_norm_out"), groups, ch[0], eps)?,
            conv_out: Conv2d::new(&p.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
        })
    }

    /// Loads a diffusers `unet` folder (config.json + diffusion_pytorch_model.safetensors).
    pub fn load(folder: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = UNetConfig::from_file(&folder.join("config.json"))?;
        let weights = WeightMap::load_folder_file(folder, "diffusion_pytorch_model.safetensors")?
            .to(device, kind)?;
        Self::new(&weights, &config)
    }

    pub fn config(&self) -> &UNetConfig {
        &self.down.config
    }

    /// sample (B, in_channels, h, w), timesteps (B,) or (1,), context (B, 77, cross_dim)
    /// -> predicted noise (B, out_channels, h, w). `residuals`: ControlNet's summed
    /// (down skips, mid) to add.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        residuals: Option<&(Vec<Tensor>, Tensor)>,
    ) -> Tensor {
        let batch = sample.size()[0];
        let temb = self.down.time_embedding(timesteps, batch, sample.kind());
        let mut x = self.down.conv_in(sample);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down.down_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        if let Some((down_res, _)) = residuals {
            assert_eq!(
                down_res.len(),
                skips.len(),
                "ControlNet residuals match the UNet's skips"
            );
            skips = skips.iter().zip(down_res).map(|(s, r)| s + r).collect();
        }
        x = self.down.mid_block.forward(&x, &temb, context);
        if let Some((_, mid_res)) = residuals {
            x = x + mid_res;
        }
        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                x = resnet.forward(&Tensor::cat(&[&x, &skip], 1), Some(&temb));
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context);
                }
            }
            if let Some(up) = &block.upsampler {
                // upsample to the next skip's size (matters for sizes not divisible by 2^n)
                let target = skips.last().map(|s| {
                    let sz = s.size();
                    (sz[2], sz[3])
                });
                x = up.forward(&x, target);
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&x).silu())
    }
}
