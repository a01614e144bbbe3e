//! One pair to generate, as the `pairs` stage hands it to the `effectc-nn serve`
//! worker: which model files to load (by architecture), the request, where to write the
//! target. The types are plain data so the libtorch-free CLI can write them.

use super::clip::ClipTextConfig;
use super::controlnet::ControlNetModel;
use super::error::{DiffusionError, Result};
use super::lora::LoraSpec;
use super::pipeline::{generate_pair, ControlInput, DiffusionModels, PairRequest};
use super::scheduler::SchedulerKind;
use super::single_file::load_single_file;
use super::tokenizer::ClipTokenizer;
use super::unet::UNetConfig;
use super::vae::{AutoencoderKL, VaeConfig};
use super::weights::WeightMap;
use crate::protocol::WorkerReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelRef {
    /// An architecture of stdlib/models.kdl (`sd15`, `sd15-diffusers`, ...).
    pub arch: String,
    pub path: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlJob {
    pub controlnet: String,
    pub image: PathBuf,
    pub weight: f32,
    pub start: f32,
    pub end: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiffuseJob {
    pub base: ModelRef,
    /// CLIP's vocabulary folder, for single-file bases.
    pub tokenizer: Option<PathBuf>,
    /// The InstructPix2Pix model whose 8-channel UNet replaces the base's.
    pub ip2p: Option<ModelRef>,
    /// ControlNet name → diffusers folder.
    pub controlnets: BTreeMap<String, PathBuf>,
    pub loras: Vec<(PathBuf, f64)>,
    pub prompt: String,
    pub negative_prompt: String,
    pub source: PathBuf,
    pub controls: Vec<ControlJob>,
    pub image_guidance: Option<f32>,
    pub guidance: f32,
    pub steps: usize,
    pub scheduler: String,
    pub seed: u64,
    pub strength: f32,
    pub device: String,
    pub out: PathBuf,
}

fn is_single_file(arch: &str) -> bool {
    matches!(arch, "sd15" | "sd15-ip2p")
}

/// Loads the models the job names (fp16 on CUDA, fp32 on CPU), LoRAs merged.
pub fn load_models(job: &DiffuseJob, device: Device) -> Result<DiffusionModels> {
    let kind = if device.is_cuda() {
        Kind::Half
    } else {
        Kind::Float
    };
    let base = &job.base.path;
    let single = is_single_file(&job.base.arch);
    let tokenizer = if single {
        let path = job.tokenizer.as_ref().ok_or_else(|| {
            DiffusionError::InvalidRequest("a single-file base needs a tokenizer folder".into())
        })?;
        ClipTokenizer::load(path)?
    } else {
        ClipTokenizer::load(&base.join("tokenizer"))?
    };
    let (text_encoder, unet, vae) = if single {
        let w = load_single_file(base, &UNetConfig::sd15(), &VaeConfig::sd15())?;
        let vae = AutoencoderKL::new(&w.vae.to(device, kind)?, &VaeConfig::sd15())?;
        (
            (w.text_encoder, ClipTextConfig::vit_l14()),
            (w.unet, UNetConfig::sd15()),
            vae,
        )
    } else {
        let te = base.join("text_encoder");
        let unet = base.join("unet");
        (
            (
                WeightMap::load_folder_file(&te, "model.safetensors")?,
                ClipTextConfig::from_file(&te.join("config.json"))?,
            ),
            (
                WeightMap::load_folder_file(&unet, "diffusion_pytorch_model.safetensors")?,
                UNetConfig::from_file(&unet.join("config.json"))?,
            ),
            AutoencoderKL::load(&base.join("vae"), device, kind)?,
        )
    };
    let unet = match &job.ip2p {
        None => unet,
        Some(m) if is_single_file(&m.arch) => {
            let mut config = UNetConfig::sd15();
            config.in_channels = 8;
            let w = load_single_file(&m.path, &config, &VaeConfig::sd15())?;
            (w.unet, config)
        }
        Some(m) => {
            let folder = m.path.join("unet");
            (
                WeightMap::load_folder_file(&folder, "diffusion_pytorch_model.safetensors")?,
                UNetConfig::from_file(&folder.join("config.json"))?,
            )
        }
    };
    let mut controlnets = BTreeMap::new();
    for (name, folder) in &job.controlnets {
        controlnets.insert(name.clone(), ControlNetModel::load(folder, device, kind)?);
    }
    let loras: Vec<LoraSpec> = job
        .loras
        .iter()
        .map(|(path, weight)| LoraSpec {
            path: path.clone(),
            weight: *weight,
        })
        .collect();
    DiffusionModels::assemble(
        tokenizer,
        text_encoder,
        unet,
        vae,
        controlnets,
        &loras,
        device,
        kind,
    )
}

/// An image file as RGB (the diffusion and CLIP workers read their inputs with it).
pub fn read_rgb(path: &Path) -> Result<image::RgbImage> {
    // Cache blobs have no extension: the format comes from the bytes.
    let bad = |e: String| DiffusionError::BadFile {
        path: path.to_path_buf(),
        message: format!("not a readable image: {e}"),
    };
    image::ImageReader::open(path)
        .map_err(|e| bad(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .decode()
        .map(|i| i.to_rgb8())
        .map_err(|e| bad(e.to_string()))
}

/// The models a job loads, as one comparable key: jobs with equal keys share them.
fn models_key(job: &DiffuseJob) -> String {
    serde_json::json!([
        job.base.arch,
        job.base.path,
        job.tokenizer,
        job.ip2p.as_ref().map(|m| (&m.arch, &m.path)),
        job.controlnets,
        job.loras,
        job.device
    ])
    .to_string()
}

/// A worker process's state across jobs: the last models loaded stay loaded, so a build
/// of many pairs reads the weights once (SD 1.5 is gigabytes).
#[derive(Default)]
pub struct Worker {
    loaded: Option<(String, DiffusionModels)>,
}

impl Worker {
    /// Generates every job's pair (jobs that agree on the loop's settings share one
    /// batch through the UNet) and writes each target PNG.
    pub fn run(&mut self, jobs: &[DiffuseJob], device: Device) -> Result<Vec<WorkerReport>> {
        let Some(first) = jobs.first() else {
            return Ok(Vec::new());
        };
        let key = models_key(first);
        if jobs.iter().any(|j| models_key(j) != key) {
            return Err(DiffusionError::InvalidRequest(
                "one batch must share its models".into(),
            ));
        }
        let started = std::time::Instant::now();
        let fresh = self.loaded.as_ref().is_none_or(|(k, _)| *k != key);
        if fresh {
            self.loaded = None; // free the old models before loading the new ones
            self.loaded = Some((key, load_models(first, device)?));
        }
        let loaded_s = started.elapsed().as_secs_f64();
        let models = &self.loaded.as_ref().expect("just loaded").1;
        let requests = jobs.iter().map(request).collect::<Result<Vec<_>>>()?;
        let images = generate_pair(models, &requests)?;
        let generate_s = started.elapsed().as_secs_f64() - loaded_s;
        let mut reports = Vec::new();
        for (job, image) in jobs.iter().zip(images) {
            crate::imaging::write_png(&image, &job.out).map_err(|e| DiffusionError::Io {
                path: job.out.clone(),
                source: e,
            })?;
            let mut metrics = serde_json::Map::new();
            metrics.insert("load_s".into(), loaded_s.into());
            metrics.insert("generate_s".into(), generate_s.into());
            metrics.insert("batch".into(), jobs.len().into());
            metrics.insert("models_loaded".into(), fresh.into());
            reports.push(WorkerReport {
                metrics,
                files: BTreeMap::from([("target".to_string(), job.out.clone())]),
            });
        }
        Ok(reports)
    }
}

fn request(job: &DiffuseJob) -> Result<PairRequest> {
    let scheduler = SchedulerKind::parse(&job.scheduler).ok_or_else(|| {
        DiffusionError::InvalidRequest(format!("unknown scheduler `{}`", job.scheduler))
    })?;
    let mut controls = Vec::new();
    for c in &job.controls {
        controls.push(ControlInput {
            controlnet: c.controlnet.clone(),
            image: read_rgb(&c.image)?,
            weight: c.weight,
            start: c.start,
            end: c.end,
        });
    }
    Ok(PairRequest {
        prompt: job.prompt.clone(),
        negative_prompt: job.negative_prompt.clone(),
        source: read_rgb(&job.source)?,
        controls,
        image_guidance_scale: job.image_guidance,
        guidance_scale: job.guidance,
        steps: job.steps,
        scheduler,
        seed: job.seed,
        strength: job.strength,
    })
}
