"""Eager PyTorch twin of effectc's training step, for the training benchmark only.

Same architecture (accordion with equalized-lr convs, 2x2 stride-2 depthwise downsamplers,
sub-pixel (depth-to-space) upsamplers, residual bridge, skips), same discriminator, losses (L1, SSIM, non-saturating
GAN, lazy R1 every 16 steps), Adam(0, 0.99) and EMA. Prints steps/s as JSON.

    python bench_train_torch.py --role teacher --width 32 --blocks 6 --size 256 --batch 1 --steps 5 --device cpu
"""
import argparse, json, math, time
import torch
import torch.nn.functional as F


class EqConv(torch.nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(cout, cin // groups, k, k))
        self.bias = torch.nn.Parameter(torch.zeros(cout))
        self.stride, self.padding, self.groups = stride, padding, groups
        self.scale = 1.0 / math.sqrt(cin // groups * k * k)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding, 1, self.groups)


def blur_kernel(taps, c, device):
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    k = k / k.sum()
    return k.view(1, 1, len(taps), len(taps)).repeat(c, 1, 1, 1).to(device)


class Accordion(torch.nn.Module):
    def __init__(self, w, blocks, device):
        super().__init__()
        c = [w, 2 * w, 4 * w, 4 * w]
        self.stem = EqConv(3, c[0], 3, 1, 1)
        self.down_dw = torch.nn.ModuleList([EqConv(c[i - 1], c[i - 1], 2, 2, 0, c[i - 1]) for i in range(1, 4)])
        self.down_pw = torch.nn.ModuleList([EqConv(c[i - 1], c[i], 1) for i in range(1, 4)])
        self.br = torch.nn.ModuleList([torch.nn.ModuleList([EqConv(c[3], c[3], 1), EqConv(c[3], c[3], 3, 1, 1, c[3]), EqConv(c[3], c[3], 1)]) for _ in range(blocks)])
        self.up_dw = torch.nn.ModuleList([EqConv(c[i], c[i], 3, 1, 1, c[i]) for i in (3, 2, 1)])
        self.up_pw = torch.nn.ModuleList([EqConv(c[i], 4 * c[i - 1], 1) for i in (3, 2, 1)])
        self.out = EqConv(c[0], 3, 3, 1, 1)

    def forward(self, x):
        feats = []
        h = F.relu(self.stem(x))
        skips = [h]
        feats.append(h)
        for dw, pw in zip(self.down_dw, self.down_pw):
            h = F.relu(pw(dw(h)))
            skips.append(h)
            feats.append(h)
        for a, dw, b in self.br:
            h = h + b(F.relu(dw(F.relu(a(h)))))
        feats.append(h)
        for level, (dw, pw) in enumerate(zip(self.up_dw, self.up_pw)):
            u = F.relu(pw(dw(h)))
            n, c4, hh, ww = u.shape  # depth-to-space, DCR order as effectc's
            u = u.view(n, 2, 2, c4 // 4, hh, ww).permute(0, 3, 4, 1, 5, 2).reshape(n, c4 // 4, hh * 2, ww * 2)
            h = u + skips[2 - level]
            feats.append(h)
        return torch.tanh(self.out(h)), feats


class PatchD(torch.nn.Module):
    def __init__(self, w, device):
        super().__init__()
        ch = [6, w, 2 * w, 4 * w]
        self.convs = torch.nn.ModuleList([EqConv(6, w, 3, 1, 1)] + [EqConv(ch[i], ch[i + 1], 3, 2, 0) for i in (1, 2)])
        self.blurs = [blur_kernel([1, 3, 3, 1], ch[i], device) for i in (1, 2)]
        self.head = EqConv(ch[3], 1, 3, 1, 1)

    def forward(self, s, x):
        h = F.leaky_relu(self.convs[0](torch.cat([s, x], 1)), 0.01)
        for conv, k in zip(self.convs[1:], self.blurs):
            h = F.leaky_relu(conv(F.conv2d(F.pad(h, (2, 2, 2, 2)), k, None, 1, 0, 1, h.shape[1])), 0.01)
        return self.head(h)


def ssim(a, b):
    c = a.shape[1]
    g = torch.exp(-(torch.arange(7, dtype=torch.float32) - 3) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = torch.outer(g, g).view(1, 1, 7, 7).repeat(c, 1, 1, 1).to(a.device)
    blur = lambda x: F.conv2d(x, win, None, 1, 3, 1, c)
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2))).mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--role", default="teacher")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--teacher-width", type=int, default=128)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    n = 8
    src = torch.rand(n, 3, a.size, a.size, device=dev) * 2 - 1
    tgt = torch.rand(n, 3, a.size, a.size, device=dev) * 2 - 1
    g = Accordion(a.width, a.blocks, dev).to(dev)
    ema = Accordion(a.width, a.blocks, dev).to(dev)
    ema.load_state_dict(g.state_dict())
    scaler = torch.amp.GradScaler("cuda", enabled=a.amp)
    if a.role == "teacher":
        d = PatchD(min(max(a.width, 8), 64), dev).to(dev)
        opt_g = torch.optim.Adam(g.parameters(), 0.002, betas=(0.0, 0.99))
        opt_d = torch.optim.Adam(d.parameters(), 0.002, betas=(0.0, 0.99))
    else:
        teacher = Accordion(a.teacher_width, a.blocks, dev).to(dev).eval()
        sc = [a.width, 2 * a.width, 4 * a.width, 4 * a.width]
        tc = [a.teacher_width, 2 * a.teacher_width, 4 * a.teacher_width, 4 * a.teacher_width]
        pairs = [(sc[0], tc[0]), (sc[1], tc[1]), (sc[2], tc[2]), (sc[3], tc[3]), (sc[3], tc[3]), (sc[2], tc[2]), (sc[1], tc[1]), (sc[0], tc[0])]
        adapters = torch.nn.ModuleList([EqConv(s, t, 1) for s, t in pairs]).to(dev)
        opt_g = torch.optim.Adam(list(g.parameters()) + list(adapters.parameters()), 0.002, betas=(0.0, 0.99))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for step in range(a.steps):
        idx = torch.randint(0, n, (a.batch,))
        s, t = src[idx], tgt[idx]
        with torch.autocast(dev.type, enabled=a.amp):
            if a.role == "teacher":
                fake, _ = g(s)
                d_loss = F.softplus(d(s, fake.detach())).mean() + F.softplus(-d(s, t)).mean()
        if a.role == "teacher":
            opt_d.zero_grad(); scaler.scale(d_loss).backward(); scaler.step(opt_d); scaler.update()
            if step % 16 == 0:
                real = t.detach().requires_grad_(True)
                out = d(s, real)
                grad, = torch.autograd.grad(out.sum(), real, create_graph=True)
                r1 = grad.square().sum([1, 2, 3]).mean() * 0.5 * 16
                opt_d.zero_grad(); r1.backward(); opt_d.step()
            with torch.autocast(dev.type, enabled=a.amp):
                g_adv = F.softplus(-d(s, fake)).mean()
            fake = fake.float()
            loss = (fake - t).abs().mean() + 0.5 * (1 - ssim((fake + 1) / 2, (t + 1) / 2)) + 0.05 * g_adv
        else:
            with torch.no_grad(), torch.autocast(dev.type, enabled=a.amp):
                t_out, t_feats = teacher(s)
            with torch.autocast(dev.type, enabled=a.amp):
                s_out, s_feats = g(s)
            s_out, t_out = s_out.float(), t_out.float()
            feat = sum(((ad(sf.float()) - tf.float()) ** 2).mean() / ((tf.float() ** 2).mean().detach() + 1e-6) for sf, tf, ad in zip(s_feats, t_feats, adapters)) / 8
            loss = (s_out - t_out).abs().mean() + 0.5 * (s_out - t).abs().mean() + 0.5 * (1 - ssim((s_out + 1) / 2, (t_out + 1) / 2)) + 0.1 * feat
        opt_g.zero_grad(); scaler.scale(loss).backward(); scaler.step(opt_g); scaler.update()
        with torch.no_grad():
            for pe, pg in zip(ema.parameters(), g.parameters()):
                pe.mul_(0.99).add_(pg, alpha=0.01)
        loss.item()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else 0
    print(json.dumps({"steps_per_s": a.steps / dt, "peak_mib": peak}))


if __name__ == "__main__":
    main()
