//! Benchmark (not a test): the student's cost and training throughput.
//!
//!     cargo bench --bench train
//!
//! 1. Parameters and MACs at 512x512 for student widths 16/24/32/48 (and the 128 teacher).
//! 2. Training steps/s at 256x256 (default 3 steps, batch 1), teacher (width 128) and
//!    student (width 32), effectc's `effectc-nn` side by side with an eager PyTorch twin
//!    (`scripts/bench_train_torch.py`, same architecture, losses, batch and threads).
//!    On CUDA, each with mixed precision on and off.
//!
//! Environment: EFFECTC_BENCH_DEVICE (cpu | cuda), EFFECTC_BENCH_STEPS, EFFECTC_BENCH_BATCH,
//! EFFECTC_BENCH_SIZE, EFFECTC_BENCH_PYTHON (default: the set-up's torch venv).

use effectc::imaging::{brick, synthetic};
use effectc::nn::accordion::{count_params, macs};
use effectc::nn::AccordionConfig;
use effectc::train::{Hyper, PairFiles, TrainJob};
use std::path::{Path, PathBuf};
use std::process::Command;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn run_effectc(job: &TrainJob, dir: &Path, amp: bool) -> f64 {
    let path = dir.join(format!("{}-{amp}.json", job.role));
    std::fs::write(&path, serde_json::to_vec(job).unwrap()).unwrap();
    let worker = std::env::var("EFFECTC_NN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_effectc-nn").to_string());
    let mut cmd = Command::new(worker);
    cmd.arg("train").arg(&path);
    if !amp {
        cmd.env("EFFECTC_NO_AMP", "1");
    }
    let out = cmd.output().expect("run effectc-nn");
    assert!(
        out.status.success(),
        "effectc-nn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("report").is_some())
        .expect("a report");
    report["report"]["metrics"]["steps_per_s"]
        .as_f64()
        .unwrap_or(0.0)
}

fn run_torch(
    role: &str,
    width: i64,
    teacher_width: i64,
    size: u32,
    batch: u32,
    steps: u32,
    device: &str,
    amp: bool,
) -> (f64, f64) {
    let home = std::env::var("HOME").unwrap_or_default();
    let python = env_or(
        "EFFECTC_BENCH_PYTHON",
        &format!("{home}/.cache/effectc/torch-2.11.0/bin/python"),
    );
    let local = Path::new("scripts/bench_train_torch.py");
    let script = if local.is_file() {
        local.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_train_torch.py")
    };
    let mut cmd = Command::new(python);
    cmd.arg(script).args([
        "--role",
        role,
        "--width",
        &width.to_string(),
        "--teacher-width",
        &teacher_width.to_string(),
        "--blocks",
        "6",
    ]);
    cmd.args([
        "--size",
        &size.to_string(),
        "--batch",
        &batch.to_string(),
        "--steps",
        &steps.to_string(),
        "--device",
        device,
        "--threads",
        &tch_threads().to_string(),
    ]);
    if amp {
        cmd.arg("--amp");
    }
    let out = cmd.output().expect("run python");
    if !out.status.success() {
        eprintln!(
            "pytorch twin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return (f64::NAN, 0.0);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        v["steps_per_s"].as_f64().unwrap_or(f64::NAN),
        v["peak_mib"].as_f64().unwrap_or(0.0),
    )
}

/// libtorch's default intra-op threads: one per core.
fn tch_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn main() {
    println!("## Student cost at 512x512\n");
    println!("| width | blocks | params | GMACs |");
    println!("|---:|---:|---:|---:|");
    for width in [16, 24, 32, 48, 128] {
        let cfg = AccordionConfig { width, blocks: 6 };
        println!(
            "| {width} | 6 | {} | {:.2} |",
            count_params(cfg),
            macs(cfg, 512, 512) as f64 / 1e9
        );
    }

    let device = env_or("EFFECTC_BENCH_DEVICE", "cpu");
    let steps: u32 = env_or("EFFECTC_BENCH_STEPS", "3").parse().unwrap_or(3);
    let batch: u32 = env_or("EFFECTC_BENCH_BATCH", "1").parse().unwrap_or(1);
    let size: u32 = env_or("EFFECTC_BENCH_SIZE", "256").parse().unwrap_or(256);
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<PairFiles> = (0..8)
        .map(|i| {
            let src = synthetic::synthetic_portrait(1, i, size);
            let tgt = brick::brick_mosaic(&src, &brick::BrickStyle::default());
            let (s, t) = (
                dir.path().join(format!("s{i}.png")),
                dir.path().join(format!("t{i}.png")),
            );
            src.save(&s).unwrap();
            tgt.save(&t).unwrap();
            PairFiles {
                name: format!("p{i}"),
                source: s,
                target: t,
                holdout: i == 7,
            }
        })
        .collect();
    let hyper = Hyper {
        steps,
        batch,
        lr: 0.002,
        lr_schedule: effectc::train::LrSchedule::Cosine,
        beta1: 0.9,
        l1_weight: 1.0,
        ssim_weight: 0.5,
        gan_weight: 0.05,
        gan_start: 0.0,
        r1_gamma: 1.0,
        r1_every: 16,
        feature_weight: 0.1,
        ema_beta: 0.99,
        checkpoint_every: 1_000_000,
        seed: 0,
        shift_px: 0,
        flip: false,
        jitter: 0.0,
    };
    let job =
        |role: &str, width: i64, teacher: Option<(PathBuf, AccordionConfig)>, tag: &str| TrainJob {
            role: role.into(),
            arch: AccordionConfig { width, blocks: 6 },
            teacher,
            pairs: pairs.clone(),
            hyper: hyper.clone(),
            device: device.clone(),
            checkpoint_dir: dir.path().join(format!("ckpt-{role}-{tag}")),
            out_dir: dir.path().join(format!("out-{role}-{tag}")),
        };
    let amps: &[bool] = if device.starts_with("cuda") {
        &[true, false]
    } else {
        &[false]
    };
    println!("\n## Training throughput at {size}x{size}, batch {batch}, {steps} steps, {device}, {} threads\n", tch_threads());
    println!(
        "| net | precision | effectc steps/s | PyTorch eager steps/s | ratio | PyTorch peak MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for &amp in amps {
        let tag = if amp { "amp" } else { "fp32" };
        let precision = if amp { "fp16 autocast" } else { "fp32" };
        let t_job = job("teacher", 128, None, tag);
        let ours = run_effectc(&t_job, dir.path(), amp);
        let (theirs, peak) = run_torch("teacher", 128, 128, size, batch, steps, &device, amp);
        println!(
            "| teacher w128 | {precision} | {ours:.3} | {theirs:.3} | {:.2}x | {peak:.0} |",
            ours / theirs
        );
        let weights = t_job.out_dir.join("weights.safetensors");
        let s_job = job(
            "student",
            32,
            Some((
                weights,
                AccordionConfig {
                    width: 128,
                    blocks: 6,
                },
            )),
            tag,
        );
        let ours = run_effectc(&s_job, dir.path(), amp);
        let (theirs, peak) = run_torch("student", 32, 128, size, batch, steps, &device, amp);
        println!(
            "| student w32 | {precision} | {ours:.3} | {theirs:.3} | {:.2}x | {peak:.0} |",
            ours / theirs
        );
    }
}
