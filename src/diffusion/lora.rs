//! LoRA files merged into the UNet's and the text encoder's weights before the models are
//! built: W = W0 + weight · (alpha / rank) · up · down, for linear layers and for convs
//! (1x1, and kxk "LoCon" whose down is kxk and up 1x1).
//!
//! Layouts read:
//! - kohya / sd-scripts: `lora_unet_<module_with_underscores>.lora_down.weight`,
//!   `.lora_up.weight`, `.alpha`; `lora_te_` (or `lora_te1_`) for the text encoder.
//! - diffusers / PEFT: `unet.<module>.lora_A.weight`, `.lora_B.weight`,
//!   `text_encoder.<module>…`; alpha from a `.alpha` tensor, else the
//!   `lora_adapter_metadata` header (`unet.lora_alpha`), else alpha = rank.
//!
//! A key that matches no weight is an error naming it: a LoRA silently half-applied is a
//! wrong teacher nobody notices.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use tch::{Kind, Tensor};

use super::error::{DiffusionError, Result};
use super::weights::{safetensors_metadata, WeightMap};

#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub weight: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
enum Target {
    Unet,
    TextEncoder,
}

#[derive(Default)]
struct Pair {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
}

/// Merges each LoRA, in order, into the weights. `text_encoder` may name its tensors with
/// or without transformers' `text_model.` prefix.
pub fn merge_loras(unet: &WeightMap, text_encoder: &WeightMap, loras: &[LoraSpec]) -> Result<()> {
    let unet_index = index_by_flat_name(unet, "");
    let te_prefix = if text_encoder.contains("text_model.embeddings.token_embedding.weight") {
        ""
    } else {
        "text_model."
    };
    let te_index = index_by_flat_name(text_encoder, te_prefix);
    for lora in loras {
        merge_one(unet, text_encoder, &unet_index, &te_index, te_prefix, lora)?;
    }
    Ok(())
}

/// kohya names modules by their dotted path with dots turned into underscores.
fn index_by_flat_name(map: &WeightMap, add_prefix: &str) -> HashMap<String, String> {
    map.names()
        .into_iter()
        .filter_map(|n| {
            n.strip_suffix(".weight")
                .map(|m| (format!("{add_prefix}{m}").replace('.', "_"), m.to_string()))
        })
        .collect()
}

fn merge_one(
    unet: &WeightMap,
    text_encoder: &WeightMap,
    unet_index: &HashMap<String, String>,
    te_index: &HashMap<String, String>,
    te_prefix: &str,
    lora: &LoraSpec,
) -> Result<()> {
    let path = &lora.path;
    let bad = |message: String| DiffusionError::BadLora {
        path: path.clone(),
        message,
    };
    let tensors = WeightMap::load(path)?;
    let metadata = safetensors_metadata(path)?;
    let peft_alpha = peft_alphas(&metadata).map_err(bad)?;
    // (target, module name in the target's weights) -> down/up/alpha
    let mut pairs: BTreeMap<(u8, String), Pair> = BTreeMap::new();
    let unmatched = |key: &str| DiffusionError::LoraKeyUnmatched {
        path: path.clone(),
        key: key.to_string(),
    };
    for key in tensors.names() {
        let t = tensors.tensor(&key).expect("listed tensor exists");
        let (target, module, part) = if let Some(rest) = key.strip_prefix("lora_unet_") {
            let (flat, part) = split_kohya(rest).ok_or_else(|| unmatched(&key))?;
            let m = unet_index.get(flat).ok_or_else(|| unmatched(&key))?;
            (Target::Unet, m.clone(), part)
        } else if let Some(rest) = key
            .strip_prefix("lora_te_")
            .or_else(|| key.strip_prefix("lora_te1_"))
        {
            let (flat, part) = split_kohya(rest).ok_or_else(|| unmatched(&key))?;
            let m = te_index.get(flat).ok_or_else(|| unmatched(&key))?;
            (Target::TextEncoder, m.clone(), part)
        } else {
            let (target, rest) = if let Some(r) = key.strip_prefix("unet.") {
                (Target::Unet, r)
            } else if let Some(r) = key.strip_prefix("text_encoder.") {
                (Target::TextEncoder, r)
            } else {
                return Err(unmatched(&key));
            };
            let (module, part) = split_peft(rest).ok_or_else(|| unmatched(&key))?;
            let module = match target {
                Target::Unet => module.to_string(),
                // the map's own naming, with or without `text_model.`
                Target::TextEncoder => {
                    if te_prefix.is_empty() {
                        module.to_string()
                    } else {
                        module.strip_prefix(te_prefix).unwrap_or(module).to_string()
                    }
                }
            };
            let map = if target == Target::Unet {
                unet
            } else {
                text_encoder
            };
            if !map.contains(&format!("{module}.weight")) {
                return Err(unmatched(&key));
            }
            (target, module, part)
        };
        let entry = pairs.entry((target as u8, module)).or_default();
        match part {
            Part::Down => entry.down = Some(t),
            Part::Up => entry.up = Some(t),
            Part::Alpha => entry.alpha = Some(t.to_kind(Kind::Double).double_value(&[])),
        }
    }
    for ((target, module), pair) in pairs {
        let target = if target == Target::Unet as u8 {
            Target::Unet
        } else {
            Target::TextEncoder
        };
        let (Some(down), Some(up)) = (pair.down, pair.up) else {
            return Err(bad(format!(
                "module `{module}` lacks its down (A) or up (B) matrix"
            )));
        };
        let rank = down.size()[0];
        let alpha = pair
            .alpha
            .or_else(|| peft_alpha.get(&target).copied())
            .unwrap_or(rank as f64);
        let map = if target == Target::Unet {
            unet
        } else {
            text_encoder
        };
        let name = format!("{module}.weight");
        let w = map.tensor(&name).expect("matched module has a weight");
        let shape = w.size();
        let (down_f, up_f) = (
            down.to_kind(Kind::Float).flatten(1, -1),
            up.to_kind(Kind::Float).flatten(1, -1),
        );
        if up_f.size() != [shape[0], rank] || down_f.size()[1] != shape[1..].iter().product::<i64>()
        {
            return Err(bad(format!(
                "module `{module}`: up {:?} · down {:?} does not fit the weight {:?}",
                up.size(),
                down.size(),
                shape
            )));
        }
        let delta = up_f.matmul(&down_f).reshape(&shape[..]) * (lora.weight * alpha / rank as f64);
        let merged = (w.to_device(delta.device()).to_kind(Kind::Float) + delta)
            .to_kind(w.kind())
            .to_device(w.device());
        map.insert(name, merged);
    }
    Ok(())
}

enum Part {
    Down,
    Up,
    Alpha,
}

fn split_kohya(rest: &str) -> Option<(&str, Part)> {
    if let Some(m) = rest.strip_suffix(".lora_down.weight") {
        Some((m, Part::Down))
    } else if let Some(m) = rest.strip_suffix(".lora_up.weight") {
        Some((m, Part::Up))
    } else {
        rest.strip_suffix(".alpha").map(|m| (m, Part::Alpha))
    }
}

fn split_peft(rest: &str) -> Option<(&str, Part)> {
    if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        Some((m, Part::Down))
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        Some((m, Part::Up))
    } else {
        rest.strip_suffix(".alpha").map(|m| (m, Part::Alpha))
    }
}

/// `unet.lora_alpha` / `text_encoder.lora_alpha` from diffusers' adapter metadata.
fn peft_alphas(
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<HashMap<Target, f64>, String> {
    let mut out = HashMap::new();
    let Some(json) = metadata.get("lora_adapter_metadata") else {
        return Ok(out);
    };
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("lora_adapter_metadata is not JSON: {e}"))?;
    for (target, prefix) in [
        (Target::Unet, "unet"),
        (Target::TextEncoder, "text_encoder"),
    ] {
        for pattern in ["alpha_pattern", "rank_pattern"] {
            if let Some(serde_json::Value::Object(o)) = value.get(format!("{prefix}.{pattern}")) {
                if !o.is_empty() {
                    return Err(format!("per-module `{prefix}.{pattern}` is not supported"));
                }
            }
        }
        if value
            .get(format!("{prefix}.use_dora"))
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Err("DoRA adapters are not supported".into());
        }
        if value
            .get(format!("{prefix}.use_rslora"))
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Err("rsLoRA scaling is not supported".into());
        }
        if let Some(a) = value
            .get(format!("{prefix}.lora_alpha"))
            .and_then(|v| v.as_f64())
        {
            out.insert(target, a);
        }
    }
    Ok(out)
}
