//! The layers every model here is made of, and the blocks the UNet, ControlNet and VAE
//! share (ResnetBlock2D, attention, resampling), with diffusers' parameter names.

use tch::{Kind, Tensor};

use super::error::Result;
use super::weights::Params;

pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: &Params, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let weight = p.get("weight", &[out_dim, in_dim])?;
        let bias = if bias {
            Some(p.get("bias", &[out_dim])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(
        p: &Params,
        in_ch: i64,
        out_ch: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        let weight = p.get("weight", &[out_ch, in_ch, kernel, kernel])?;
        let bias = Some(p.get("bias", &[out_ch])?);
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(p: &Params, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        Ok(GroupNorm {
            weight: p.get("weight", &[channels])?,
            bias: p.get("bias", &[channels])?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: &Params, dim: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: p.get("weight", &[dim])?,
            bias: p.get("bias", &[dim])?,
            dim,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// Multi-head attention of (B, N, heads·d) inputs through `scaled_dot_product_attention`.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: i64,
    causal: bool,
) -> Tensor {
    let (b, n_q, inner) = q
        .size3()
        .expect("attention query is (batch, tokens, channels)");
    let n_kv = k.size()[1];
    let d = inner / heads;
    let split = |t: &Tensor, n: i64| t.reshape([b, n, heads, d]).transpose(1, 2);
    let out = Tensor::scaled_dot_product_attention::<Tensor>(
        &split(q, n_q),
        &split(k, n_kv),
        &split(v, n_kv),
        None,
        0.0,
        causal,
        None,
        false,
    );
    out.transpose(1, 2).reshape([b, n_q, inner])
}

/// diffusers' ResnetBlock2D ("default" time-embedding shift, output scale 1).
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(
        p: &Params,
        in_ch: i64,
        out_ch: i64,
        temb_ch: Option<i64>,
        groups: i64,
        eps: f64,
    ) -> Result<Self> {
        Ok(ResnetBlock2D {
            norm1: GroupNorm::new(&p.pp("norm1"), groups, in_ch, eps)?,
            conv1: Conv2d::new(&p.pp("conv1"), in_ch, out_ch, 3, 1, 1)?,
            time_emb_proj: match temb_ch {
                Some(t) => Some(Linear::new(&p.pp("time_emb_proj"), t, out_ch, true)?),
                None => None,
            },
            norm2: GroupNorm::new(&p.pp("norm2"), groups, out_ch, eps)?,
            conv2: Conv2d::new(&p.pp("conv2"), out_ch, out_ch, 3, 1, 1)?,
            conv_shortcut: if in_ch != out_ch {
                Some(Conv2d::new(&p.pp("conv_shortcut"), in_ch, out_ch, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            h = h + proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(c) => c.forward(x) + h,
            None => x + h,
        }
    }
}

/// Stride-2 3x3 conv. The VAE's variant has padding 0 and pads right/bottom by one first.
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn new(p: &Params, channels: i64, padding: i64) -> Result<Self> {
        Ok(Downsample2D {
            conv: Conv2d::new(&p.pp("conv"), channels, channels, 3, 2, padding)?,
            asymmetric_pad: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.asymmetric_pad {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest 2x upsampling (or to the skip connection's size) then a 3x3 conv.
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(p: &Params, channels: i64) -> Result<Self> {
        Ok(Upsample2D {
            conv: Conv2d::new(&p.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// `size_hw`: the output size (the next skip's size); None doubles.
    pub fn forward(&self, x: &Tensor, size_hw: Option<(i64, i64)>) -> Tensor {
        let (_, _, h, w) = x.size4().expect("upsample input is NCHW");
        let (oh, ow) = size_hw.unwrap_or((2 * h, 2 * w));
        // nearest upsampling in half precision is fine on CUDA; keep the dtype
        let up = x.upsample_nearest2d([oh, ow], None, None);
        self.conv.forward(&up)
    }
}

/// Sinusoidal timestep embedding (diffusers' get_timestep_embedding, scale 1, period 10000).
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent = Tensor::arange(half, (Kind::Float, device)) * (-(10000f64).ln())
        / (half as f64 - freq_shift);
    let emb = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (emb.sin(), emb.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}
