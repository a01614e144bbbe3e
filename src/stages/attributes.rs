//! `attributes`: the face attributes of one item, as the words `{attributes}` expands to
//! in the diffusion prompt. A value comes, in this order, from the item's sidecar file
//! `<source>.attributes` (lines `hair-color = blond`, `#` comments), from the recipe
//! (`attributes glasses="none"`), or from CLIP zero-shot: each option's queries against
//! the item's crop, softmax over the options with CLIP's logit scale; an option below the
//! attribute's threshold is left out of the prompt. The per-attribute result (where it
//! came from, the option, its probability, or "left out") is the stage's JSON output and
//! its metrics, so `effectc explain` and the report show it.

use crate::clip::{AttributeQueries, ClipAnswer, ClipJob};
use crate::diffusion::job::ModelRef;
use crate::models::ResolvedModel;
use crate::recipe::AttributeUse;
use crate::stages::{
    params_of, InputPort, Params, Resource, RunContext, RunOutput, Stage, StageError,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The CLIP model a stage runs, resolved and checked by the plan.
#[derive(Clone, Debug)]
pub struct ClipModelUse {
    pub model: ResolvedModel,
    /// The vocabulary (`clip-tokenizer`) for a single-file model.
    pub tokenizer: Option<ResolvedModel>,
}

impl ClipModelUse {
    /// Canonical params: the weights by digest, so replacing them re-runs the stage.
    pub fn params(&self) -> BTreeMap<&'static str, String> {
        let mut p = BTreeMap::from([("model", self.model.digest.hex())]);
        if let Some(t) = &self.tokenizer {
            p.insert("tokenizer", t.digest.hex());
        }
        p
    }

    /// Asks the worker for `images`' embeddings and `attributes`' probabilities.
    pub fn ask(
        &self,
        ctx: &mut RunContext,
        images: Vec<PathBuf>,
        attributes: &[&AttributeUse],
    ) -> Result<(ClipAnswer, serde_json::Map<String, serde_json::Value>), StageError> {
        let job = ClipJob {
            model: ModelRef {
                arch: self.model.entry.arch.clone(),
                path: self.model.path.clone(),
            },
            tokenizer: self.tokenizer.as_ref().map(|t| t.path.clone()),
            device: ctx.device.to_string(),
            images,
            attributes: attributes.iter().map(|u| queries(u)).collect(),
        };
        let mut report = super::diffusion_worker::clip(ctx, job)?;
        let answer = report
            .metrics
            .remove(crate::clip::job::ANSWER_METRIC)
            .and_then(|v| serde_json::from_value::<ClipAnswer>(v).ok())
            .ok_or_else(|| StageError::bug("the tensor worker's CLIP answer is unreadable"))?;
        Ok((answer, report.metrics))
    }
}

pub fn queries(u: &AttributeUse) -> AttributeQueries {
    AttributeQueries {
        name: u.name.value.clone(),
        options: u
            .set
            .options
            .iter()
            .map(|o| (o.name.clone(), o.queries.clone()))
            .collect(),
    }
}

/// CLIP's verdict on one attribute: the most probable option (the first of equals), and
/// whether it reached the threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub option: String,
    pub probability: f64,
    pub threshold: f64,
    /// False: below the threshold, so the attribute is left out.
    pub confident: bool,
    pub probabilities: BTreeMap<String, f64>,
}

pub fn decide(probabilities: &[(String, f64)], threshold: f64) -> Option<Detection> {
    let mut best: Option<&(String, f64)> = None;
    for p in probabilities {
        if best.is_none_or(|b| p.1 > b.1) {
            best = Some(p);
        }
    }
    let (option, probability) = best?.clone();
    Some(Detection {
        confident: probability >= threshold,
        option,
        probability,
        threshold,
        probabilities: probabilities.iter().cloned().collect(),
    })
}

/// One attribute of one item, as `attributes.json` records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributeValue {
    /// `sidecar`, `recipe` or `clip`.
    pub from: String,
    /// The option written into the prompt; None when CLIP was not confident enough.
    pub option: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
}

impl AttributeValue {
    /// What people read in `explain` and events: `woman (clip 0.93)`, `left out (clip:
    /// woman 0.55 < 0.60)`, `blond (sidecar)`.
    pub fn describe(&self) -> String {
        match (&self.option, &self.detection) {
            (Some(o), Some(d)) => format!("{o} (clip {:.2})", d.probability),
            (None, Some(d)) => format!(
                "left out (clip: {} {:.2} < {:.2})",
                d.option, d.probability, d.threshold
            ),
            (Some(o), None) => format!("{o} ({})", self.from),
            (None, None) => "left out".into(),
        }
    }
}

/// The `attributes.json` output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemAttributesFile {
    /// Attribute → option, for those that reach the prompt.
    pub values: BTreeMap<String, String>,
    /// The words `{attributes}` expands to.
    pub prompt: String,
    pub attributes: BTreeMap<String, AttributeValue>,
}

pub struct ItemAttributes {
    pub item: String,
    pub uses: Vec<AttributeUse>,
    /// Whether the plan gave this item a `sidecar` input.
    pub has_sidecar: bool,
    /// Set (with an `image` input) when an attribute may need detecting.
    pub clip: Option<ClipModelUse>,
}

/// `photos/anna.jpg` → `photos/anna.jpg.attributes`.
pub fn sidecar_path(source: &Path) -> PathBuf {
    let mut name = source.as_os_str().to_owned();
    name.push(".attributes");
    PathBuf::from(name)
}

/// Parses a sidecar's `name = option` lines.
pub fn parse_sidecar(text: &str, path: &Path) -> Result<BTreeMap<String, String>, StageError> {
    let mut values = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(StageError::input(format!(
                "{}:{}: expected `attribute = option`, found `{line}`",
                path.display(),
                n + 1
            )));
        };
        values.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
    }
    Ok(values)
}

/// The attributes of `uses` that neither the sidecar nor the recipe gives.
pub fn undetermined<'a>(
    uses: &'a [AttributeUse],
    sidecar: &BTreeMap<String, String>,
) -> Vec<&'a AttributeUse> {
    uses.iter()
        .filter(|u| u.fixed.is_none() && !sidecar.contains_key(&u.name.value))
        .collect()
}

/// The crop CLIP looks at (when the item is detected), and the item's sidecar file
/// (when it has one).
pub const IMAGE: InputPort = InputPort::optional("image");
pub const SIDECAR: InputPort = InputPort::optional("sidecar");

impl Stage for ItemAttributes {
    fn kind(&self) -> &'static str {
        "attributes"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["attributes"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[IMAGE, SIDECAR]
    }
    fn version(&self) -> u32 {
        // 2: CLIP detection, per-attribute provenance in attributes.json.
        2
    }
    fn resource(&self) -> Resource {
        // A CLIP pass fills every core (or the GPU), like a pair.
        if self.clip.is_some() {
            Resource::Exclusive
        } else {
            Resource::Cpu
        }
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct Opt<'a> {
            prompt: &'a str,
            query: &'a [String],
        }
        #[derive(Serialize)]
        struct Attribute<'a> {
            /// The recipe's value for every item, or `per-item` (sidecar or CLIP).
            value: &'a str,
            options: BTreeMap<&'a str, Opt<'a>>,
            threshold: f64,
        }
        let attributes: BTreeMap<&str, Attribute> = self
            .uses
            .iter()
            .map(|u| {
                (
                    u.name.value.as_str(),
                    Attribute {
                        value: u.fixed.as_deref().unwrap_or("per-item"),
                        options: u
                            .set
                            .options
                            .iter()
                            .map(|o| {
                                (
                                    o.name.as_str(),
                                    Opt {
                                        prompt: &o.prompt,
                                        query: &o.queries,
                                    },
                                )
                            })
                            .collect(),
                        threshold: u.threshold,
                    },
                )
            })
            .collect();
        params_of(&serde_json::json!({
            "attributes": attributes,
            "clip": self.clip.as_ref().map(|c| c.params()),
        }))
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let sidecar = if self.has_sidecar {
            let path = ctx.input(SIDECAR.pattern)?.to_path_buf();
            let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
            parse_sidecar(&text, &path)?
        } else {
            BTreeMap::new()
        };
        let options = |u: &AttributeUse| {
            u.set
                .options
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, option) in &sidecar {
            if let Some(u) = self.uses.iter().find(|u| &u.name.value == name) {
                if !u.set.options.iter().any(|o| &o.name == option) {
                    return Err(StageError::input(format!(
                        "{}: attribute `{name}` has no option `{option}` (options: {})",
                        self.item,
                        options(u)
                    )));
                }
            }
        }
        let todo = undetermined(&self.uses, &sidecar);
        let mut detected = BTreeMap::new();
        let mut out = RunOutput::default();
        if !todo.is_empty() {
            let clip = self.clip.as_ref().ok_or_else(|| {
                StageError::bug(format!(
                    "{}: attributes to detect but no CLIP model",
                    self.item
                ))
            })?;
            let image = ctx.input(IMAGE.pattern)?.to_path_buf();
            let (answer, metrics) = clip.ask(ctx, vec![image], &todo)?;
            for (k, v) in metrics {
                out.metrics.insert(format!("clip_{k}"), v);
            }
            let probs = answer
                .images
                .first()
                .map(|i| i.attributes.clone())
                .unwrap_or_default();
            for u in &todo {
                let name = &u.name.value;
                let d = probs
                    .get(name)
                    .and_then(|p| decide(p, u.threshold))
                    .ok_or_else(|| StageError::bug(format!("CLIP gave no answer for `{name}`")))?;
                detected.insert(name.clone(), d);
            }
        }
        let mut file = ItemAttributesFile::default();
        let mut words = Vec::new();
        for u in &self.uses {
            let name = &u.name.value;
            let value = if let Some(o) = sidecar.get(name) {
                AttributeValue {
                    from: "sidecar".into(),
                    option: Some(o.clone()),
                    detection: None,
                }
            } else if let Some(o) = &u.fixed {
                AttributeValue {
                    from: "recipe".into(),
                    option: Some(o.clone()),
                    detection: None,
                }
            } else {
                let d = detected.remove(name).ok_or_else(|| {
                    StageError::bug(format!("{}: `{name}` was not detected", self.item))
                })?;
                AttributeValue {
                    from: "clip".into(),
                    option: d.confident.then(|| d.option.clone()),
                    detection: Some(d),
                }
            };
            if let Some(o) = &value.option {
                if let Some(opt) = u.set.options.iter().find(|x| &x.name == o) {
                    if !opt.prompt.is_empty() {
                        words.push(opt.prompt.clone());
                    }
                }
                file.values.insert(name.clone(), o.clone());
            }
            out.metrics
                .insert(format!("attribute.{name}"), value.describe().into());
            file.attributes.insert(name.clone(), value);
        }
        file.prompt = words.join(", ");
        let path = ctx.out_dir.join("attributes.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap_or_default())
            .map_err(|e| StageError::io(&path, e))?;
        out.files.insert("attributes".into(), path);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_probable_option_wins_and_the_threshold_leaves_it_out() {
        let p = vec![("man".to_string(), 0.3), ("woman".to_string(), 0.7)];
        let d = decide(&p, 0.6).unwrap();
        assert_eq!((d.option.as_str(), d.confident), ("woman", true));
        let d = decide(&p, 0.8).unwrap();
        assert_eq!((d.option.as_str(), d.confident), ("woman", false));
        // Equal probabilities: the first option, every time.
        let tie = vec![("a".to_string(), 0.5), ("b".to_string(), 0.5)];
        assert_eq!(decide(&tie, 0.0).unwrap().option, "a");
        assert!(decide(&[], 0.5).is_none());
    }
}
