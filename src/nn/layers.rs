//! StyleGAN2 habits: equalized-learning-rate convolutions (weights stored N(0, 1) and
//! scaled at run time by the He constant 1/sqrt(fan_in), so Adam sees every layer at the
//! same scale), the fixed binomial blur the discriminator downsamples behind, and the
//! accordion's depth-to-space.

use tch::{nn, Kind, Tensor};

/// A conv whose weight is scaled at run time by 1/sqrt(fan_in) (equalized lr).
#[derive(Debug)]
pub struct EqConv {
    pub weight: Tensor, // [out, in / groups, k, k], N(0, 1)
    pub bias: Tensor,   // [out]
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    pub scale: f64,
    /// Optional learned log-gain per output channel (see `with_gain`).
    pub gain: Option<Tensor>, // [out], starts at 0
}

impl EqConv {
    pub fn new(
        p: nn::Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        padding: i64,
        groups: i64,
    ) -> EqConv {
        let weight = p.var(
            "weight",
            &[cout, cin / groups, k, k],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let bias = p.var("bias", &[cout], nn::Init::Const(0.0));
        let fan_in = (cin / groups * k * k) as f64;
        EqConv {
            weight,
            bias,
            stride,
            padding,
            groups,
            scale: 1.0 / fan_in.sqrt(),
            gain: None,
        }
    }

    /// Adds a learned log-gain per output channel: the output is `(W x + b) * exp(g)`.
    /// Adam moves each variable by about `lr` a step, so a plain weight needs thousands of
    /// steps to grow steep enough for a hard threshold (posterise levels, ink lines); the
    /// exponent grows it geometrically, and the threshold `-b / W` does not move with it.
    /// It folds into the conv's weight and bias at export: no new op.
    pub fn with_gain(mut self, p: nn::Path) -> EqConv {
        let cout = self.bias.size()[0];
        self.gain = Some(p.var("gain", &[cout], nn::Init::Const(0.0)));
        self
    }

    /// exp(gain) per output channel, bounded so a run cannot blow a channel up.
    fn gain_factor(&self) -> Option<Tensor> {
        self.gain
            .as_ref()
            .map(|g| g.clamp(-GAIN_BOUND, GAIN_BOUND).exp())
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.effective_weight(),
            Some(&self.effective_bias()),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.groups,
        )
    }

    /// The weight as it is applied (scale and gain folded in): what export writes.
    pub fn effective_weight(&self) -> Tensor {
        let w = &self.weight * self.scale;
        match self.gain_factor() {
            Some(f) => w * f.view([-1, 1, 1, 1]),
            None => w,
        }
    }

    /// The bias as it is applied (gain folded in): what export writes.
    pub fn effective_bias(&self) -> Tensor {
        match self.gain_factor() {
            Some(f) => &self.bias * f,
            None => self.bias.shallow_clone(),
        }
    }
}

/// |log-gain| at most 4: a factor between 1/55 and 55.
const GAIN_BOUND: f64 = 4.0;

/// The [1,3,3,1] FIR as a normalised 4x4 depthwise kernel, `[channels, 1, 4, 4]`.
pub fn blur4_kernel(channels: i64) -> Tensor {
    let k = Tensor::from_slice(&[1f32, 3.0, 3.0, 1.0]);
    let k2 = k.outer(&k);
    let k2 = &k2 / k2.sum(Kind::Float);
    k2.view([1, 1, 4, 4]).repeat([channels, 1, 1, 1])
}

/// Blur before a stride-2 conv: pad 2 each side, 4x4 [1,3,3,1] depthwise (H → H + 1).
pub fn blur_down(x: &Tensor, kernel: &Tensor) -> Tensor {
    let c = x.size()[1];
    x.constant_pad_nd([2, 2, 2, 2])
        .conv2d(kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}

/// Depth-to-space in DCR order (`ir::Op::DepthToSpace`): input channel
/// `(dy * block + dx) * C + c` becomes channel `c` at sub-pixel `(dy, dx)`.
pub fn depth_to_space(x: &Tensor, block: i64) -> Tensor {
    let s = x.size();
    let (n, c, h, w) = (s[0], s[1] / (block * block), s[2], s[3]);
    x.view([n, block, block, c, h, w])
        .permute([0, 3, 4, 1, 5, 2])
        .reshape([n, c, h * block, w * block])
}
