#!/usr/bin/env python3
"""Builds the tiny random CLIP fixtures that prove src/clip/ equal to transformers' CLIPModel.

Run by a developer, not by CI (CI only reads the files this writes). PyPI's torch wheel is
enough; the project's own torch venv can be reused:

    python3 -m venv /tmp/clipvenv
    echo ~/.cache/effectc/torch-2.11.0/lib/python3.11/site-packages \
        > /tmp/clipvenv/lib/python3.11/site-packages/torchvenv.pth   # or: pip install torch==2.11.0
    /tmp/clipvenv/bin/pip install "transformers<5" safetensors pillow numpy
    /tmp/clipvenv/bin/python scripts/make_clip_fixtures.py

(Measured with transformers 4.57.6, torch 2.11.0.)

Writes tests/fixtures/clip/:
  model_a/, model_b/    two tiny CLIPModel configs in transformers' layout (config.json,
                        model.safetensors) with the tiny BPE vocabulary of
                        tests/fixtures/diffusion/tokenizer beside them (vocab.json, merges.txt),
                        as a Hugging Face CLIP folder holds them
  photo.png             a small picture (not square) for the preprocessing case
  cases.safetensors     fixed inputs (pixel values, token ids) and transformers' outputs
  cases.json            the prompts, the configs' names, what each case holds
"""
import json
import math
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "tests", "fixtures", "clip")
TOKENIZER = os.path.join(HERE, "..", "tests", "fixtures", "diffusion", "tokenizer")
torch.set_grad_enabled(False)
torch.manual_seed(0)

PROMPTS = [
    "a photo of a man",
    "a photo of a woman",
    "a portrait photo of a woman with red hair and glasses",
    "a lego minifigure, plastic toy",
    "a photo of a person with a beard",
]


def tiny_config(vocab_size, kind):
    """`a`: ViT-B/32's shape in small (patch 8 on 32 px); `b`: ViT-L/14's proportions in
    small (patch 7 on 28 px, wider text than vision, another projection size)."""
    if kind == "a":
        text = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
        projection = 16
    else:
        text = dict(hidden_size=20, intermediate_size=28, num_hidden_layers=3, num_attention_heads=5)
        vision = dict(hidden_size=12, intermediate_size=18, num_hidden_layers=2, num_attention_heads=3,
                      image_size=28, patch_size=7)
        projection = 12
    text.update(vocab_size=vocab_size, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision.update(hidden_act="quick_gelu", num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


def randomize(model):
    """Every weight random with O(1) activations, so every tensor's name and layout matters."""
    for name, p in model.named_parameters():
        if name == "logit_scale":
            p.fill_(3.0)  # not the default init, so reading it is tested
        elif p.ndim == 1 and name.endswith("weight"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif p.ndim == 1:
            p.copy_(0.1 * torch.randn_like(p) if "class_embedding" not in name else torch.randn_like(p))
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn_like(p) * (0.5 if "embedding" in name and p.ndim == 2 else 1.0 / math.sqrt(fan_in)))
    return model.eval()


def photo():
    """A 45x60 picture with structure in every channel (gradients, a disc, stripes)."""
    h, w = 45, 60
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 / (w - 1))
    g = (y * 255 / (h - 1))
    b = np.where((x - 25) ** 2 + (y - 20) ** 2 < 150, 230, 40) + 20 * np.sin(x / 2.0)
    img = np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def main():
    if os.path.exists(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(ROOT)
    tokenizer = CLIPTokenizer(os.path.join(TOKENIZER, "vocab.json"), os.path.join(TOKENIZER, "merges.txt"),
                              model_max_length=77)
    vocab_size = len(tokenizer.get_vocab())
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    cases = {"input_ids": ids.to(torch.int64).contiguous()}
    meta = {"prompts": PROMPTS, "models": {}}
    img = photo()
    img.save(os.path.join(ROOT, "photo.png"))
    for kind in ["a", "b"]:
        config = tiny_config(vocab_size, kind)
        model = randomize(CLIPModel(config))
        folder = os.path.join(ROOT, f"model_{kind}")
        model.save_pretrained(folder, safe_serialization=True)
        for f in ["vocab.json", "merges.txt"]:
            shutil.copy(os.path.join(TOKENIZER, f), folder)
        size = config.vision_config.image_size
        # Random pixel values (the model alone), then the picture through the processor.
        pixels = torch.randn(2, 3, size, size)
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        processed = processor(images=img, return_tensors="pt").pixel_values
        cases[f"{kind}.pixel_values"] = pixels
        cases[f"{kind}.photo_pixel_values"] = processed.contiguous()
        out = model(input_ids=ids, pixel_values=torch.cat([pixels, processed]))
        cases[f"{kind}.image_embeds"] = out.image_embeds.contiguous()
        cases[f"{kind}.text_embeds"] = out.text_embeds.contiguous()
        cases[f"{kind}.logits_per_image"] = out.logits_per_image.contiguous()
        cases[f"{kind}.image_features"] = model.get_image_features(pixel_values=pixels).contiguous()
        cases[f"{kind}.text_features"] = model.get_text_features(input_ids=ids).contiguous()
        meta["models"][kind] = {"image_size": size, "projection_dim": config.projection_dim}
    save_file(cases, os.path.join(ROOT, "cases.safetensors"))
    meta["cases"] = {k: list(v.shape) for k, v in cases.items()}
    meta["note"] = ("image_embeds/logits rows: the 2 random pixel_values first, then photo.png through "
                    "CLIPImageProcessor (shortest edge and crop = image_size, bicubic, OpenAI mean/std)")
    with open(os.path.join(ROOT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    for d, _, fs in os.walk(ROOT):
        for f in fs:
            os.chmod(os.path.join(d, f), 0o644)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print(f"wrote {ROOT}: {total} bytes")


if __name__ == "__main__":
    main()
