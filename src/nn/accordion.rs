//! The accordion: encoder down 8x, a bridge of residual blocks, decoder back up, with
//! U-Net skips. Width `w` sets every channel count (w, 2w, 4w, 4w), so teacher and
//! student differ only in width. Mobile habits keep the default student (w=32, 6
//! blocks) near 4 GMACs at 512x512: depthwise-separable down/up blocks and a bridge of
//! depthwise residual blocks, all plain convs a phone runs natively.

pub use super::config::AccordionConfig;
use super::layers::{blur3_kernel, blur4_kernel, blur_down, up_blur, EqConv};
use crate::export::ir::{Graph, Node, Op};
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
    out: EqConv,
    blur4: Vec<Tensor>, // per down level, [c, 1, 4, 4]
    blur3: Vec<Tensor>, // per up level
}

impl Accordion {
    /// Builds the net's variables under `p` (names are the checkpoint's names).
    pub fn new(p: &nn::Path, cfg: AccordionConfig) -> Accordion {
        let c = cfg.channels();
        let device = p.device();
        let stem = EqConv::new(p / "stem", 3, c[0], 3, 1, 1, 1);
        let mut downs = Vec::new();
        let mut blur4 = Vec::new();
        for i in 1..4 {
            let q = p / format!("down{i}");
            downs.push(Down {
                dw: EqConv::new(&q / "dw", c[i - 1], c[i - 1], 3, 2, 0, c[i - 1]),
                pw: EqConv::new(&q / "pw", c[i - 1], c[i], 1, 1, 0, 1),
            });
            blur4.push(blur4_kernel(c[i - 1]).to_device(device));
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
        let mut blur3 = Vec::new();
        for i in (1..4).rev() {
            let q = p / format!("up{i}");
            ups.push(Up {
                dw: EqConv::new(&q / "dw", c[i], c[i], 3, 1, 1, c[i]),
                pw: EqConv::new(&q / "pw", c[i], c[i - 1], 1, 1, 0, 1),
            });
            blur3.push(blur3_kernel(c[i]).to_device(device));
        }
        let out = EqConv::new(p / "out", c[0], 3, 3, 1, 1, 1);
        Accordion {
            cfg,
            stem,
            downs,
            bridge,
            ups,
            out,
            blur4,
            blur3,
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
        for (d, k) in self.downs.iter().zip(&self.blur4) {
            h = d.pw.forward(&d.dw.forward(&blur_down(&h, k))).relu();
            skips.push(h.shallow_clone());
            feats.push(h.shallow_clone());
        }
        for b in &self.bridge {
            let r = b.b.forward(&b.dw.forward(&b.a.forward(&h).relu()).relu());
            h = h + r;
        }
        feats.push(h.shallow_clone());
        for (level, (u, k)) in self.ups.iter().zip(&self.blur3).enumerate() {
            let skip = &skips[2 - level];
            h = u.pw.forward(&u.dw.forward(&up_blur(&h, k))).relu() + skip;
            feats.push(h.shallow_clone());
        }
        (self.out.forward(&h).tanh(), feats)
    }

    /// Lowers the net to the export IR with equalized-lr scales and blur kernels folded
    /// into plain conv weights. `input_shape` is `[1, 3, H, W]`.
    pub fn to_ir(&self, input_shape: [usize; 4]) -> Graph {
        let mut b = IrBuilder { nodes: Vec::new() };
        let mut h = b.conv(
            "stem",
            "input",
            &self.stem.effective_weight(),
            &self.stem.bias,
            1,
            [1, 1, 1, 1],
            1,
        );
        h = b.relu("stem.relu", &h);
        let mut skips = vec![h.clone()];
        for (i, (d, k)) in self.downs.iter().zip(&self.blur4).enumerate() {
            let c = k.size()[0];
            let zero = Tensor::zeros([c], (tch::Kind::Float, Device::Cpu));
            let blurred = b.conv(
                &format!("down{}.blur", i + 1),
                &h,
                k,
                &zero,
                1,
                [2, 2, 2, 2],
                c as usize,
            );
            let dw = b.conv(
                &format!("down{}.dw", i + 1),
                &blurred,
                &d.dw.effective_weight(),
                &d.dw.bias,
                2,
                [0, 0, 0, 0],
                d.dw.groups as usize,
            );
            let pw = b.conv(
                &format!("down{}.pw", i + 1),
                &dw,
                &d.pw.effective_weight(),
                &d.pw.bias,
                1,
                [0, 0, 0, 0],
                1,
            );
            h = b.relu(&format!("down{}.relu", i + 1), &pw);
            skips.push(h.clone());
        }
        for (j, r) in self.bridge.iter().enumerate() {
            let a = b.conv(
                &format!("bridge{j}.a"),
                &h,
                &r.a.effective_weight(),
                &r.a.bias,
                1,
                [0, 0, 0, 0],
                1,
            );
            let a = b.relu(&format!("bridge{j}.a.relu"), &a);
            let dw = b.conv(
                &format!("bridge{j}.dw"),
                &a,
                &r.dw.effective_weight(),
                &r.dw.bias,
                1,
                [1, 1, 1, 1],
                r.dw.groups as usize,
            );
            let dw = b.relu(&format!("bridge{j}.dw.relu"), &dw);
            let bb = b.conv(
                &format!("bridge{j}.b"),
                &dw,
                &r.b.effective_weight(),
                &r.b.bias,
                1,
                [0, 0, 0, 0],
                1,
            );
            h = b.add(&format!("bridge{j}.add"), &h, &bb);
        }
        for (level, (u, k)) in self.ups.iter().zip(&self.blur3).enumerate() {
            let i = 3 - level;
            let c = k.size()[0];
            let zero = Tensor::zeros([c], (tch::Kind::Float, Device::Cpu));
            let up = b.push(
                &format!("up{i}.upsample"),
                Op::UpsampleNearest { factor: 2 },
                vec![h.clone()],
            );
            let blurred = b.conv(
                &format!("up{i}.blur"),
                &up,
                k,
                &zero,
                1,
                [1, 1, 1, 1],
                c as usize,
            );
            let dw = b.conv(
                &format!("up{i}.dw"),
                &blurred,
                &u.dw.effective_weight(),
                &u.dw.bias,
                1,
                [1, 1, 1, 1],
                u.dw.groups as usize,
            );
            let pw = b.conv(
                &format!("up{i}.pw"),
                &dw,
                &u.pw.effective_weight(),
                &u.pw.bias,
                1,
                [0, 0, 0, 0],
                1,
            );
            let act = b.relu(&format!("up{i}.relu"), &pw);
            h = b.add(&format!("up{i}.skip"), &act, &skips[2 - level]);
        }
        let out = b.conv(
            "out",
            &h,
            &self.out.effective_weight(),
            &self.out.bias,
            1,
            [1, 1, 1, 1],
            1,
        );
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
