//! Small random graphs shaped like the distilled student (stem conv, stride-2 convs,
//! depthwise + pointwise blocks, residual adds, upsample + conv, skip add and concat,
//! a blur conv with asymmetric pads, tanh head) and image-like inputs. The writers'
//! tests use them; so can integration tests and demos that need a graph without
//! training one.

use crate::ir::{Graph, Node, Op};

/// Deterministic xorshift generator: tests must not depend on a `rand` version.
pub struct SplitRng(u64);

impl SplitRng {
    pub fn new(seed: u64) -> Self {
        SplitRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn conv(
    rng: &mut SplitRng,
    name: &str,
    input: &str,
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    pads: [usize; 4],
    depthwise: bool,
) -> Node {
    let (groups, cpg) = if depthwise { (in_ch, 1) } else { (1, in_ch) };
    let fan_in = (cpg * kernel * kernel) as f32;
    // Variance-preserving uniform init: activations stay O(1) through the net.
    let limit = (3.0 / fan_in).sqrt();
    let weight = (0..out_ch * cpg * kernel * kernel)
        .map(|_| rng.symmetric() * limit)
        .collect();
    let bias = (0..out_ch).map(|_| rng.symmetric() * 0.1).collect();
    Node {
        name: name.into(),
        op: Op::Conv2d {
            weight,
            weight_shape: [out_ch, cpg, kernel, kernel],
            bias,
            stride: [stride, stride],
            pads,
            groups,
        },
        inputs: vec![input.into()],
    }
}

fn unary(name: &str, op: Op, input: &str) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: vec![input.into()],
    }
}

fn binary(name: &str, op: Op, a: &str, b: &str) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: vec![a.into(), b.into()],
    }
}

/// A student-shaped graph: RGB `resolution_px` square in, RGB out in [-1, 1].
/// `resolution_px` must be a multiple of 4; `width` is the stem's channel count.
pub fn student_like(width: usize, resolution_px: usize, seed: u64) -> Graph {
    let mut rng = SplitRng::new(seed);
    let w = width;
    let p1 = [1, 1, 1, 1];
    let nodes = vec![
        conv(&mut rng, "stem", "image", 3, w, 3, 1, p1, false),
        unary("stem_relu", Op::Relu, "stem"),
        // 1/2 resolution
        conv(&mut rng, "down1", "stem_relu", w, 2 * w, 3, 2, p1, false),
        unary("down1_relu", Op::Relu, "down1"),
        // 1/4 resolution: depthwise stride 2 + pointwise
        conv(
            &mut rng,
            "down2_dw",
            "down1_relu",
            2 * w,
            2 * w,
            3,
            2,
            p1,
            true,
        ),
        conv(
            &mut rng,
            "down2_pw",
            "down2_dw",
            2 * w,
            4 * w,
            1,
            1,
            [0; 4],
            false,
        ),
        unary("down2_relu", Op::Relu, "down2_pw"),
        // bridge: residual depthwise-separable block
        conv(
            &mut rng,
            "block_dw",
            "down2_relu",
            4 * w,
            4 * w,
            3,
            1,
            p1,
            true,
        ),
        unary("block_dw_relu", Op::Relu, "block_dw"),
        conv(
            &mut rng,
            "block_pw",
            "block_dw_relu",
            4 * w,
            4 * w,
            1,
            1,
            [0; 4],
            false,
        ),
        binary("block_add", Op::Add, "block_pw", "down2_relu"),
        unary("block_relu", Op::Relu, "block_add"),
        // decoder: upsample, blur (4x4, asymmetric pads), conv, skip add
        unary("up1", Op::UpsampleNearest { factor: 2 }, "block_relu"),
        conv(
            &mut rng,
            "up1_blur",
            "up1",
            4 * w,
            4 * w,
            4,
            1,
            [1, 1, 2, 2],
            true,
        ),
        conv(
            &mut rng,
            "up1_conv",
            "up1_blur",
            4 * w,
            2 * w,
            3,
            1,
            p1,
            false,
        ),
        unary("up1_relu", Op::Relu, "up1_conv"),
        binary("skip1", Op::Add, "up1_relu", "down1_relu"),
        unary("up2", Op::UpsampleNearest { factor: 2 }, "skip1"),
        conv(&mut rng, "up2_conv", "up2", 2 * w, w, 3, 1, p1, false),
        unary("up2_relu", Op::Relu, "up2_conv"),
        Node {
            name: "skip0".into(),
            op: Op::ConcatChannels,
            inputs: vec!["up2_relu".into(), "stem_relu".into()],
        },
        conv(&mut rng, "head", "skip0", 2 * w, 3, 3, 1, p1, false),
        unary("out", Op::Tanh, "head"),
    ];
    Graph {
        input_name: "image".into(),
        input_shape: [1, 3, resolution_px, resolution_px],
        nodes,
        output_name: "out".into(),
    }
}

/// A tiny graph ending in a sigmoid (mask-style heads), to cover that op.
pub fn sigmoid_head(width: usize, resolution_px: usize, seed: u64) -> Graph {
    let mut rng = SplitRng::new(seed);
    let nodes = vec![
        conv(&mut rng, "c1", "image", 3, width, 3, 1, [1, 1, 1, 1], false),
        unary("r1", Op::Relu, "c1"),
        conv(&mut rng, "c2", "r1", width, 1, 3, 1, [1, 1, 1, 1], false),
        unary("mask", Op::Sigmoid, "c2"),
    ];
    Graph {
        input_name: "image".into(),
        input_shape: [1, 3, resolution_px, resolution_px],
        nodes,
        output_name: "mask".into(),
    }
}

/// A narrow ReLU (`stem.relu`) read by a conv and added to a value 20x wider (`wide`),
/// the accordion's stem skip in small: an int8 plan that gave the ADD one grid would
/// leave `stem.relu` a dozen levels.
pub fn narrow_skip(width: usize, resolution_px: usize, seed: u64) -> Graph {
    let mut rng = SplitRng::new(seed);
    let mut wide = conv(
        &mut rng,
        "wide",
        "stem.relu",
        width,
        width,
        1,
        1,
        [0; 4],
        false,
    );
    if let Op::Conv2d { weight, .. } = &mut wide.op {
        weight.iter_mut().for_each(|w| *w *= 20.0);
    }
    let nodes = vec![
        conv(
            &mut rng,
            "stem",
            "image",
            3,
            width,
            3,
            1,
            [1, 1, 1, 1],
            false,
        ),
        unary("stem.relu", Op::Relu, "stem"),
        wide,
        unary("wide.relu", Op::Relu, "wide"),
        binary("sum", Op::Add, "wide.relu", "stem.relu"),
        conv(
            &mut rng,
            "down",
            "stem.relu",
            width,
            width,
            3,
            1,
            [1, 1, 1, 1],
            false,
        ),
        unary("down.relu", Op::Relu, "down"),
        conv(&mut rng, "mix", "sum", width, 3, 1, 1, [0; 4], false),
        conv(&mut rng, "mix2", "down.relu", width, 3, 1, 1, [0; 4], false),
        binary("pre", Op::Add, "mix", "mix2"),
        unary("out", Op::Tanh, "pre"),
    ];
    Graph {
        input_name: "image".into(),
        input_shape: [1, 3, resolution_px, resolution_px],
        nodes,
        output_name: "out".into(),
    }
}

/// An image-like NCHW input in [-1, 1]: smooth gradients and blobs plus a little noise,
/// so SSIM and calibration see something like a photo rather than white noise.
pub fn image_like(shape: [usize; 4], seed: u64) -> Vec<f32> {
    let mut rng = SplitRng::new(seed ^ 0xA5A5);
    let [n, c, h, w] = shape;
    let phases: Vec<f32> = (0..8).map(|_| rng.symmetric() * 3.0).collect();
    let mut out = Vec::with_capacity(n * c * h * w);
    for _ in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
                    let v = 0.5
                        * (phases[ch % 8] + 6.0 * fx + 4.0 * fy * phases[(ch + 3) % 8]).sin()
                        + 0.3 * (phases[(ch + 5) % 8] * 5.0 * fy - 3.0 * fx).cos()
                        + 0.1 * rng.symmetric();
                    out.push(v.clamp(-1.0, 1.0));
                }
            }
        }
    }
    out
}
