//! Training the wide teacher on the pairs, then distilling the real-time student from it.
//!
//! Runs inside the `effectc-nn` worker (the only process that loads libtorch). Every
//! per-step random choice (batch, flips, shifts, colour jitter) comes from a hash of
//! (seed, step), and the whole state (weights, EMA, discriminator, Adam moments, loss
//! history) is checkpointed, so an interrupted run resumes to byte-identical weights on CPU.

pub mod job;
pub mod plot;

pub use job::{ExportJob, Hyper, LrSchedule, PairFiles, TrainJob, TrainProgress, TrainReport};

use crate::nn::adam::Adam;
use crate::nn::discriminator::PatchDiscriminator;
use crate::nn::layers::EqConv;
use crate::nn::metrics::{psnr_db, ssim};
use crate::nn::{Accordion, AccordionConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training diverged at step {step}: loss term `{term}` is {value} (the last good checkpoint is kept; lower `lr` in the recipe's `train` block)")]
    Diverged { step: u32, term: String, value: f64 },
    #[error("cancelled at step {step} (checkpoint saved; the next build resumes from it)")]
    Cancelled { step: u32 },
    #[error("{path}: {what}")]
    BadInput { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("libtorch: {}", .0.to_string().lines().next().unwrap_or(""))]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Device(String),
}

impl TrainError {
    /// The recipe's or the data's fault (fix and rebuild) rather than the machine's.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            TrainError::Diverged { .. } | TrainError::BadInput { .. } | TrainError::Device(_)
        )
    }
}

pub fn parse_device(text: &str) -> Result<Device, TrainError> {
    let device = match crate::plan::DeviceSpec::parse(text).map_err(TrainError::Device)? {
        crate::plan::DeviceSpec::Auto => Device::cuda_if_available(),
        crate::plan::DeviceSpec::Cpu => Device::Cpu,
        crate::plan::DeviceSpec::Cuda(n) => Device::Cuda(n),
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count() as usize;
        if n >= count {
            return Err(TrainError::Device(format!(
                "device cuda:{n} asked for, but libtorch sees {count} CUDA device(s)"
            )));
        }
    }
    Ok(device)
}

/// splitmix64 over (seed, step, salt): the only source of per-step randomness.
fn mix(seed: u64, step: u64, salt: u64) -> u64 {
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(seed: u64, step: u64, salt: u64) -> f64 {
    (mix(seed, step, salt) >> 11) as f64 / (1u64 << 53) as f64
}

fn load_png(path: &Path) -> Result<Tensor, TrainError> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(|e| TrainError::BadInput {
            path: path.to_path_buf(),
            what: format!("not a readable image: {e}"),
        })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float);
    Ok(t / 127.5 - 1.0)
}

/// NCHW in [-1, 1] → an RGB image.
pub fn to_image(t: &Tensor) -> image::RgbImage {
    let t = ((t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .clamp(-1.0, 1.0)
        + 1.0)
        * 127.5)
        .round()
        .to_kind(Kind::Uint8);
    let t = if t.dim() == 4 { t.get(0) } else { t };
    let (h, w) = (t.size()[1], t.size()[2]);
    let data =
        Vec::<u8>::try_from(&t.permute([1, 2, 0]).contiguous().view([-1])).unwrap_or_default();
    image::RgbImage::from_raw(w as u32, h as u32, data)
        .unwrap_or_else(|| image::RgbImage::new(1, 1))
}

struct Data {
    train_src: Tensor,
    train_tgt: Tensor,
    hold_src: Tensor,
    hold_tgt: Tensor,
}

fn load_data(pairs: &[PairFiles], device: Device) -> Result<Data, TrainError> {
    let (mut ts, mut tt, mut hs, mut ht) = (vec![], vec![], vec![], vec![]);
    let mut size = None;
    for p in pairs {
        let s = load_png(&p.source)?;
        let t = load_png(&p.target)?;
        if s.size() != t.size() {
            return Err(TrainError::BadInput {
                path: p.target.clone(),
                what: format!(
                    "pair target is {:?} but its source is {:?}",
                    t.size(),
                    s.size()
                ),
            });
        }
        match &size {
            None => size = Some(s.size()),
            Some(sz) if *sz != s.size() => {
                return Err(TrainError::BadInput {
                    path: p.source.clone(),
                    what: "pairs differ in size".into(),
                })
            }
            _ => {}
        }
        if p.holdout {
            hs.push(s);
            ht.push(t);
        } else {
            ts.push(s);
            tt.push(t);
        }
    }
    if ts.is_empty() {
        return Err(TrainError::BadInput {
            path: PathBuf::from("<pairs>"),
            what: "no training pairs (all items are held out?)".into(),
        });
    }
    // With no held-out items, metrics fall back to the first training pair (noted in the report).
    if hs.is_empty() {
        hs.push(ts[0].shallow_clone());
        ht.push(tt[0].shallow_clone());
    }
    Ok(Data {
        train_src: Tensor::stack(&ts, 0).to_device(device),
        train_tgt: Tensor::stack(&tt, 0).to_device(device),
        hold_src: Tensor::stack(&hs, 0).to_device(device),
        hold_tgt: Tensor::stack(&ht, 0).to_device(device),
    })
}

/// A deterministic augmented batch: the same flip, shift and colour jitter for source and target.
fn batch(data: &Data, seed: u64, step: u64, hyper: &Hyper) -> (Tensor, Tensor) {
    let (size, shift_px) = (hyper.batch as i64, hyper.shift_px);
    let n = data.train_src.size()[0] as u64;
    let (h, w) = (data.train_src.size()[2], data.train_src.size()[3]);
    let (mut ss, mut tt) = (vec![], vec![]);
    for b in 0..size as u64 {
        let salt = b * 16;
        let idx = (mix(seed, step, salt) % n) as i64;
        let mut s = data.train_src.get(idx).unsqueeze(0);
        let mut t = data.train_tgt.get(idx).unsqueeze(0);
        if hyper.flip && unit(seed, step, salt + 1) < 0.5 {
            s = s.flip([3]);
            t = t.flip([3]);
        }
        if shift_px > 0 {
            let m = shift_px as i64;
            let dy = (unit(seed, step, salt + 2) * (2 * m + 1) as f64) as i64; // 0..=2m = shift -m..=m
            let dx = (unit(seed, step, salt + 3) * (2 * m + 1) as f64) as i64;
            s = s
                .reflection_pad2d([m, m, m, m])
                .narrow(2, dy, h)
                .narrow(3, dx, w);
            t = t
                .reflection_pad2d([m, m, m, m])
                .narrow(2, dy, h)
                .narrow(3, dx, w);
        }
        if hyper.jitter > 0.0 {
            let gain = 1.0 + hyper.jitter * (2.0 * unit(seed, step, salt + 4) - 1.0);
            let offset = hyper.jitter * (2.0 * unit(seed, step, salt + 5) - 1.0);
            s = (s * gain + offset).clamp(-1.0, 1.0);
            t = (t * gain + offset).clamp(-1.0, 1.0);
        }
        ss.push(s);
        tt.push(t);
    }
    (Tensor::cat(&ss, 0), Tensor::cat(&tt, 0))
}

fn named_vars(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("{prefix}{k}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write_safetensors_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<(), TrainError> {
    let mut sorted: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = path.with_extension("tmp");
    Tensor::write_safetensors(&sorted, &tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|source| TrainError::Io {
            path: tmp.clone(),
            source,
        })?;
    std::fs::rename(&tmp, path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads generator weights written by training (`weights.safetensors`).
pub fn load_generator(
    weights: &Path,
    cfg: AccordionConfig,
    device: Device,
) -> Result<(nn::VarStore, Accordion), TrainError> {
    let mut vs = nn::VarStore::new(device);
    let net = Accordion::new(&vs.root(), cfg);
    vs.freeze();
    tch::no_grad(|| vs.read_safetensors(weights)).map_err(|e| TrainError::BadInput {
        path: weights.to_path_buf(),
        what: format!(
            "cannot load weights: {}",
            e.to_string().lines().next().unwrap_or("")
        ),
    })?;
    Ok((vs, net))
}

/// Output/source frame-to-frame change on a slow sub-pixel pan and zoom of one image
/// (1.0: the net adds no flicker of its own).
fn flicker_ratio(net: &Accordion, image: &Tensor) -> f64 {
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

/// Dynamic loss scaling for fp16 autocast on CUDA (a no-op on CPU, where we train in fp32).
struct LossScaler {
    enabled: bool,
    scale: f64,
    good_steps: u32,
}

impl LossScaler {
    fn new(enabled: bool) -> LossScaler {
        LossScaler {
            enabled,
            scale: 16384.0,
            good_steps: 0,
        }
    }

    /// Backward and update; on overflow skip the update and halve the scale.
    fn backward_step(&mut self, loss: &Tensor, opt: &mut Adam) {
        opt.zero_grad();
        if !self.enabled {
            loss.backward();
            opt.step();
            return;
        }
        (loss * self.scale).backward();
        if opt.step_unscaled(1.0 / self.scale) {
            self.good_steps += 1;
            if self.good_steps % 500 == 0 {
                self.scale *= 2.0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
        }
    }
}

struct Trainer<'a> {
    job: &'a TrainJob,
    device: Device,
    data: Data,
    started: Instant,
    start_step: u32,
}

/// Trains what `job` asks for; see the module comment.
pub fn run(
    job: &TrainJob,
    progress: &mut dyn FnMut(&TrainProgress),
    cancel: &AtomicBool,
) -> Result<TrainReport, TrainError> {
    let device = parse_device(&job.device)?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(job.hyper.seed as i64);
    let data = load_data(&job.pairs, device)?;
    std::fs::create_dir_all(&job.checkpoint_dir).map_err(|source| TrainError::Io {
        path: job.checkpoint_dir.clone(),
        source,
    })?;
    std::fs::create_dir_all(&job.out_dir).map_err(|source| TrainError::Io {
        path: job.out_dir.clone(),
        source,
    })?;
    let t = Trainer {
        job,
        device,
        data,
        started: Instant::now(),
        start_step: 0,
    };
    match job.role.as_str() {
        "teacher" => t.teacher(progress, cancel),
        "student" => t.student(progress, cancel),
        other => Err(TrainError::BadInput {
            path: PathBuf::from("<job>"),
            what: format!("unknown role `{other}`"),
        }),
    }
}

fn check_finite(step: u32, terms: &[(&str, &Tensor)]) -> Result<BTreeMap<String, f64>, TrainError> {
    // One device-to-host copy for all terms (each `double_value` would sync the GPU).
    let device = terms
        .first()
        .map(|(_, t)| t.device())
        .unwrap_or(Device::Cpu);
    let stacked = Tensor::stack(
        &terms
            .iter()
            .map(|(_, t)| {
                t.detach()
                    .to_device(device)
                    .to_kind(Kind::Double)
                    .reshape([1])
            })
            .collect::<Vec<_>>(),
        0,
    );
    let values =
        Vec::<f64>::try_from(&stacked.to_device(Device::Cpu).view([-1])).unwrap_or_default();
    let mut out = BTreeMap::new();
    for ((name, _), v) in terms.iter().zip(values) {
        if !v.is_finite() {
            return Err(TrainError::Diverged {
                step,
                term: name.to_string(),
                value: v,
            });
        }
        out.insert(name.to_string(), v);
    }
    Ok(out)
}

fn ema_update(ema: &nn::VarStore, g: &nn::VarStore, beta: f64) {
    tch::no_grad(|| {
        for ((_, mut e), (_, p)) in named_vars(ema, "").into_iter().zip(named_vars(g, "")) {
            // e = beta * e + (1 - beta) * p, in place.
            let _ = e.lerp_(&p, 1.0 - beta);
        }
    });
}

impl Trainer<'_> {
    fn ckpt_path(&self) -> PathBuf {
        self.job.checkpoint_dir.join("checkpoint.safetensors")
    }

    fn load_checkpoint(
        &mut self,
        stores: &[(&str, &mut nn::VarStore)],
        opts: &mut [(&str, &mut Adam)],
        history: &mut Vec<Vec<f64>>,
    ) -> Result<(), TrainError> {
        let path = self.ckpt_path();
        if !path.is_file() {
            return Ok(());
        }
        let tensors: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(&path)?.into_iter().collect();
        let get = |k: &str| tensors.get(k).map(|t| t.to_device(self.device));
        for (prefix, vs) in stores {
            for (name, mut var) in vs.variables() {
                let saved =
                    get(&format!("{prefix}{name}")).ok_or_else(|| TrainError::BadInput {
                        path: path.clone(),
                        what: format!("checkpoint lacks {prefix}{name}"),
                    })?;
                tch::no_grad(|| var.copy_(&saved));
            }
        }
        for (prefix, opt) in opts.iter_mut() {
            opt.load_state(prefix, &get)
                .map_err(|what| TrainError::BadInput {
                    path: path.clone(),
                    what,
                })?;
        }
        if let Some(h) = tensors.get("train.history") {
            let rows = h.size()[0];
            history.clear();
            for r in 0..rows {
                history.push(Vec::<f64>::try_from(&h.get(r)).unwrap_or_default());
            }
        }
        self.start_step = tensors
            .get("train.step")
            .map(|t| t.int64_value(&[0]) as u32)
            .unwrap_or(0);
        Ok(())
    }

    fn save_checkpoint(
        &self,
        step: u32,
        stores: &[(&str, &nn::VarStore)],
        opts: &[(&str, &Adam)],
        history: &[Vec<f64>],
    ) -> Result<(), TrainError> {
        let mut all: Vec<(String, Tensor)> =
            vec![("train.step".into(), Tensor::from_slice(&[step as i64]))];
        for (prefix, vs) in stores {
            all.extend(named_vars(vs, prefix));
        }
        for (prefix, opt) in opts {
            all.extend(opt.state(prefix));
        }
        if !history.is_empty() {
            let flat: Vec<f64> = history.iter().flatten().copied().collect();
            all.push((
                "train.history".into(),
                Tensor::from_slice(&flat).view([history.len() as i64, -1]),
            ));
        }
        write_safetensors_atomic(&all, &self.ckpt_path())
    }

    fn report_progress(
        &self,
        progress: &mut dyn FnMut(&TrainProgress),
        step: u32,
        losses: &BTreeMap<String, f64>,
    ) {
        let done = (step + 1 - self.start_step) as f64;
        progress(&TrainProgress {
            step: step + 1,
            total_steps: self.job.hyper.steps,
            losses: losses.clone(),
            steps_per_s: done / self.started.elapsed().as_secs_f64().max(1e-9),
        });
    }

    fn teacher(
        mut self,
        progress: &mut dyn FnMut(&TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<TrainReport, TrainError> {
        let h = self.job.hyper.clone();
        let mut g_vs = nn::VarStore::new(self.device);
        let g = Accordion::new(&g_vs.root(), self.job.arch);
        let mut ema_vs = nn::VarStore::new(self.device);
        let ema = Accordion::new(&ema_vs.root(), self.job.arch);
        ema_vs.copy(&g_vs)?;
        let mut d_vs = nn::VarStore::new(self.device);
        let d = PatchDiscriminator::new(&d_vs.root(), (self.job.arch.width).clamp(8, 64));
        let mut opt_g = Adam::new(named_vars(&g_vs, ""), h.lr, h.beta1, 0.99);
        let mut opt_d = Adam::new(named_vars(&d_vs, ""), h.lr, 0.0, 0.99);
        let mut history: Vec<Vec<f64>> = Vec::new();
        self.load_checkpoint(
            &mut [("g.", &mut g_vs), ("ema.", &mut ema_vs), ("d.", &mut d_vs)],
            &mut [("adam_g", &mut opt_g), ("adam_d", &mut opt_d)],
            &mut history,
        )?;
        let names = ["l1", "ssim", "g_adv", "d", "r1"];
        let amp = self.device.is_cuda() && std::env::var_os("EFFECTC_NO_AMP").is_none();
        let mut scaler = LossScaler::new(amp);
        // Throughput counts the training loop only, as a PyTorch loop timer would (not
        // building nets, reading the teacher or resuming a checkpoint).
        let loop_started = Instant::now();
        for step in self.start_step..h.steps {
            if cancel.load(Ordering::SeqCst) {
                self.save_checkpoint(
                    step,
                    &[("g.", &g_vs), ("ema.", &ema_vs), ("d.", &d_vs)],
                    &[("adam_g", &opt_g), ("adam_d", &opt_d)],
                    &history,
                )?;
                return Err(TrainError::Cancelled { step });
            }
            let (src, tgt) = batch(&self.data, h.seed, step as u64, &h);
            opt_g.lr = h.lr_at(step);
            opt_d.lr = opt_g.lr;
            let fake = tch::autocast(amp, || g.forward(&src)).to_kind(Kind::Float);
            // Before `gan-start` (or with `gan 0`) the discriminator would learn for
            // nothing: skip it (its terms read 0 on the curves).
            let adversarial = h.gan_weight > 0.0 && step as f64 >= h.gan_start * h.steps as f64;
            let (d_loss, r1, g_adv) = if adversarial {
                // Discriminator: non-saturating logistic loss, lazy R1 every r1_every steps.
                let d_loss = tch::autocast(amp, || {
                    d.forward(&src, &fake.detach()).softplus().mean(Kind::Float)
                        + (-d.forward(&src, &tgt)).softplus().mean(Kind::Float)
                })
                .to_kind(Kind::Float);
                scaler.backward_step(&d_loss, &mut opt_d);
                // Between lazy R1 steps the curve shows the last value measured.
                let mut r1 = Tensor::from(history.last().map(|r| r[4]).unwrap_or(0.0) as f32);
                if h.r1_gamma > 0.0 && step % h.r1_every == 0 {
                    let real = tgt.detach().set_requires_grad(true);
                    let out = d.forward(&src, &real);
                    let grad = Tensor::run_backward(&[out.sum(Kind::Float)], &[&real], true, true)
                        .remove(0);
                    r1 = grad
                        .square()
                        .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
                        .mean(Kind::Float)
                        * (h.r1_gamma / 2.0);
                    scaler.backward_step(&(&r1 * h.r1_every as f64), &mut opt_d);
                }
                // The generator's adversarial term.
                let g_adv = tch::autocast(amp, || {
                    (-d.forward(&src, &fake)).softplus().mean(Kind::Float)
                })
                .to_kind(Kind::Float);
                (d_loss, r1, g_adv)
            } else {
                let zero = || Tensor::from(0f32).to_device(self.device);
                (zero(), zero(), zero())
            };
            // Generator: reconstruction (L1 + SSIM) plus the adversarial term.
            let l1 = (&fake - &tgt).abs().mean(Kind::Float);
            let ssim_loss = 1.0 - ssim(&((&fake + 1.0) / 2.0), &((&tgt + 1.0) / 2.0));
            let g_loss = &l1 * h.l1_weight + &ssim_loss * h.ssim_weight + &g_adv * h.gan_weight;
            let losses = check_finite(
                step,
                &[
                    ("l1", &l1),
                    ("ssim", &ssim_loss),
                    ("g_adv", &g_adv),
                    ("d", &d_loss),
                    ("r1", &r1),
                    ("total", &g_loss),
                ],
            )?;
            scaler.backward_step(&g_loss, &mut opt_g);
            // EMA with a warm-up, so short runs are not dominated by the initial weights.
            let beta = h.ema_beta.min((1.0 + step as f64) / (10.0 + step as f64));
            ema_update(&ema_vs, &g_vs, beta);
            history.push(names.iter().map(|n| losses[*n]).collect());
            self.report_progress(progress, step, &losses);
            if (step + 1) % h.checkpoint_every == 0 && step + 1 < h.steps {
                self.save_checkpoint(
                    step + 1,
                    &[("g.", &g_vs), ("ema.", &ema_vs), ("d.", &d_vs)],
                    &[("adam_g", &opt_g), ("adam_d", &opt_d)],
                    &history,
                )?;
            }
        }
        let steps_per_s =
            (h.steps - self.start_step) as f64 / loop_started.elapsed().as_secs_f64().max(1e-9);
        let mut files = BTreeMap::new();
        let weights = self.job.out_dir.join("weights.safetensors");
        write_safetensors_atomic(&named_vars(&ema_vs, ""), &weights)?;
        files.insert("weights".into(), weights);
        let mut metrics = self.eval_metrics(&ema, None)?;
        metrics.insert("steps_per_s".into(), serde_json::json!(round3(steps_per_s)));
        self.write_curves(&names, &history, "teacher", &mut files)?;
        self.write_samples(&ema, None, &mut files)?;
        Ok(TrainReport { metrics, files })
    }

    fn student(
        mut self,
        progress: &mut dyn FnMut(&TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<TrainReport, TrainError> {
        let h = self.job.hyper.clone();
        let Some((teacher_weights, teacher_arch)) = self.job.teacher.clone() else {
            return Err(TrainError::BadInput {
                path: PathBuf::from("<job>"),
                what: "a student job needs the teacher's weights".into(),
            });
        };
        let (_t_vs, teacher) = load_generator(&teacher_weights, teacher_arch, self.device)?;
        let mut s_vs = nn::VarStore::new(self.device);
        let s = Accordion::new(&s_vs.root(), self.job.arch);
        let mut ema_vs = nn::VarStore::new(self.device);
        let ema = Accordion::new(&ema_vs.root(), self.job.arch);
        ema_vs.copy(&s_vs)?;
        // 1x1 adapters lift each student feature to the teacher's width (GAN-Compression).
        let mut a_vs = nn::VarStore::new(self.device);
        let (sc, tc) = (self.job.arch.channels(), teacher_arch.channels());
        let feat_channels: Vec<(i64, i64)> = vec![
            (sc[0], tc[0]),
            (sc[1], tc[1]),
            (sc[2], tc[2]),
            (sc[3], tc[3]),
            (sc[3], tc[3]),
            (sc[2], tc[2]),
            (sc[1], tc[1]),
            (sc[0], tc[0]),
        ];
        let adapters: Vec<EqConv> = feat_channels
            .iter()
            .enumerate()
            .map(|(i, (cs, ct))| EqConv::new(a_vs.root() / format!("a{i}"), *cs, *ct, 1, 1, 0, 1))
            .collect();
        let mut params = named_vars(&s_vs, "s.");
        params.extend(named_vars(&a_vs, "a."));
        let mut opt = Adam::new(params, h.lr, h.beta1, 0.99);
        let mut history: Vec<Vec<f64>> = Vec::new();
        self.load_checkpoint(
            &mut [("s.", &mut s_vs), ("ema.", &mut ema_vs), ("a.", &mut a_vs)],
            &mut [("adam", &mut opt)],
            &mut history,
        )?;
        let names = ["out_teacher", "out_target", "ssim", "features"];
        let amp = self.device.is_cuda() && std::env::var_os("EFFECTC_NO_AMP").is_none();
        let mut scaler = LossScaler::new(amp);
        // Throughput counts the training loop only, as a PyTorch loop timer would (not
        // building nets, reading the teacher or resuming a checkpoint).
        let loop_started = Instant::now();
        for step in self.start_step..h.steps {
            if cancel.load(Ordering::SeqCst) {
                self.save_checkpoint(
                    step,
                    &[("s.", &s_vs), ("ema.", &ema_vs), ("a.", &a_vs)],
                    &[("adam", &opt)],
                    &history,
                )?;
                return Err(TrainError::Cancelled { step });
            }
            let (src, tgt) = batch(&self.data, h.seed, step as u64, &h);
            opt.lr = h.lr_at(step);
            let (t_out, t_feats) =
                tch::no_grad(|| tch::autocast(amp, || teacher.forward_with_features(&src)));
            let (s_out, s_feats) = tch::autocast(amp, || s.forward_with_features(&src));
            let (t_out, s_out) = (t_out.to_kind(Kind::Float), s_out.to_kind(Kind::Float));
            let out_teacher = (&s_out - &t_out).abs().mean(Kind::Float);
            let out_target = (&s_out - &tgt).abs().mean(Kind::Float);
            let ssim_loss = 1.0 - ssim(&((&s_out + 1.0) / 2.0), &((&t_out + 1.0) / 2.0));
            let mut features = Tensor::from(0f32).to_device(self.device);
            for ((sf, tf), a) in s_feats.iter().zip(&t_feats).zip(&adapters) {
                let sf = sf.to_kind(Kind::Float);
                let tf = tf.to_kind(Kind::Float);
                // Normalise by the teacher feature's scale so every stage counts alike.
                let scale = tf.square().mean(Kind::Float).detach() + 1e-6;
                features = features + (a.forward(&sf) - tf).square().mean(Kind::Float) / scale;
            }
            let features = features / s_feats.len() as f64;
            let loss = (&out_teacher + &out_target * 0.5) * h.l1_weight
                + &ssim_loss * h.ssim_weight
                + &features * h.feature_weight;
            let losses = check_finite(
                step,
                &[
                    ("out_teacher", &out_teacher),
                    ("out_target", &out_target),
                    ("ssim", &ssim_loss),
                    ("features", &features),
                    ("total", &loss),
                ],
            )?;
            scaler.backward_step(&loss, &mut opt);
            let beta = h.ema_beta.min((1.0 + step as f64) / (10.0 + step as f64));
            ema_update(&ema_vs, &s_vs, beta);
            history.push(names.iter().map(|n| losses[*n]).collect());
            self.report_progress(progress, step, &losses);
            if (step + 1) % h.checkpoint_every == 0 && step + 1 < h.steps {
                self.save_checkpoint(
                    step + 1,
                    &[("s.", &s_vs), ("ema.", &ema_vs), ("a.", &a_vs)],
                    &[("adam", &opt)],
                    &history,
                )?;
            }
        }
        let steps_per_s =
            (h.steps - self.start_step) as f64 / loop_started.elapsed().as_secs_f64().max(1e-9);
        let mut files = BTreeMap::new();
        let weights = self.job.out_dir.join("weights.safetensors");
        write_safetensors_atomic(&named_vars(&ema_vs, ""), &weights)?;
        files.insert("weights".into(), weights);
        let mut metrics = self.eval_metrics(&ema, Some(&teacher))?;
        metrics.insert("steps_per_s".into(), serde_json::json!(round3(steps_per_s)));
        self.write_curves(&names, &history, "student", &mut files)?;
        self.write_samples(&ema, Some(&teacher), &mut files)?;
        Ok(TrainReport { metrics, files })
    }

    fn eval_metrics(
        &self,
        net: &Accordion,
        teacher: Option<&Accordion>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, TrainError> {
        let (src, tgt) = (&self.data.hold_src, &self.data.hold_tgt);
        let to01 = |t: &Tensor| (t.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) / 2.0;
        let out = tch::no_grad(|| net.forward(src));
        let mut m = serde_json::Map::new();
        m.insert(
            "psnr_db".into(),
            serde_json::json!(round3(psnr_db(&to01(&out), &to01(tgt)))),
        );
        m.insert(
            "ssim".into(),
            serde_json::json!(round4(
                tch::no_grad(|| ssim(&to01(&out), &to01(tgt))).double_value(&[])
            )),
        );
        m.insert(
            "identity_psnr_db".into(),
            serde_json::json!(round3(psnr_db(&to01(src), &to01(tgt)))),
        );
        m.insert(
            "holdout_items".into(),
            serde_json::json!(self.job.pairs.iter().filter(|p| p.holdout).count()),
        );
        m.insert(
            "params".into(),
            serde_json::json!(crate::nn::accordion::count_params(self.job.arch)),
        );
        m.insert(
            "macs_512".into(),
            serde_json::json!(crate::nn::accordion::macs(self.job.arch, 512, 512)),
        );
        m.insert(
            "flicker_ratio".into(),
            serde_json::json!(round3(flicker_ratio(net, &src.narrow(0, 0, 1)))),
        );
        if let Some(t) = teacher {
            let t_out = tch::no_grad(|| t.forward(src));
            m.insert(
                "psnr_vs_teacher_db".into(),
                serde_json::json!(round3(psnr_db(&to01(&out), &to01(&t_out)))),
            );
            m.insert(
                "teacher_psnr_db".into(),
                serde_json::json!(round3(psnr_db(&to01(&t_out), &to01(tgt)))),
            );
        }
        Ok(m)
    }

    fn write_curves(
        &self,
        names: &[&str],
        history: &[Vec<f64>],
        title: &str,
        files: &mut BTreeMap<String, PathBuf>,
    ) -> Result<(), TrainError> {
        let csv_path = self.job.out_dir.join("loss.csv");
        let mut csv = format!("step,{}\n", names.join(","));
        for (i, row) in history.iter().enumerate() {
            csv.push_str(&format!(
                "{},{}\n",
                i + 1,
                row.iter()
                    .map(|v| format!("{v:.6}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        std::fs::write(&csv_path, csv).map_err(|source| TrainError::Io {
            path: csv_path.clone(),
            source,
        })?;
        files.insert("loss.csv".into(), csv_path);
        let series: Vec<(String, Vec<f64>)> = names
            .iter()
            .enumerate()
            .map(|(k, n)| (n.to_string(), history.iter().map(|r| r[k]).collect()))
            .collect();
        let png = self.job.out_dir.join("loss.png");
        plot::loss_plot(&format!("{title} losses"), &series, 640, 360)
            .save(&png)
            .map_err(|e| TrainError::Io {
                path: png.clone(),
                source: std::io::Error::other(e),
            })?;
        files.insert("loss.png".into(), png);
        Ok(())
    }

    fn write_samples(
        &self,
        net: &Accordion,
        teacher: Option<&Accordion>,
        files: &mut BTreeMap<String, PathBuf>,
    ) -> Result<(), TrainError> {
        let n = self.data.hold_src.size()[0].min(6);
        let src = self.data.hold_src.narrow(0, 0, n);
        let out = tch::no_grad(|| net.forward(&src));
        let t_out = teacher.map(|t| tch::no_grad(|| t.forward(&src)));
        let mut rows = Vec::new();
        for i in 0..n {
            let mut row = vec![to_image(&src.get(i)), to_image(&self.data.hold_tgt.get(i))];
            if let Some(t) = &t_out {
                row.push(to_image(&t.get(i)));
            }
            row.push(to_image(&out.get(i)));
            rows.push(row);
        }
        let titles: Vec<&str> = if teacher.is_some() {
            vec!["source", "target", "teacher", "student"]
        } else {
            vec!["source", "target", "output"]
        };
        let sheet = crate::stages::imaging::contact_sheet::contact_sheet(&rows, &titles, 128);
        let path = self.job.out_dir.join("samples.png");
        sheet.save(&path).map_err(|e| TrainError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        files.insert("samples.png".into(), path);
        Ok(())
    }
}

/// Lowers the student to the export IR and computes its reference outputs (CPU, fp32:
/// the references must not depend on the machine that happened to build them).
pub fn export_student(job: &ExportJob) -> Result<TrainReport, TrainError> {
    let device = Device::Cpu;
    let (_vs, net) = load_generator(&job.weights, job.arch, device)?;
    let size = job.resolution_px as usize;
    let graph = net.to_ir([1, 3, size, size]);
    std::fs::create_dir_all(&job.out_dir).map_err(|source| TrainError::Io {
        path: job.out_dir.clone(),
        source,
    })?;
    let mut files = BTreeMap::new();
    let ir_path = job.out_dir.join("student.ir");
    let bytes = postcard::to_allocvec(&graph).map_err(|e| TrainError::Io {
        path: ir_path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&ir_path, bytes).map_err(|source| TrainError::Io {
        path: ir_path.clone(),
        source,
    })?;
    files.insert("student.ir".to_string(), ir_path);
    let stack = |paths: &[PathBuf]| -> Result<Tensor, TrainError> {
        let ts = paths
            .iter()
            .map(|p| load_png(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::stack(&ts, 0))
    };
    let write_npy =
        |name: &str, t: &Tensor, files: &mut BTreeMap<String, PathBuf>| -> Result<(), TrainError> {
            let path = job.out_dir.join(name);
            let shape: Vec<usize> = t.size().iter().map(|d| *d as usize).collect();
            let data = Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap_or_default();
            crate::bundle::npy::write_f32(&path, &shape, &data).map_err(|e| TrainError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            files.insert(name.to_string(), path);
            Ok(())
        };
    let holdout = stack(&job.holdout)?;
    let reference = tch::no_grad(|| net.forward(&holdout));
    write_npy("holdout-inputs.npy", &holdout, &mut files)?;
    write_npy("holdout-reference.npy", &reference, &mut files)?;
    write_npy(
        "calibration-inputs.npy",
        &stack(&job.calibration)?,
        &mut files,
    )?;
    let mut metrics = serde_json::Map::new();
    metrics.insert("macs".into(), serde_json::json!(graph.macs().unwrap_or(0)));
    metrics.insert("params".into(), serde_json::json!(graph.param_count()));
    Ok(TrainReport { metrics, files })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn round4(v: f64) -> f64 {
    (v * 10000.0).round() / 10000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::imaging::{brick, synthetic};

    /// libtorch shares one CPU thread pool per process: two trainings at once can split
    /// work differently and round differently. Byte-identity holds per process (as in
    /// the worker), so these tests train one at a time.
    static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        TORCH.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tiny brick pairs at 32 px, 2 of 8 held out.
    fn pairs(dir: &Path) -> Vec<PairFiles> {
        (0..8)
            .map(|i| {
                let src = synthetic::synthetic_portrait(5, i, 32);
                let tgt = brick::brick_mosaic(
                    &src,
                    &brick::BrickStyle {
                        stud_px: 4,
                        ..Default::default()
                    },
                );
                let (s, t) = (dir.join(format!("s{i}.png")), dir.join(format!("t{i}.png")));
                src.save(&s).unwrap();
                tgt.save(&t).unwrap();
                PairFiles {
                    name: format!("p{i}"),
                    source: s,
                    target: t,
                    holdout: i >= 6,
                }
            })
            .collect()
    }

    fn job(dir: &Path, steps: u32, lr: f64) -> TrainJob {
        TrainJob {
            role: "teacher".into(),
            arch: AccordionConfig {
                width: 8,
                blocks: 1,
            },
            teacher: None,
            pairs: pairs(dir),
            hyper: Hyper {
                steps,
                batch: 2,
                lr,
                // Cosine: a resumed run must land on the same schedule.
                lr_schedule: LrSchedule::Cosine,
                beta1: 0.9,
                l1_weight: 1.0,
                ssim_weight: 0.5,
                gan_weight: 0.05,
                // The discriminator starts at step 7: a resume at step 8 crosses it.
                gan_start: 0.5,
                r1_gamma: 1.0,
                r1_every: 4,
                feature_weight: 1.0,
                ema_beta: 0.99,
                checkpoint_every: 5,
                seed: 9,
                shift_px: 2,
                flip: true,
                jitter: 0.05,
            },
            device: "cpu".into(),
            checkpoint_dir: dir.join("ckpt"),
            out_dir: dir.join("out"),
        }
    }

    #[test]
    fn an_interrupted_run_resumes_to_byte_identical_weights() {
        let _one_at_a_time = serial();
        let whole = tempfile::tempdir().unwrap();
        let j = job(whole.path(), 14, 0.002);
        run(&j, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let reference = std::fs::read(j.out_dir.join("weights.safetensors")).unwrap();

        let split = tempfile::tempdir().unwrap();
        let j2 = job(split.path(), 14, 0.002);
        let cancel = AtomicBool::new(false);
        let err = run(
            &j2,
            &mut |p| {
                if p.step == 8 {
                    cancel.store(true, Ordering::SeqCst)
                }
            },
            &cancel,
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::Cancelled { step: 8 }), "{err}");
        assert!(
            j2.checkpoint_dir.join("checkpoint.safetensors").is_file(),
            "cancel leaves a checkpoint"
        );
        run(&j2, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let resumed = std::fs::read(j2.out_dir.join("weights.safetensors")).unwrap();
        assert!(
            resumed == reference,
            "resumed weights differ from an uninterrupted run"
        );
        let csv = std::fs::read_to_string(j2.out_dir.join("loss.csv")).unwrap();
        assert_eq!(
            csv.lines().count(),
            15,
            "the loss history survives the interruption"
        );
    }

    #[test]
    fn the_discriminator_runs_only_from_gan_start() {
        let _one_at_a_time = serial();
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), 14, 0.002);
        run(&j, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let csv = std::fs::read_to_string(j.out_dir.join("loss.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let d = header.iter().position(|c| *c == "d").unwrap();
        let d_loss: Vec<f64> = lines
            .map(|l| l.split(',').nth(d).unwrap().parse().unwrap())
            .collect();
        assert_eq!(d_loss.len(), 14);
        assert!(d_loss[..7].iter().all(|v| *v == 0.0), "{d_loss:?}");
        assert!(d_loss[7..].iter().all(|v| *v > 0.0), "{d_loss:?}");
    }

    #[test]
    fn a_diverging_lr_stops_with_the_step_and_term_and_keeps_the_checkpoint() {
        let _one_at_a_time = serial();
        let dir = tempfile::tempdir().unwrap();
        // lr 500 overflows at step 1 here (lr 5 and 50 only saturate the tanh).
        let mut j = job(dir.path(), 40, 500.0);
        j.hyper.checkpoint_every = 1;
        let err = run(&j, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
        let TrainError::Diverged { step, ref term, .. } = err else {
            panic!("expected divergence, got {err}")
        };
        assert!(step >= 1, "diverged at step {step}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("step {step}")) && msg.contains(term.as_str()),
            "{msg}"
        );
        assert!(
            j.checkpoint_dir.join("checkpoint.safetensors").is_file(),
            "the last good checkpoint is kept"
        );
        assert!(
            !j.out_dir.join("weights.safetensors").exists(),
            "no weights from a diverged run"
        );
    }

    #[test]
    fn ir_lowering_computes_what_the_net_computes() {
        let _one_at_a_time = serial();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Accordion::new(
            &vs.root(),
            AccordionConfig {
                width: 4,
                blocks: 2,
            },
        );
        tch::manual_seed(1);
        // Non-zero biases so the lowering of biases is checked too.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.g_add_(&(Tensor::randn_like(&v) * 0.1));
            }
        });
        let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let expected = tch::no_grad(|| net.forward(&x));
        let graph = net.to_ir([1, 3, 32, 32]);
        let input = Vec::<f32>::try_from(&x.view([-1])).unwrap();
        let values = crate::export::interp::eval(&graph, &input).unwrap();
        let out = values.get(&graph.output_name).unwrap();
        let exp = Vec::<f32>::try_from(&expected.view([-1])).unwrap();
        let max_diff = out
            .iter()
            .zip(&exp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "IR and tch differ by {max_diff}");
        let learned: u64 = graph
            .nodes
            .iter()
            .filter(|n| !n.name.ends_with(".blur"))
            .map(|n| match &n.op {
                crate::export::ir::Op::Conv2d { weight, bias, .. } => {
                    (weight.len() + bias.len()) as u64
                }
                _ => 0,
            })
            .sum();
        assert_eq!(
            learned,
            vs.trainable_variables()
                .iter()
                .map(|t| t.numel() as u64)
                .sum::<u64>(),
            "every learned weight reaches the IR"
        );
    }

    #[test]
    fn the_default_student_fits_the_phone_budget() {
        let macs = crate::nn::accordion::macs(
            AccordionConfig {
                width: 32,
                blocks: 6,
            },
            512,
            512,
        );
        assert!(
            macs <= 5_000_000_000,
            "width 32 costs {macs} MACs at 512x512"
        );
    }
}
