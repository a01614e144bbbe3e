//! ControlNetModel: a copy of the UNet's down path whose input also gets an embedded control
//! image, and 1x1 "zero" convs turning each skip and the mid block into residuals for the UNet.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::error::Result;
use super::layers::Conv2d;
use super::unet::{DownPath, UNetConfig};
use super::weights::WeightMap;

/// Residuals for the UNet: one per down skip, and one for the mid block.
pub type ControlResiduals = (Vec<Tensor>, Tensor);

struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn forward(&self, cond: &Tensor) -> Tensor {
        let mut x = self.conv_in.forward(cond).silu();
        for b in &self.blocks {
            x = b.forward(&x).silu();
        }
        self.conv_out.forward(&x)
    }
}

pub struct ControlNetModel {
    down: DownPath,
    cond_embedding: ConditioningEmbedding,
    zero_convs: Vec<Conv2d>,
    mid_zero_conv: Conv2d,
}

impl ControlNetModel {
    pub fn new(weights: &WeightMap, config: &UNetConfig) -> Result<Self> {
        config.validate(weights.source())?;
        let p = weights.root();
        let down = DownPath::new(&p, config)?;
        let ch = &config.block_out_channels;
        let cc = &config.conditioning_embedding_out_channels;
        let cp = p.pp("controlnet_cond_embedding");
        let mut blocks = Vec::new();
        for i in 0..cc.len().saturating_sub(1) {
            blocks.push(Conv2d::new(
                &cp.pp("blocks").pp(2 * i),
                cc[i],
                cc[i],
                3,
                1,
                1,
            )?);
            blocks.push(Conv2d::new(
                &cp.pp("blocks").pp(2 * i + 1),
                cc[i],
                cc[i + 1],
                3,
                2,
                1,
            )?);
        }
        let cond_embedding = ConditioningEmbedding {
            conv_in: Conv2d::new(
                &cp.pp("conv_in"),
                config.conditioning_channels,
                cc[0],
                3,
                1,
                1,
            )?,
            blocks,
            conv_out: Conv2d::new(&cp.pp("conv_out"), cc[cc.len() - 1], ch[0], 3, 1, 1)?,
        };
        // one zero conv per skip: conv_in's output, each resnet, each downsampler
        let n = ch.len();
        let layers = config.layers_per_block.expand(n);
        let mut skip_channels = vec![ch[0]];
        for i in 0..n {
            skip_channels.extend(std::iter::repeat_n(ch[i], layers[i] as usize));
            if i + 1 < n {
                skip_channels.push(ch[i]);
            }
        }
        let mut zero_convs = Vec::new();
        for (k, c) in skip_channels.iter().enumerate() {
            zero_convs.push(Conv2d::new(
                &p.pp("controlnet_down_blocks").pp(k),
                *c,
                *c,
                1,
                1,
                0,
            )?);
        }
        let mid_zero_conv =
            Conv2d::new(&p.pp("controlnet_mid_block"), ch[n - 1], ch[n - 1], 1, 1, 0)?;
        Ok(ControlNetModel {
            down,
            cond_embedding,
            zero_convs,
            mid_zero_conv,
        })
    }

    /// Loads a diffusers ControlNet folder (config.json + diffusion_pytorch_model.safetensors).
    pub fn load(folder: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = UNetConfig::from_file(&folder.join("config.json"))?;
        let weights = WeightMap::load_folder_file(folder, "diffusion_pytorch_model.safetensors")?
            .to(device, kind)?;
        Self::new(&weights, &config)
    }

    /// Pixels per latent the conditioning embedding assumes (8 for SD's ControlNets).
    pub fn downscale(&self) -> i64 {
        1 << (self.down.config.conditioning_embedding_out_channels.len() - 1)
    }

    /// sample: the UNet's (scaled) noisy latents (B, 4, h, w); cond: control images
    /// (B, 3, 8h, 8w) in [0, 1]; `scale`: per-row conditioning scale (B,) or one value (1,).
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        cond: &Tensor,
        scale: &Tensor,
    ) -> ControlResiduals {
        let batch = sample.size()[0];
        let temb = self.down.time_embedding(timesteps, batch, sample.kind());
        let mut x = self.down.conv_in(sample) + self.cond_embedding.forward(cond);
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down.down_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        let mid = self.down.mid_block.forward(&x, &temb, context);
        let scale = scale.to_kind(sample.kind()).reshape([-1, 1, 1, 1]);
        let down = skips
            .iter()
            .zip(&self.zero_convs)
            .map(|(s, z)| z.forward(s) * &scale)
            .collect();
        (down, self.mid_zero_conv.forward(&mid) * &scale)
    }
}
