#!/usr/bin/env python3
"""Builds the tiny random diffusion fixtures that prove src/diffusion/ equal to diffusers.

Run by a developer, not by CI (CI only reads the files this writes):

    python3 -m venv ~/.cache/effectc/fixtures-venv
    ~/.cache/effectc/fixtures-venv/bin/pip install torch==2.11.0 "diffusers<0.37" "transformers<5" safetensors numpy peft
    (transformers 5 needs peft >= 0.22 for LoRA, not on PyPI at the time of writing; transformers 4
    needs huggingface_hub < 1, which diffusers 0.37+ does not accept. Measured with 0.36.0/4.57.6.)
    ~/.cache/effectc/fixtures-venv/bin/python scripts/make_diffusion_fixtures.py

Writes tests/fixtures/diffusion/:
  tokenizer/{vocab.json,merges.txt}     a tiny CLIP BPE vocabulary trained on a few prompts
  text_encoder/, unet/, unet_ip2p/, vae/, controlnet_a/, controlnet_b/
                                        diffusers-layout folders (config.json + safetensors)
  lora_kohya.safetensors                kohya layout (lora_unet_*, lora_te_*, .alpha), 1x1 and 3x3 conv LoRAs too
  lora_peft.safetensors                 diffusers/PEFT layout (lora_A/lora_B + adapter metadata)
  sd_single_file.safetensors            the same models in the original single-file SD layout
  cases.safetensors, cases.json         fixed inputs and diffusers' outputs for every test

Every reference output comes from diffusers/transformers code (models, schedulers, LoRA
loaders); the pipeline reference follows diffusers' SD ControlNet, img2img and
InstructPix2Pix pipelines step by step (diffusers has no pipeline that combines them).
"""
import json
import math
import os
import shutil
import sys
from collections import Counter

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "diffusion")
torch.set_grad_enabled(False)
torch.manual_seed(0)

PROMPTS = [
    "a lego minifigure, plastic toy",
    "a portrait photo of a woman with red hair and glasses",
    "a man with a beard, lego style!",
    "make it a lego minifigure",
    "blurry, low quality, deformed",
    "a plastic toy figure of a person smiling",
]

# The SD 1.5 scheduler configuration (runwayml/stable-diffusion-v1-5 scheduler_config.json),
# with the "leading" spacing those configs use.
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


# --------------------------------------------------------------------------- tokenizer
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_tokenizer(folder):
    """A tiny BPE vocabulary in CLIP's layout: 256 byte symbols, the same with </w>, learned
    merges, then <|startoftext|> and <|endoftext|>."""
    byte_encoder = bytes_to_unicode()
    words = Counter()
    for prompt in PROMPTS:
        for word in prompt.lower().replace(",", " ,").replace("!", " !").split():
            symbols = tuple(byte_encoder[b] for b in word.encode("utf-8"))
            words[symbols[:-1] + (symbols[-1] + "</w>",)] += 1
    merges = []
    for _ in range(60):
        pairs = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    vocab = list(byte_encoder.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77)


# --------------------------------------------------------------------------- random weights
def randomize(model, scale=1.0):
    """diffusers zero-initialises ControlNet's zero convs and some outputs; fixtures need every
    weight to matter, so all parameters get random values with O(1) activations."""
    for name, p in model.named_parameters():
        if p.ndim == 1:
            if name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn_like(p) * scale / math.sqrt(fan_in))
    return model


def save_diffusers(model, folder):
    model.save_pretrained(os.path.join(ROOT, folder), safe_serialization=True)


def tiny_unet(in_channels=4, use_linear_projection=False):
    return randomize(
        UNet2DConditionModel(
            sample_size=8,
            in_channels=in_channels,
            out_channels=4,
            block_out_channels=(8, 16, 16),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4, 4),
            norm_num_groups=4,
            use_linear_projection=use_linear_projection,
        )
    ).eval()


def tiny_controlnet():
    return randomize(
        ControlNetModel(
            in_channels=4,
            block_out_channels=(8, 16, 16),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4, 4),
            norm_num_groups=4,
            conditioning_embedding_out_channels=(4, 8, 8, 8),
        )
    ).eval()


def tiny_vae():
    return randomize(
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.18215,
        )
    ).eval()


def tiny_text_encoder(vocab_size):
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=32,
    )
    model = CLIPTextModel(cfg)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
        else:
            p.copy_(torch.randn_like(p) * (0.5 if "embedding" in name else 1.0 / math.sqrt(p.shape[1])))
    return model.eval()


# --------------------------------------------------------------------------- schedulers
def make_scheduler(kind, **extra):
    if kind == "ddim":
        return DDIMScheduler(**SD15_SCHEDULER, clip_sample=False, set_alpha_to_one=False, **extra)
    if kind == "euler_a":
        return EulerAncestralDiscreteScheduler(**SD15_SCHEDULER, **extra)
    if kind == "dpmpp_2m":
        return DPMSolverMultistepScheduler(**SD15_SCHEDULER, algorithm_type="dpmsolver++", solver_order=2, **extra)
    if kind == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler(
            **SD15_SCHEDULER, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True, **extra
        )
    raise ValueError(kind)


def fake_eps(x, t, c):
    # A model stand-in that depends on the sample and the timestep, so trajectories feed back.
    return torch.tanh(x) * math.cos(float(t) / 1000.0) + 0.1 * c


# --------------------------------------------------------------------------- pipeline reference
def to_pixels(img_u8):
    """HWC uint8 -> 1x3xHxW in [-1, 1], as VaeImageProcessor.preprocess does."""
    x = torch.from_numpy(img_u8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return 2.0 * x - 1.0


def to_control(img_u8):
    """HWC uint8 -> 1x3xHxW in [0, 1] (ControlNet images are not normalised)."""
    return torch.from_numpy(img_u8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def encode_prompts(tokenizer, text_encoder, prompts):
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def reference_pipeline(models, requests):
    """One batch of PairRequests, the way the diffusers pipelines compute them.

    Order of random draws per request generator (as diffusers with a list of generators):
    img2img's VAE posterior sample, then the initial noise, then Euler-a's per-step noise.
    """
    tokenizer, text_encoder, unet, vae, controlnets = (
        models["tokenizer"], models["text_encoder"], models["unet"], models["vae"], models["controlnets"])
    r0 = requests[0]
    n = len(requests)
    gens = [torch.Generator().manual_seed(r["seed"]) for r in requests]
    sched = make_scheduler(r0["scheduler"])
    sched.set_timesteps(r0["steps"])
    timesteps = sched.timesteps
    ip2p = r0.get("image_guidance") is not None
    text = encode_prompts(tokenizer, text_encoder, [r["prompt"] for r in requests])
    neg = encode_prompts(tokenizer, text_encoder, [r["negative_prompt"] for r in requests])
    gs = torch.tensor([r["guidance"] for r in requests]).view(n, 1, 1, 1)
    if ip2p:
        igs = torch.tensor([r["image_guidance"] for r in requests]).view(n, 1, 1, 1)
        cfg = all(r["guidance"] > 1.0 and r["image_guidance"] >= 1.0 for r in requests)
    else:
        cfg = all(r["guidance"] > 1.0 for r in requests)
    if ip2p:
        embeds = torch.cat([text, neg, neg]) if cfg else text
        copies = 3 if cfg else 1
    else:
        embeds = torch.cat([neg, text]) if cfg else text
        copies = 2 if cfg else 1
    source = torch.cat([to_pixels(r["source"]) for r in requests])
    latent_shape = (1, 4, source.shape[2] // 8, source.shape[3] // 8)

    # img2img: start part-way (get_timesteps of the img2img pipelines)
    strength = r0["strength"]
    init_timestep = min(int(r0["steps"] * strength), r0["steps"])
    t_start = max(r0["steps"] - init_timestep, 0)
    timesteps = timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    if strength < 1.0:
        init = []
        for i in range(n):
            dist = vae.encode(source[i:i + 1]).latent_dist
            init.append(dist.sample(gens[i]) * vae.config.scaling_factor)
        init = torch.cat(init)
        noise = torch.cat([torch.randn(latent_shape, generator=g) for g in gens])
        latents = sched.add_noise(init, noise, timesteps[:1].repeat(n))
    else:
        latents = torch.cat([torch.randn(latent_shape, generator=g) for g in gens]) * sched.init_noise_sigma

    if ip2p:
        image_latents = vae.encode(source).latent_dist.mode()
        if cfg:
            image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])

    control = []
    # controls are matched by position: every request names the same ControlNets in order
    for k, c0 in enumerate(r0["controls"]):
        imgs = torch.cat([to_control(r["controls"][k]["image"]) for r in requests])
        scales = torch.tensor([r["controls"][k]["weight"] for r in requests])
        control.append((controlnets[c0["name"]], torch.cat([imgs] * copies), torch.cat([scales] * copies),
                        c0.get("start", 0.0), c0.get("end", 1.0)))

    total = len(timesteps)
    for i, t in enumerate(timesteps):
        model_in = torch.cat([latents] * copies)
        model_in = sched.scale_model_input(model_in, t)
        down_res, mid_res = None, None
        for net, cimg, scales, start, end in control:
            keep = 1.0 - float(i / total < start or (i + 1) / total > end)
            # conditioning_scale may differ per request: diffusers takes one float per
            # ControlNet, so apply each request's scale to its rows (same as per-row calls).
            d, m = net(model_in, t, encoder_hidden_states=embeds, controlnet_cond=cimg,
                       conditioning_scale=1.0, return_dict=False)
            s = (scales * keep).view(-1, 1, 1, 1)
            d = [x * s for x in d]
            m = m * s
            if down_res is None:
                down_res, mid_res = d, m
            else:
                down_res = [a + b for a, b in zip(down_res, d)]
                mid_res = mid_res + m
        unet_in = torch.cat([model_in, image_latents], dim=1) if ip2p else model_in
        eps = unet(unet_in, t, encoder_hidden_states=embeds, down_block_additional_residuals=down_res,
                   mid_block_additional_residual=mid_res, return_dict=False)[0]
        if cfg and ip2p:
            e_text, e_img, e_unc = eps.chunk(3)
            eps = e_unc + gs * (e_text - e_img) + igs * (e_img - e_unc)
        elif cfg:
            e_unc, e_text = eps.chunk(2)
            eps = e_unc + gs * (e_text - e_unc)
        # a list of generators makes diffusers' randn_tensor draw row by row, one per request
        latents = sched.step(eps, t, latents, generator=gens if len(gens) > 1 else gens[0]).prev_sample \
            if r0["scheduler"] == "euler_a" else sched.step(eps, t, latents).prev_sample
    image = vae.decode(latents / vae.config.scaling_factor).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    return latents, image


def main():
    if os.path.exists(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(ROOT)
    cases = {}
    meta = {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "torch": torch.__version__}

    # ---------------- tokenizer + text encoder
    tokenizer = make_tokenizer(os.path.join(ROOT, "tokenizer"))
    token_prompts = PROMPTS + ["", "It's   A   TEST... don't, won't; 42 robots' heads", "x " * 100]
    ids = tokenizer(token_prompts, padding="max_length", max_length=77, truncation=True).input_ids
    meta["tokenizer"] = [{"prompt": p, "ids": i} for p, i in zip(token_prompts, ids)]
    text_encoder = tiny_text_encoder(len(tokenizer.get_vocab()))
    text_encoder.save_pretrained(os.path.join(ROOT, "text_encoder"), safe_serialization=True)
    clip_ids = torch.tensor(ids[:2])
    cases["clip.input_ids"] = clip_ids
    cases["clip.last_hidden_state"] = text_encoder(clip_ids)[0]

    # ---------------- UNet
    unet = tiny_unet()
    save_diffusers(unet, "unet")
    sample = torch.randn(2, 4, 8, 8)
    t = torch.tensor([981.0, 1.0])
    ehs = torch.randn(2, 77, 32)
    cases["unet.sample"], cases["unet.timesteps"], cases["unet.encoder_hidden_states"] = sample, t, ehs
    cases["unet.out"] = unet(sample, t, encoder_hidden_states=ehs).sample
    # odd latent size: exercises upsampling to the skip's size
    odd = torch.randn(1, 4, 6, 10)
    cases["unet.odd_sample"] = odd
    cases["unet.odd_out"] = unet(odd, 500, encoder_hidden_states=ehs[:1]).sample

    # ---------------- InstructPix2Pix UNet (8 input channels; SD2-style linear projections)
    unet_ip2p = tiny_unet(in_channels=8, use_linear_projection=True)
    save_diffusers(unet_ip2p, "unet_ip2p")
    s8 = torch.randn(2, 8, 8, 8)
    cases["ip2p.sample"] = s8
    cases["ip2p.out"] = unet_ip2p(s8, t, encoder_hidden_states=ehs).sample

    # ---------------- VAE
    vae = tiny_vae()
    save_diffusers(vae, "vae")
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    dist = vae.encode(img).latent_dist
    cases["vae.image"], cases["vae.mean"], cases["vae.logvar"] = img, dist.mean, dist.logvar
    z = torch.randn(1, 4, 8, 8)
    cases["vae.latent"], cases["vae.decoded"] = z, vae.decode(z).sample

    # ---------------- ControlNets, alone and summed into the UNet
    cn_a, cn_b = tiny_controlnet(), tiny_controlnet()
    save_diffusers(cn_a, "controlnet_a")
    save_diffusers(cn_b, "controlnet_b")
    cond_a, cond_b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    cases["controlnet.cond_a"], cases["controlnet.cond_b"] = cond_a, cond_b
    d_a, m_a = cn_a(sample, t, encoder_hidden_states=ehs, controlnet_cond=cond_a, conditioning_scale=0.7,
                    return_dict=False)
    for i, d in enumerate(d_a):
        cases[f"controlnet.a.down.{i}"] = d
    cases["controlnet.a.mid"] = m_a
    d_b, m_b = cn_b(sample, t, encoder_hidden_states=ehs, controlnet_cond=cond_b, conditioning_scale=0.4,
                    return_dict=False)
    multi = diffusers.models.controlnets.multicontrolnet.MultiControlNetModel([cn_a, cn_b])
    d_m, m_m = multi(sample, t, encoder_hidden_states=ehs, controlnet_cond=[cond_a, cond_b],
                     conditioning_scale=[0.7, 0.4], return_dict=False)
    cases["controlnet.multi_unet_out"] = unet(sample, t, encoder_hidden_states=ehs,
                                               down_block_additional_residuals=d_m,
                                               mid_block_additional_residual=m_m).sample

    # ---------------- schedulers: 10-step trajectories with a sample-dependent stand-in model
    c = torch.randn(1, 4, 8, 8)
    x0 = torch.randn(1, 4, 8, 8)
    cases["sched.c"], cases["sched.x0"] = c, x0
    for kind in ["ddim", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"]:
        sched = make_scheduler(kind)
        sched.set_timesteps(10)
        cases[f"sched.{kind}.timesteps"] = sched.timesteps.to(torch.float64)
        cases[f"sched.{kind}.init_noise_sigma"] = torch.tensor([float(sched.init_noise_sigma)])
        x = x0 * sched.init_noise_sigma
        gen = torch.Generator().manual_seed(1234)
        for i, tt in enumerate(sched.timesteps):
            xin = sched.scale_model_input(x, tt)
            eps = fake_eps(xin, tt, c)
            if kind == "euler_a":
                # record the noise step() draws so Rust can be handed the same
                state = gen.get_state()
                cases[f"sched.{kind}.noise.{i}"] = torch.randn(x.shape, generator=gen)
                gen.set_state(state)
                x = sched.step(eps, tt, x, generator=gen).prev_sample
            else:
                x = sched.step(eps, tt, x).prev_sample
            cases[f"sched.{kind}.x.{i}"] = x
        # add_noise at the img2img start index
        sched = make_scheduler(kind)
        sched.set_timesteps(10)
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(4)
        cases[f"sched.{kind}.add_noise"] = sched.add_noise(x0, c, sched.timesteps[4:5])

    # ---------------- LoRA: kohya and PEFT, alone and together, into UNet and text encoder
    make_loras(unet, text_encoder, tokenizer, vae, cases, meta, sample, t, ehs, clip_ids)

    # ---------------- pipelines
    models = {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae,
              "controlnets": {"a": cn_a, "b": cn_b}}
    rng = np.random.default_rng(5)

    def rgb():
        return rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)

    pipelines = {
        # InstructPix2Pix + 2 ControlNets, 3-way guidance, Euler-a, 4 steps, batch of 2
        "ip2p_controlnet": (dict(models, unet=unet_ip2p), [
            dict(prompt=PROMPTS[0], negative_prompt=PROMPTS[4], source=rgb(), seed=7, steps=4,
                 scheduler="euler_a", guidance=7.5, image_guidance=1.5, strength=1.0,
                 controls=[dict(name="a", image=rgb(), weight=0.7), dict(name="b", image=rgb(), weight=0.5, start=0.0, end=0.5)]),
            dict(prompt=PROMPTS[2], negative_prompt="", source=rgb(), seed=8, steps=4,
                 scheduler="euler_a", guidance=5.0, image_guidance=1.2, strength=1.0,
                 controls=[dict(name="a", image=rgb(), weight=1.0), dict(name="b", image=rgb(), weight=0.3, start=0.0, end=0.5)]),
        ]),
        # img2img + ControlNet, DPM++ 2M, classic guidance
        "img2img_controlnet": (models, [
            dict(prompt=PROMPTS[1], negative_prompt=PROMPTS[4], source=rgb(), seed=11, steps=10,
                 scheduler="dpmpp_2m", guidance=6.0, image_guidance=None, strength=0.6,
                 controls=[dict(name="a", image=rgb(), weight=0.8)]),
        ]),
        # text-to-image from the source's size, DDIM, no ControlNet
        "txt2img_ddim": (models, [
            dict(prompt=PROMPTS[5], negative_prompt="", source=rgb(), seed=3, steps=4,
                 scheduler="ddim", guidance=7.0, image_guidance=None, strength=1.0, controls=[]),
        ]),
    }
    meta["pipelines"] = {}
    for name, (m, reqs) in pipelines.items():
        latents, image = reference_pipeline(m, reqs)
        cases[f"pipe.{name}.latents"] = latents
        cases[f"pipe.{name}.image"] = image
        js = []
        for k, r in enumerate(reqs):
            cases[f"pipe.{name}.{k}.source"] = torch.from_numpy(r["source"].copy())
            for j, cc in enumerate(r["controls"]):
                cases[f"pipe.{name}.{k}.control.{j}"] = torch.from_numpy(cc["image"].copy())
            js.append({key: val for key, val in r.items() if key != "source"} | {
                "controls": [{key: val for key, val in cc.items() if key != "image"} for cc in r["controls"]]})
        meta["pipelines"][name] = js

    # ---------------- single-file original SD layout
    write_single_file(unet, vae, text_encoder)

    save_file({k: v.contiguous() for k, v in cases.items()}, os.path.join(ROOT, "cases.safetensors"))
    with open(os.path.join(ROOT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(ROOT) for fn in fns)
    print(f"wrote {ROOT}: {total / 1e6:.2f} MB")


# --------------------------------------------------------------------------- LoRA
def make_loras(unet, text_encoder, tokenizer, vae, cases, meta, sample, t, ehs, clip_ids):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # kohya: attention projections, a 1x1 conv (proj_in), a 3x3 conv (LoCon on a resnet),
    # text encoder attention and MLP; rank 4, alpha 2 (scale 0.5)
    kohya = {}
    rank = 4
    unet_targets = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": None,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": None,
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0": None,
        "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2": None,
        "down_blocks.1.attentions.0.proj_in": None,
        "up_blocks.2.resnets.1.conv1": None,
    }
    params = dict(unet.named_parameters())
    for mod in unet_targets:
        w = params[mod + ".weight"]
        key = "lora_unet_" + mod.replace(".", "_")
        if w.ndim == 4:
            kohya[key + ".lora_down.weight"] = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3]) * 0.3
            kohya[key + ".lora_up.weight"] = torch.randn(w.shape[0], rank, 1, 1) * 0.3
        else:
            kohya[key + ".lora_down.weight"] = torch.randn(rank, w.shape[1]) * 0.3
            kohya[key + ".lora_up.weight"] = torch.randn(w.shape[0], rank) * 0.3
        kohya[key + ".alpha"] = torch.tensor(2.0)
    # transformers 5 names CLIPTextModel's parameters without the "text_model." prefix that
    # kohya keys (and transformers 4 checkpoints) carry
    te_params = {k.removeprefix("text_model."): p for k, p in text_encoder.named_parameters()}
    # Only MLP layers: diffusers 0.36 renames kohya text-encoder attention keys (self_attn_q_proj)
    # to an old "to_q_lora" layout its PEFT loader then drops with a warning, so a reference
    # for those would be diffusers ignoring them.
    for mod in ["encoder.layers.0.mlp.fc2", "encoder.layers.1.mlp.fc1"]:
        w = te_params[mod + ".weight"]
        key = "lora_te_text_model_" + mod.replace(".", "_")
        kohya[key + ".lora_down.weight"] = torch.randn(rank, w.shape[1]) * 0.3
        kohya[key + ".lora_up.weight"] = torch.randn(w.shape[0], rank) * 0.3
        kohya[key + ".alpha"] = torch.tensor(2.0)
    kohya_path = os.path.join(ROOT, "lora_kohya.safetensors")
    save_file(kohya, kohya_path)

    # PEFT (diffusers' own save_lora_weights layout): rank 2, lora_alpha 6 (scale 3)
    import copy
    u2, te2 = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    u_cfg = LoraConfig(r=2, lora_alpha=6, target_modules=["to_v", "to_out.0", "proj_out"], init_lora_weights=False)
    te_cfg = LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj", "out_proj"], init_lora_weights=False)
    u2.add_adapter(u_cfg)
    te2.add_adapter(te_cfg)
    u_sd = get_peft_model_state_dict(u2)
    te_sd = get_peft_model_state_dict(te2)
    folder = os.path.join(ROOT, "_peft")
    def metadata(cfg):
        # target_modules is a set: sort it so reruns write identical bytes
        d = cfg.to_dict()
        d["target_modules"] = sorted(d["target_modules"])
        return d

    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=u_sd, text_encoder_lora_layers=te_sd,
        unet_lora_adapter_metadata=metadata(u_cfg), text_encoder_lora_adapter_metadata=metadata(te_cfg))
    shutil.move(os.path.join(folder, "pytorch_lora_weights.safetensors"), os.path.join(ROOT, "lora_peft.safetensors"))
    shutil.rmtree(folder)

    def run(loras):
        import copy as cp
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=cp.deepcopy(text_encoder), tokenizer=tokenizer,
                                       unet=cp.deepcopy(unet), scheduler=make_scheduler("ddim"),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        names, weights = [], []
        for i, (path, weight) in enumerate(loras):
            pipe.load_lora_weights(path, adapter_name=f"l{i}")
            names.append(f"l{i}")
            weights.append(weight)
        pipe.set_adapters(names, adapter_weights=weights)
        pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names)
        pipe.unload_lora_weights()
        return (pipe.unet(sample, t, encoder_hidden_states=ehs).sample, pipe.text_encoder(clip_ids)[0])

    peft_path = os.path.join(ROOT, "lora_peft.safetensors")
    for name, loras in [("kohya", [(kohya_path, 0.7)]), ("peft", [(peft_path, 1.0)]),
                        ("both", [(kohya_path, 0.8), (peft_path, 0.5)])]:
        u_out, te_out = run(loras)
        cases[f"lora.{name}.unet_out"] = u_out
        cases[f"lora.{name}.te_out"] = te_out


# --------------------------------------------------------------------------- single file
def write_single_file(unet, vae, text_encoder):
    """The original (CompVis/LDM) single-file layout, written by inverting diffusers'
    conversion (the mapping of diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py)."""
    sd = {}
    u = unet.state_dict()
    cfg = unet.config
    n_blocks = len(cfg.block_out_channels)
    lpb = cfg.layers_per_block
    m = {}
    m["time_embed.0"] = "time_embedding.linear_1"
    m["time_embed.2"] = "time_embedding.linear_2"
    m["input_blocks.0.0"] = "conv_in"
    m["out.0"] = "conv_norm_out"
    m["out.2"] = "conv_out"
    per = lpb + 1  # LDM numbers input/output blocks consecutively: lpb resnets (+ a resampler)
    for i in range(n_blocks):
        for j in range(lpb):
            m[f"input_blocks.{per * i + j + 1}.0"] = f"down_blocks.{i}.resnets.{j}"
            m[f"input_blocks.{per * i + j + 1}.1"] = f"down_blocks.{i}.attentions.{j}"
        if i < n_blocks - 1:
            m[f"input_blocks.{per * (i + 1)}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
        for j in range(lpb + 1):
            m[f"output_blocks.{per * i + j}.0"] = f"up_blocks.{i}.resnets.{j}"
            m[f"output_blocks.{per * i + j}.1"] = f"up_blocks.{i}.attentions.{j}"
        if i < n_blocks - 1:
            has_attn = "CrossAttn" in cfg.up_block_types[i]
            m[f"output_blocks.{per * i + lpb}.{2 if has_attn else 1}.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
    m["middle_block.0"] = "mid_block.resnets.0"
    m["middle_block.1"] = "mid_block.attentions.0"
    m["middle_block.2"] = "mid_block.resnets.1"
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    inv = {v: k for k, v in m.items()}
    for name, tensor in u.items():
        best = max((d for d in inv if name.startswith(d + ".")), key=len)
        rest = name[len(best) + 1:]
        if ".resnets." in best:
            part, tail = rest.split(".", 1)
            rest = res[part] + "." + tail
        sd["model.diffusion_model." + inv[best] + "." + rest] = tensor

    v = vae.state_dict()
    vres = {"conv_shortcut": "nin_shortcut"}
    for name, tensor in v.items():
        n = name
        n = n.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        n = n.replace("mid_block.attentions.0.group_norm", "mid.attn_1.norm")
        for a, b in [("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]:
            n = n.replace(f"mid_block.attentions.0.{a}", f"mid.attn_1.{b}")
        n = n.replace("conv_norm_out", "norm_out")
        nb = len(vae.config.block_out_channels)
        for i in range(nb):
            n = n.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            n = n.replace(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
            n = n.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{nb - 1 - i}.block.")
            n = n.replace(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{nb - 1 - i}.upsample.conv")
        for a, b in vres.items():
            n = n.replace(a, b)
        if "mid.attn_1." in n and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original layout stores attention as 1x1 convs
        sd["first_stage_model." + n] = tensor
    for name, tensor in text_encoder.state_dict().items():
        sd["cond_stage_model.transformer." + name] = tensor
    save_file({k: x.contiguous() for k, x in sd.items()}, os.path.join(ROOT, "sd_single_file.safetensors"))


if __name__ == "__main__":
    sys.exit(main())
