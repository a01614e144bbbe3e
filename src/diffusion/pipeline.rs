//! The pair generator: source photo (+ control maps) in, stylised twin out.
//!
//! One denoising loop covers what diffusers splits across pipelines: text-to-image,
//! img2img (`strength` < 1: the source's latents noised to step k), several ControlNets
//! (residuals summed, each with its weight and start/end fraction of the steps), and
//! InstructPix2Pix (an 8-channel UNet fed the source's unscaled latent mode, three-way
//! guidance ε = ε_u + s_T(ε_text − ε_img) + s_I(ε_img − ε_u)).
//!
//! Random draws come from each request's seed in the order diffusers draws from a per-request
//! torch.Generator: the img2img posterior sample, the initial noise, then Euler-a's step noise.
//! Draws are made on the CPU (as diffusers does with CPU generators), so a seed gives the same
//! noise on every device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use super::clip::{ClipTextConfig, ClipTextModel};
use super::controlnet::ControlNetModel;
use super::error::{DiffusionError, Result};
use super::lora::{merge_loras, LoraSpec};
use super::scheduler::{ScheduleConfig, Scheduler, SchedulerKind};
use super::single_file::load_single_file;
use super::tokenizer::ClipTokenizer;
use super::unet::{UNet2DConditionModel, UNetConfig};
use super::vae::{AutoencoderKL, VaeConfig};
use super::weights::WeightMap;

/// Where the parts of a diffusers-layout model live.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub tokenizer: PathBuf,
    pub text_encoder: PathBuf,
    pub unet: PathBuf,
    pub vae: PathBuf,
    /// (name requests use, diffusers ControlNet folder)
    pub controlnets: Vec<(String, PathBuf)>,
    pub loras: Vec<LoraSpec>,
}

impl ModelFiles {
    /// A diffusers pipeline folder: tokenizer/, text_encoder/, unet/, vae/.
    pub fn diffusers_root(root: &Path) -> Self {
        ModelFiles {
            tokenizer: root.join("tokenizer"),
            text_encoder: root.join("text_encoder"),
            unet: root.join("unet"),
            vae: root.join("vae"),
            controlnets: Vec::new(),
            loras: Vec::new(),
        }
    }
}

pub struct DiffusionModels {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub controlnets: BTreeMap<String, ControlNetModel>,
    pub device: Device,
    /// Half on CUDA, Float on CPU (libtorch's CPU half kernels are slow and partial).
    pub kind: Kind,
}

/// The configs a single-file checkpoint's weights are read with (the file holds none).
#[derive(Debug, Clone)]
pub struct SingleFileConfigs {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipTextConfig,
}

impl SingleFileConfigs {
    pub fn sd15() -> Self {
        SingleFileConfigs {
            unet: UNetConfig::sd15(),
            vae: VaeConfig::sd15(),
            text_encoder: ClipTextConfig::vit_l14(),
        }
    }
}

/// One ControlNet's input for a request.
#[derive(Debug, Clone)]
pub struct ControlInput {
    /// The name the ControlNet was loaded under.
    pub controlnet: String,
    /// The control map, the source's size (a grey map as RGB).
    pub image: RgbImage,
    /// conditioning_scale
    pub weight: f32,
    /// Fraction of the steps where the ControlNet starts / stops acting (0.0 / 1.0 = all).
    pub start: f32,
    pub end: f32,
}

#[derive(Debug, Clone)]
pub struct PairRequest {
    pub prompt: String,
    pub negative_prompt: String,
    /// The photo to stylise; its size is the output's (multiples of 8).
    pub source: RgbImage,
    pub controls: Vec<ControlInput>,
    /// InstructPix2Pix image guidance s_I; Some needs an 8-channel (IP2P) UNet.
    pub image_guidance_scale: Option<f32>,
    /// Text guidance; guidance is on when > 1 (and, with IP2P, s_I ≥ 1), as in diffusers.
    pub guidance_scale: f32,
    pub steps: usize,
    pub scheduler: SchedulerKind,
    pub seed: u64,
    /// 1.0: start from noise; below: img2img from the source, skipping (1 − strength) of the steps.
    pub strength: f32,
}

/// The float result of one request (for tests and for callers that want more than 8 bits).
pub struct PairOutput {
    /// Final latents (1, 4, h, w), float32.
    pub latents: Tensor,
    /// Decoded image (1, 3, H, W) in [0, 1], float32.
    pub image: Tensor,
}

impl DiffusionModels {
    /// Loads every part; fp16 on CUDA, fp32 on CPU. LoRAs are merged (in fp32) before the
    /// UNet and text encoder are built.
    pub fn load(files: &ModelFiles, device: Device) -> Result<Self> {
        let kind = if device.is_cuda() {
            Kind::Half
        } else {
            Kind::Float
        };
        Self::load_with_kind(files, device, kind)
    }

    pub fn load_with_kind(files: &ModelFiles, device: Device, kind: Kind) -> Result<Self> {
        let tokenizer = ClipTokenizer::load(&files.tokenizer)?;
        let te_config = ClipTextConfig::from_file(&files.text_encoder.join("config.json"))?;
        let te_weights = WeightMap::load_folder_file(&files.text_encoder, "model.safetensors")?;
        let unet_config = UNetConfig::from_file(&files.unet.join("config.json"))?;
        let unet_weights =
            WeightMap::load_folder_file(&files.unet, "diffusion_pytorch_model.safetensors")?;
        let vae = AutoencoderKL::load(&files.vae, device, kind)?;
        let mut controlnets = BTreeMap::new();
        for (name, folder) in &files.controlnets {
            controlnets.insert(name.clone(), ControlNetModel::load(folder, device, kind)?);
        }
        Self::assemble(
            tokenizer,
            (te_weights, te_config),
            (unet_weights, unet_config),
            vae,
            controlnets,
            &files.loras,
            device,
            kind,
        )
    }

    /// Loads an original single-file SD checkpoint (UNet, VAE and text encoder in one
    /// safetensors file) with the configs it was trained with (`SingleFileConfigs::sd15()`
    /// for SD 1.x), plus diffusers-layout ControlNets and LoRAs.
    pub fn load_single_file(
        checkpoint: &Path,
        tokenizer: &Path,
        configs: &SingleFileConfigs,
        controlnets: &[(String, PathBuf)],
        loras: &[LoraSpec],
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let tokenizer = ClipTokenizer::load(tokenizer)?;
        let w = load_single_file(checkpoint, &configs.unet, &configs.vae)?;
        let vae = AutoencoderKL::new(&w.vae.to(device, kind)?, &configs.vae)?;
        let mut nets = BTreeMap::new();
        for (name, folder) in controlnets {
            nets.insert(name.clone(), ControlNetModel::load(folder, device, kind)?);
        }
        Self::assemble(
            tokenizer,
            (w.text_encoder, configs.text_encoder.clone()),
            (w.unet, configs.unet.clone()),
            vae,
            nets,
            loras,
            device,
            kind,
        )
    }

    /// Builds the models from weight maps (from any source), merging `loras` first.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        tokenizer: ClipTokenizer,
        text_encoder: (WeightMap, ClipTextConfig),
        unet: (WeightMap, UNetConfig),
        vae: AutoencoderKL,
        controlnets: BTreeMap<String, ControlNetModel>,
        loras: &[LoraSpec],
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let (mut te_weights, te_config) = text_encoder;
        let (mut unet_weights, unet_config) = unet;
        if !loras.is_empty() {
            te_weights = te_weights.to(Device::Cpu, Kind::Float)?;
            unet_weights = unet_weights.to(Device::Cpu, Kind::Float)?;
            merge_loras(&unet_weights, &te_weights, loras)?;
        }
        let text_encoder = ClipTextModel::new(&te_weights.to(device, kind)?, &te_config)?;
        let unet = UNet2DConditionModel::new(&unet_weights.to(device, kind)?, &unet_config)?;
        Ok(DiffusionModels {
            tokenizer,
            text_encoder,
            unet,
            vae,
            controlnets,
            device,
            kind,
        })
    }

    /// SD 1.5-sized models with random weights (timing without real weights): the ViT-L/14
    /// text tower, SD 1.5's UNet (8 input channels when `ip2p`), VAE and ControlNets.
    pub fn random_sd15(
        tokenizer: ClipTokenizer,
        controlnet_names: &[&str],
        ip2p: bool,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let te = ClipTextModel::new(&WeightMap::random(device, kind), &ClipTextConfig::vit_l14())?;
        let mut unet_config = UNetConfig::sd15();
        if ip2p {
            unet_config.in_channels = 8;
        }
        let unet = UNet2DConditionModel::new(&WeightMap::random(device, kind), &unet_config)?;
        let vae = AutoencoderKL::new(&WeightMap::random(device, kind), &VaeConfig::sd15())?;
        let mut controlnets = BTreeMap::new();
        for name in controlnet_names {
            controlnets.insert(
                name.to_string(),
                ControlNetModel::new(
                    &WeightMap::random(device, kind),
                    &UNetConfig::sd15_controlnet(),
                )?,
            );
        }
        Ok(DiffusionModels {
            tokenizer,
            text_encoder: te,
            unet,
            vae,
            controlnets,
            device,
            kind,
        })
    }

    /// Text embeddings (B, 77, hidden) of `prompts`.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Tensor {
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| self.tokenizer.encode(p))
            .collect();
        let ids = Tensor::from_slice(&ids)
            .reshape([prompts.len() as i64, self.tokenizer.max_length as i64])
            .to_device(self.device);
        self.text_encoder.forward(&ids)
    }
}

/// Generates one image per request, batching requests that can share a denoising loop.
pub fn generate_pair(models: &DiffusionModels, requests: &[PairRequest]) -> Result<Vec<RgbImage>> {
    generate_pair_tensors(models, requests)?
        .iter()
        .map(|o| image_from_unit_tensor(&o.image))
        .collect()
}

/// As [`generate_pair`], returning float latents and images.
pub fn generate_pair_tensors(
    models: &DiffusionModels,
    requests: &[PairRequest],
) -> Result<Vec<PairOutput>> {
    let _guard = tch::no_grad_guard();
    // requests that agree on everything the loop shares run as one batch
    let mut groups: BTreeMap<BatchKey, Vec<usize>> = BTreeMap::new();
    for (i, r) in requests.iter().enumerate() {
        validate(models, r)?;
        groups.entry(BatchKey::of(r)).or_default().push(i);
    }
    let mut outputs: Vec<Option<PairOutput>> = (0..requests.len()).map(|_| None).collect();
    for indices in groups.values() {
        let batch: Vec<&PairRequest> = indices.iter().map(|i| &requests[*i]).collect();
        for (i, out) in indices.iter().zip(run_batch(models, &batch)?) {
            outputs[*i] = Some(out);
        }
    }
    Ok(outputs
        .into_iter()
        .map(|o| o.expect("every request ran"))
        .collect())
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct BatchKey {
    steps: usize,
    scheduler: SchedulerKind,
    strength_bits: u32,
    size: (u32, u32),
    ip2p: bool,
    guided: bool,
    controls: Vec<(String, u32, u32)>,
}

impl BatchKey {
    fn of(r: &PairRequest) -> Self {
        BatchKey {
            steps: r.steps,
            scheduler: r.scheduler,
            strength_bits: r.strength.to_bits(),
            size: r.source.dimensions(),
            ip2p: r.image_guidance_scale.is_some(),
            guided: guided(r),
            controls: r
                .controls
                .iter()
                .map(|c| (c.controlnet.clone(), c.start.to_bits(), c.end.to_bits()))
                .collect(),
        }
    }
}

/// Classifier-free guidance is on when it changes the result (diffusers' rule).
fn guided(r: &PairRequest) -> bool {
    match r.image_guidance_scale {
        Some(s_i) => r.guidance_scale > 1.0 && s_i >= 1.0,
        None => r.guidance_scale > 1.0,
    }
}

fn validate(models: &DiffusionModels, r: &PairRequest) -> Result<()> {
    let bad = |m: String| Err(DiffusionError::InvalidRequest(m));
    let (w, h) = r.source.dimensions();
    let scale = models.vae.config.downscale() as u32;
    if w == 0 || h == 0 || w % scale != 0 || h % scale != 0 {
        return bad(format!(
            "the source is {w}x{h}; both sides must be non-zero multiples of {scale}"
        ));
    }
    if !(r.strength > 0.0 && r.strength <= 1.0) {
        return bad(format!("strength {} is not in (0, 1]", r.strength));
    }
    if r.steps == 0 || r.steps > 1000 {
        return bad(format!("steps {} is not in 1..=1000", r.steps));
    }
    if ((r.steps as f32 * r.strength) as usize) == 0 {
        return bad(format!(
            "strength {} of {} steps runs no step",
            r.strength, r.steps
        ));
    }
    let latent = models.vae.config.latent_channels;
    let unet_in = models.unet.config().in_channels;
    match r.image_guidance_scale {
        Some(_) if unet_in != 2 * latent => {
            return bad(format!("InstructPix2Pix guidance needs a {}-channel UNet; this one takes {unet_in}", 2 * latent))
        }
        None if unet_in != latent => {
            return bad(format!("this UNet takes {unet_in} channels (InstructPix2Pix?) but the request has no image guidance"))
        }
        _ => {}
    }
    for c in &r.controls {
        if !models.controlnets.contains_key(&c.controlnet) {
            let known: Vec<&String> = models.controlnets.keys().collect();
            return bad(format!(
                "no ControlNet named `{}` is loaded (loaded: {known:?})",
                c.controlnet
            ));
        }
        if c.image.dimensions() != (w, h) {
            return bad(format!(
                "control map for `{}` is {:?}, the source {w}x{h}",
                c.controlnet,
                c.image.dimensions()
            ));
        }
        if !(0.0..=1.0).contains(&c.start) || !(0.0..=1.0).contains(&c.end) || c.start > c.end {
            return bad(format!(
                "control `{}` start {} / end {} must satisfy 0 ≤ start ≤ end ≤ 1",
                c.controlnet, c.start, c.end
            ));
        }
    }
    Ok(())
}

static RNG_LOCK: Mutex<()> = Mutex::new(());

/// Standard normal tensors drawn in order from a generator seeded with `seed` (libtorch's CPU
/// mt19937, the same stream as `torch.Generator().manual_seed(seed)`). libtorch exposes only
/// the global generator to tch, so draws are serialised by a lock.
pub fn seeded_normals(seed: u64, shapes: &[Vec<i64>]) -> Vec<Tensor> {
    let _lock = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    shapes
        .iter()
        .map(|s| Tensor::randn(&s[..], (Kind::Float, Device::Cpu)))
        .collect()
}

/// HWC u8 -> (1, 3, H, W) float in [0, 1].
pub fn unit_tensor_from_image(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .reshape([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        / 255.0
}

/// (1, 3, H, W) in [0, 1] -> RGB, rounding as diffusers' numpy_to_pil does.
pub fn image_from_unit_tensor(t: &Tensor) -> Result<RgbImage> {
    let (_, _, h, w) = t.size4()?;
    let bytes = (t.squeeze_dim(0).permute([1, 2, 0]).clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu)
        .contiguous();
    let data = Vec::<u8>::try_from(&bytes.flatten(0, -1))?;
    RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| DiffusionError::InvalidRequest("image buffer size".into()))
}

fn run_batch(models: &DiffusionModels, reqs: &[&PairRequest]) -> Result<Vec<PairOutput>> {
    let (device, kind) = (models.device, models.kind);
    let r0 = reqs[0];
    let n = reqs.len() as i64;
    let (w, h) = r0.source.dimensions();
    let ds = models.vae.config.downscale();
    let latent_ch = models.vae.config.latent_channels;
    let latent_shape = vec![1, latent_ch, h as i64 / ds, w as i64 / ds];
    let scaling = models.vae.config.scaling_factor;
    let ip2p = r0.image_guidance_scale.is_some();
    let cfg = guided(r0);

    let mut sched = Scheduler::new(r0.scheduler, ScheduleConfig::sd15(), r0.steps)?;
    let start = if r0.strength < 1.0 {
        sched.img2img_start(r0.strength as f64)
    } else {
        0
    };
    let executed = r0.steps - start;

    // random draws, per request, in diffusers' order
    let img2img = r0.strength < 1.0;
    let mut shapes = Vec::new();
    if img2img {
        shapes.push(latent_shape.clone());
    }
    shapes.push(latent_shape.clone());
    if sched.needs_step_noise() {
        shapes.extend(std::iter::repeat_n(latent_shape.clone(), executed));
    }
    let draws: Vec<Vec<Tensor>> = reqs
        .iter()
        .map(|r| seeded_normals(r.seed, &shapes))
        .collect();
    let stack = |k: usize| {
        Tensor::cat(
            &draws
                .iter()
                .map(|d| d[k].shallow_clone())
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(device)
    };
    let first_noise = if img2img { 1 } else { 0 };

    // text
    let prompts: Vec<&str> = reqs.iter().map(|r| r.prompt.as_str()).collect();
    let text = models.encode_prompts(&prompts);
    let context = if cfg {
        let negs: Vec<&str> = reqs.iter().map(|r| r.negative_prompt.as_str()).collect();
        let neg = models.encode_prompts(&negs);
        if ip2p {
            Tensor::cat(&[&text, &neg, &neg], 0)
        } else {
            Tensor::cat(&[&neg, &text], 0)
        }
    } else {
        text
    };
    let copies = if !cfg {
        1
    } else if ip2p {
        3
    } else {
        2
    };

    // source latents
    let source = Tensor::cat(
        &reqs
            .iter()
            .map(|r| unit_tensor_from_image(&r.source))
            .collect::<Vec<_>>(),
        0,
    )
    .to_device(device)
        * 2.0
        - 1.0;
    let posterior = if img2img || ip2p {
        Some(models.vae.encode(&source.to_kind(kind)))
    } else {
        None
    };
    let mut latents = if let (true, Some(post)) = (img2img, &posterior) {
        let mean = post.mean.to_kind(Kind::Float);
        let std = (post.logvar.to_kind(Kind::Float) * 0.5).exp();
        let init = (mean + std * stack(0)) * scaling;
        sched.add_noise(&init, &stack(first_noise), start)
    } else {
        stack(first_noise) * sched.init_noise_sigma()
    };
    let image_latents = match (&posterior, ip2p) {
        (Some(post), true) => {
            let m = post.mode().to_kind(kind);
            Some(if cfg {
                Tensor::cat(&[&m, &m, &m.zeros_like()], 0)
            } else {
                m
            })
        }
        _ => None,
    };

    // controls: images in [0, 1] and per-row weights, repeated for the guidance branches
    let controls: Vec<(&ControlNetModel, Tensor, Tensor, f32, f32)> = (0..r0.controls.len())
        .map(|k| {
            let imgs = Tensor::cat(
                &reqs
                    .iter()
                    .map(|r| unit_tensor_from_image(&r.controls[k].image))
                    .collect::<Vec<_>>(),
                0,
            );
            let weights = Tensor::from_slice(
                &reqs
                    .iter()
                    .map(|r| r.controls[k].weight)
                    .collect::<Vec<f32>>(),
            );
            let c0 = &r0.controls[k];
            (
                &models.controlnets[&c0.controlnet],
                imgs.repeat([copies, 1, 1, 1])
                    .to_device(device)
                    .to_kind(kind),
                weights.repeat([copies]).to_device(device),
                c0.start,
                c0.end,
            )
        })
        .collect();

    let gs = Tensor::from_slice(&reqs.iter().map(|r| r.guidance_scale).collect::<Vec<f32>>())
        .reshape([n, 1, 1, 1])
        .to_device(device);
    let igs = Tensor::from_slice(
        &reqs
            .iter()
            .map(|r| r.image_guidance_scale.unwrap_or(0.0))
            .collect::<Vec<f32>>(),
    )
    .reshape([n, 1, 1, 1])
    .to_device(device);
    let context = context.to_kind(kind);
    for (local, i) in (start..r0.steps).enumerate() {
        let t = Tensor::from_slice(&[sched.timesteps()[i] as f32]).to_device(device);
        let model_in = if copies > 1 {
            latents.repeat([copies, 1, 1, 1])
        } else {
            latents.shallow_clone()
        };
        let scaled = sched.scale_model_input(&model_in, i).to_kind(kind);
        let mut residuals: Option<(Vec<Tensor>, Tensor)> = None;
        for (net, cimg, weights, c_start, c_end) in &controls {
            // diffusers' controlnet_keep: off before `start` and after `end` of the steps
            let frac_lo = local as f32 / executed as f32;
            let frac_hi = (local + 1) as f32 / executed as f32;
            if frac_lo < *c_start || frac_hi > *c_end {
                continue;
            }
            let (down, mid) = net.forward(&scaled, &t, &context, cimg, weights);
            residuals = Some(match residuals {
                None => (down, mid),
                Some((d0, m0)) => (d0.iter().zip(&down).map(|(a, b)| a + b).collect(), m0 + mid),
            });
        }
        let unet_in = match &image_latents {
            Some(il) => Tensor::cat(&[&scaled, il], 1),
            None => scaled,
        };
        let eps = models
            .unet
            .forward(&unet_in, &t, &context, residuals.as_ref())
            .to_kind(Kind::Float);
        let eps = if cfg && ip2p {
            let e = eps.chunk(3, 0);
            &e[2] + &gs * (&e[0] - &e[1]) + &igs * (&e[1] - &e[2])
        } else if cfg {
            let e = eps.chunk(2, 0);
            &e[0] + &gs * (&e[1] - &e[0])
        } else {
            eps
        };
        let noise = if sched.needs_step_noise() {
            Some(stack(first_noise + 1 + local))
        } else {
            None
        };
        latents = sched.step(&eps, i, &latents, noise.as_ref())?;
    }
    let decoded = models
        .vae
        .decode(&(&latents / scaling).to_kind(kind))
        .to_kind(Kind::Float);
    let images = (decoded / 2.0 + 0.5).clamp(0.0, 1.0);
    Ok((0..n)
        .map(|k| PairOutput {
            latents: latents.narrow(0, k, 1),
            image: images.narrow(0, k, 1),
        })
        .collect())
}
