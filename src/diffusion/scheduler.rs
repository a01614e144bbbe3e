//! Samplers over SD's discrete noise schedule: DDIM (η = 0), Euler-ancestral and DPM++ 2M
//! (optionally on Karras sigmas), computed as diffusers' DDIMScheduler,
//! EulerAncestralDiscreteScheduler and DPMSolverMultistepScheduler(dpmsolver++, order 2) do.
//!
//! The schedule tables are computed in float32 like diffusers (so timesteps and sigmas are
//! bit-equal); the per-step coefficients in f64.

use tch::{Device, Kind, Tensor};

use super::error::{DiffusionError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchedulerKind {
    Ddim,
    EulerAncestral,
    DpmPp2M { karras: bool },
}

impl SchedulerKind {
    /// Names as recipes spell them: "ddim", "euler-a", "dpm++2m", "dpm++2m-karras".
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ddim" => Some(SchedulerKind::Ddim),
            "euler-a" | "euler_a" | "euler-ancestral" => Some(SchedulerKind::EulerAncestral),
            "dpm++2m" | "dpmpp_2m" | "dpm++-2m" => Some(SchedulerKind::DpmPp2M { karras: false }),
            "dpm++2m-karras" | "dpmpp_2m_karras" => Some(SchedulerKind::DpmPp2M { karras: true }),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::DpmPp2M { karras: false } => "dpm++2m",
            SchedulerKind::DpmPp2M { karras: true } => "dpm++2m-karras",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Linspace,
    Trailing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
}

/// The training noise schedule and how inference timesteps are spaced over it.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub steps_offset: i64,
    pub spacing: TimestepSpacing,
}

impl ScheduleConfig {
    /// SD 1.5's scheduler_config.json: scaled-linear β 0.00085 → 0.012, 1000 steps,
    /// steps_offset 1, "leading" spacing (set_alpha_to_one false, clip_sample false for DDIM).
    pub fn sd15() -> Self {
        ScheduleConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            spacing: TimestepSpacing::Leading,
        }
    }

    /// ᾱ_t as diffusers computes it (float32 linspace, square, cumulative product).
    fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps as i64;
        let opts = (Kind::Float, Device::Cpu);
        let betas = match self.beta_schedule {
            BetaSchedule::Linear => Tensor::linspace(self.beta_start, self.beta_end, n, opts),
            BetaSchedule::ScaledLinear => {
                Tensor::linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n, opts)
                    .pow_tensor_scalar(2)
            }
        };
        let ac = (Tensor::ones([n], opts) - betas).cumprod(0, Kind::Float);
        Vec::<f32>::try_from(&ac).expect("a float tensor converts")
    }
}

pub struct Scheduler {
    kind: SchedulerKind,
    config: ScheduleConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    /// σ per step plus a final 0 (Euler, DPM); empty for DDIM.
    sigmas: Vec<f64>,
    steps: usize,
    /// DPM++: the previous step's x₀ prediction and how many steps ran
    prev_x0: Option<Tensor>,
    steps_taken: usize,
}

impl Scheduler {
    pub fn new(kind: SchedulerKind, config: ScheduleConfig, steps: usize) -> Result<Self> {
        let n_train = config.num_train_timesteps;
        if steps == 0 || steps > n_train {
            return Err(DiffusionError::InvalidRequest(format!(
                "steps must be 1..={n_train}, not {steps}"
            )));
        }
        let ac = config.alphas_cumprod();
        // σ_t = sqrt((1 - ᾱ)/ᾱ) in float32, as diffusers' tensors are
        let train_sigmas: Vec<f32> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let mut timesteps: Vec<f64>;
        let mut sigmas = Vec::new();
        match kind {
            SchedulerKind::Ddim | SchedulerKind::EulerAncestral => {
                timesteps = match config.spacing {
                    TimestepSpacing::Linspace => linspace(0.0, (n_train - 1) as f64, steps)
                        .into_iter()
                        .rev()
                        // DDIM rounds to integers; Euler keeps float32 values
                        .map(|t| {
                            if kind == SchedulerKind::Ddim {
                                t.round()
                            } else {
                                t as f32 as f64
                            }
                        })
                        .collect(),
                    TimestepSpacing::Leading => {
                        let ratio = n_train / steps;
                        (0..steps)
                            .rev()
                            .map(|i| (i * ratio) as f64 + config.steps_offset as f64)
                            .collect()
                    }
                    TimestepSpacing::Trailing => {
                        let ratio = n_train as f64 / steps as f64;
                        arange_down(n_train as f64, ratio)
                            .into_iter()
                            .map(|t| t.round() - 1.0)
                            .collect()
                    }
                };
                if kind == SchedulerKind::EulerAncestral {
                    sigmas = timesteps
                        .iter()
                        .map(|t| interp(*t, &train_sigmas) as f32 as f64)
                        .collect();
                    sigmas.push(0.0);
                }
            }
            SchedulerKind::DpmPp2M { karras } => {
                let last = n_train as f64; // lambda_min_clipped = -inf clips nothing
                timesteps = match config.spacing {
                    TimestepSpacing::Linspace => {
                        let mut v: Vec<f64> = linspace(0.0, last - 1.0, steps + 1)
                            .into_iter()
                            .map(f64::round)
                            .rev()
                            .collect();
                        v.pop();
                        v
                    }
                    TimestepSpacing::Leading => {
                        let ratio = (last as usize) / (steps + 1);
                        (1..=steps)
                            .rev()
                            .map(|i| (i * ratio) as f64 + config.steps_offset as f64)
                            .collect()
                    }
                    TimestepSpacing::Trailing => {
                        let ratio = n_train as f64 / steps as f64;
                        arange_down(last, ratio)
                            .into_iter()
                            .map(|t| t.round() - 1.0)
                            .collect()
                    }
                };
                if karras {
                    let sigma_min = train_sigmas[0] as f64;
                    let sigma_max = train_sigmas[n_train - 1] as f64;
                    let rho = 7.0;
                    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
                    let karras_sigmas: Vec<f64> = linspace(0.0, 1.0, steps)
                        .into_iter()
                        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
                        .collect();
                    let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
                    timesteps = karras_sigmas
                        .iter()
                        .map(|s| sigma_to_t(*s, &log_sigmas).round())
                        .collect();
                    sigmas = karras_sigmas.iter().map(|s| *s as f32 as f64).collect();
                } else {
                    sigmas = timesteps
                        .iter()
                        .map(|t| interp(*t, &train_sigmas) as f32 as f64)
                        .collect();
                }
                sigmas.push(0.0);
            }
        }
        Ok(Scheduler {
            kind,
            config,
            alphas_cumprod: ac,
            timesteps,
            sigmas,
            steps,
            prev_x0: None,
            steps_taken: 0,
        })
    }

    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// The model timesteps, one per step (integers except Euler with linspace spacing).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Whether `step` needs fresh Gaussian noise (ancestral sampling).
    pub fn needs_step_noise(&self) -> bool {
        self.kind == SchedulerKind::EulerAncestral
    }

    /// The factor pure-noise initial latents are scaled by.
    pub fn init_noise_sigma(&self) -> f64 {
        match self.kind {
            SchedulerKind::EulerAncestral => {
                let max = self.sigmas.iter().cloned().fold(0.0f64, f64::max) as f32;
                if self.config.spacing == TimestepSpacing::Leading {
                    (max * max + 1.0).sqrt() as f64
                } else {
                    max as f64
                }
            }
            _ => 1.0,
        }
    }

    /// The first step img2img runs at `strength` (diffusers' get_timesteps).
    pub fn img2img_start(&self, strength: f64) -> usize {
        let init = ((self.steps as f64 * strength) as usize).min(self.steps);
        self.steps - init
    }

    /// Euler divides the model input by sqrt(σ² + 1); DDIM and DPM++ leave it.
    pub fn scale_model_input(&self, sample: &Tensor, step: usize) -> Tensor {
        match self.kind {
            SchedulerKind::EulerAncestral => {
                sample / (self.sigmas[step] * self.sigmas[step] + 1.0).sqrt()
            }
            _ => sample.shallow_clone(),
        }
    }

    /// Noises clean latents to the level of step `step` (img2img's start).
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Tensor {
        match self.kind {
            SchedulerKind::Ddim => {
                let a = self.alphas_cumprod[self.timesteps[step] as usize] as f64;
                original * a.sqrt() + noise * (1.0 - a).sqrt()
            }
            SchedulerKind::EulerAncestral => original + noise * self.sigmas[step],
            SchedulerKind::DpmPp2M { .. } => {
                let (alpha, sigma) = alpha_sigma(self.sigmas[step]);
                original * alpha + noise * sigma
            }
        }
    }

    /// One denoising step from step index `step` (0-based over `timesteps()`) given the
    /// predicted noise. `noise` is required for Euler-ancestral (same shape as `sample`).
    pub fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        if step >= self.steps {
            return Err(DiffusionError::InvalidRequest(format!(
                "step {step} of a {}-step schedule",
                self.steps
            )));
        }
        let out = match self.kind {
            SchedulerKind::Ddim => {
                let t = self.timesteps[step] as i64;
                let prev_t = t - (self.config.num_train_timesteps / self.steps) as i64;
                let a_t = self.alphas_cumprod[t as usize] as f64;
                // set_alpha_to_one = false: the step past t=0 uses ᾱ_0
                let a_prev = if prev_t >= 0 {
                    self.alphas_cumprod[prev_t as usize]
                } else {
                    self.alphas_cumprod[0]
                } as f64;
                let x0 = (sample - model_output * (1.0 - a_t).sqrt()) / a_t.sqrt();
                x0 * a_prev.sqrt() + model_output * (1.0 - a_prev).sqrt()
            }
            SchedulerKind::EulerAncestral => {
                let noise = noise.ok_or_else(|| {
                    DiffusionError::InvalidRequest("Euler-ancestral needs step noise".into())
                })?;
                let sigma = self.sigmas[step];
                let sigma_to = self.sigmas[step + 1];
                let x0 = sample - model_output * sigma;
                let sigma_up = (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to)
                    / (sigma * sigma))
                    .sqrt();
                let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
                let derivative = (sample - x0) / sigma;
                sample + derivative * (sigma_down - sigma) + noise * sigma_up
            }
            SchedulerKind::DpmPp2M { .. } => {
                let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step]);
                let x0 = (sample - model_output * sigma_s0) / alpha_s0;
                let sigma_next = self.sigmas[step + 1];
                // final σ = 0 always ends with a first-order step, as does the first step
                let first_order =
                    self.steps_taken == 0 || step == self.steps - 1 || self.prev_x0.is_none();
                let out = if sigma_next == 0.0 {
                    x0.shallow_clone()
                } else {
                    let (alpha_t, sigma_t) = alpha_sigma(sigma_next);
                    let lambda_t = alpha_t.ln() - sigma_t.ln();
                    let lambda_s0 = alpha_s0.ln() - sigma_s0.ln();
                    let h = lambda_t - lambda_s0;
                    let c = alpha_t * ((-h).exp() - 1.0);
                    if first_order {
                        sample * (sigma_t / sigma_s0) - &x0 * c
                    } else {
                        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
                        let lambda_s1 = alpha_s1.ln() - sigma_s1.ln();
                        let r0 = (lambda_s0 - lambda_s1) / h;
                        let prev = self
                            .prev_x0
                            .as_ref()
                            .expect("second order has a previous x0");
                        let d1 = (&x0 - prev) * (1.0 / r0);
                        sample * (sigma_t / sigma_s0) - &x0 * c - d1 * (0.5 * c)
                    }
                };
                self.prev_x0 = Some(x0);
                out
            }
        };
        self.steps_taken += 1;
        Ok(out)
    }
}

fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    // numpy's linspace: start + i·step, with the last value exactly `end`
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                start + i as f64 * step
            }
        })
        .collect()
}

/// numpy's arange(start, 0, -step).
fn arange_down(start: f64, step: f64) -> Vec<f64> {
    let n = (start / step).ceil() as usize;
    (0..n).map(|i| start - i as f64 * step).collect()
}

/// numpy.interp at `x` over the points (i, table[i]).
fn interp(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0] as f64;
    }
    if x >= last as f64 {
        return table[last] as f64;
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    let (a, b) = (table[i] as f64, table[i + 1] as f64);
    if w == 0.0 {
        a
    } else {
        a + (b - a) * w
    }
}

/// diffusers' _sigma_to_t: the fractional timestep whose log σ brackets log `sigma`.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // the last index with log_sigmas[i] <= log_sigma (argmax of the cumulative count)
    let count = log_sigmas
        .iter()
        .filter(|l| log_sigma - **l as f64 >= 0.0)
        .count();
    let low = count.saturating_sub(1).min(n - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[high] as f64);
    // (low - high) is computed in float32 by numpy
    let w = ((lo - log_sigma) / ((log_sigmas[low] - log_sigmas[high]) as f64)).clamp(0.0, 1.0);
    let _ = hi;
    (1.0 - w) * low as f64 + w * high as f64
}
