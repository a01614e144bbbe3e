//! Adam written out over tensors, because its moment buffers are part of a checkpoint:
//! a resumed run must continue with exactly the state an uninterrupted one had.

use tch::Tensor;

pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: i64,
    /// (name, parameter, first moment, second moment)
    pub slots: Vec<(String, Tensor, Tensor, Tensor)>,
}

impl Adam {
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, beta1: f64, beta2: f64) -> Adam {
        let slots = params
            .into_iter()
            .map(|(n, p)| (n, p.shallow_clone(), p.zeros_like(), p.zeros_like()))
            .collect();
        Adam {
            lr,
            beta1,
            beta2,
            eps: 1e-8,
            step: 0,
            slots,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.slots {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    pub fn step(&mut self) {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        tch::no_grad(|| {
            for (_, p, m, v) in &mut self.slots {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                // Few, in-place kernels: on a GPU the optimizer is launch-bound.
                let _ = m.lerp_(&g, 1.0 - b1);
                let _ = v.g_mul_scalar_(b2).addcmul_(&(&g * (1.0 - b2)), &g);
                let denom = (&*v / c2).sqrt_().g_add_scalar_(self.eps);
                let _ = p.addcdiv_(&(&*m * (-self.lr / c1)), &denom);
            }
        });
    }

    /// For fp16 mixed precision: grads were computed from a loss multiplied by `1 / inv_scale`.
    /// Unscales them; if any is inf/NaN the update is skipped and false returned (the
    /// caller lowers the scale), as a GradScaler does.
    pub fn step_unscaled(&mut self, inv_scale: f64) -> bool {
        let finite = tch::no_grad(|| {
            let mut all_finite = true;
            for (_, p, _, _) in &self.slots {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(inv_scale);
                    all_finite &= g.isfinite().all().int64_value(&[]) != 0;
                }
            }
            all_finite
        });
        if finite {
            self.step();
        }
        finite
    }

    /// Named state tensors for a checkpoint (`prefix.m.NAME`, `prefix.v.NAME`).
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![(format!("{prefix}.step"), Tensor::from_slice(&[self.step]))];
        for (n, _, m, v) in &self.slots {
            out.push((format!("{prefix}.m.{n}"), m.shallow_clone()));
            out.push((format!("{prefix}.v.{n}"), v.shallow_clone()));
        }
        out
    }

    pub fn load_state(
        &mut self,
        prefix: &str,
        get: &dyn Fn(&str) -> Option<Tensor>,
    ) -> Result<(), String> {
        let step = get(&format!("{prefix}.step"))
            .ok_or_else(|| format!("checkpoint lacks {prefix}.step"))?;
        self.step = step.int64_value(&[0]);
        for (n, _, m, v) in &mut self.slots {
            let sm = get(&format!("{prefix}.m.{n}"))
                .ok_or_else(|| format!("checkpoint lacks {prefix}.m.{n}"))?;
            let sv = get(&format!("{prefix}.v.{n}"))
                .ok_or_else(|| format!("checkpoint lacks {prefix}.v.{n}"))?;
            tch::no_grad(|| {
                m.copy_(&sm);
                v.copy_(&sv);
            });
        }
        Ok(())
    }
}
