//! The pairs as tensors, and the deterministic augmented batches drawn from them.

use super::job::{Hyper, PairFiles};
use super::TrainError;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// splitmix64 over (seed, step, salt): the only source of per-step randomness.
pub(super) fn mix(seed: u64, step: u64, salt: u64) -> u64 {
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn unit(seed: u64, step: u64, salt: u64) -> f64 {
    (mix(seed, step, salt) >> 11) as f64 / (1u64 << 53) as f64
}

pub fn load_png(path: &Path) -> Result<Tensor, TrainError> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(|e| TrainError::BadInput {
            path: path.to_path_buf(),
            what: format!("not a readable image: {e}"),
        })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float);
    Ok(t / 127.5 - 1.0)
}

/// NCHW in [-1, 1] → an RGB image.
pub fn to_image(t: &Tensor) -> image::RgbImage {
    let t = ((t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .clamp(-1.0, 1.0)
        + 1.0)
        * 127.5)
        .round()
        .to_kind(Kind::Uint8);
    let t = if t.dim() == 4 { t.get(0) } else { t };
    let (h, w) = (t.size()[1], t.size()[2]);
    let data =
        Vec::<u8>::try_from(&t.permute([1, 2, 0]).contiguous().view([-1])).unwrap_or_default();
    image::RgbImage::from_raw(w as u32, h as u32, data)
        .unwrap_or_else(|| image::RgbImage::new(1, 1))
}

pub(super) struct Data {
    pub(super) train_src: Tensor,
    pub(super) train_tgt: Tensor,
    pub(super) hold_src: Tensor,
    pub(super) hold_tgt: Tensor,
}

pub(super) fn load_data(pairs: &[PairFiles], device: Device) -> Result<Data, TrainError> {
    let (mut ts, mut tt, mut hs, mut ht) = (vec![], vec![], vec![], vec![]);
    let mut size = None;
    for p in pairs {
        let s = load_png(&p.source)?;
        let t = load_png(&p.target)?;
        if s.size() != t.size() {
            return Err(TrainError::BadInput {
                path: p.target.clone(),
                what: format!(
                    "pair target is {:?} but its source is {:?}",
                    t.size(),
                    s.size()
                ),
            });
        }
        match &size {
            None => size = Some(s.size()),
            Some(sz) if *sz != s.size() => {
                return Err(TrainError::BadInput {
                    path: p.source.clone(),
                    what: "pairs differ in size".into(),
                })
            }
            _ => {}
        }
        if p.holdout {
            hs.push(s);
            ht.push(t);
        } else {
            ts.push(s);
            tt.push(t);
        }
    }
    if ts.is_empty() {
        return Err(TrainError::BadInput {
            path: PathBuf::from("<pairs>"),
            what: "no training pairs (all items are held out?)".into(),
        });
    }
    // With no held-out items, metrics fall back to the first training pair (noted in the report).
    if hs.is_empty() {
        hs.push(ts[0].shallow_clone());
        ht.push(tt[0].shallow_clone());
    }
    Ok(Data {
        train_src: Tensor::stack(&ts, 0).to_device(device),
        train_tgt: Tensor::stack(&tt, 0).to_device(device),
        hold_src: Tensor::stack(&hs, 0).to_device(device),
        hold_tgt: Tensor::stack(&ht, 0).to_device(device),
    })
}

/// Which training items step `step` draws: a pure function of (seed, step).
pub(super) fn batch_indices(data: &Data, seed: u64, step: u64, hyper: &Hyper) -> Tensor {
    let n = data.train_src.size()[0] as u64;
    let idx: Vec<i64> = (0..hyper.batch as u64)
        .map(|b| (mix(seed, step, b * 16) % n) as i64)
        .collect();
    Tensor::from_slice(&idx).to_device(data.train_src.device())
}

/// A deterministic augmented batch: the same flip, shift and colour jitter for source and target.
pub(super) fn batch(data: &Data, seed: u64, step: u64, hyper: &Hyper) -> (Tensor, Tensor) {
    let (size, shift_px) = (hyper.batch as i64, hyper.shift_px);
    let n = data.train_src.size()[0] as u64;
    let (h, w) = (data.train_src.size()[2], data.train_src.size()[3]);
    let (mut ss, mut tt) = (vec![], vec![]);
    for b in 0..size as u64 {
        let salt = b * 16;
        let idx = (mix(seed, step, salt) % n) as i64;
        let mut s = data.train_src.get(idx).unsqueeze(0);
        let mut t = data.train_tgt.get(idx).unsqueeze(0);
        if hyper.flip && unit(seed, step, salt + 1) < 0.5 {
            s = s.flip([3]);
            t = t.flip([3]);
        }
        if shift_px > 0 {
            let m = shift_px as i64;
            let dy = (unit(seed, step, salt + 2) * (2 * m + 1) as f64) as i64; // 0..=2m = shift -m..=m
            let dx = (unit(seed, step, salt + 3) * (2 * m + 1) as f64) as i64;
            s = s
                .reflection_pad2d([m, m, m, m])
                .narrow(2, dy, h)
                .narrow(3, dx, w);
            t = t
                .reflection_pad2d([m, m, m, m])
                .narrow(2, dy, h)
                .narrow(3, dx, w);
        }
        if hyper.jitter > 0.0 {
            let gain = 1.0 + hyper.jitter * (2.0 * unit(seed, step, salt + 4) - 1.0);
            let offset = hyper.jitter * (2.0 * unit(seed, step, salt + 5) - 1.0);
            s = (s * gain + offset).clamp(-1.0, 1.0);
            t = (t * gain + offset).clamp(-1.0, 1.0);
        }
        ss.push(s);
        tt.push(t);
    }
    (Tensor::cat(&ss, 0), Tensor::cat(&tt, 0))
}
