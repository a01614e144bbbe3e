//! Image losses and metrics on NCHW tensors: SSIM (Gaussian 7x7, sigma 1.5), PSNR.

use tch::{Kind, Tensor};

fn gaussian_window(channels: i64, device: tch::Device) -> Tensor {
    let sigma = 1.5f64;
    let coords: Vec<f32> = (0..7).map(|i| i as f32 - 3.0).collect();
    let g: Vec<f32> = coords
        .iter()
        .map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let g = Tensor::from_slice(&g);
    let g = &g / g.sum(Kind::Float);
    g.outer(&g)
        .view([1, 1, 7, 7])
        .repeat([channels, 1, 1, 1])
        .to_device(device)
}

/// Mean SSIM of images in [0, 1], `[N, C, H, W]` (differentiable).
pub fn ssim(a: &Tensor, b: &Tensor) -> Tensor {
    let c = a.size()[1];
    let win = gaussian_window(c, a.device()).to_kind(a.kind());
    let blur = |x: &Tensor| x.conv2d(&win, None::<Tensor>, [1, 1], [3, 3], [1, 1], c);
    let (mu_a, mu_b) = (blur(a), blur(b));
    let (mu_a2, mu_b2, mu_ab) = (&mu_a * &mu_a, &mu_b * &mu_b, &mu_a * &mu_b);
    let var_a = blur(&(a * a)) - &mu_a2;
    let var_b = blur(&(b * b)) - &mu_b2;
    let cov = blur(&(a * b)) - &mu_ab;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let num = (mu_ab * 2.0 + c1) * (cov * 2.0 + c2);
    let den = (mu_a2 + mu_b2 + c1) * (var_a + var_b + c2);
    (num / den).mean(Kind::Float)
}

/// PSNR in dB of images in [0, 1].
pub fn psnr_db(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b).square().mean(Kind::Float).double_value(&[]);
    10.0 * (1.0 / mse.max(1e-12)).log10()
}
