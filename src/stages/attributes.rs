//! `attributes`: the face attributes of one item, as the words `{attributes}` expands to
//! in the diffusion prompt. Values come from the recipe (`attributes glasses="none"`) or
//! from the item's sidecar file `<source>.attributes` (lines `hair-color = blond`,
//! `#` comments), which overrides the recipe. CLIP zero-shot detection replaces the
//! sidecar in a later stage; until then a value missing from both is an error.

use crate::recipe::AttributeUse;
use crate::stages::{params_of, Params, RunContext, RunOutput, Stage, StageError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct ItemAttributes {
    pub item: String,
    pub uses: Vec<AttributeUse>,
    /// Whether the plan gave this item a `sidecar` input.
    pub has_sidecar: bool,
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

impl Stage for ItemAttributes {
    fn kind(&self) -> &'static str {
        "attributes"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["attributes"]
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct Attribute<'a> {
            /// The recipe's value for every item, or `per-item` (from sidecars).
            value: &'a str,
            /// Option name → its prompt text.
            options: BTreeMap<&'a str, &'a str>,
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
                            .map(|o| (o.name.as_str(), o.prompt.as_str()))
                            .collect(),
                    },
                )
            })
            .collect();
        params_of(&serde_json::json!({ "attributes": attributes }))
    }
    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let sidecar = if self.has_sidecar {
            let path = ctx.input("sidecar")?.to_path_buf();
            let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
            parse_sidecar(&text, &path)?
        } else {
            BTreeMap::new()
        };
        let mut values = serde_json::Map::new();
        let mut words = Vec::new();
        for u in &self.uses {
            let name = &u.name.value;
            let Some(option) = sidecar.get(name).or(u.fixed.as_ref()) else {
                return Err(StageError::input(format!(
                    "{}: no value for attribute `{name}`: write `{name} = OPTION` in its sidecar `<source>.attributes`, or fix it in the recipe (`attributes {name}=\"...\"`); detecting it with CLIP is not built yet",
                    self.item
                )));
            };
            let Some(opt) = u.set.options.iter().find(|o| &o.name == option) else {
                return Err(StageError::input(format!(
                    "{}: attribute `{name}` has no option `{option}` (options: {})",
                    self.item,
                    u.set
                        .options
                        .iter()
                        .map(|o| o.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            values.insert(name.clone(), option.clone().into());
            if !opt.prompt.is_empty() {
                words.push(opt.prompt.clone());
            }
        }
        let json = serde_json::json!({ "values": values, "prompt": words.join(", ") });
        let path = ctx.out_dir.join("attributes.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap_or_default())
            .map_err(|e| StageError::io(&path, e))?;
        let mut out = RunOutput::default();
        out.files.insert("attributes".into(), path);
        Ok(out)
    }
}
