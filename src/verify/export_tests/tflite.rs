//! The tflite writer checked end to end: what it writes, run by tract (or decoded
//! back, for Core ML), computes what the IR computes. These live beside the verifier
//! they use, so `export` never depends on `verify`.

use crate::export::quantize::{calibrate, CalibrationMethod};
use crate::export::quantize::{ActivationType, QuantPlan};
use crate::export::tflite::*;
use crate::ir::interp::eval;
use crate::ir::sample::{image_like, sigmoid_head, student_like};
use crate::tflite::{parse, serialize, BuiltinOperator, TensorType};
use crate::verify::{compare, Thresholds, TractModel};

#[test]
fn float_tflite_matches_the_interpreter() {
    let g = student_like(4, 32, 11);
    let files = write(&g, TflitePrecision::Float32).unwrap();
    assert_eq!(files.shipped, files.core);
    let input = image_like(g.input_shape, 4);
    let reference = eval(&g, &input).unwrap();
    let (out, shape) = TractModel::tflite(&files.shipped, g.input_shape)
        .unwrap()
        .run(&input)
        .unwrap();
    assert_eq!(shape, [1, 3, 32, 32]);
    let c = compare(
        &out,
        reference.get("out").unwrap(),
        shape,
        2.0,
        &Thresholds::fp32(),
    );
    eprintln!(
        "tflite float: {:.1} dB, {} bytes",
        c.psnr_db,
        files.shipped.len()
    );
    assert!(c.passed, "{c:?}");
    let desc = parse(&files.shipped).unwrap();
    assert_eq!(
        serialize(&desc).unwrap(),
        files.shipped,
        "parse/serialize round trip"
    );
}

#[test]
fn int8_core_passes_in_tract_and_is_the_shipped_file_minus_its_edges() {
    let g = student_like(8, 32, 12);
    let calib: Vec<Vec<f32>> = (0..4).map(|s| image_like(g.input_shape, 200 + s)).collect();
    let calibration = calibrate(&g, &calib, CalibrationMethod::Percentile(99.99)).unwrap();
    let files = write(&g, TflitePrecision::Int8(&calibration)).unwrap();
    assert_eq!(core_of_shipped(&files.shipped).unwrap(), files.core);
    let shipped = parse(&files.shipped).unwrap();
    assert!(
        serialize(&shipped).unwrap() == files.shipped,
        "int8 parse/serialize round trip"
    );
    let allowed = [
        BuiltinOperator::CONV_2D,
        BuiltinOperator::DEPTHWISE_CONV_2D,
        BuiltinOperator::ADD,
        BuiltinOperator::RELU,
        BuiltinOperator::RESIZE_NEAREST_NEIGHBOR,
        BuiltinOperator::PAD,
        BuiltinOperator::CONCATENATION,
        BuiltinOperator::TANH,
        BuiltinOperator::LOGISTIC,
        BuiltinOperator::QUANTIZE,
        BuiltinOperator::DEQUANTIZE,
    ];
    assert!(shipped.ops.iter().all(|o| allowed.contains(&o.code)));
    assert_eq!(
        shipped.tensors[shipped.inputs[0] as usize].dtype,
        TensorType::FLOAT32
    );
    assert_eq!(
        shipped.tensors[shipped.outputs[0] as usize].dtype,
        TensorType::FLOAT32
    );
    // Every non-edge activation is int8, every ADD's inputs and output share a grid.
    for op in &shipped.ops {
        if op.code == BuiltinOperator::ADD {
            let q: Vec<_> = op
                .inputs
                .iter()
                .chain(&op.outputs)
                .map(|t| shipped.tensors[*t as usize].quant.clone())
                .collect();
            assert!(q.windows(2).all(|w| w[0] == w[1]), "{q:?}");
        }
    }
    let input = image_like(g.input_shape, 5);
    let reference = eval(&g, &input).unwrap();
    let model = TractModel::tflite(&files.core, g.input_shape).unwrap();
    let (out, shape) = model.run(&input).unwrap();
    let c = compare(
        &out,
        reference.get("out").unwrap(),
        shape,
        2.0,
        &Thresholds::int8(),
    );
    eprintln!(
        "tflite int8 core: {:.1} dB ssim {:.4}, shipped {} bytes",
        c.psnr_db,
        c.ssim,
        files.shipped.len()
    );
    assert!(c.passed, "{c:?}");
    // tract's integer run and the Rust simulation of the same plan agree much more
    // closely than either agrees with fp32: the file holds the planned numbers.
    let plan = QuantPlan::new(&g, &calibration, ActivationType::Int8).unwrap();
    let sim = plan.simulate(&g, &input).unwrap();
    let agree = compare(
        &out,
        sim.get("out").unwrap(),
        shape,
        2.0,
        &Thresholds::int8(),
    );
    eprintln!("tflite int8 core vs simulator: {:.1} dB", agree.psnr_db);
    assert!(agree.psnr_db > c.psnr_db + 3.0);
}

#[test]
fn sigmoid_head_int8() {
    let g = sigmoid_head(4, 16, 3);
    let input = image_like(g.input_shape, 5);
    let calibration = calibrate(&g, &[input.clone()], CalibrationMethod::MinMax).unwrap();
    let files = write(&g, TflitePrecision::Int8(&calibration)).unwrap();
    let reference = eval(&g, &input).unwrap();
    let (out, shape) = TractModel::tflite(&files.core, g.input_shape)
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
    eprintln!("tflite int8 sigmoid: {:.1} dB", c.psnr_db);
    assert!(c.passed, "{c:?}");
}
