//! A PatchGAN discriminator on (source, image) pairs: it judges each ~30 px patch, so
//! it pushes local texture (studs, seams) rather than global layout.

use super::layers::{blur4_kernel, blur_down, EqConv};
use tch::{nn, Tensor};

pub struct PatchDiscriminator {
    convs: Vec<EqConv>,
    blurs: Vec<Tensor>,
    head: EqConv,
}

impl PatchDiscriminator {
    /// `width` channels after the first layer, doubling twice.
    pub fn new(p: &nn::Path, width: i64) -> PatchDiscriminator {
        let chans = [6, width, 2 * width, 4 * width];
        let mut convs = vec![EqConv::new(p / "d0", chans[0], chans[1], 3, 1, 1, 1)];
        let mut blurs = Vec::new();
        for i in 1..3 {
            blurs.push(blur4_kernel(chans[i]).to_device(p.device()));
            convs.push(EqConv::new(
                p / format!("d{i}"),
                chans[i],
                chans[i + 1],
                3,
                2,
                0,
                1,
            ));
        }
        let head = EqConv::new(p / "head", chans[3], 1, 3, 1, 1, 1);
        PatchDiscriminator { convs, blurs, head }
    }

    /// Logits per patch, `[N, 1, H/4, W/4]`. `source` and `image` are NCHW in [-1, 1].
    pub fn forward(&self, source: &Tensor, image: &Tensor) -> Tensor {
        let mut h = self.convs[0]
            .forward(&Tensor::cat(&[source, image], 1))
            .leaky_relu();
        for (conv, blur) in self.convs[1..].iter().zip(&self.blurs) {
            h = conv.forward(&blur_down(&h, blur)).leaky_relu();
        }
        self.head.forward(&h)
    }
}
