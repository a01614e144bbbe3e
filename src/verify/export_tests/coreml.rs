//! The coreml writer checked end to end: what it writes, run by tract (or decoded
//! back, for Core ML), computes what the IR computes. These live beside the verifier
//! they use, so `export` never depends on `verify`.

use crate::export::coreml::*;
use crate::ir::interp::eval;
use crate::ir::sample::{image_like, sigmoid_head, student_like};
use crate::verify::compare::{compare, Thresholds};
use crate::verify::coreml::{run_mlmodel, run_mlpackage};

/// An image-like input on the 8-bit pixel grid, as camera frames are.
fn pixel_input(shape: [usize; 4], seed: u64) -> Vec<f32> {
    let r = PixelRange::default();
    image_like(shape, seed)
        .iter()
        .map(|x| ((x - r.bias) / r.scale).round() * r.scale + r.bias)
        .collect()
}

fn reference(g: &crate::ir::Graph, input: &[f32]) -> Vec<f32> {
    eval(g, input).unwrap().data.remove(&g.output_name).unwrap()
}

#[test]
fn mlpackage_fp16_round_trips_and_passes_the_fp16_bar() {
    let g = student_like(4, 32, 21);
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("student.mlpackage");
    let files = write_mlpackage(&g, &pkg, &CoremlOptions::default()).unwrap();
    assert!(pkg.join("Manifest.json").is_file());
    assert!(pkg.join("Data/com.apple.CoreML/model.mlmodel").is_file());
    assert_eq!(
        std::fs::read(pkg.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap(),
        files.weights
    );
    // Same graph, same bytes (maps are encoded in key order).
    assert_eq!(
        mlprogram_files(&g, &CoremlOptions::default()).unwrap(),
        files
    );
    let input = image_like(g.input_shape, 6);
    let run = run_mlpackage(&pkg, &input, PixelRange::default()).unwrap();
    assert!(
        run.structurally_sound(),
        "{:#?}",
        run.checks.iter().filter(|c| !c.passed).collect::<Vec<_>>()
    );
    assert_eq!(run.decoded.format, "mlprogram");
    assert_eq!(run.decoded.weight_precision, WeightPrecision::Fp16);
    assert_eq!(run.decoded.graph.param_count(), g.param_count());
    let c = compare(
        &run.output_nchw,
        &reference(&g, &input),
        run.output_shape,
        2.0,
        &Thresholds::fp16(),
    );
    eprintln!(
        "coreml mlpackage fp16: {:.1} dB ssim {:.5}, model {} + weights {} bytes, {} checks",
        c.psnr_db,
        c.ssim,
        files.model.len(),
        files.weights.len(),
        run.checks.len()
    );
    assert!(c.passed, "{c:?}");
}

#[test]
fn mlpackage_image_io_and_int8_weights() {
    let g = student_like(4, 32, 22);
    let input = pixel_input(g.input_shape, 7);
    let dir = tempfile::tempdir().unwrap();
    let opts = CoremlOptions {
        image_input: true,
        image_output: true,
        weights: WeightPrecision::Int8,
        ..Default::default()
    };
    let pkg = dir.path().join("student_int8.mlpackage");
    write_mlpackage(&g, &pkg, &opts).unwrap();
    let run = run_mlpackage(&pkg, &input, PixelRange::default()).unwrap();
    assert!(
        run.structurally_sound(),
        "{:#?}",
        run.checks.iter().filter(|c| !c.passed).collect::<Vec<_>>()
    );
    assert_eq!(run.decoded.weight_precision, WeightPrecision::Int8);
    let map = run.decoded.input_pixel_map.unwrap();
    assert!((map.scale * 255.0 + map.bias - 1.0).abs() < 1e-6 && map.bias == -1.0);
    let c = compare(
        &run.output_nchw,
        &reference(&g, &input),
        run.output_shape,
        2.0,
        &Thresholds::int8(),
    );
    eprintln!(
        "coreml mlpackage int8 weights + image io: {:.1} dB",
        c.psnr_db
    );
    assert!(c.passed, "{c:?}");
    // A wrong pixel map in the model is caught against the app's contract.
    let wrong = CoremlOptions {
        pixel_range: PixelRange {
            scale: 1.0 / 255.0,
            bias: 0.0,
        },
        ..opts
    };
    let pkg2 = dir.path().join("wrong.mlpackage");
    write_mlpackage(&g, &pkg2, &wrong).unwrap();
    let run = run_mlpackage(&pkg2, &input, PixelRange::default()).unwrap();
    let c = compare(
        &run.output_nchw,
        &reference(&g, &input),
        run.output_shape,
        2.0,
        &Thresholds::int8(),
    );
    assert!(!c.passed, "{c:?}");
}

#[test]
fn neuralnetwork_mlmodel_fp16_and_fp32() {
    let g = student_like(4, 32, 23);
    let input = pixel_input(g.input_shape, 8);
    for (weights, t) in [
        (WeightPrecision::Fp16, Thresholds::fp16()),
        (WeightPrecision::Fp32, Thresholds::fp32()),
    ] {
        let image_output = weights == WeightPrecision::Fp16;
        let opts = CoremlOptions {
            weights,
            image_input: true,
            image_output,
            ..Default::default()
        };
        let bytes = write_mlmodel(&g, &opts).unwrap();
        assert_eq!(bytes, write_mlmodel(&g, &opts).unwrap());
        let run = run_mlmodel(&bytes, &input, PixelRange::default()).unwrap();
        assert!(run.structurally_sound(), "{:#?}", run.checks);
        assert_eq!(run.decoded.specification_version, 4);
        assert_eq!(run.decoded.output_pixel_map.is_some(), image_output);
        let c = compare(
            &run.output_nchw,
            &reference(&g, &input),
            run.output_shape,
            2.0,
            &t,
        );
        eprintln!(
            "coreml mlmodel {weights:?}: {:.1} dB, {} bytes",
            c.psnr_db,
            bytes.len()
        );
        assert!(c.passed, "{weights:?}: {c:?}");
    }
    let sig = sigmoid_head(4, 16, 2);
    let sig_in = image_like(sig.input_shape, 1);
    let bytes = write_mlmodel(&sig, &CoremlOptions::default()).unwrap();
    let run = run_mlmodel(&bytes, &sig_in, PixelRange::default()).unwrap();
    assert!(run.structurally_sound(), "{:#?}", run.checks);
    let c = compare(
        &run.output_nchw,
        &reference(&sig, &sig_in),
        run.output_shape,
        1.0,
        &Thresholds::fp16(),
    );
    assert!(c.passed, "{c:?}");
    assert!(matches!(
        write_mlmodel(
            &g,
            &CoremlOptions {
                weights: WeightPrecision::Int8,
                ..Default::default()
            }
        ),
        Err(CoremlError::Unsupported(_))
    ));
}

#[test]
fn corrupt_weight_blob_is_refused() {
    let g = student_like(4, 32, 24);
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("s.mlpackage");
    write_mlpackage(&g, &pkg, &CoremlOptions::default()).unwrap();
    let wpath = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
    let mut w = std::fs::read(&wpath).unwrap();
    w[64] ^= 0xFF; // first blob's sentinel
    std::fs::write(&wpath, &w).unwrap();
    let e = read_mlpackage(&pkg).unwrap_err().to_string();
    assert!(e.contains("sentinel"), "{e}");
}

/// Largest |a - b|.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// The fast fp16 evaluation (f32 compute, every stored value rounded to fp16) against
/// tract's true fp16 kernels on the same decoded package. Stated tolerance: max-abs
/// 1/128 of the output range [-1, 1] (under one 8-bit pixel step, 2/255) and PSNR
/// 50 dB, on a real-sized net's depth with image I/O and int8 weights too.
#[test]
fn fast_fp16_is_within_tolerance_of_the_exact_fp16_path() {
    use crate::verify::coreml::{CoremlModel, Fp16Eval};
    use crate::verify::fp16::to_f16;
    let g = student_like(8, 32, 31);
    let dir = tempfile::tempdir().unwrap();
    for (k, opts) in [
        CoremlOptions::default(),
        CoremlOptions {
            image_input: true,
            image_output: true,
            weights: WeightPrecision::Int8,
            ..Default::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let pkg = dir.path().join(format!("s{k}.mlpackage"));
        write_mlpackage(&g, &pkg, &opts).unwrap();
        let decoded = read_mlpackage(&pkg).unwrap();
        let shape = decoded.graph.input_shape;
        let fast = CoremlModel::load(decoded.clone(), shape, Fp16Eval::Emulated).unwrap();
        let exact = CoremlModel::load(decoded, shape, Fp16Eval::Exact).unwrap();
        for seed in 0..3 {
            let input = pixel_input(shape, 40 + seed);
            let (f, e) = (
                fast.run(&input, PixelRange::default()).unwrap(),
                exact.run(&input, PixelRange::default()).unwrap(),
            );
            assert!(f.structurally_sound(), "{:#?}", f.checks);
            let diff = max_abs_diff(&f.output_nchw, &e.output_nchw);
            let c = compare(
                &f.output_nchw,
                &e.output_nchw,
                f.output_shape,
                2.0,
                &Thresholds::fp16(),
            );
            eprintln!(
                "fast vs exact fp16 ({:?} weights): max-abs {diff:.5}, {:.1} dB",
                opts.weights, c.psnr_db
            );
            assert!(diff <= 1.0 / 128.0, "max-abs {diff}");
            assert!(c.psnr_db >= 50.0, "{c:?}");
            // The net's own output is stored in fp16: every value is an fp16 value, and
            // the rounding did happen (the fp32 graph gives other values).
            let net_in = if opts.image_input {
                let map = fast.input_pixel_map().unwrap();
                input
                    .iter()
                    .map(|x| ((x + 1.0) * 127.5).round() * map.scale + map.bias)
                    .collect()
            } else {
                input.clone()
            };
            let (raw, _, peak) = fast.run_net(&net_in).unwrap();
            assert!(raw.iter().all(|v| *v == to_f16(*v)));
            let fp32 = reference(&fast.decoded.graph, &net_in);
            assert!(raw.iter().zip(&fp32).any(|(a, b)| a != b));
            // The range check sees the same peak as the exact path's f32 interpreter,
            // up to fp16 rounding on the way.
            let (_, _, exact_peak) = exact.run_net(&net_in).unwrap();
            // (Values that share the peak, a ReLU of a positive peak, may name either.)
            let ((wf, pf), (we, pe)) = (peak.unwrap(), exact_peak.unwrap());
            assert!(
                (pf - pe).abs() <= 0.01 * pe,
                "peak {pf} at {wf} vs {pe} at {we}"
            );
        }
    }
}

/// Activations beyond fp16's range fail the range check on the fast path too.
#[test]
fn fast_fp16_still_catches_activations_beyond_the_fp16_range() {
    let mut g = student_like(4, 32, 32);
    if let crate::ir::Op::Conv2d { weight, .. } = &mut g.nodes[0].op {
        // Largest weight 30000: still a finite fp16 weight, activations far beyond.
        let top = weight.iter().fold(0f32, |m, w| m.max(w.abs()));
        weight.iter_mut().for_each(|w| *w *= 3e4 / top);
    }
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("big.mlpackage");
    write_mlpackage(&g, &pkg, &CoremlOptions::default()).unwrap();
    let run = run_mlpackage(&pkg, &image_like(g.input_shape, 3), PixelRange::default()).unwrap();
    let range = run
        .checks
        .iter()
        .find(|c| c.name == "fp16 activation range")
        .unwrap();
    assert!(!range.passed, "{range:?}");
    assert!(range.detail.contains("fp16 max"), "{range:?}");
}
