//! Named weights (a safetensors file, or random values for timing runs) and a prefix view
//! that models are built from. Every lookup states the shape the config implies, so a
//! checkpoint that does not fit its config fails at load time with the tensor's name.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::error::{DiffusionError, Result};

/// Named tensors of one model. In random mode, a tensor asked for and not present is created
/// (for timing real model sizes without real weights).
pub struct WeightMap {
    source: PathBuf,
    tensors: RefCell<BTreeMap<String, Tensor>>,
    random: Option<(Device, Kind)>,
}

impl WeightMap {
    pub fn from_tensors(source: impl Into<PathBuf>, tensors: BTreeMap<String, Tensor>) -> Self {
        WeightMap {
            source: source.into(),
            tensors: RefCell::new(tensors),
            random: None,
        }
    }

    /// Loads every tensor of a safetensors file (any float dtype; kept as stored).
    pub fn load(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(DiffusionError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let tensors = Tensor::read_safetensors(path).map_err(|e| DiffusionError::BadFile {
            path: path.to_path_buf(),
            message: format!("not a readable safetensors file: {e}"),
        })?;
        Ok(Self::from_tensors(path, tensors.into_iter().collect()))
    }

    /// Loads the shards of a diffusers folder: `name` or its `name.index.json` shards.
    pub fn load_folder_file(folder: &Path, name: &str) -> Result<Self> {
        let single = folder.join(name);
        if single.is_file() {
            return Self::load(&single);
        }
        let index_path = folder.join(format!("{name}.index.json"));
        if index_path.is_file() {
            let index: serde_json::Value = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| DiffusionError::BadFile {
                    path: index_path.clone(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort();
            shards.dedup();
            let mut all = BTreeMap::new();
            for shard in shards {
                let part = Self::load(&folder.join(shard))?;
                all.extend(part.tensors.into_inner());
            }
            return Ok(Self::from_tensors(folder, all));
        }
        Self::load(&single)
    }

    /// Weights created on first use: N(0, 1/fan_in) matrices, unit norm scales, zero biases.
    pub fn random(device: Device, kind: Kind) -> Self {
        WeightMap {
            source: PathBuf::from("<random weights>"),
            tensors: RefCell::new(BTreeMap::new()),
            random: Some((device, kind)),
        }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors.borrow().keys().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.borrow().contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        self.tensors.borrow().get(name).map(|t| t.shallow_clone())
    }

    pub fn insert(&self, name: String, tensor: Tensor) {
        self.tensors.borrow_mut().insert(name, tensor);
    }

    pub fn remove(&self, name: &str) -> Option<Tensor> {
        self.tensors.borrow_mut().remove(name)
    }

    /// Moves every floating-point tensor to `device` as `kind` (integer buffers are kept).
    pub fn to(self, device: Device, kind: Kind) -> Result<Self> {
        let mut out = BTreeMap::new();
        for (name, t) in self.tensors.into_inner() {
            let t = if t.is_floating_point() {
                t.f_to_device(device)?.f_to_kind(kind)?
            } else {
                t.f_to_device(device)?
            };
            out.insert(name, t);
        }
        Ok(WeightMap {
            source: self.source,
            tensors: RefCell::new(out),
            random: self.random.map(|_| (device, kind)),
        })
    }

    /// A view of the names below `prefix` (joined with a dot).
    pub fn root(&self) -> Params<'_> {
        Params {
            map: self,
            prefix: String::new(),
        }
    }

    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        if let Some(t) = self.tensors.borrow().get(name) {
            if t.size() != shape {
                return Err(DiffusionError::ShapeMismatch {
                    path: self.source.clone(),
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    actual: t.size(),
                });
            }
            return Ok(t.shallow_clone());
        }
        match self.random {
            Some((device, kind)) => {
                let t = if shape.len() == 1 {
                    if name.ends_with("weight") {
                        Tensor::f_ones(shape, (kind, device))?
                    } else {
                        Tensor::f_zeros(shape, (kind, device))?
                    }
                } else {
                    let fan_in: i64 = shape[1..].iter().product();
                    (Tensor::f_randn(shape, (Kind::Float, device))? / (fan_in as f64).sqrt())
                        .f_to_kind(kind)?
                };
                self.tensors
                    .borrow_mut()
                    .insert(name.to_string(), t.shallow_clone());
                Ok(t)
            }
            None => Err(DiffusionError::MissingTensor {
                path: self.source.clone(),
                name: name.to_string(),
            }),
        }
    }
}

/// A prefix into a [`WeightMap`]: `p.pp("down_blocks").pp(0).get("conv.weight", ..)`.
#[derive(Clone)]
pub struct Params<'a> {
    map: &'a WeightMap,
    prefix: String,
}

impl<'a> Params<'a> {
    pub fn pp(&self, name: impl std::fmt::Display) -> Params<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Params {
            map: self.map,
            prefix,
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.map.get(&self.full(name), shape)
    }

    /// True when the tensor exists (random weights: always, so optional parts get built).
    pub fn has(&self, name: &str) -> bool {
        self.map.random.is_some() || self.map.contains(&self.full(name))
    }

    pub fn source(&self) -> &Path {
        &self.map.source
    }
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::BadFile {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// The `__metadata__` strings of a safetensors header (8-byte little-endian length, then JSON).
pub fn safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let bad = |message: String| DiffusionError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| bad(format!("no safetensors header: {e}")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 {
        return Err(bad(format!(
            "safetensors header of {header_len} bytes is not plausible"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("truncated safetensors header: {e}")))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("safetensors header is not JSON: {e}")))?;
    let mut out = BTreeMap::new();
    if let Some(meta) = json.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}
