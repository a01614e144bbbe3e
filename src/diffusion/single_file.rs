//! The original single-file Stable Diffusion checkpoint layout (CompVis/LDM names:
//! `model.diffusion_model.input_blocks.1.0.in_layers.0.weight`, `first_stage_model.…`,
//! `cond_stage_model.transformer.…`) converted to diffusers' names for the UNet, the VAE and
//! the CLIP text encoder. Other keys (EMA copies, schedule buffers) are ignored.

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use super::error::{DiffusionError, Result};
use super::unet::UNetConfig;
use super::vae::VaeConfig;
use super::weights::WeightMap;

/// The three models' weights out of one checkpoint, with diffusers names.
pub struct SingleFileWeights {
    pub unet: WeightMap,
    pub vae: WeightMap,
    pub text_encoder: WeightMap,
}

pub fn load_single_file(
    path: &Path,
    unet: &UNetConfig,
    vae: &VaeConfig,
) -> Result<SingleFileWeights> {
    let all = WeightMap::load(path)?;
    let unet_map = unet_block_map(unet);
    let mut unet_out = BTreeMap::new();
    let mut vae_out = BTreeMap::new();
    let mut te_out = BTreeMap::new();
    for name in all.names() {
        let t = all.tensor(&name).expect("listed");
        if let Some(rest) = name.strip_prefix("model.diffusion_model.") {
            let converted =
                convert_unet_key(rest, &unet_map).ok_or_else(|| DiffusionError::BadFile {
                    path: path.to_path_buf(),
                    message: format!(
                        "UNet key `{name}` has no diffusers counterpart for this UNet config"
                    ),
                })?;
            unet_out.insert(converted, t);
        } else if let Some(rest) = name.strip_prefix("first_stage_model.") {
            let (converted, t) = convert_vae_key(rest, t, vae.block_out_channels.len());
            vae_out.insert(converted, t);
        } else if let Some(rest) = name.strip_prefix("cond_stage_model.transformer.") {
            if !rest.ends_with("position_ids") {
                let rest = if rest.starts_with("text_model.") {
                    rest.to_string()
                } else {
                    format!("text_model.{rest}")
                };
                te_out.insert(rest, t);
            }
        }
    }
    for (what, map) in [
        ("UNet (model.diffusion_model.*)", &unet_out),
        ("VAE (first_stage_model.*)", &vae_out),
        ("text encoder (cond_stage_model.transformer.*)", &te_out),
    ] {
        if map.is_empty() {
            return Err(DiffusionError::BadFile {
                path: path.to_path_buf(),
                message: format!("no {what} weights: not an SD 1.x single-file checkpoint"),
            });
        }
    }
    Ok(SingleFileWeights {
        unet: WeightMap::from_tensors(path, unet_out),
        vae: WeightMap::from_tensors(path, vae_out),
        text_encoder: WeightMap::from_tensors(path, te_out),
    })
}

/// LDM block prefix -> diffusers module prefix, for this config's block structure.
fn unet_block_map(config: &UNetConfig) -> BTreeMap<String, String> {
    let n = config.block_out_channels.len();
    let layers = config.layers_per_block.expand(n);
    let mut m = BTreeMap::new();
    m.insert(
        "time_embed.0".to_string(),
        "time_embedding.linear_1".to_string(),
    );
    m.insert("time_embed.2".into(), "time_embedding.linear_2".into());
    m.insert("input_blocks.0.0".into(), "conv_in".into());
    m.insert("out.0".into(), "conv_norm_out".into());
    m.insert("out.2".into(), "conv_out".into());
    m.insert("middle_block.0".into(), "mid_block.resnets.0".into());
    m.insert("middle_block.1".into(), "mid_block.attentions.0".into());
    m.insert("middle_block.2".into(), "mid_block.resnets.1".into());
    let mut input = 1;
    for i in 0..n {
        for j in 0..layers[i] {
            m.insert(
                format!("input_blocks.{input}.0"),
                format!("down_blocks.{i}.resnets.{j}"),
            );
            m.insert(
                format!("input_blocks.{input}.1"),
                format!("down_blocks.{i}.attentions.{j}"),
            );
            input += 1;
        }
        if i + 1 < n {
            m.insert(
                format!("input_blocks.{input}.0.op"),
                format!("down_blocks.{i}.downsamplers.0.conv"),
            );
            input += 1;
        }
    }
    let rev_layers: Vec<i64> = layers.iter().rev().copied().collect();
    let mut output = 0;
    for i in 0..n {
        let has_attn = config
            .up_block_types
            .get(i)
            .is_some_and(|t| t == "CrossAttnUpBlock2D");
        for j in 0..rev_layers[i] + 1 {
            m.insert(
                format!("output_blocks.{output}.0"),
                format!("up_blocks.{i}.resnets.{j}"),
            );
            m.insert(
                format!("output_blocks.{output}.1"),
                format!("up_blocks.{i}.attentions.{j}"),
            );
            if j == rev_layers[i] && i + 1 < n {
                let idx = if has_attn { 2 } else { 1 };
                m.insert(
                    format!("output_blocks.{output}.{idx}.conv"),
                    format!("up_blocks.{i}.upsamplers.0.conv"),
                );
            }
            output += 1;
        }
    }
    m
}

fn convert_unet_key(key: &str, map: &BTreeMap<String, String>) -> Option<String> {
    // the longest LDM prefix that ends at a dot boundary
    let (ldm, diffusers) = map
        .iter()
        .filter(|(k, _)| key.starts_with(&format!("{k}.")))
        .max_by_key(|(k, _)| k.len())?;
    let rest = &key[ldm.len() + 1..];
    let rest = if diffusers.contains(".resnets.") {
        let renames = [
            ("in_layers.0.", "norm1."),
            ("in_layers.2.", "conv1."),
            ("emb_layers.1.", "time_emb_proj."),
            ("out_layers.0.", "norm2."),
            ("out_layers.3.", "conv2."),
            ("skip_connection.", "conv_shortcut."),
        ];
        let (from, to) = renames.iter().find(|(from, _)| rest.starts_with(from))?;
        format!("{to}{}", &rest[from.len()..])
    } else {
        rest.to_string()
    };
    Some(format!("{diffusers}.{rest}"))
}

fn convert_vae_key(key: &str, t: Tensor, blocks: usize) -> (String, Tensor) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    let mut is_attn_matrix = false;
    while i < parts.len() {
        let p = parts[i];
        match p {
            "down" if i + 2 < parts.len() => {
                let b = parts[i + 1];
                match parts[i + 2] {
                    "block" => out.push(format!("down_blocks.{b}.resnets")),
                    "downsample" => out.push(format!("down_blocks.{b}.downsamplers.0")),
                    other => out.push(format!("down.{b}.{other}")),
                }
                i += 3;
                continue;
            }
            "up" if i + 2 < parts.len() => {
                let b: usize = parts[i + 1].parse().unwrap_or(0);
                let d = blocks.saturating_sub(1).saturating_sub(b);
                match parts[i + 2] {
                    "block" => out.push(format!("up_blocks.{d}.resnets")),
                    "upsample" => out.push(format!("up_blocks.{d}.upsamplers.0")),
                    other => out.push(format!("up.{b}.{other}")),
                }
                i += 3;
                continue;
            }
            "mid" if i + 1 < parts.len() => {
                match parts[i + 1] {
                    "block_1" => out.push("mid_block.resnets.0".into()),
                    "block_2" => out.push("mid_block.resnets.1".into()),
                    "attn_1" => {
                        out.push("mid_block.attentions.0".into());
                        if let Some(sub) = parts.get(i + 2) {
                            let name = match *sub {
                                "norm" => "group_norm",
                                "q" => "to_q",
                                "k" => "to_k",
                                "v" => "to_v",
                                "proj_out" => "to_out.0",
                                other => other,
                            };
                            is_attn_matrix = name.starts_with("to_");
                            out.push(name.to_string());
                            i += 1;
                        }
                    }
                    other => out.push(format!("mid.{other}")),
                }
                i += 2;
                continue;
            }
            "norm_out" => out.push("conv_norm_out".into()),
            "nin_shortcut" => out.push("conv_shortcut".into()),
            other => out.push(other.to_string()),
        }
        i += 1;
    }
    let name = out.join(".");
    // the original stores the mid attention's projections as 1x1 convs
    let t = if is_attn_matrix && name.ends_with(".weight") && t.dim() == 4 {
        t.flatten(1, -1)
    } else {
        t
    };
    (name, t)
}
