//! Weights and the whole training state on disk: safetensors written atomically, and
//! the checkpoint an interrupted run resumes from.

use super::{TrainError, Trainer};
use crate::nn::adam::Adam;
use crate::nn::{Accordion, AccordionConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

pub(super) fn named_vars(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("{prefix}{k}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub(super) fn write_safetensors_atomic(
    tensors: &[(String, Tensor)],
    path: &Path,
) -> Result<(), TrainError> {
    let mut sorted: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    crate::atomic::write_at(path, |tmp| {
        Tensor::write_safetensors(&sorted, tmp).map_err(std::io::Error::other)
    })
    .map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads generator weights written by training (`weights.safetensors`).
pub fn load_generator(
    weights: &Path,
    cfg: AccordionConfig,
    device: Device,
) -> Result<(nn::VarStore, Accordion), TrainError> {
    let mut vs = nn::VarStore::new(device);
    let net = Accordion::new(&vs.root(), cfg);
    vs.freeze();
    tch::no_grad(|| vs.read_safetensors(weights)).map_err(|e| TrainError::BadInput {
        path: weights.to_path_buf(),
        what: format!(
            "cannot load weights: {}",
            e.to_string().lines().next().unwrap_or("")
        ),
    })?;
    Ok((vs, net))
}

impl Trainer<'_> {
    pub(super) fn ckpt_path(&self) -> PathBuf {
        self.job.checkpoint_dir.join("checkpoint.safetensors")
    }

    pub(super) fn load_checkpoint(
        &mut self,
        stores: &[(&str, &mut nn::VarStore)],
        opts: &mut [(&str, &mut Adam)],
        history: &mut Vec<Vec<f64>>,
    ) -> Result<(), TrainError> {
        let path = self.ckpt_path();
        if !path.is_file() {
            return Ok(());
        }
        let tensors: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(&path)?.into_iter().collect();
        let get = |k: &str| tensors.get(k).map(|t| t.to_device(self.device));
        for (prefix, vs) in stores {
            for (name, mut var) in vs.variables() {
                let saved =
                    get(&format!("{prefix}{name}")).ok_or_else(|| TrainError::BadInput {
                        path: path.clone(),
                        what: format!("checkpoint lacks {prefix}{name}"),
                    })?;
                tch::no_grad(|| var.copy_(&saved));
            }
        }
        for (prefix, opt) in opts.iter_mut() {
            opt.load_state(prefix, &get)
                .map_err(|what| TrainError::BadInput {
                    path: path.clone(),
                    what,
                })?;
        }
        if let Some(h) = tensors.get("train.history") {
            let rows = h.size()[0];
            history.clear();
            for r in 0..rows {
                history.push(Vec::<f64>::try_from(&h.get(r)).unwrap_or_default());
            }
        }
        self.start_step = tensors
            .get("train.step")
            .map(|t| t.int64_value(&[0]) as u32)
            .unwrap_or(0);
        Ok(())
    }

    pub(super) fn save_checkpoint(
        &self,
        step: u32,
        stores: &[(&str, &nn::VarStore)],
        opts: &[(&str, &Adam)],
        history: &[Vec<f64>],
    ) -> Result<(), TrainError> {
        let mut all: Vec<(String, Tensor)> =
            vec![("train.step".into(), Tensor::from_slice(&[step as i64]))];
        for (prefix, vs) in stores {
            all.extend(named_vars(vs, prefix));
        }
        for (prefix, opt) in opts {
            all.extend(opt.state(prefix));
        }
        if !history.is_empty() {
            let flat: Vec<f64> = history.iter().flatten().copied().collect();
            all.push((
                "train.history".into(),
                Tensor::from_slice(&flat).view([history.len() as i64, -1]),
            ));
        }
        write_safetensors_atomic(&all, &self.ckpt_path())
    }
}
