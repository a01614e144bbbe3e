//! One CLIP request as the `attributes` and `identity` stages hand it to the
//! `effectc-nn serve` worker, and the worker's side: the model and the text embeddings of
//! every query stay loaded for the build, so each query is embedded once per build and
//! each item costs one vision pass per image. The request and answer types are plain
//! data, so the libtorch-free CLI writes and reads them.

use super::model::{normalize, ClipModel};
use super::preprocess::preprocess;
use crate::diffusion::error::{DiffusionError, Result};
use crate::diffusion::job::{read_rgb, ModelRef};
use crate::diffusion::tokenizer::ClipTokenizer;
use crate::protocol::WorkerReport;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// One attribute to classify zero-shot: its options, each with one or more text queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributeQueries {
    pub name: String,
    /// (option, its queries), in the attribute's order.
    pub options: Vec<(String, Vec<String>)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClipJob {
    /// A `clip` / `clip-vit-l14` registry model: a CLIPModel folder or a single file.
    pub model: ModelRef,
    /// CLIP's vocabulary folder, when the model is a single file (or its folder lacks one).
    pub tokenizer: Option<PathBuf>,
    pub device: String,
    /// Images to embed (an attributes item: its crop; an identity item: source, result).
    pub images: Vec<PathBuf>,
    /// Classified on every image.
    pub attributes: Vec<AttributeQueries>,
}

/// What the worker found for one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageAnswer {
    /// The unit-length image embedding.
    pub embedding: Vec<f32>,
    /// Attribute → each option's probability (softmax over the options of
    /// logit_scale · cosine), in the attribute's option order.
    pub attributes: BTreeMap<String, Vec<(String, f64)>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipAnswer {
    pub images: Vec<ImageAnswer>,
    pub logit_scale: f64,
}

/// The metric of a `WorkerReport` that carries the [`ClipAnswer`].
pub const ANSWER_METRIC: &str = "clip";

fn models_key(job: &ClipJob) -> String {
    serde_json::json!([job.model.arch, job.model.path, job.tokenizer, job.device]).to_string()
}

struct Loaded {
    model: ClipModel,
    tokenizer: ClipTokenizer,
    device: Device,
    /// Query text → its unit-length text embedding (computed once per worker).
    queries: HashMap<String, Tensor>,
}

/// The worker's CLIP state across requests.
#[derive(Default)]
pub struct ClipWorker {
    loaded: Option<(String, Loaded)>,
}

fn tokenizer_folder(job: &ClipJob) -> Result<PathBuf> {
    let own = &job.model.path;
    if own.is_dir() && own.join("vocab.json").is_file() {
        return Ok(own.clone());
    }
    job.tokenizer.clone().ok_or_else(|| {
        DiffusionError::InvalidRequest(format!(
            "CLIP model {} has no vocab.json/merges.txt beside it and no tokenizer was given",
            own.display()
        ))
    })
}

impl ClipWorker {
    fn load(&mut self, job: &ClipJob, device: Device) -> Result<(&mut Loaded, bool)> {
        let key = models_key(job);
        let fresh = self.loaded.as_ref().is_none_or(|(k, _)| *k != key);
        if fresh {
            self.loaded = None;
            let kind = if device.is_cuda() {
                Kind::Half
            } else {
                Kind::Float
            };
            let model = ClipModel::load(&job.model.path, device, kind)?;
            let tokenizer = ClipTokenizer::load(&tokenizer_folder(job)?)?;
            self.loaded = Some((
                key,
                Loaded {
                    model,
                    tokenizer,
                    device,
                    queries: HashMap::new(),
                },
            ));
        }
        Ok((&mut self.loaded.as_mut().expect("just loaded").1, fresh))
    }

    /// Answers one job: its images' embeddings and attribute probabilities.
    pub fn run(&mut self, job: &ClipJob, device: Device) -> Result<WorkerReport> {
        let started = std::time::Instant::now();
        let (m, fresh) = self.load(job, device)?;
        let load_s = started.elapsed().as_secs_f64();
        let _guard = tch::no_grad_guard();
        // Text: each query embedded once per worker; an option's queries averaged and
        // normalised again (CLIP's prompt ensembling).
        let mut option_rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut text_rows = Vec::new();
        let mut new_queries = 0;
        for a in &job.attributes {
            if a.options.is_empty() {
                return Err(DiffusionError::InvalidRequest(format!(
                    "attribute `{}` has no options",
                    a.name
                )));
            }
            let mut names = Vec::new();
            for (option, queries) in &a.options {
                if queries.is_empty() {
                    return Err(DiffusionError::InvalidRequest(format!(
                        "option `{option}` of attribute `{}` has no query",
                        a.name
                    )));
                }
                let mut embs = Vec::new();
                for q in queries {
                    if !m.queries.contains_key(q) {
                        let ids = m.tokenizer.encode(q);
                        let ids = Tensor::from_slice(&ids).view([1, -1]).to_device(m.device);
                        let e = normalize(&m.model.text_features(&ids).to_kind(Kind::Float));
                        m.queries.insert(q.clone(), e);
                        new_queries += 1;
                    }
                    embs.push(m.queries[q].shallow_clone());
                }
                text_rows.push(normalize(&Tensor::cat(&embs, 0).mean_dim(
                    0,
                    true,
                    Kind::Float,
                )));
                names.push(option.clone());
            }
            option_rows.push((a.name.clone(), names));
        }
        let text_s = started.elapsed().as_secs_f64() - load_s;
        // Images: one batch through the vision tower.
        let size = m.model.image_size() as u32;
        let mut pixels = Vec::new();
        for path in &job.images {
            let img = read_rgb(path)?;
            pixels.push(Tensor::from_slice(&preprocess(&img, size)).view([
                1,
                3,
                size as i64,
                size as i64,
            ]));
        }
        let mut images = Vec::new();
        if !pixels.is_empty() {
            let batch = Tensor::cat(&pixels, 0).to_device(m.device);
            let emb = normalize(&m.model.image_features(&batch).to_kind(Kind::Float));
            let scale = m.model.logit_scale();
            let text = (!text_rows.is_empty()).then(|| Tensor::cat(&text_rows, 0));
            for i in 0..emb.size()[0] {
                let e = emb.get(i);
                let mut attributes = BTreeMap::new();
                if let Some(text) = &text {
                    let logits = text.mv(&e) * scale;
                    let mut row = 0;
                    for (name, options) in &option_rows {
                        let n = options.len() as i64;
                        let p = logits.narrow(0, row, n).softmax(0, Kind::Double);
                        let probs = Vec::<f64>::try_from(&p.to_device(Device::Cpu))?;
                        attributes
                            .insert(name.clone(), options.iter().cloned().zip(probs).collect());
                        row += n;
                    }
                }
                images.push(ImageAnswer {
                    embedding: Vec::<f32>::try_from(&e.to_device(Device::Cpu))?,
                    attributes,
                });
            }
        }
        let answer = ClipAnswer {
            images,
            logit_scale: m.model.logit_scale(),
        };
        let mut metrics = serde_json::Map::new();
        metrics.insert(
            ANSWER_METRIC.into(),
            serde_json::to_value(&answer)
                .map_err(|e| DiffusionError::InvalidRequest(e.to_string()))?,
        );
        metrics.insert("load_s".into(), load_s.into());
        metrics.insert("text_s".into(), text_s.into());
        metrics.insert("new_queries".into(), new_queries.into());
        metrics.insert(
            "vision_s".into(),
            (started.elapsed().as_secs_f64() - load_s - text_s).into(),
        );
        metrics.insert("models_loaded".into(), fresh.into());
        Ok(WorkerReport {
            metrics,
            files: BTreeMap::new(),
        })
    }
}
