//! How much memory a training step needs, how much the device has, and the batch plan
//! that follows: the recipe's batch in one pass when it fits, else the same effective
//! batch as micro-batches whose gradients accumulate, else a clear error before any step.
//!
//! The need is estimated from the nets (docs/design-notes.md, "Memory known before it
//! is spent"): the activations autograd keeps per item (every conv, ReLU, add and
//! depth-to-space output of the accordion, the discriminator's, the SSIM maps),
//! times a factor for the gradients backward holds beside them, plus the fixed part
//! (weights, grads, Adam moments, EMA) counted from the variable stores themselves.
//! What the device has is the smallest of: MemAvailable, the cgroup's memory.max less
//! its use, RLIMIT_AS less the address space in use (CPU); the card's free memory (CUDA).

use crate::nn::AccordionConfig;
pub use crate::protocol::{gb, MemoryPlan};

/// Bytes per float of activations and weights (training runs in fp32; on CUDA autocast
/// halves most activations, which the estimate does not count on).
const F32: f64 = 4.0;
/// Gradients of the activations live beside the saved activations during backward
/// (calibrated against measured peaks on CPU: docs/design-notes.md).
const BACKWARD_FACTOR: f64 = 2.0;
/// Only this share of what is available is planned for: the allocator's slack, the
/// batch assembly and libtorch's workspaces take the rest.
const PLAN_SHARE: f64 = 0.85;
/// glibc grows the worker's heap in steps of `MALLOC_TOP_PAD_` (256 MiB, see
/// `stages::worker`): address space beyond the live bytes.
const HEAP_SLACK: f64 = 320.0 * 1024.0 * 1024.0;

/// Floats autograd saves per item for one accordion forward at `h` x `w`.
pub fn accordion_floats(cfg: AccordionConfig, h: i64, w: i64) -> f64 {
    let p = (h * w) as f64;
    let c = cfg.channels().map(|x| x as f64);
    let level = |i: i32| p / 4f64.powi(i);
    // stem conv + ReLU
    let mut n = 2.0 * c[0] * p;
    // down: depthwise out, pointwise out, ReLU
    for i in 1..4 {
        n += c[i - 1] * level(i as i32) + 2.0 * c[i] * level(i as i32);
    }
    // bridge: a, ReLU, dw, ReLU, b, add
    n += cfg.blocks as f64 * 6.0 * c[3] * level(3);
    // up: depthwise out; pointwise out, ReLU, depth-to-space, skip add (all 4x channels)
    for i in (1..4).rev() {
        n += c[i] * level(i as i32) + 4.0 * 4.0 * c[i - 1] * level(i as i32);
    }
    // out conv, colour path, add, tanh
    n + 4.0 * 3.0 * p
}

/// Floats of the 8 stage features (what distillation keeps of the teacher per item).
pub fn feature_floats(cfg: AccordionConfig, h: i64, w: i64) -> f64 {
    let p = (h * w) as f64;
    let c = cfg.channels().map(|x| x as f64);
    2.0 * (c[0] * p + c[1] * p / 4.0 + c[2] * p / 16.0 + c[3] * p / 64.0)
}

/// Floats one discriminator forward saves per item (pads and blurs included).
pub fn discriminator_floats(width: i64, h: i64, w: i64) -> f64 {
    let p = (h * w) as f64;
    let wd = width as f64;
    6.0 * p + 6.5 * wd * p
}

/// Floats of the loss maps per item (SSIM's blurred products, L1's difference).
fn loss_floats(h: i64, w: i64) -> f64 {
    20.0 * 3.0 * (h * w) as f64
}

/// Bytes one item of a training step adds, for the teacher (`teacher: None`) or the
/// student distilled from a teacher of `teacher` width.
pub fn bytes_per_item(
    arch: AccordionConfig,
    teacher: Option<AccordionConfig>,
    h: i64,
    w: i64,
    adversarial: bool,
    features: bool,
) -> f64 {
    let floats = match teacher {
        None => {
            // The generator's graph stays alive through the discriminator's passes; each
            // of those (fake and real judged, R1) is freed by its own backward, so at the
            // peak one pass (the adversarial term's) is kept, plus a transient half.
            let d = if adversarial {
                1.5 * discriminator_floats(arch.width.clamp(8, 64), h, w)
            } else {
                0.0
            };
            accordion_floats(arch, h, w) + d + loss_floats(h, w)
        }
        Some(t) => {
            // The student's graph; the teacher's features and the adapters' outputs at
            // the teacher's width when the feature term is on; else only the output.
            let kept = if features {
                2.0 * feature_floats(t, h, w)
            } else {
                3.0 * (h * w) as f64
            };
            accordion_floats(arch, h, w) + kept + loss_floats(h, w)
        }
    };
    floats * F32 * BACKWARD_FACTOR
}

/// Where the available figure came from, and its value in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub bytes: f64,
    pub source: String,
}

/// The smallest of the limits that apply to this process on CPU.
pub fn cpu_available() -> Option<Available> {
    let mut best: Option<Available> = None;
    let mut consider = |bytes: f64, source: String| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Available { bytes, source });
        }
    };
    if let Some(kb) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_field(&t, "MemAvailable"))
    {
        consider(kb * 1024.0, "free RAM (MemAvailable)".into());
    }
    if let Some((free, path)) = cgroup_headroom() {
        consider(free, format!("cgroup memory.max ({path})"));
    }
    if let Some(free) = address_space_headroom() {
        consider(free, "address-space limit (RLIMIT_AS)".into());
    }
    best
}

/// A `Name:   123 kB` field of /proc/meminfo or /proc/self/status, in kB.
pub fn meminfo_field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
}

/// cgroup v2: the tightest `memory.max - memory.current` of this process's cgroup and
/// its ancestors (cgroup v1: `memory.limit_in_bytes - memory.usage_in_bytes`).
fn cgroup_headroom() -> Option<(f64, String)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<(f64, String)> = None;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (root, max_file, used_file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        let mut dir = std::path::PathBuf::from(format!("{root}{path}"));
        loop {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .ok()?
                    .trim()
                    .parse::<f64>()
                    .ok()
            };
            if let (Some(max), Some(used)) = (read(max_file), read(used_file)) {
                // v1 writes "no limit" as a huge number.
                if max < 1e18 {
                    let free = (max - used).max(0.0);
                    if best.as_ref().is_none_or(|b| free < b.0) {
                        best = Some((free, dir.join(max_file).display().to_string()));
                    }
                }
            }
            if dir.as_os_str() == root || !dir.pop() {
                break;
            }
        }
    }
    best
}

/// `RLIMIT_AS` less the address space this process already uses (`VmSize`).
fn address_space_headroom() -> Option<f64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall filling a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let used_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| meminfo_field(&t, "VmSize"))?;
    Some((lim.rlim_cur as f64 - used_kb * 1024.0 - HEAP_SLACK).max(0.0))
}

/// The free memory of CUDA device `n`, through the CUDA runtime libtorch already loaded.
pub fn cuda_available(n: usize) -> Option<Available> {
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let find = |name: &std::ffi::CStr| -> *mut libc::c_void {
        // SAFETY: dlsym/dlopen with NUL-terminated names; a null result is checked.
        unsafe {
            let sym = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
            if !sym.is_null() {
                return sym;
            }
            for lib in [
                c"libcudart.so",
                c"libcudart.so.13",
                c"libcudart.so.12",
                c"libcudart.so.11.0",
            ] {
                let h = libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
                if !h.is_null() {
                    let sym = libc::dlsym(h, name.as_ptr());
                    if !sym.is_null() {
                        return sym;
                    }
                }
            }
            std::ptr::null_mut()
        }
    };
    let (set, info) = (find(c"cudaSetDevice"), find(c"cudaMemGetInfo"));
    if set.is_null() || info.is_null() {
        return None;
    }
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: the CUDA runtime's documented signatures; the device exists (checked by
    // `parse_device`) and its context is made by libtorch before this runs.
    let ok = unsafe {
        let set: SetDevice = std::mem::transmute(set);
        let info: MemGetInfo = std::mem::transmute(info);
        set(n as i32) == 0 && info(&mut free, &mut total) == 0
    };
    ok.then(|| Available {
        bytes: free as f64,
        source: format!("free memory of cuda:{n} ({} total)", gb(total as f64)),
    })
}

/// The plan for a step needing `fixed + items * per_item` bytes with `available`.
/// `Err` is the message when not even one item fits.
pub fn plan(
    batch: u32,
    fixed: f64,
    per_item: f64,
    available: &Available,
) -> Result<MemoryPlan, String> {
    let budget = available.bytes * PLAN_SHARE;
    let need = |items: u32| fixed + items as f64 * per_item;
    let micro = (1..=batch.max(1))
        .rev()
        .find(|m| need(*m) <= budget)
        .ok_or_else(|| {
            format!(
                "one item alone needs {} ({} for the nets and their optimizer state, {} per item), {} is available ({}, of which {:.0}% is planned for)",
                gb(need(1)),
                gb(fixed),
                gb(per_item),
                gb(available.bytes),
                available.source,
                PLAN_SHARE * 100.0
            )
        })?;
    Ok(MemoryPlan {
        batch,
        micro_batch: micro,
        needed_bytes: need(batch) as u64,
        micro_needed_bytes: need(micro) as u64,
        available_bytes: available.bytes as u64,
        available_source: available.source.clone(),
    })
}

/// The sizes of the micro-batches of a plan (the last may be smaller).
pub fn chunks(plan: &MemoryPlan) -> Vec<i64> {
    let (b, m) = (plan.batch as i64, plan.micro_batch.max(1) as i64);
    (0..b)
        .step_by(m as usize)
        .map(|start| m.min(b - start))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avail(gb: f64) -> Available {
        Available {
            bytes: gb * 1e9,
            source: "test".into(),
        }
    }

    #[test]
    fn a_batch_that_fits_runs_in_one_pass() {
        let p = plan(8, 1e9, 0.5e9, &avail(10.0)).unwrap();
        assert_eq!(p.micro_batch, 8);
        assert!(!p.accumulates());
        assert_eq!(chunks(&p), vec![8]);
    }

    #[test]
    fn a_batch_that_does_not_fit_keeps_its_size_as_micro_batches() {
        // 1 GB + 8 x 1.25 GB = 11 GB needed; 7 GB x 0.85 holds 1 + 3 x 1.25.
        let p = plan(8, 1e9, 1.25e9, &avail(7.0)).unwrap();
        assert_eq!(p.micro_batch, 3);
        assert_eq!(chunks(&p), vec![3, 3, 2]);
        assert_eq!(chunks(&p).iter().sum::<i64>(), 8);
        let s = p.summary();
        assert!(s.starts_with("batch 8 as 3 micro-batches of at most 3 (accumulated): 11.0 GB needed, 7.0 GB free"), "{s}");
        let p = plan(8, 1e9, 1.0e9, &avail(7.0)).unwrap();
        assert_eq!(
            p.summary(),
            "batch 8 as 4 x 2 (accumulated): 9.0 GB needed, 7.0 GB free (test)"
        );
    }

    #[test]
    fn when_one_item_does_not_fit_the_plan_says_so_with_the_figures() {
        let e = plan(8, 1e9, 5e9, &avail(4.0)).unwrap_err();
        assert!(
            e.contains("6.0 GB") && e.contains("4.0 GB") && e.contains("test"),
            "{e}"
        );
    }

    #[test]
    fn meminfo_fields_read_in_kb() {
        let t = "MemTotal:       24000000 kB\nMemAvailable:    7000000 kB\n";
        assert_eq!(meminfo_field(t, "MemAvailable"), Some(7_000_000.0));
        assert_eq!(meminfo_field(t, "MemFree"), None);
    }

    #[test]
    fn the_estimate_matches_the_reported_teacher_at_512_px() {
        // The measurement: teacher width 128 at 512 px, batch 4, held 12.6 GB
        // resident on CPU (before the discriminator started): the estimate is a little
        // above, never below.
        let t = AccordionConfig {
            width: 128,
            blocks: 6,
        };
        let per = bytes_per_item(t, None, 512, 512, false, false);
        let four = 4.0 * per;
        assert!((12.6e9..20e9).contains(&four), "{}", gb(four));
    }

    #[test]
    fn the_process_sees_some_memory() {
        let a = cpu_available().expect("/proc/meminfo is readable");
        assert!(a.bytes > 0.0, "{a:?}");
    }
}
