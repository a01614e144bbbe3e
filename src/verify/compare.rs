//! Numerical comparison of an artifact's output with the reference (the trained
//! model's output): PSNR, SSIM, max-abs, against thresholds.

use serde::{Deserialize, Serialize};

/// What an artifact must reach to pass. Defaults per precision follow the target
/// profiles: fp32 ≥ 60 dB, fp16 ≥ 50 dB, int8 ≥ 35 dB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub min_psnr_db: f64,
    /// `None`: SSIM is reported, not enforced.
    pub min_ssim: Option<f64>,
    /// `None`: max-abs is reported, not enforced.
    pub max_abs: Option<f64>,
}

impl Thresholds {
    pub fn fp32() -> Self {
        Thresholds {
            min_psnr_db: 60.0,
            min_ssim: Some(0.999),
            max_abs: None,
        }
    }
    pub fn fp16() -> Self {
        Thresholds {
            min_psnr_db: 50.0,
            min_ssim: Some(0.995),
            max_abs: None,
        }
    }
    pub fn int8() -> Self {
        Thresholds {
            min_psnr_db: 35.0,
            min_ssim: Some(0.95),
            max_abs: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `f64::INFINITY` when the outputs are identical.
    pub psnr_db: f64,
    pub ssim: f64,
    pub max_abs: f64,
    pub thresholds: Thresholds,
    pub passed: bool,
    /// One line per missed threshold, for the caller's table.
    pub failures: Vec<String>,
}

/// Mean squared error and max absolute difference. Panics-free: lengths must match
/// (the caller checked shapes), extra values are ignored.
pub fn mse_and_max_abs(out: &[f32], reference: &[f32]) -> (f64, f64) {
    let n = out.len().min(reference.len()).max(1);
    let mut se = 0f64;
    let mut max_abs = 0f64;
    for (a, b) in out.iter().zip(reference) {
        let d = (*a as f64) - (*b as f64);
        se += d * d;
        max_abs = max_abs.max(d.abs());
    }
    (se / n as f64, max_abs)
}

/// PSNR in dB for signals whose full range is `data_range` (2.0 for [-1, 1] images).
pub fn psnr_db(out: &[f32], reference: &[f32], data_range: f64) -> f64 {
    let (mse, _) = mse_and_max_abs(out, reference);
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (data_range * data_range / mse).log10()
}

/// Mean SSIM over channels of NCHW tensors, 7x7 uniform windows (scikit-image's
/// default), constants from Wang et al. 2004 scaled to `data_range`.
pub fn ssim(out: &[f32], reference: &[f32], shape_nchw: [usize; 4], data_range: f64) -> f64 {
    let [n, c, h, w] = shape_nchw;
    let win = 7.min(h).min(w).max(1);
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let mut total = 0f64;
    let mut count = 0usize;
    for plane in 0..n * c {
        let a = &out[plane * h * w..(plane + 1) * h * w];
        let b = &reference[plane * h * w..(plane + 1) * h * w];
        for y0 in 0..=(h - win) {
            for x0 in 0..=(w - win) {
                let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0f64, 0f64, 0f64, 0f64, 0f64);
                for y in y0..y0 + win {
                    for x in x0..x0 + win {
                        let (va, vb) = (a[y * w + x] as f64, b[y * w + x] as f64);
                        sa += va;
                        sb += vb;
                        saa += va * va;
                        sbb += vb * vb;
                        sab += va * vb;
                    }
                }
                let np = (win * win) as f64;
                let (ma, mb) = (sa / np, sb / np);
                // Sample covariance, as scikit-image does.
                let norm = if np > 1.0 { np / (np - 1.0) } else { 1.0 };
                let va = (saa / np - ma * ma) * norm;
                let vb = (sbb / np - mb * mb) * norm;
                let cov = (sab / np - ma * mb) * norm;
                total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                count += 1;
            }
        }
    }
    if count == 0 {
        1.0
    } else {
        total / count as f64
    }
}

/// Compares an artifact's NCHW output with the reference. `data_range` is the span
/// of the output's values (2.0 for a tanh head, 1.0 for a sigmoid head).
pub fn compare(
    out: &[f32],
    reference: &[f32],
    shape_nchw: [usize; 4],
    data_range: f64,
    thresholds: &Thresholds,
) -> Comparison {
    let mut failures = Vec::new();
    let expected: usize = shape_nchw.iter().product();
    if out.len() != expected || reference.len() != expected {
        failures.push(format!(
            "sizes differ: output {} values, reference {}, shape {:?} needs {}",
            out.len(),
            reference.len(),
            shape_nchw,
            expected
        ));
        return Comparison {
            psnr_db: f64::NEG_INFINITY,
            ssim: 0.0,
            max_abs: f64::INFINITY,
            thresholds: thresholds.clone(),
            passed: false,
            failures,
        };
    }
    let psnr = psnr_db(out, reference, data_range);
    let ssim_value = ssim(out, reference, shape_nchw, data_range);
    let (_, max_abs) = mse_and_max_abs(out, reference);
    let finite = out.iter().all(|v| v.is_finite());
    if !finite {
        failures.push("output holds NaN or infinity".into());
    }
    if !(psnr >= thresholds.min_psnr_db) {
        failures.push(format!(
            "PSNR {psnr:.2} dB < {:.2} dB",
            thresholds.min_psnr_db
        ));
    }
    if let Some(min) = thresholds.min_ssim {
        if !(ssim_value >= min) {
            failures.push(format!("SSIM {ssim_value:.4} < {min:.4}"));
        }
    }
    if let Some(max) = thresholds.max_abs {
        if !(max_abs <= max) {
            failures.push(format!("max-abs {max_abs:.5} > {max:.5}"));
        }
    }
    Comparison {
        psnr_db: psnr,
        ssim: ssim_value,
        max_abs,
        thresholds: thresholds.clone(),
        passed: failures.is_empty(),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_are_infinite_psnr_and_unit_ssim() {
        let x: Vec<f32> = (0..2 * 16 * 16)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let c = compare(&x, &x, [1, 2, 16, 16], 2.0, &Thresholds::fp32());
        assert!(c.psnr_db.is_infinite() && c.passed);
        assert!((c.ssim - 1.0).abs() < 1e-9);
    }

    #[test]
    fn known_noise_gives_known_psnr_and_fails_the_bar() {
        // Constant error 0.02 on range 2: PSNR = 20 log10(2 / 0.02) = 40 dB.
        let x: Vec<f32> = (0..3 * 8 * 8)
            .map(|i| (i as f32 / 192.0) * 2.0 - 1.0)
            .collect();
        let y: Vec<f32> = x.iter().map(|v| v + 0.02).collect();
        let c = compare(&y, &x, [1, 3, 8, 8], 2.0, &Thresholds::fp16());
        assert!((c.psnr_db - 40.0).abs() < 1e-3, "{}", c.psnr_db);
        assert!((c.max_abs - 0.02).abs() < 1e-6);
        assert!(!c.passed);
        assert!(c.failures[0].contains("PSNR"));
    }
}
