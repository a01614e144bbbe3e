//! The identity filter: people must recognise themselves in the stylized result.
//!
//! `identity` (per item) scores one pair: the cosine similarity of the CLIP image
//! embeddings of the source crop and the teacher's result, and for each `keep` attribute
//! the option found on both (the source's from its sidecar or the recipe when the
//! `attributes` stage has one, else CLIP; the result's always CLIP). It decides nothing,
//! so moving the bar never re-scores a pair.
//!
//! `identity-filter` (whole dataset) applies the bar: a pair whose similarity is below
//! `min-similarity`, or whose source and result confidently disagree on a kept attribute,
//! is dropped. `dropped.json` (the dropped names only) is what training reads, so a new
//! bar that drops the same pairs trains nothing again; `identity.json` lists every pair
//! with its scores and the verdict, for the report (`out/EFFECT/identity-filter-identity.json`).

use super::attributes::{decide, ClipModelUse, Detection, ItemAttributesFile};
use crate::recipe::AttributeUse;
use crate::stages::{
    params_of, InputPort, Params, Resource, RunContext, RunOutput, Stage, StageError,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One kept attribute on both sides of a pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptAttribute {
    /// The source's option (None: CLIP was not confident, so it is not judged).
    pub source: Option<String>,
    /// `sidecar`, `recipe` or `clip`.
    pub source_from: String,
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_detection: Option<Detection>,
    pub result_detection: Detection,
    /// Some(false) only when both sides are known and differ.
    pub agree: Option<bool>,
}

/// `score.json` of one pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentityScore {
    pub similarity: f64,
    pub attributes: BTreeMap<String, KeptAttribute>,
}

impl IdentityScore {
    /// The kept attributes on which source and result disagree.
    pub fn disagreements(&self) -> Vec<String> {
        self.attributes
            .iter()
            .filter(|(_, a)| a.agree == Some(false))
            .map(|(n, a)| {
                format!(
                    "{n}: {} → {}",
                    a.source.as_deref().unwrap_or("?"),
                    a.result.as_deref().unwrap_or("?")
                )
            })
            .collect()
    }
}

pub struct ItemIdentity {
    pub item: String,
    pub keep: Vec<AttributeUse>,
    pub clip: ClipModelUse,
    /// Whether the plan gave an `attributes` input (the item's resolved attributes).
    pub with_attributes: bool,
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// The crop and the teacher's picture of one item, and the item's attributes (when the
/// filter compares them).
pub const SOURCE: InputPort = InputPort::required("source");
pub const RESULT: InputPort = InputPort::required("result");
pub const ATTRIBUTES: InputPort = InputPort::optional("attributes");

impl Stage for ItemIdentity {
    fn kind(&self) -> &'static str {
        "identity"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["score.json"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        const WITH_ATTRIBUTES: &[InputPort] = &[SOURCE, RESULT, ATTRIBUTES.as_required()];
        if self.with_attributes {
            WITH_ATTRIBUTES
        } else {
            &[SOURCE, RESULT]
        }
    }
    fn version(&self) -> u32 {
        1
    }
    fn resource(&self) -> Resource {
        Resource::Exclusive
    }
    fn params(&self) -> Params {
        let keep: BTreeMap<&str, serde_json::Value> = self
            .keep
            .iter()
            .map(|u| {
                let options: BTreeMap<&str, &[String]> = u
                    .set
                    .options
                    .iter()
                    .map(|o| (o.name.as_str(), o.queries.as_slice()))
                    .collect();
                (
                    u.name.value.as_str(),
                    serde_json::json!({"query": options, "threshold": u.threshold}),
                )
            })
            .collect();
        params_of(&serde_json::json!({"keep": keep, "clip": self.clip.params()}))
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let source = ctx.input(SOURCE.pattern)?.to_path_buf();
        let result = ctx.input(RESULT.pattern)?.to_path_buf();
        let given: ItemAttributesFile = if self.with_attributes {
            ctx.read_json(ATTRIBUTES.pattern)?
        } else {
            ItemAttributesFile::default()
        };
        let keep: Vec<&AttributeUse> = self.keep.iter().collect();
        let (answer, metrics) = self.clip.ask(ctx, vec![source, result], &keep)?;
        let [src, res] = answer.images.as_slice() else {
            return Err(StageError::bug("CLIP answered the wrong number of images"));
        };
        let mut score = IdentityScore {
            similarity: cosine(&src.embedding, &res.embedding),
            attributes: BTreeMap::new(),
        };
        let detect = |img: &crate::clip::ImageAnswer, u: &AttributeUse| {
            img.attributes
                .get(&u.name.value)
                .and_then(|p| decide(p, u.threshold))
                .ok_or_else(|| {
                    StageError::bug(format!("CLIP gave no answer for `{}`", u.name.value))
                })
        };
        for u in &self.keep {
            let name = &u.name.value;
            let result_detection = detect(res, u)?;
            let result = result_detection
                .confident
                .then(|| result_detection.option.clone());
            // A human's value (sidecar, recipe) stands for the source; else CLIP's.
            let human = given
                .attributes
                .get(name)
                .filter(|a| a.from != "clip")
                .and_then(|a| a.option.clone().map(|o| (o, a.from.clone())));
            let (source, source_from, source_detection) = match human {
                Some((o, from)) => (Some(o), from, None),
                None => {
                    let d = detect(src, u)?;
                    (
                        d.confident.then(|| d.option.clone()),
                        "clip".into(),
                        Some(d),
                    )
                }
            };
            let agree = match (&source, &result) {
                (Some(a), Some(b)) => Some(a == b),
                _ => None,
            };
            score.attributes.insert(
                name.clone(),
                KeptAttribute {
                    source,
                    source_from,
                    result,
                    source_detection,
                    result_detection,
                    agree,
                },
            );
        }
        let mut out = RunOutput::default();
        for (k, v) in metrics {
            out.metrics.insert(format!("clip_{k}"), v);
        }
        out.metrics
            .insert("similarity".into(), score.similarity.into());
        let disagree = score.disagreements();
        if !disagree.is_empty() {
            out.metrics
                .insert("disagree".into(), disagree.join("; ").into());
        }
        let path = ctx.out_dir.join("score.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&score).unwrap_or_default())
            .map_err(|e| StageError::io(&path, e))?;
        out.files.insert("score.json".into(), path);
        Ok(out)
    }
}

/// The input name of one item's score in `identity-filter`.
pub fn score_input(item: &str) -> String {
    SCORE.name(item)
}

/// One item's score; a skipped item (no face) has none.
pub const SCORE: InputPort = InputPort::optional("score/*");

/// The dropped list, an input of the training stages.
pub const DROPPED: InputPort = InputPort::optional("identity-dropped");

pub struct IdentityFilter {
    pub min_similarity: f64,
    pub items: Vec<String>,
}

/// One row of `identity.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub item: String,
    pub similarity: f64,
    pub dropped: bool,
    /// Why it was dropped (empty when kept).
    pub reasons: Vec<String>,
    pub attributes: BTreeMap<String, KeptAttribute>,
}

impl Stage for IdentityFilter {
    fn kind(&self) -> &'static str {
        "identity-filter"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["dropped.json", "identity.json"]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[SCORE]
    }
    fn version(&self) -> u32 {
        2 // 2: the `dropped` metric lists the pairs with their reasons
    }
    fn params(&self) -> Params {
        params_of(&serde_json::json!({"identity": {"min-similarity": self.min_similarity}}))
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let mut verdicts = Vec::new();
        let mut dropped = BTreeSet::new();
        for item in &self.items {
            // A skipped item (no face) has no pair and so no score: nothing to judge.
            let Some(path) = ctx.optional_input(&score_input(item))? else {
                continue;
            };
            let score: IdentityScore = std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    StageError::environment(format!("{} is not an identity score", path.display()))
                })?;
            let mut reasons = Vec::new();
            if score.similarity < self.min_similarity {
                reasons.push(format!(
                    "similarity {:.3} < {}",
                    score.similarity, self.min_similarity
                ));
            }
            reasons.extend(score.disagreements());
            if !reasons.is_empty() {
                dropped.insert(item.clone());
            }
            verdicts.push(Verdict {
                item: item.clone(),
                similarity: score.similarity,
                dropped: !reasons.is_empty(),
                reasons,
                attributes: score.attributes,
            });
        }
        let report = serde_json::json!({
            "min_similarity": self.min_similarity,
            "dropped": dropped.len(),
            "kept": verdicts.len() - dropped.len(),
            "pairs": &verdicts,
        });
        let report_path = ctx.out_dir.join("identity.json");
        std::fs::write(
            &report_path,
            serde_json::to_vec_pretty(&report).unwrap_or_default(),
        )
        .map_err(|e| StageError::io(&report_path, e))?;
        let dropped_path = ctx.out_dir.join("dropped.json");
        let list: Vec<&String> = dropped.iter().collect();
        std::fs::write(
            &dropped_path,
            serde_json::to_vec_pretty(&list).unwrap_or_default(),
        )
        .map_err(|e| StageError::io(&dropped_path, e))?;
        let mut out = RunOutput::default();
        // The dropped pairs with their reasons, in the form the report lists
        // (`cli::report::dropped_in`); `build-finished` counts them.
        let listed: Vec<serde_json::Value> = verdicts
            .iter()
            .filter(|v| v.dropped)
            .map(|v| serde_json::json!({"item": v.item, "reason": v.reasons.join("; ")}))
            .collect();
        out.metrics.insert("dropped".into(), listed.into());
        out.metrics.insert(
            crate::protocol::metric::DROPPED_PAIRS.into(),
            dropped.len().into(),
        );
        out.metrics.insert(
            crate::protocol::metric::KEPT.into(),
            (verdicts.len() - dropped.len()).into(),
        );
        out.files.insert("identity.json".into(), report_path);
        out.files.insert("dropped.json".into(), dropped_path);
        Ok(out)
    }
}

/// The items training leaves out: `dropped.json` of the filter, when the plan wired one.
pub fn dropped_items(ctx: &RunContext) -> Result<BTreeSet<String>, StageError> {
    if ctx.optional_input(DROPPED.pattern)?.is_none() {
        return Ok(BTreeSet::new());
    }
    ctx.read_json(DROPPED.pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_unit_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-12);
    }
}
