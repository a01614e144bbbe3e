//! AutoencoderKL: the VAE encoder (image -> diagonal Gaussian over latents) and decoder.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::error::{DiffusionError, Result};
use super::layers::{
    multi_head_attention, Conv2d, Downsample2D, GroupNorm, Linear, ResnetBlock2D, Upsample2D,
};
use super::weights::{read_json, Params, WeightMap};

#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub in_channels: i64,
    #[serde(default = "d_three")]
    pub out_channels: i64,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<i64>,
    #[serde(default = "d_layers")]
    pub layers_per_block: i64,
    #[serde(default = "d_latent")]
    pub latent_channels: i64,
    #[serde(default = "d_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

fn d_three() -> i64 {
    3
}
fn d_channels() -> Vec<i64> {
    vec![128, 256, 512, 512]
}
fn d_layers() -> i64 {
    2
}
fn d_latent() -> i64 {
    4
}
fn d_groups() -> i64 {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}
fn d_act() -> String {
    "silu".into()
}

impl VaeConfig {
    /// SD 1.5's VAE (runwayml/stable-diffusion-v1-5 vae/config.json).
    pub fn sd15() -> Self {
        serde_json::from_str("{}").expect("defaults parse")
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let config: VaeConfig = read_json(path)?;
        let bad = |message: String| {
            Err(DiffusionError::UnsupportedConfig {
                path: path.to_path_buf(),
                message,
            })
        };
        if config.act_fn != "silu" {
            return bad(format!("act_fn `{}`", config.act_fn));
        }
        if config.shift_factor.is_some_and(|s| s != 0.0) {
            return bad("shift_factor".into());
        }
        for t in &config.down_block_types {
            if t != "DownEncoderBlock2D" {
                return bad(format!("down block type `{t}`"));
            }
        }
        for t in &config.up_block_types {
            if t != "UpDecoderBlock2D" {
                return bad(format!("up block type `{t}`"));
            }
        }
        if config.block_out_channels.is_empty() {
            return bad("no block_out_channels".into());
        }
        Ok(config)
    }

    /// Pixels per latent along each side (8 for SD).
    pub fn downscale(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Single-head self-attention over pixels with a GroupNorm in front and a residual.
struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl SpatialAttention {
    fn new(p: &Params, channels: i64, groups: i64) -> Result<Self> {
        Ok(SpatialAttention {
            group_norm: GroupNorm::new(&p.pp("group_norm"), groups, channels, 1e-6)?,
            to_q: Linear::new(&p.pp("to_q"), channels, channels, true)?,
            to_k: Linear::new(&p.pp("to_k"), channels, channels, true)?,
            to_v: Linear::new(&p.pp("to_v"), channels, channels, true)?,
            to_out: Linear::new(&p.pp("to_out.0"), channels, channels, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("NCHW");
        // (B, C, H, W) -> (B, H·W, C)
        let hs = self
            .group_norm
            .forward(x)
            .reshape([b, c, h * w])
            .transpose(1, 2);
        let out = multi_head_attention(
            &self.to_q.forward(&hs),
            &self.to_k.forward(&hs),
            &self.to_v.forward(&hs),
            1,
            false,
        );
        let out = self
            .to_out
            .forward(&out)
            .transpose(1, 2)
            .reshape([b, c, h, w]);
        out + x
    }
}

struct VaeMidBlock {
    resnet_0: ResnetBlock2D,
    attention: Option<SpatialAttention>,
    resnet_1: ResnetBlock2D,
}

impl VaeMidBlock {
    fn new(p: &Params, channels: i64, groups: i64, attention: bool) -> Result<Self> {
        Ok(VaeMidBlock {
            resnet_0: ResnetBlock2D::new(
                &p.pp("resnets.0"),
                channels,
                channels,
                None,
                groups,
                1e-6,
            )?,
            attention: if attention {
                Some(SpatialAttention::new(
                    &p.pp("attentions.0"),
                    channels,
                    groups,
                )?)
            } else {
                None
            },
            resnet_1: ResnetBlock2D::new(
                &p.pp("resnets.1"),
                channels,
                channels,
                None,
                groups,
                1e-6,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = self.resnet_0.forward(x, None);
        if let Some(a) = &self.attention {
            x = a.forward(&x);
        }
        self.resnet_1.forward(&x, None)
    }
}

pub struct Encoder {
    conv_in: Conv2d,
    blocks: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: VaeMidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

pub struct Decoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid: VaeMidBlock,
    blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

pub struct AutoencoderKL {
    pub config: VaeConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
}

/// The encoder's diagonal Gaussian over latents (unscaled).
pub struct LatentDistribution {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl LatentDistribution {
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }

    /// mean + std·ε with ε given (drawn by the caller from the request's seed).
    pub fn sample(&self, standard_normal: &Tensor) -> Tensor {
        &self.mean + (&self.logvar * 0.5).exp() * standard_normal
    }
}

impl AutoencoderKL {
    pub fn new(weights: &WeightMap, config: &VaeConfig) -> Result<Self> {
        let p = weights.root();
        let ch = &config.block_out_channels;
        let n = ch.len();
        let g = config.norm_num_groups;
        let lat = config.latent_channels;
        let ep = p.pp("encoder");
        let mut blocks = Vec::new();
        let mut out_ch = ch[0];
        for i in 0..n {
            let in_ch = out_ch;
            out_ch = ch[i];
            let bp = ep.pp("down_blocks").pp(i);
            let mut resnets = Vec::new();
            for j in 0..config.layers_per_block {
                resnets.push(ResnetBlock2D::new(
                    &bp.pp("resnets").pp(j),
                    if j == 0 { in_ch } else { out_ch },
                    out_ch,
                    None,
                    g,
                    1e-6,
                )?);
            }
            let down = if i + 1 < n {
                Some(Downsample2D::new(&bp.pp("downsamplers.0"), out_ch, 0)?)
            } else {
                None
            };
            blocks.push((resnets, down));
        }
        let encoder = Encoder {
            conv_in: Conv2d::new(&ep.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            blocks,
            mid: VaeMidBlock::new(
                &ep.pp("mid_block"),
                ch[n - 1],
                g,
                config.mid_block_add_attention,
            )?,
            norm_out: GroupNorm::new(&ep.pp("conv_norm_out"), g, ch[n - 1], 1e-6)?,
            conv_out: Conv2d::new(&ep.pp("conv_out"), ch[n - 1], 2 * lat, 3, 1, 1)?,
            quant_conv: if config.use_quant_conv {
                Some(Conv2d::new(&p.pp("quant_conv"), 2 * lat, 2 * lat, 1, 1, 0)?)
            } else {
                None
            },
        };
        let dp = p.pp("decoder");
        let rev: Vec<i64> = ch.iter().rev().copied().collect();
        let mut blocks = Vec::new();
        let mut out_ch = rev[0];
        for i in 0..n {
            let prev = out_ch;
            out_ch = rev[i];
            let bp = dp.pp("up_blocks").pp(i);
            let mut resnets = Vec::new();
            for j in 0..config.layers_per_block + 1 {
                resnets.push(ResnetBlock2D::new(
                    &bp.pp("resnets").pp(j),
                    if j == 0 { prev } else { out_ch },
                    out_ch,
                    None,
                    g,
                    1e-6,
                )?);
            }
            let up = if i + 1 < n {
                Some(Upsample2D::new(&bp.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            blocks.push((resnets, up));
        }
        let decoder = Decoder {
            post_quant_conv: if config.use_post_quant_conv {
                Some(Conv2d::new(&p.pp("post_quant_conv"), lat, lat, 1, 1, 0)?)
            } else {
                None
            },
            conv_in: Conv2d::new(&dp.pp("conv_in"), lat, ch[n - 1], 3, 1, 1)?,
            mid: VaeMidBlock::new(
                &dp.pp("mid_block"),
                ch[n - 1],
                g,
                config.mid_block_add_attention,
            )?,
            blocks,
            norm_out: GroupNorm::new(&dp.pp("conv_norm_out"), g, ch[0], 1e-6)?,
            conv_out: Conv2d::new(&dp.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
        };
        Ok(AutoencoderKL {
            config: config.clone(),
            encoder,
            decoder,
        })
    }

    /// Loads a diffusers `vae` folder (config.json + diffusion_pytorch_model.safetensors).
    pub fn load(folder: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = VaeConfig::from_file(&folder.join("config.json"))?;
        let weights = WeightMap::load_folder_file(folder, "diffusion_pytorch_model.safetensors")?
            .to(device, kind)?;
        Self::new(&weights, &config)
    }

    /// Image (B, 3, H, W) in [-1, 1] -> posterior over (B, latent, H/8, W/8), unscaled.
    pub fn encode(&self, image: &Tensor) -> LatentDistribution {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(image);
        for (resnets, down) in &e.blocks {
            for r in resnets {
                x = r.forward(&x, None);
            }
            if let Some(d) = down {
                x = d.forward(&x);
            }
        }
        x = e.mid.forward(&x);
        x = e.conv_out.forward(&e.norm_out.forward(&x).silu());
        if let Some(q) = &e.quant_conv {
            x = q.forward(&x);
        }
        let parts = x.chunk(2, 1);
        LatentDistribution {
            mean: parts[0].shallow_clone(),
            logvar: parts[1].clamp(-30.0, 20.0),
        }
    }

    /// Unscaled latents (B, latent, h, w) -> image (B, 3, 8h, 8w) in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let d = &self.decoder;
        let mut x = match &d.post_quant_conv {
            Some(c) => c.forward(latents),
            None => latents.shallow_clone(),
        };
        x = d.conv_in.forward(&x);
        x = d.mid.forward(&x);
        for (resnets, up) in &d.blocks {
            for r in resnets {
                x = r.forward(&x, None);
            }
            if let Some(u) = up {
                x = u.forward(&x, None);
            }
        }
        d.conv_out.forward(&d.norm_out.forward(&x).silu())
    }
}
