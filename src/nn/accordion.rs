//! The accordion: encoder down 8x, a bridge of residual blocks, decoder back up, with
//! U-Net skips. Width `w` sets every channel count (w, 2w, 4w, 4w), so teacher and
//! student differ only in width. Mobile habits keep the default student (w=32, 6
//! blocks) under 4 GMACs at 512x512: depthwise-separable down/up blocks and a bridge of
//! depthwise residual blocks, all plain convs a phone runs natively.
//!
//! The decoder upsamples sub-pixel style (ESPCN): a pointwise conv at the low
//! resolution makes 4x the channels and depth-to-space lays them out as 2x2 pixels.
//! Each of the four gets its own learned value, so the decoder can draw what is locked
//! to the frame's grid (brick studs, seams, halftone dots) even where the photo is
//! flat; a nearest upsample followed by convs cannot, since in a flat region every
//! sub-pixel sees the same neighbourhood (docs/design-notes.md, "Why the teacher
//! plateaued").
//!
//! A 1x1 conv from the input straight to the output (before the tanh) gives the net a
//! full-resolution linear colour path: the rest of the net learns only what a colour
//! matrix cannot do. Without it every pixel's colour had to pass through the stem's `w`
//! ReLU features and the last 3x3 conv, and a plain colour grade stopped at 24 dB
//! (docs/design-notes.md, "A colour path from input to output"). It costs 9 MACs per
//! pixel and uses only Conv and Add, which every target runs.
//!
//! Flat tones and ink lines (posterise, toon, comic) are hard thresholds of the colour
//! and its gradient, drawn at full resolution. Two things let the net draw them in a
//! CPU budget (docs/design-notes.md, "Flat tones and ink lines"): a residual block at
//! full resolution before the output (`fine`: two more ReLU layers where the lines
//! are), and learned per-channel gains on the stem, the output and the decoder's
//! pointwise convs, which steepen a ramp into a step geometrically instead of by `lr` a
//! step. Both fold into plain convs at export.

pub use super::config::AccordionConfig;
use super::layers::{depth_to_space, EqConv};
use crate::ir::{Graph, Node, Op};
use tch::{nn, Device, Tensor};

struct Down {
    dw: EqConv,
    pw: EqConv,
}

struct Bridge {
    a: EqConv,
    dw: EqConv,
    b: EqConv,
}

struct Up {
    dw: EqConv,
    pw: EqConv,
}

pub struct Accordion {
    pub cfg: AccordionConfig,
    stem: EqConv,
    downs: Vec<Down>,
    bridge: Vec<Bridge>,
    ups: Vec<Up>, // from the 1/8 level up to full resolution
    /// A residual block at full resolution before `out` (see the module comment).
    fine: Bridge,
    out: EqConv,
    /// Input → output pointwise colour path (see the module comment).
    skip: EqConv,
}

impl Accordion {
    /// Builds the net's variables under `p` (names are the checkpoint's names).
    pub fn new(p: &nn::Path, cfg: AccordionConfig) -> Accordion {
        let c = cfg.channels();
        // Learned gains (see `EqConv::with_gain`) where a hard threshold is drawn: the
        // full-resolution stem and output and the decoder's pointwise convs.
        let stem = EqConv::new(p / "stem", 3, c[0], 3, 1, 1, 1).with_gain(p / "stem");
        let mut downs = Vec::new();
        for i in 1..4 {
            let q = p / format!("down{i}");
            // A learned 2x2 stride-2 depthwise window: each low-resolution pixel sees
            // exactly its own 2x2 block, so cells of a grid-locked style (bricks, pixel
            // art) stay separate instead of being blurred into their neighbours.
            downs.push(Down {
                dw: EqConv::new(&q / "dw", c[i - 1], c[i - 1], 2, 2, 0, c[i - 1]),
                pw: EqConv::new(&q / "pw", c[i - 1], c[i], 1, 1, 0, 1),
            });
        }
        let bridge = (0..cfg.blocks)
            .map(|j| {
                let q = p / format!("bridge{j}");
                Bridge {
                    a: EqConv::new(&q / "a", c[3], c[3], 1, 1, 0, 1),
                    dw: EqConv::new(&q / "dw", c[3], c[3], 3, 1, 1, c[3]),
                    b: EqConv::new(&q / "b", c[3], c[3], 1, 1, 0, 1),
                }
            })
            .collect();
        let mut ups = Vec::new();
        for i in (1..4).rev() {
            let q = p / format!("up{i}");
            // At the low resolution: depthwise 3x3, then pointwise to the 2x2 sub-pixels
            // of the next level's channels (laid out by depth-to-space).
            ups.push(Up {
                dw: EqConv::new(&q / "dw", c[i], c[i], 3, 1, 1, c[i]),
                pw: EqConv::new(&q / "pw", c[i], 4 * c[i - 1], 1, 1, 0, 1).with_gain(&q / "pw"),
            });
        }
        let q = p / "fine";
        let fine = Bridge {
            a: EqConv::new(&q / "a", c[0], c[0], 1, 1, 0, 1),
            dw: EqConv::new(&q / "dw", c[0], c[0], 3, 1, 1, c[0]),
            b: EqConv::new(&q / "b", c[0], c[0], 1, 1, 0, 1),
        };
        let out = EqConv::new(p / "out", c[0], 3, 3, 1, 1, 1).with_gain(p / "out");
        // Starts as the identity: an untrained net passes the photo through.
        let skip = EqConv::new(p / "skip", 3, 3, 1, 1, 0, 1);
        tch::no_grad(|| {
            let eye = Tensor::eye(3, (tch::Kind::Float, skip.weight.device())) / skip.scale;
            let _ = skip.weight.view([3, 3]).copy_(&eye);
        });
        Accordion {
            cfg,
            stem,
            downs,
            bridge,
            ups,
            fine,
            out,
            skip,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_with_features(x).0
    }

    /// Output (NCHW, tanh range) and the 8 stage features distillation matches:
    /// stem, down1..3, bridge, up3..1.
    pub fn forward_with_features(&self, x: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut feats = Vec::with_capacity(8);
        let mut h = self.stem.forward(x).relu();
        let mut skips = vec![h.shallow_clone()];
        feats.push(h.shallow_clone());
        for d in &self.downs {
            h = d.pw.forward(&d.dw.forward(&h)).relu();
            skips.push(h.shallow_clone());
            feats.push(h.shallow_clone());
        }
        for b in &self.bridge {
            let r = b.b.forward(&b.dw.forward(&b.a.forward(&h).relu()).relu());
            h = h + r;
        }
        feats.push(h.shallow_clone());
        for (level, u) in self.ups.iter().enumerate() {
            let skip = &skips[2 - level];
            // ReLU before depth-to-space (they commute): the conv and its ReLU fuse
            // into one int8 op on the phone.
            h = depth_to_space(&u.pw.forward(&u.dw.forward(&h)).relu(), 2) + skip;
            feats.push(h.shallow_clone());
        }
        let f = &self.fine;
        h = &h + f.b.forward(&f.dw.forward(&f.a.forward(&h).relu()).relu());
        let y = self.out.forward(&h) + self.skip.forward(x);
        (y.tanh(), feats)
    }

    /// Lowers the net to the export IR with equalized-lr scales and blur kernels folded
    /// into plain conv weights. `input_shape` is `[1, 3, H, W]`.
    pub fn to_ir(&self, input_shape: [usize; 4]) -> Graph {
        let mut b = IrBuilder { nodes: Vec::new() };
        let mut h = b.conv(
            "stem",
            "input",
            &self.stem.effective_weight(),
            &self.stem.effective_bias(),
            1,
            [1, 1, 1, 1],
            1,
        );
        h = b.relu("stem.relu", &h);
        let mut skips = vec![h.clone()];
        for (i, d) in self.downs.iter().enumerate() {
            let dw = b.conv(
                &format!("down{}.dw", i + 1),
                &h,
                &d.dw.effective_weight(),
                &d.dw.effective_bias(),
                2,
                [0, 0, 0, 0],
                d.dw.groups as usize,
            );
            let pw = b.conv(
                &format!("down{}.pw", i + 1),
                &dw,
                &d.pw.effective_weight(),
                &d.pw.effective_bias(),
                1,
                [0, 0, 0, 0],
                1,
            );
            h = b.relu(&format!("down{}.relu", i + 1), &pw);
            skips.push(h.clone());
        }
        for (j, r) in self.bridge.iter().enumerate() {
            h = b.residual(&format!("bridge{j}"), &h, r);
        }
        for (level, u) in self.ups.iter().enumerate() {
            let i = 3 - level;
            let dw = b.conv(
                &format!("up{i}.dw"),
                &h,
                &u.dw.effective_weight(),
                &u.dw.effective_bias(),
                1,
                [1, 1, 1, 1],
                u.dw.groups as usize,
            );
            let pw = b.conv(
                &format!("up{i}.pw"),
                &dw,
                &u.pw.effective_weight(),
                &u.pw.effective_bias(),
                1,
                [0, 0, 0, 0],
                1,
            );
            let act = b.relu(&format!("up{i}.relu"), &pw);
            let up = b.push(
                &format!("up{i}.d2s"),
                Op::DepthToSpace { block: 2 },
                vec![act],
            );
            h = b.add(&format!("up{i}.skip"), &up, &skips[2 - level]);
        }
        h = b.residual("fine", &h, &self.fine);
        let mut out = b.conv(
            "out",
            &h,
            &self.out.effective_weight(),
            &self.out.effective_bias(),
            1,
            [1, 1, 1, 1],
            1,
        );
        let skip = b.conv(
            "skip",
            "input",
            &self.skip.effective_weight(),
            &self.skip.effective_bias(),
            1,
            [0, 0, 0, 0],
            1,
        );
        out = b.add("skip.add", &out, &skip);
        let out = b.push("output", Op::Tanh, vec![out]);
        Graph {
            input_name: "input".into(),
            input_shape,
            nodes: b.nodes,
            output_name: out,
        }
    }
}

struct IrBuilder {
    nodes: Vec<Node>,
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t
        .to_device(Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&t).unwrap_or_default()
}

impl IrBuilder {
    fn push(&mut self, name: &str, op: Op, inputs: Vec<String>) -> String {
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
        });
        name.to_string()
    }
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        input: &str,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        pads: [usize; 4],
        groups: usize,
    ) -> String {
        let s = weight.size();
        let op = Op::Conv2d {
            weight: to_vec(&tch::no_grad(|| weight.detach())),
            weight_shape: [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize],
            bias: to_vec(&tch::no_grad(|| bias.detach())),
            stride: [stride, stride],
            pads,
            groups,
        };
        self.push(name, op, vec![input.to_string()])
    }
    /// `h + b(relu(dw(relu(a(h)))))`, nodes named `{name}.a`, `{name}.dw`, ...
    fn residual(&mut self, name: &str, h: &str, r: &Bridge) -> String {
        let a = self.conv(
            &format!("{name}.a"),
            h,
            &r.a.effective_weight(),
            &r.a.effective_bias(),
            1,
            [0, 0, 0, 0],
            1,
        );
        let a = self.relu(&format!("{name}.a.relu"), &a);
        let dw = self.conv(
            &format!("{name}.dw"),
            &a,
            &r.dw.effective_weight(),
            &r.dw.effective_bias(),
            1,
            [1, 1, 1, 1],
            r.dw.groups as usize,
        );
        let dw = self.relu(&format!("{name}.dw.relu"), &dw);
        let bb = self.conv(
            &format!("{name}.b"),
            &dw,
            &r.b.effective_weight(),
            &r.b.effective_bias(),
            1,
            [0, 0, 0, 0],
            1,
        );
        self.add(&format!("{name}.add"), h, &bb)
    }
    fn relu(&mut self, name: &str, input: &str) -> String {
        self.push(name, Op::Relu, vec![input.to_string()])
    }
    fn add(&mut self, name: &str, a: &str, b: &str) -> String {
        self.push(name, Op::Add, vec![a.to_string(), b.to_string()])
    }
}

/// Trainable parameters of an accordion of this config.
pub fn count_params(cfg: AccordionConfig) -> u64 {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = Accordion::new(&vs.root(), cfg);
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as u64)
        .sum()
}

/// Multiply-accumulates of one forward pass at `h`x`w` (blurs included).
pub fn macs(cfg: AccordionConfig, h: usize, w: usize) -> u64 {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Accordion::new(&vs.root(), cfg);
    net.to_ir([1, 3, h, w]).macs().unwrap_or(0)
}
