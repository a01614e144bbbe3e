//! Benchmark (not a test): every target's preview speed and verification time for the
//! lego-sized student (width 32, 6 blocks) at 512 px, beside the fp32 ONNX figure.
//!
//!     cargo bench --bench preview
//!
//! The student has random weights (the cost does not depend on them). Each target's
//! file is written as `effectc build` writes it (ONNX fp32, int8 TFLite with its
//! verified core, Core ML fp16 with image I/O), then:
//! - preview: `PreviewModel` (what `effectc preview` runs) on EFFECTC_BENCH_FRAMES
//!   frames, frames/s of model time (one thread);
//! - verify: `verify_artifact` (what a `verify:TARGET` stage runs) on
//!   EFFECTC_BENCH_VERIFY_FRAMES frames plus 5 latency runs, wall seconds.
//!
//! int8's exact path (tract's quantized kernels, what ran before `verify::int8`) is
//! timed on one frame. Core ML's exact fp16 path (tract's half-precision kernels) is
//! timed too, on one frame, only with EFFECTC_BENCH_EXACT=1 (minutes a frame at 512 px).
//!
//! Environment: EFFECTC_BENCH_SIZE (512), EFFECTC_BENCH_FRAMES (3),
//! EFFECTC_BENCH_VERIFY_FRAMES (2), EFFECTC_BENCH_EXACT.

use effectc::export::coreml::{mlprogram_files, write_package_files, CoremlOptions, PixelRange};
use effectc::export::onnx::{self, OnnxPrecision};
use effectc::export::quantize::{calibrate, CalibrationMethod};
use effectc::export::tflite::{self, TflitePrecision};
use effectc::ir::sample::image_like;
use effectc::nn::accordion::Accordion;
use effectc::nn::AccordionConfig;
use effectc::preview::{PreviewModel, Shipped};
use effectc::verify::coreml::Fp16Eval;
use effectc::verify::int8::Int8Eval;
use effectc::verify::{verify_artifact, Artifact, Thresholds, TractModel, VerifyOptions};
use image::RgbImage;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Frames/s of model time over `frames` frames (after `load`'s warm-up run).
fn preview_fps(model: &PreviewModel, frames: usize, size: usize) -> f64 {
    let mut seconds = 0.0;
    for k in 0..frames {
        let frame = RgbImage::from_fn(size as u32, size as u32, |x, y| {
            image::Rgb([(x * 3 + k as u32) as u8, (y * 5) as u8, ((x ^ y) * 7) as u8])
        });
        seconds += model.run(&frame).expect("preview run").1;
    }
    frames as f64 / seconds
}

fn main() {
    let size = env_usize("EFFECTC_BENCH_SIZE", 512);
    let frames = env_usize("EFFECTC_BENCH_FRAMES", 3);
    let verify_frames = env_usize("EFFECTC_BENCH_VERIFY_FRAMES", 2);
    let exact = std::env::var("EFFECTC_BENCH_EXACT").is_ok_and(|v| v == "1");
    let shape = [1, 3, size, size];

    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = Accordion::new(
        &vs.root(),
        AccordionConfig {
            width: 32,
            blocks: 6,
        },
    );
    let graph = net.to_ir(shape);
    let inputs: Vec<Vec<f32>> = (0..verify_frames.max(1))
        .map(|k| image_like(shape, 100 + k as u64))
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    let onnx_path = dir.path().join("model.onnx");
    std::fs::write(
        &onnx_path,
        onnx::write(&graph, OnnxPrecision::Fp32).unwrap(),
    )
    .unwrap();
    let cal = calibrate(&graph, &inputs[..1], CalibrationMethod::Percentile(99.99)).unwrap();
    let tfl = tflite::write(&graph, TflitePrecision::Int8(&cal)).unwrap();
    let (shipped_path, core_path) = (
        dir.path().join("model.tflite"),
        dir.path().join("model.core.tflite"),
    );
    std::fs::write(&shipped_path, &tfl.shipped).unwrap();
    std::fs::write(&core_path, &tfl.core).unwrap();
    let pkg = dir.path().join("model.mlpackage");
    let coreml_opts = CoremlOptions {
        image_input: true,
        image_output: true,
        ..CoremlOptions::default()
    };
    write_package_files(&mlprogram_files(&graph, &coreml_opts).unwrap(), &pkg).unwrap();
    eprintln!(
        "student width 32, 6 blocks at {size}x{size}: {:.2} GMACs; files written in {:.1} s",
        graph.macs().unwrap_or(0) as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );

    // References for verification: the fp32 ONNX model's outputs.
    let reference_model = TractModel::onnx(&std::fs::read(&onnx_path).unwrap(), shape).unwrap();
    let references: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| reference_model.run(x).unwrap().0)
        .collect();
    let opts = VerifyOptions {
        thresholds: Thresholds {
            min_psnr_db: 0.0,
            min_ssim: None,
            max_abs: None,
        },
        data_range: 2.0,
        latency_runs: 5,
        int8_source: None,
    };
    let onnx_bytes = std::fs::read(&onnx_path).unwrap();

    struct Row {
        target: &'static str,
        file: &'static str,
        fps: f64,
        verify_s: Option<f64>,
        psnr_vs_fp32: Option<f64>,
    }
    let mut rows = Vec::new();
    let targets: Vec<(&str, &str, Shipped, Fp16Eval)> = vec![
        (
            "onnx",
            "fp32 .onnx",
            Shipped::Onnx(onnx_path.clone()),
            Fp16Eval::Emulated,
        ),
        (
            "android-nnapi",
            "int8 .tflite (core), fast int8",
            Shipped::Tflite {
                shipped: shipped_path.clone(),
                core: Some(core_path.clone()),
            },
            Fp16Eval::Emulated,
        ),
        (
            "ios-coreml",
            "fp16 .mlpackage, fast fp16",
            Shipped::MlPackage(pkg.clone()),
            Fp16Eval::Emulated,
        ),
    ];
    for (target, file, shipped, fp16) in targets {
        let t = Instant::now();
        let model = PreviewModel::load_with(&shipped, size, fp16).expect("load");
        let load_s = t.elapsed().as_secs_f64();
        let fps = preview_fps(&model, frames, size);
        let artifact = match &shipped {
            Shipped::Onnx(_) => Artifact::Onnx(&onnx_bytes),
            Shipped::Tflite { .. } => Artifact::TfliteInt8 {
                shipped: &tfl.shipped,
                core: &tfl.core,
            },
            Shipped::MlPackage(dir) => Artifact::MlPackage {
                dir,
                contract: PixelRange::default(),
            },
        };
        let t = Instant::now();
        let check =
            verify_artifact(target, artifact, shape, &inputs, &references, &opts).expect("verify");
        let verify_s = t.elapsed().as_secs_f64();
        eprintln!(
            "{target}: load {load_s:.1} s, {fps:.2} frames/s, verify {verify_s:.1} s ({:.1} dB vs fp32)",
            check.psnr_db
        );
        rows.push(Row {
            target,
            file,
            fps,
            verify_s: Some(verify_s),
            psnr_vs_fp32: Some(check.psnr_db),
        });
    }
    // int8 before: tract's quantized kernels (the exact reference), one frame.
    {
        let shipped = Shipped::Tflite {
            shipped: shipped_path.clone(),
            core: Some(core_path.clone()),
        };
        let model = PreviewModel::load_evals(&shipped, size, Fp16Eval::Emulated, Int8Eval::Exact)
            .expect("load exact int8");
        let fps = preview_fps(&model, 1, size);
        eprintln!("android-nnapi exact int8 (tract): {fps:.3} frames/s");
        rows.push(Row {
            target: "android-nnapi",
            file: "int8 .tflite (core), tract's int8 kernels (before)",
            fps,
            verify_s: None,
            psnr_vs_fp32: None,
        });
    }
    if exact {
        let model =
            PreviewModel::load_with(&Shipped::MlPackage(pkg.clone()), size, Fp16Eval::Exact)
                .expect("load exact");
        let fps = preview_fps(&model, 1, size);
        eprintln!("ios-coreml exact fp16: {fps:.4} frames/s");
        rows.push(Row {
            target: "ios-coreml",
            file: "fp16 .mlpackage, exact fp16 (before)",
            fps,
            verify_s: None,
            psnr_vs_fp32: None,
        });
    }

    let base = rows[0].fps;
    println!(
        "\npreview and verify, student width 32 / 6 blocks at {size}x{size}, one thread \
         ({frames} preview frames; verify: {} frames + 5 latency runs)\n",
        inputs.len()
    );
    println!(
        "| target | file | preview frames/s | ms/frame | x fp32 time | verify s | PSNR vs fp32 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {} | {} |",
            r.target,
            r.file,
            r.fps,
            1000.0 / r.fps,
            base / r.fps,
            r.verify_s
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.psnr_vs_fp32
                .map(|p| if p.is_finite() {
                    format!("{p:.1} dB")
                } else {
                    "identical".into()
                })
                .unwrap_or_else(|| "-".into()),
        );
    }
}
