//! The fast int8 path (`verify::int8`) against tract's quantized kernels: identical
//! outputs, bit for bit, on several students and inputs (saturating ones included).

use crate::export::quantize::{calibrate, CalibrationMethod};
use crate::export::tflite::{self, TflitePrecision};
use crate::export::tflite_size::tflite_at_size;
use crate::ir::sample::{image_like, narrow_skip, sigmoid_head, student_like};
use crate::ir::Graph;
use crate::nn::accordion::Accordion;
use crate::nn::AccordionConfig;
use crate::verify::int8::{FastInt8, Int8Eval, Int8Runner, F32_EXACT};
use crate::verify::TractModel;

fn accordion(width: i64, blocks: i64, size: usize) -> Graph {
    tch::manual_seed(width * 10 + blocks);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    Accordion::new(&vs.root(), AccordionConfig { width, blocks }).to_ir([1, 3, size, size])
}

/// Inputs: two image-like frames, one far outside [-1, 1] (the input QUANTIZE and the
/// activations saturate), one flat.
fn inputs(shape: [usize; 4]) -> Vec<Vec<f32>> {
    let n = shape.iter().product();
    vec![
        image_like(shape, 1),
        image_like(shape, 2),
        image_like(shape, 3).iter().map(|v| v * 6.0).collect(),
        vec![0.9; n],
    ]
}

/// Every input through tract and the fast path: the same f32 bits (so the same int8).
fn assert_identical(name: &str, core: &[u8], shape: [usize; 4], limit: f64) -> FastInt8 {
    let exact = TractModel::tflite(core, shape).unwrap();
    let fast = FastInt8::load(core, shape, limit).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (k, x) in inputs(shape).iter().enumerate() {
        let (a, sa) = exact.run(x).unwrap();
        let (b, sb) = fast.run(x).unwrap();
        assert_eq!(sa, sb, "{name} input {k}: shapes");
        let diff = a
            .iter()
            .zip(&b)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            diff,
            0,
            "{name} input {k}: {diff} of {} values differ",
            a.len()
        );
    }
    fast
}

/// An int8 core of `g`, calibrated on `scale` × image-like frames (a small scale: a
/// dark calibration, so real frames saturate every activation).
fn core(g: &Graph, scale: f32) -> Vec<u8> {
    let calib: Vec<Vec<f32>> = (0..2)
        .map(|s| {
            image_like(g.input_shape, 50 + s)
                .iter()
                .map(|v| v * scale)
                .collect()
        })
        .collect();
    let cal = calibrate(g, &calib, CalibrationMethod::Percentile(99.99)).unwrap();
    tflite::write(g, TflitePrecision::Int8(&cal)).unwrap().core
}

#[test]
fn fast_int8_matches_tract_bit_for_bit() {
    let graphs = [
        ("student_like w4 32px", student_like(4, 32, 71)),
        ("student_like w8 64px", student_like(8, 64, 72)),
        ("sigmoid head (one output channel)", sigmoid_head(4, 32, 73)),
        ("accordion w4 b1 32px", accordion(4, 1, 32)),
        ("accordion w8 b2 48px", accordion(8, 2, 48)),
        // An ADD input requantized onto the ADD's grid (`quantize::int8_graph`).
        ("narrow skip w4 32px", narrow_skip(4, 32, 75)),
    ];
    for (name, g) in &graphs {
        for (what, scale) in [("calibrated", 1.0), ("dark calibration", 0.05)] {
            let bytes = core(g, scale);
            let fast =
                assert_identical(&format!("{name}, {what}"), &bytes, g.input_shape, F32_EXACT);
            // Real layers fit one exact f32 slice.
            assert_eq!(fast.sliced_convs(), 0, "{name}");
        }
    }
    // The accordion's file rewritten for another size (what preview runs).
    let g = accordion(4, 1, 32);
    let at64 = tflite_at_size(&core(&g, 1.0), 64).unwrap();
    assert_identical("accordion at 64px", &at64, [1, 3, 64, 64], F32_EXACT);
    // The runner picks the fast path for these files, tract when asked.
    assert!(Int8Runner::load(&at64, [1, 3, 64, 64], Int8Eval::Fast)
        .unwrap()
        .is_fast());
    assert!(!Int8Runner::load(&at64, [1, 3, 64, 64], Int8Eval::Exact)
        .unwrap()
        .is_fast());
}

/// Where a layer's bound Σ|w|·max|x − zx| passes the exact limit, the reduction is
/// split into exact slices summed in i32: still identical. (The limit is lowered here
/// so that small layers cross it.)
#[test]
fn fast_int8_splits_reductions_past_the_f32_exact_bound() {
    for (name, g) in [
        ("student_like w8 32px", student_like(8, 32, 74)),
        ("accordion w8 b1 32px", accordion(8, 1, 32)),
    ] {
        let bytes = core(&g, 1.0);
        let fast = assert_identical(name, &bytes, g.input_shape, (1 << 14) as f64);
        assert!(fast.sliced_convs() > 0, "{name}: no layer was split");
    }
}
