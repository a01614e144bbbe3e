//! `pairs` with the diffusion teacher (SD 1.5 + LoRA + ControlNets + InstructPix2Pix).
//! The plan checks every model before any work (crate::models); this stage fills the
//! prompt's `{attributes}`, derives the item's seed, and hands the generation to the
//! `effectc-nn serve` worker, batched with its neighbours (the CLI never loads libtorch).

use crate::diffusion::job::{ControlJob, DiffuseJob, ModelRef};
use crate::digest::{Digest, KeyHasher};
use crate::models::ResolvedModel;
use crate::recipe::DiffusionTeacher;
use crate::stages::{
    params_of, InputPort, Params, Resource, RunContext, RunOutput, Stage, StageError,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct DiffusionPairs {
    pub item: String,
    /// Shared by every item's stage.
    pub teacher: Arc<DiffusionTeacher>,
    /// Every model the teacher names, by registry name.
    pub models: Arc<BTreeMap<String, ResolvedModel>>,
    /// Whether the plan gave an `attributes` input.
    pub with_attributes: bool,
}

/// The input name of a ControlNet preset's control image.
pub fn control_input(preset: &str) -> String {
    CONTROL.name(preset)
}

/// The cropped source, its attributes (when the prompt names them) and one control map
/// per ControlNet preset (`control-PRESET`).
pub const SOURCE: InputPort = super::procedural::SOURCE;
pub const ATTRIBUTES: InputPort = InputPort::optional("attributes");
pub const CONTROL: InputPort = InputPort::required("control-*");

/// The prompt with `{attributes}` filled in (and the commas around an empty fill tidied).
pub fn fill_prompt(template: &str, attributes: &str) -> String {
    let filled = template.replace("{attributes}", attributes);
    let parts: Vec<&str> = filled
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    parts.join(", ")
}

impl DiffusionPairs {
    fn model(&self, name: &str) -> Result<&ResolvedModel, StageError> {
        self.models.get(name).ok_or_else(|| {
            StageError::bug(format!("model `{name}` was not resolved by the planner"))
        })
    }

    fn model_ref(&self, name: &str) -> Result<ModelRef, StageError> {
        let m = self.model(name)?;
        Ok(ModelRef {
            arch: m.entry.arch.clone(),
            path: m.path.clone(),
        })
    }
}

impl Stage for DiffusionPairs {
    fn kind(&self) -> &'static str {
        "pairs-diffusion"
    }
    fn family(&self) -> &'static str {
        "pairs"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["target"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        const WITH_ATTRIBUTES: &[InputPort] = &[SOURCE, ATTRIBUTES.as_required(), CONTROL];
        if self.with_attributes {
            WITH_ATTRIBUTES
        } else {
            &[SOURCE, CONTROL]
        }
    }
    fn version(&self) -> u32 {
        2
    }
    fn resource(&self) -> Resource {
        // One generation at a time: it fills the GPU (or every CPU core).
        Resource::Exclusive
    }
    fn batchable(&self) -> bool {
        true
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct ControlNet<'a> {
            model: &'a str,
            weight: f64,
            start: f64,
            end: f64,
        }
        #[derive(Serialize)]
        struct Ip2p<'a> {
            model: &'a str,
            #[serde(rename = "image-guidance")]
            image_guidance: f64,
            instruction: &'a str,
        }
        #[derive(Serialize)]
        struct P<'a> {
            kind: &'static str,
            base: &'a str,
            prompt: &'a str,
            #[serde(rename = "negative-prompt")]
            negative_prompt: &'a str,
            steps: u32,
            scheduler: &'a str,
            guidance: f64,
            seed: u64,
            lora: BTreeMap<&'a str, f64>,
            controlnet: BTreeMap<&'a str, ControlNet<'a>>,
            #[serde(rename = "instruct-pix2pix", skip_serializing_if = "Option::is_none")]
            instruct_pix2pix: Option<Ip2p<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            img2img: Option<f64>,
        }
        let t = &self.teacher;
        let teacher = P {
            kind: "diffusion",
            base: &t.base.value,
            prompt: &t.prompt,
            negative_prompt: &t.negative_prompt,
            steps: t.steps,
            scheduler: &t.scheduler,
            guidance: t.guidance,
            seed: t.seed,
            lora: t
                .loras
                .iter()
                .map(|l| (l.model.value.as_str(), l.weight))
                .collect(),
            controlnet: t
                .controlnets
                .iter()
                .map(|c| {
                    (
                        c.preset.value.as_str(),
                        ControlNet {
                            model: &c.model,
                            weight: c.weight,
                            start: c.start,
                            end: c.end,
                        },
                    )
                })
                .collect(),
            instruct_pix2pix: t.instruct_pix2pix.as_ref().map(|ip| Ip2p {
                model: &ip.model.value,
                image_guidance: ip.image_guidance,
                instruction: &ip.instruction,
            }),
            img2img: t.img2img_strength,
        };
        // The weights themselves: replacing a model file re-generates the pairs.
        let models: BTreeMap<&str, String> = self
            .models
            .iter()
            .map(|(name, m)| (name.as_str(), m.digest.hex()))
            .collect();
        params_of(&serde_json::json!({ "teacher": teacher, "model": models }))
    }

    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let t = &self.teacher;
        let source = ctx.input(SOURCE.pattern)?.to_path_buf();
        let attributes = if self.with_attributes {
            let file: super::attributes::ItemAttributesFile = ctx.read_json(ATTRIBUTES.pattern)?;
            file.prompt
        } else {
            String::new()
        };
        let mut prompt = fill_prompt(&t.prompt, &attributes);
        if let Some(ip) = &t.instruct_pix2pix {
            // IP2P reads an instruction; the style prompt follows it.
            prompt = fill_prompt(&format!("{}, {prompt}", ip.instruction), "");
        }
        // Each item's seed: the recipe's seed and the item's content, so adding items
        // never changes another item's pair.
        let source_digest = Digest::of_file(&source).map_err(|e| StageError::io(&source, e))?;
        let mut h = KeyHasher::new("effectc/pair-seed/v1");
        h.u64(t.seed).digest(&source_digest);
        let seed = u64::from_le_bytes(h.finish().0[..8].try_into().unwrap_or([0; 8])) >> 1;
        let mut controlnets = BTreeMap::new();
        let mut controls = Vec::new();
        for c in &t.controlnets {
            controlnets.insert(c.model.clone(), self.model(&c.model)?.path.clone());
            controls.push(ControlJob {
                controlnet: c.model.clone(),
                image: ctx.input(&control_input(&c.preset.value))?.to_path_buf(),
                weight: c.weight as f32,
                start: c.start as f32,
                end: c.end as f32,
            });
        }
        let tokenizer = self
            .models
            .get(crate::recipe::check::CLIP_TOKENIZER)
            .map(|m| m.path.clone());
        let job = DiffuseJob {
            base: self.model_ref(&t.base.value)?,
            tokenizer,
            ip2p: match &t.instruct_pix2pix {
                Some(ip) => Some(self.model_ref(&ip.model.value)?),
                None => None,
            },
            controlnets,
            loras: t
                .loras
                .iter()
                .map(|l| Ok((self.model(&l.model.value)?.path.clone(), l.weight)))
                .collect::<Result<_, StageError>>()?,
            prompt: prompt.clone(),
            negative_prompt: t.negative_prompt.clone(),
            source,
            controls,
            image_guidance: t
                .instruct_pix2pix
                .as_ref()
                .map(|ip| ip.image_guidance as f32),
            guidance: t.guidance as f32,
            steps: t.steps as usize,
            scheduler: t.scheduler.clone(),
            seed,
            strength: t.img2img_strength.unwrap_or(1.0) as f32,
            device: ctx.device.to_string(),
            out: ctx.out_dir.join("target.png"),
        };
        let report = super::diffusion_worker::generate(ctx, job)?;
        let mut out = RunOutput {
            metrics: report.metrics,
            ..Default::default()
        };
        out.metrics.insert("prompt".into(), prompt.into());
        out.metrics.insert("seed".into(), seed.into());
        for (name, path) in report.files {
            out.files.insert(name, path);
        }
        Ok(out)
    }
}
