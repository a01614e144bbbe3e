//! Benchmark (not a test): the diffusion teacher's cost per 512x512 pair at SD 1.5's real
//! sizes with random weights: 2 ControlNets, InstructPix2Pix three-way guidance (batch 3
//! through the UNet and the ControlNets per image), DPM++ 2M Karras, 20 steps.
//!
//!     cargo bench --bench diffusion
//!
//! On CPU a step takes about a minute on 2 cores, so the 20-step figure is extrapolated
//! from a 1-step and a 2-step run (per-step cost = their difference, fixed cost = text
//! encoder + VAE). On CUDA (fp16) the 20 steps run for real, after a warm-up.
//!
//! Environment: EFFECTC_BENCH_DEVICE (cpu | cuda, default: cuda when present),
//! EFFECTC_BENCH_BATCHES (pairs per call, default "1" on CPU, "1,8" on CUDA),
//! EFFECTC_BENCH_SIZE (default 512).

use effectc::diffusion::pipeline::{generate_pair, ControlInput, DiffusionModels, PairRequest};
use effectc::diffusion::tokenizer::ClipTokenizer;
use effectc::diffusion::SchedulerKind;
use image::RgbImage;
use std::time::Instant;
use tch::{Device, Kind};

fn request(img: &RgbImage, steps: usize, seed: u64) -> PairRequest {
    PairRequest {
        prompt: "a lego minifigure, plastic toy".into(),
        negative_prompt: "blurry".into(),
        source: img.clone(),
        controls: ["softedge", "pose"]
            .iter()
            .map(|n| ControlInput {
                controlnet: n.to_string(),
                image: img.clone(),
                weight: 0.8,
                start: 0.0,
                end: 1.0,
            })
            .collect(),
        image_guidance_scale: Some(1.5),
        guidance_scale: 7.5,
        steps,
        scheduler: SchedulerKind::DpmPp2M { karras: true },
        seed,
        strength: 1.0,
    }
}

fn seconds(models: &DiffusionModels, img: &RgbImage, steps: usize, batch: usize) -> f64 {
    let requests: Vec<PairRequest> = (0..batch).map(|i| request(img, steps, i as u64)).collect();
    let t = Instant::now();
    let out = generate_pair(models, &requests).expect("generate");
    assert_eq!(out.len(), batch);
    if models.device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let device = match std::env::var("EFFECTC_BENCH_DEVICE").as_deref() {
        Ok("cpu") => Device::Cpu,
        Ok("cuda") => Device::Cuda(0),
        _ => Device::cuda_if_available(),
    };
    let kind = if device.is_cuda() {
        Kind::Half
    } else {
        Kind::Float
    };
    let size: u32 = std::env::var("EFFECTC_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let batches: Vec<usize> = std::env::var("EFFECTC_BENCH_BATCHES")
        .unwrap_or_else(|_| if device.is_cuda() { "1,8" } else { "1" }.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/diffusion/tokenizer"
    );
    // Run as a carried binary (scripts/gpu-check.sh) the checkout may sit elsewhere: the
    // fixtures relative to the working directory (the repository root) then.
    let fixtures = if std::path::Path::new(fixtures).is_dir() {
        fixtures
    } else {
        "tests/fixtures/diffusion/tokenizer"
    };
    let tokenizer = ClipTokenizer::load(std::path::Path::new(fixtures)).expect("tokenizer");
    let t = Instant::now();
    let models = DiffusionModels::random_sd15(tokenizer, &["softedge", "pose"], true, device, kind)
        .expect("random SD 1.5");
    println!(
        "random SD 1.5 + IP2P UNet + 2 ControlNets on {device:?} ({kind:?}), built in {:.1}s; threads {}",
        t.elapsed().as_secs_f64(),
        tch::get_num_threads()
    );
    let img = RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    println!();
    println!(
        "| device | size | batch | s per step | fixed s | s per pair (20 steps) | pairs/s | how |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for batch in batches {
        let (per_step, fixed, total, how) = if device.is_cuda() {
            seconds(&models, &img, 2, batch); // warm-up: cuDNN picks its kernels
            let one = seconds(&models, &img, 1, batch);
            let twenty = seconds(&models, &img, 20, batch);
            let per_step = (twenty - one) / 19.0;
            (per_step, one - per_step, twenty, "measured")
        } else {
            let one = seconds(&models, &img, 1, batch);
            let two = seconds(&models, &img, 2, batch);
            let per_step = two - one;
            let fixed = one - per_step;
            (per_step, fixed, fixed + 20.0 * per_step, "extrapolated")
        };
        println!(
            "| {device:?} | {size} | {batch} | {per_step:.2} | {fixed:.2} | {:.1} | {:.3} | {how} |",
            total / batch as f64,
            batch as f64 / total
        );
    }
}
