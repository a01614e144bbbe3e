//! The two training loops: the teacher on the pairs (reconstruction, then the GAN from
//! `gan-start`), and the student distilled from the teacher, layer by layer or (with
//! `features 0`) from its outputs alone.

use super::checkpoint::{load_generator, named_vars, write_safetensors_atomic};
use super::data::{batch, batch_indices};
use super::job::Role;
use super::metrics::round3;
use super::{memory, TrainError, Trainer};
use crate::nn::adam::Adam;
use crate::nn::discriminator::PatchDiscriminator;
use crate::nn::layers::EqConv;
use crate::nn::metrics::ssim;
use crate::nn::Accordion;
use crate::protocol::metric;
use crate::protocol::{TrainProgress, WorkerReport};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Dynamic loss scaling for fp16 autocast on CUDA (a no-op on CPU, where we train in fp32).
pub(super) struct LossScaler {
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
        self.accumulate(loss);
        self.step(opt);
    }

    /// Backward only: the gradients add to those already there (a micro-batch).
    fn accumulate(&self, loss: &Tensor) {
        if self.enabled {
            (loss * self.scale).backward();
        } else {
            loss.backward();
        }
    }

    /// The update from the accumulated gradients.
    fn step(&mut self, opt: &mut Adam) {
        if !self.enabled {
            opt.step();
            return;
        }
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

pub(super) fn check_finite(
    step: u32,
    terms: &[(&str, &Tensor)],
) -> Result<BTreeMap<String, f64>, TrainError> {
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

pub(super) fn ema_update(ema: &nn::VarStore, g: &nn::VarStore, beta: f64) {
    tch::no_grad(|| {
        for ((_, mut e), (_, p)) in named_vars(ema, "").into_iter().zip(named_vars(g, "")) {
            // e = beta * e + (1 - beta) * p, in place.
            let _ = e.lerp_(&p, 1.0 - beta);
        }
    });
}

/// Bytes of a net's variables.
fn var_bytes(vs: &nn::VarStore) -> f64 {
    vs.variables()
        .values()
        .map(|t| t.numel() as f64 * 4.0)
        .sum()
}

/// An accumulated run says so in its report (a batch that fit adds nothing).
fn plan_metrics(
    plan: &memory::MemoryPlan,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
) {
    if plan.accumulates() {
        metrics.insert(
            metric::MICRO_BATCH.into(),
            serde_json::json!(plan.micro_batch),
        );
        metrics.insert(
            metric::MEMORY_PLAN.into(),
            serde_json::json!(plan.summary()),
        );
    }
}

/// Splits a batch into the plan's micro-batches.
fn split(t: &Tensor, chunks: &[i64]) -> Vec<Tensor> {
    t.split_with_sizes(chunks, 0)
}

/// The batch's mean square of each teacher feature (+1e-6), the distillation's
/// normalisers, from a no-grad pass over the micro-batches: every item has as many
/// values, so the batch's mean is the micro-batches' means weighted by their share.
fn feature_scales(
    srcs: &[Tensor],
    chunks: &[i64],
    batch: u32,
    features: impl Fn(&Tensor) -> Vec<Tensor>,
) -> Vec<Tensor> {
    let mut sums: Vec<Tensor> = Vec::new();
    for (x, n) in srcs.iter().zip(chunks) {
        let share = *n as f64 / batch as f64;
        for (k, f) in features(x).iter().enumerate() {
            let m = f.to_kind(Kind::Float).square().mean(Kind::Float) * share;
            if k < sums.len() {
                sums[k] = &sums[k] + m;
            } else {
                sums.push(m);
            }
        }
    }
    sums.into_iter().map(|s| s + 1e-6).collect()
}

impl Trainer<'_> {
    /// What a step of this run needs against what the device has (see `memory`), sent to
    /// the stage before the first step. `fixed` is what the nets and their optimizer state
    /// take whatever the batch; `per_item` what each item of a pass adds.
    pub(super) fn memory_plan(
        &self,
        fixed: f64,
        per_item: f64,
        progress: &mut dyn FnMut(&TrainProgress),
    ) -> Result<memory::MemoryPlan, TrainError> {
        let batch = self.job.hyper.batch.max(1);
        let available = match self.device {
            Device::Cuda(n) => memory::cuda_available(n),
            _ => memory::cpu_available(),
        };
        let mut plan = match available {
            Some(a) => memory::plan(batch, fixed, per_item, &a).map_err(|why| {
                let (h, w) = (self.data.train_src.size()[2], self.data.train_src.size()[3]);
                let setting = if self.job.role == Role::Teacher {
                    format!("`student teacher-width={}`", self.job.arch.width)
                } else {
                    format!("`student width={}`", self.job.arch.width)
                };
                TrainError::OutOfMemory(format!(
                    "a {} step at {w}x{h} px cannot run even with batch 1: {why}. Lower {setting} or the crop `size` ({w}) in the recipe, or build where more memory is free",
                    self.job.role.name()
                ))
            })?,
            // Nothing to measure against (an unknown device): run as asked.
            None => memory::MemoryPlan {
                batch,
                micro_batch: batch,
                needed_bytes: (fixed + batch as f64 * per_item) as u64,
                micro_needed_bytes: (fixed + batch as f64 * per_item) as u64,
                available_bytes: 0,
                available_source: "unknown".into(),
            },
        };
        if let Some(cap) = self.micro_batch_cap {
            plan.micro_batch = plan.micro_batch.min(cap.max(1));
        }
        progress(&TrainProgress {
            step: self.start_step,
            total_steps: self.job.hyper.steps,
            losses: BTreeMap::new(),
            steps_per_s: 0.0,
            memory: Some(plan.clone()),
        });
        Ok(plan)
    }

    /// One teacher step over micro-batches: the same gradients as the whole batch in one
    /// pass (every loss is a mean, so each micro-batch's counts by its share of the
    /// batch), the discriminator updated first as in the one-pass step.
    #[allow(clippy::too_many_arguments)]
    fn teacher_step_accumulated(
        &self,
        step: u32,
        chunks: &[i64],
        (src, tgt): (&Tensor, &Tensor),
        (g, d): (&Accordion, &PatchDiscriminator),
        (opt_g, opt_d): (&mut Adam, &mut Adam),
        scaler: &mut LossScaler,
        adversarial: bool,
        last_r1: f64,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let h = &self.job.hyper;
        let amp = scaler.enabled;
        let (srcs, tgts) = (split(src, chunks), split(tgt, chunks));
        let share: Vec<f64> = chunks.iter().map(|n| *n as f64 / h.batch as f64).collect();
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut add = |name: &str, v: f64| *sums.entry(name.to_string()).or_default() += v;
        let mut r1_value = last_r1;
        if adversarial {
            let fakes: Vec<Tensor> = srcs
                .iter()
                .map(|s| tch::no_grad(|| tch::autocast(amp, || g.forward(s)).to_kind(Kind::Float)))
                .collect();
            opt_d.zero_grad();
            for i in 0..chunks.len() {
                let d_loss = tch::autocast(amp, || {
                    d.forward(&srcs[i], &fakes[i]).softplus().mean(Kind::Float)
                        + (-d.forward(&srcs[i], &tgts[i]))
                            .softplus()
                            .mean(Kind::Float)
                })
                .to_kind(Kind::Float);
                let v = check_finite(step, &[("d", &d_loss)])?;
                add("d", v["d"] * share[i]);
                scaler.accumulate(&(&d_loss * share[i]));
            }
            scaler.step(opt_d);
            if h.r1_gamma > 0.0 && step % h.r1_every == 0 {
                opt_d.zero_grad();
                r1_value = 0.0;
                for i in 0..chunks.len() {
                    let real = tgts[i].detach().set_requires_grad(true);
                    let out = d.forward(&srcs[i], &real);
                    let grad = Tensor::run_backward(&[out.sum(Kind::Float)], &[&real], true, true)
                        .remove(0);
                    let r1 = grad
                        .square()
                        .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
                        .mean(Kind::Float)
                        * (h.r1_gamma / 2.0);
                    r1_value += check_finite(step, &[("r1", &r1)])?["r1"] * share[i];
                    scaler.accumulate(&(&r1 * (h.r1_every as f64 * share[i])));
                }
                scaler.step(opt_d);
            }
        }
        // Without the discriminator its terms read 0, as in the one-pass step.
        add("r1", if adversarial { r1_value } else { 0.0 });
        if !adversarial {
            add("d", 0.0);
        }
        opt_g.zero_grad();
        for i in 0..chunks.len() {
            let fake = tch::autocast(amp, || g.forward(&srcs[i])).to_kind(Kind::Float);
            let g_adv = if adversarial {
                tch::autocast(amp, || {
                    (-d.forward(&srcs[i], &fake)).softplus().mean(Kind::Float)
                })
                .to_kind(Kind::Float)
            } else {
                Tensor::from(0f32).to_device(self.device)
            };
            let tgt = &tgts[i];
            let l1 = (&fake - tgt).abs().mean(Kind::Float);
            let ssim_loss = 1.0 - ssim(&((&fake + 1.0) / 2.0), &((tgt + 1.0) / 2.0));
            let g_loss = &l1 * h.l1_weight + &ssim_loss * h.ssim_weight + &g_adv * h.gan_weight;
            let v = check_finite(
                step,
                &[
                    ("l1", &l1),
                    ("ssim", &ssim_loss),
                    ("g_adv", &g_adv),
                    ("total", &g_loss),
                ],
            )?;
            for (name, value) in v {
                add(&name, value * share[i]);
            }
            scaler.accumulate(&(&g_loss * share[i]));
        }
        scaler.step(opt_g);
        Ok(sums)
    }

    pub(super) fn report_progress(
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
            memory: None,
        });
    }

    pub(super) fn teacher(
        mut self,
        progress: &mut dyn FnMut(&TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<WorkerReport, TrainError> {
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
        // Weights, grads, Adam's two moments and the EMA; the discriminator without an EMA.
        let fixed = 5.0 * var_bytes(&g_vs) + 4.0 * var_bytes(&d_vs);
        let (ih, iw) = (self.data.train_src.size()[2], self.data.train_src.size()[3]);
        let adversarial_ever = h.gan_weight > 0.0 && h.gan_start < 1.0;
        let per_item = memory::bytes_per_item(self.job.arch, None, ih, iw, adversarial_ever, false);
        let plan = self.memory_plan(fixed, per_item, progress)?;
        let chunks = memory::chunks(&plan);
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
            let adversarial = h.gan_weight > 0.0 && step as f64 >= h.gan_start * h.steps as f64;
            let losses = if chunks.len() > 1 {
                self.teacher_step_accumulated(
                    step,
                    &chunks,
                    (&src, &tgt),
                    (&g, &d),
                    (&mut opt_g, &mut opt_d),
                    &mut scaler,
                    adversarial,
                    history.last().map(|r| r[4]).unwrap_or(0.0),
                )?
            } else {
                let fake = tch::autocast(amp, || g.forward(&src)).to_kind(Kind::Float);
                // Before `gan-start` (or with `gan 0`) the discriminator would learn for
                // nothing: skip it (its terms read 0 on the curves).
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
                        let grad =
                            Tensor::run_backward(&[out.sum(Kind::Float)], &[&real], true, true)
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
                losses
            };
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
        metrics.insert(
            metric::STEPS_PER_S.into(),
            serde_json::json!(round3(steps_per_s)),
        );
        plan_metrics(&plan, &mut metrics);
        self.write_curves(&names, &history, Role::Teacher.name(), &mut files)?;
        self.write_samples(&ema, None, &mut files)?;
        Ok(WorkerReport { metrics, files })
    }

    pub(super) fn student(
        mut self,
        progress: &mut dyn FnMut(&TrainProgress),
        cancel: &AtomicBool,
    ) -> Result<WorkerReport, TrainError> {
        let h = self.job.hyper.clone();
        let Some((teacher_weights, teacher_arch)) = self.job.teacher.clone() else {
            return Err(TrainError::BadInput {
                path: PathBuf::from("<job>"),
                what: "a student job needs the teacher's weights".into(),
            });
        };
        let (t_vs, teacher) = load_generator(&teacher_weights, teacher_arch, self.device)?;
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
        // Without the feature term and without augmentation, the teacher's output for a
        // training item never changes: compute it once, not at every step (on the brick
        // demo the teacher's forward and the feature term were half of a student step).
        let with_features = h.feature_weight > 0.0;
        let augmented = h.shift_px > 0 || h.flip || h.jitter > 0.0;
        let fixed_teacher = (!with_features && !augmented).then(|| {
            tch::no_grad(|| {
                let n = self.data.train_src.size()[0];
                let chunks: Vec<Tensor> = (0..n)
                    .step_by(32)
                    .map(|i| {
                        let x = self.data.train_src.narrow(0, i, 32.min(n - i));
                        tch::autocast(amp, || teacher.forward(&x)).to_kind(Kind::Float)
                    })
                    .collect();
                Tensor::cat(&chunks, 0)
            })
        });
        let mut scaler = LossScaler::new(amp);
        // Weights, grads, Adam's moments and the EMA of student and adapters; the teacher's weights.
        let fixed = 5.0 * (var_bytes(&s_vs) + var_bytes(&a_vs)) + var_bytes(&t_vs);
        let (ih, iw) = (self.data.train_src.size()[2], self.data.train_src.size()[3]);
        let per_item = memory::bytes_per_item(
            self.job.arch,
            Some(teacher_arch),
            ih,
            iw,
            false,
            with_features,
        );
        let plan = self.memory_plan(fixed, per_item, progress)?;
        let chunks = memory::chunks(&plan);
        // The loss of a (micro-)batch: what the student must match, and its terms.
        // `scales`: each feature term's normaliser over the whole batch, given when the
        // batch runs as micro-batches (a micro-batch's own would weigh its items apart
        // from the one-pass step's).
        let student_loss = |src: &Tensor,
                            tgt: &Tensor,
                            t_out: Option<Tensor>,
                            scales: Option<&[Tensor]>| {
            let (t_out, t_feats) = match t_out {
                Some(t) => (t, Vec::new()),
                None => tch::no_grad(|| tch::autocast(amp, || teacher.forward_with_features(src))),
            };
            let (s_out, s_feats) = if with_features {
                tch::autocast(amp, || s.forward_with_features(src))
            } else {
                (tch::autocast(amp, || s.forward(src)), Vec::new())
            };
            let (t_out, s_out) = (t_out.to_kind(Kind::Float), s_out.to_kind(Kind::Float));
            let out_teacher = (&s_out - &t_out).abs().mean(Kind::Float);
            let out_target = (&s_out - tgt).abs().mean(Kind::Float);
            let ssim_loss = 1.0 - ssim(&((&s_out + 1.0) / 2.0), &((&t_out + 1.0) / 2.0));
            let mut features = Tensor::from(0f32).to_device(self.device);
            for (k, ((sf, tf), a)) in s_feats.iter().zip(&t_feats).zip(&adapters).enumerate() {
                let sf = sf.to_kind(Kind::Float);
                let tf = tf.to_kind(Kind::Float);
                // Normalise by the teacher feature's scale so every stage counts alike.
                let scale = match scales {
                    Some(all) => all[k].shallow_clone(),
                    None => tf.square().mean(Kind::Float).detach() + 1e-6,
                };
                features = features + (a.forward(&sf) - tf).square().mean(Kind::Float) / scale;
            }
            let features = features / s_feats.len().max(1) as f64;
            let loss = (&out_teacher + &out_target * 0.5) * h.l1_weight
                + &ssim_loss * h.ssim_weight
                + &features * h.feature_weight;
            [
                ("out_teacher", out_teacher),
                ("out_target", out_target),
                ("ssim", ssim_loss),
                ("features", features),
                ("total", loss),
            ]
        };
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
            let t_out = fixed_teacher.as_ref().map(|all| {
                all.index_select(0, &batch_indices(&self.data, h.seed, step as u64, &h))
            });
            let losses = if chunks.len() > 1 {
                // Micro-batches: each loss counts by its share of the batch, so the
                // accumulated gradients are the one-pass step's.
                let (srcs, tgts) = (split(&src, &chunks), split(&tgt, &chunks));
                let t_outs: Vec<Option<Tensor>> = match &t_out {
                    Some(t) => split(t, &chunks).into_iter().map(Some).collect(),
                    None => chunks.iter().map(|_| None).collect(),
                };
                let scales = with_features.then(|| {
                    feature_scales(&srcs, &chunks, h.batch, |x| {
                        tch::no_grad(|| tch::autocast(amp, || teacher.forward_with_features(x)).1)
                    })
                });
                let mut sums: BTreeMap<String, f64> = BTreeMap::new();
                opt.zero_grad();
                for (i, t_out) in t_outs.into_iter().enumerate() {
                    let share = chunks[i] as f64 / h.batch as f64;
                    let terms = student_loss(&srcs[i], &tgts[i], t_out, scales.as_deref());
                    let refs: Vec<(&str, &Tensor)> = terms.iter().map(|(n, t)| (*n, t)).collect();
                    for (name, v) in check_finite(step, &refs)? {
                        *sums.entry(name).or_default() += v * share;
                    }
                    scaler.accumulate(&(&terms[4].1 * share));
                }
                scaler.step(&mut opt);
                sums
            } else {
                let terms = student_loss(&src, &tgt, t_out, None);
                let refs: Vec<(&str, &Tensor)> = terms.iter().map(|(n, t)| (*n, t)).collect();
                let losses = check_finite(step, &refs)?;
                scaler.backward_step(&terms[4].1, &mut opt);
                losses
            };
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
        metrics.insert(
            metric::STEPS_PER_S.into(),
            serde_json::json!(round3(steps_per_s)),
        );
        plan_metrics(&plan, &mut metrics);
        self.write_curves(&names, &history, Role::Student.name(), &mut files)?;
        self.write_samples(&ema, Some(&teacher), &mut files)?;
        Ok(WorkerReport { metrics, files })
    }
}
