//! What a trained net is worth on the holdout: PSNR and SSIM against the pairs (and the
//! teacher), the identity floor, flicker.

use super::{TrainError, Trainer};
use crate::nn::metrics::{psnr_db, ssim};
use crate::nn::Accordion;
use crate::protocol::metric;
use tch::{Kind, Tensor};

/// Output/source frame-to-frame change on a slow sub-pixel pan and zoom of one image
/// (1.0: the net adds no flicker of its own).
pub(super) fn flicker_ratio(net: &Accordion, image: &Tensor) -> f64 {
    tch::no_grad(|| {
        let device = image.device();
        let frames: Vec<Tensor> = (0..8)
            .map(|t| {
                let zoom = 1.0 - 0.004 * t as f64;
                let shift = 0.3 * t as f64 * 2.0 / image.size()[3] as f64; // 0.3 px per frame
                let theta = Tensor::from_slice(&[
                    zoom as f32,
                    0.0,
                    shift as f32,
                    0.0,
                    zoom as f32,
                    (shift * 0.5) as f32,
                ])
                .view([1, 2, 3])
                .to_device(device);
                let grid = Tensor::affine_grid_generator(&theta, image.size(), false);
                image.grid_sampler(&grid, 0, 1, false)
            })
            .collect();
        let src = Tensor::cat(&frames, 0);
        let out = net.forward(&src);
        let diff = |x: &Tensor| {
            (x.narrow(0, 1, 7) - x.narrow(0, 0, 7))
                .abs()
                .mean(Kind::Float)
                .double_value(&[])
        };
        diff(&out) / diff(&src).max(1e-9)
    })
}

impl Trainer<'_> {
    pub(super) fn eval_metrics(
        &self,
        net: &Accordion,
        teacher: Option<&Accordion>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, TrainError> {
        let (src, tgt) = (&self.data.hold_src, &self.data.hold_tgt);
        let to01 = |t: &Tensor| (t.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) / 2.0;
        let out = tch::no_grad(|| net.forward(src));
        let mut m = serde_json::Map::new();
        m.insert(
            metric::PSNR_VS_PAIRS_DB.into(),
            serde_json::json!(round3(psnr_db(&to01(&out), &to01(tgt)))),
        );
        m.insert(
            metric::SSIM.into(),
            serde_json::json!(round4(
                tch::no_grad(|| ssim(&to01(&out), &to01(tgt))).double_value(&[])
            )),
        );
        m.insert(
            metric::IDENTITY_PSNR_DB.into(),
            serde_json::json!(round3(psnr_db(&to01(src), &to01(tgt)))),
        );
        m.insert(
            "holdout_items".into(),
            serde_json::json!(self.job.pairs.iter().filter(|p| p.holdout).count()),
        );
        m.insert(
            metric::PARAMS.into(),
            serde_json::json!(crate::nn::accordion::count_params(self.job.arch)),
        );
        m.insert(
            metric::MACS_512.into(),
            serde_json::json!(crate::nn::accordion::macs(self.job.arch, 512, 512)),
        );
        m.insert(
            metric::FLICKER_RATIO.into(),
            serde_json::json!(round3(flicker_ratio(net, &src.narrow(0, 0, 1)))),
        );
        if let Some(t) = teacher {
            let t_out = tch::no_grad(|| t.forward(src));
            m.insert(
                metric::PSNR_VS_TEACHER_DB.into(),
                serde_json::json!(round3(psnr_db(&to01(&out), &to01(&t_out)))),
            );
            m.insert(
                metric::TEACHER_PSNR_VS_PAIRS_DB.into(),
                serde_json::json!(round3(psnr_db(&to01(&t_out), &to01(tgt)))),
            );
        }
        Ok(m)
    }
}

pub(super) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub(super) fn round4(v: f64) -> f64 {
    (v * 10000.0).round() / 10000.0
}
