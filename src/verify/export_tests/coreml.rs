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
