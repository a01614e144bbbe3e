//! The onnx writer checked end to end: what it writes, run by tract (or decoded
//! back, for Core ML), computes what the IR computes. These live beside the verifier
//! they use, so `export` never depends on `verify`.

use crate::export::onnx::*;
use crate::export::quantize::{calibrate, layer_table, CalibrationMethod};
use crate::export::quantize::{ActivationType, QuantPlan};
use crate::ir::interp::eval;
use crate::ir::sample::{image_like, sigmoid_head, student_like};
use crate::ir::Graph;
use crate::verify::{compare, Thresholds, TractModel};
use prost::Message;
use tract_onnx::pb::ModelProto;

fn run_and_compare(
    bytes: &[u8],
    g: &Graph,
    input: &[f32],
    t: &Thresholds,
) -> crate::verify::Comparison {
    let reference = eval(g, input).unwrap();
    let model = TractModel::onnx(bytes, g.input_shape).unwrap();
    let (out, shape) = model.run(input).unwrap();
    assert_eq!(shape, g.output_shape().unwrap());
    compare(&out, reference.get(&g.output_name).unwrap(), shape, 2.0, t)
}

#[test]
fn fp32_onnx_matches_the_interpreter() {
    let g = student_like(4, 32, 7);
    let bytes = write(&g, OnnxPrecision::Fp32).unwrap();
    let model = ModelProto::decode(&bytes[..]).unwrap();
    assert_eq!(model.opset_import[0].version, 17);
    assert_eq!(model.ir_version, 8);
    let c = run_and_compare(
        &bytes,
        &g,
        &image_like(g.input_shape, 1),
        &Thresholds::fp32(),
    );
    eprintln!(
        "onnx fp32: {:.1} dB, ssim {:.5}, {} bytes",
        c.psnr_db,
        c.ssim,
        bytes.len()
    );
    assert!(c.passed, "{c:?}");
    // Deterministic bytes.
    assert_eq!(bytes, write(&g, OnnxPrecision::Fp32).unwrap());
}

#[test]
fn fp16_onnx_passes_the_fp16_bar() {
    let g = student_like(4, 32, 8);
    let bytes = write(&g, OnnxPrecision::Fp16).unwrap();
    let c = run_and_compare(
        &bytes,
        &g,
        &image_like(g.input_shape, 2),
        &Thresholds::fp16(),
    );
    eprintln!(
        "onnx fp16: {:.1} dB, ssim {:.5}, {} bytes",
        c.psnr_db,
        c.ssim,
        bytes.len()
    );
    assert!(c.passed, "{c:?}");
}

#[test]
fn int8_qdq_onnx_passes_the_int8_bar_and_agrees_with_the_simulator() {
    let g = student_like(8, 32, 9);
    let calib: Vec<Vec<f32>> = (0..4).map(|s| image_like(g.input_shape, 100 + s)).collect();
    let calibration = calibrate(&g, &calib, CalibrationMethod::Percentile(99.99)).unwrap();
    for activations in [ActivationType::Int8, ActivationType::Uint8] {
        let bytes = write(
            &g,
            OnnxPrecision::Int8Qdq {
                calibration: &calibration,
                activations,
            },
        )
        .unwrap();
        let input = image_like(g.input_shape, 3);
        let c = run_and_compare(&bytes, &g, &input, &Thresholds::int8());
        eprintln!(
            "onnx int8 {activations:?}: {:.1} dB, ssim {:.4}, {} bytes",
            c.psnr_db,
            c.ssim,
            bytes.len()
        );
        assert!(c.passed, "{c:?}");
        // tract's int8 run and the Rust simulation of the same plan agree far more
        // closely than either agrees with fp32.
        let plan = QuantPlan::new(&g, &calibration, activations).unwrap();
        let sim = plan.simulate(&g, &input).unwrap();
        let (out, shape) = TractModel::onnx(&bytes, g.input_shape)
            .unwrap()
            .run(&input)
            .unwrap();
        let agree = compare(
            &out,
            sim.get(&g.output_name).unwrap(),
            shape,
            2.0,
            &Thresholds::int8(),
        );
        assert!(
            agree.psnr_db > c.psnr_db + 3.0,
            "sim {:.1} dB vs fp32 {:.1} dB",
            agree.psnr_db,
            c.psnr_db
        );
    }
}

#[test]
fn sigmoid_head_in_fp32_and_int8() {
    let g = sigmoid_head(4, 16, 3);
    let input = image_like(g.input_shape, 5);
    let c = run_and_compare(
        &write(&g, OnnxPrecision::Fp32).unwrap(),
        &g,
        &input,
        &Thresholds::fp32(),
    );
    assert!(c.passed, "{c:?}");
    let calibration = calibrate(&g, &[input.clone()], CalibrationMethod::MinMax).unwrap();
    let bytes = write(
        &g,
        OnnxPrecision::Int8Qdq {
            calibration: &calibration,
            activations: ActivationType::Int8,
        },
    )
    .unwrap();
    let reference = eval(&g, &input).unwrap();
    let (out, shape) = TractModel::onnx(&bytes, g.input_shape)
        .unwrap()
        .run(&input)
        .unwrap();
    let c = compare(
        &out,
        reference.get("mask").unwrap(),
        shape,
        1.0,
        &Thresholds::int8(),
    );
    assert!(c.passed, "{c:?}");
}

#[test]
fn badly_calibrated_int8_fails_with_a_table_naming_the_worst_layer() {
    let g = student_like(8, 32, 9);
    // Calibrated on inputs 100x too dark: every range is far too small.
    let calib: Vec<Vec<f32>> = (0..2)
        .map(|s| {
            image_like(g.input_shape, 100 + s)
                .iter()
                .map(|v| v * 0.01)
                .collect()
        })
        .collect();
    let calibration = calibrate(&g, &calib, CalibrationMethod::MinMax).unwrap();
    let bytes = write(
        &g,
        OnnxPrecision::Int8Qdq {
            calibration: &calibration,
            activations: ActivationType::Int8,
        },
    )
    .unwrap();
    let input = image_like(g.input_shape, 3);
    let c = run_and_compare(&bytes, &g, &input, &Thresholds::int8());
    assert!(!c.passed, "{c:?}");
    let plan = QuantPlan::new(&g, &calibration, ActivationType::Int8).unwrap();
    let table = layer_table(&g, &plan, &[input]).unwrap();
    eprintln!("{table}");
    assert_eq!(table.rows.len(), g.nodes.len());
    let worst = table
        .rows
        .iter()
        .find(|r| r.name == table.worst_layer)
        .unwrap();
    assert!(
        worst.local_psnr_db < 35.0 && worst.clipped_fraction > 0.1,
        "{worst:?}"
    );
    assert!(table.to_string().contains("<- worst"));
    // A well calibrated plan's worst layer is far better.
    let good = calibrate(
        &g,
        &(0..2)
            .map(|s| image_like(g.input_shape, 100 + s))
            .collect::<Vec<_>>(),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let good_plan = QuantPlan::new(&g, &good, ActivationType::Int8).unwrap();
    let good_table = layer_table(&g, &good_plan, &[image_like(g.input_shape, 3)]).unwrap();
    let good_worst = good_table
        .rows
        .iter()
        .map(|r| r.local_psnr_db)
        .fold(f64::INFINITY, f64::min);
    assert!(good_worst > worst.local_psnr_db + 10.0, "{good_table}");
}
