#!/usr/bin/env python3
"""Reference outputs of MediaPipe's four .tflite models from LiteRT, the reference runtime.

Run by a developer, not by CI (the tests only read the files this writes):

    python3 -m venv /tmp/litert
    /tmp/litert/bin/pip install ai-edge-litert numpy pillow mediapipe==0.10.21
    (measured: ai-edge-litert 2.3.0; mediapipe 0.10.21 pulls numpy 1.26.4, which LiteRT accepts)
    /tmp/litert/bin/python scripts/make_mediapipe_fixtures.py

Reads the models from $EFFECTC_MODELS/mediapipe-0.10.21/ (default ~/.cache/effectc/models;
scripts/mediapipe-models.sh installs them) and the astronaut photo from $EFFECTC_SAMPLES
(default ~/.cache/effectc/samples-skimage-0.26.0; scripts/samples.sh installs it from
scikit-image's wheel, byte for byte the copy the committed fixtures were made from).

Writes tests/fixtures/mediapipe/:
  (no picture: the photo case is the astronaut sampled at the model's input size by an
  exact integer nearest-pixel rule, source index (2*i+1)*W // (2*size), which the test
  repeats on the same astronaut.png read in place, so no copy of the portrait
  is committed)
  MODEL.OUTPUT.CASE.f32  a raw little-endian float32 output of LiteRT for case CASE
                         (`photo` or `synthetic`), every `stride`-th element
  cases.json             models, input size and normalisation, outputs, strides, shapes
  pipeline.json          MediaPipe's own legacy solutions (face_detection model 0, face_mesh
                         without refinement, pose complexity 1, all static-image mode) on
                         astronaut, coffee and rocket: the end-to-end reference for
                         src/vision's pre- and post-processing

Two inputs per model: the photo, and a synthetic pattern both sides compute exactly
(u8 = (31*y + 17*x + 71*c + (x*y) % 13) % 256). Pixels go in as float32 computed as
u8 / 127.5 - 1 (range [-1, 1]) or u8 / 255 (range [0, 1]), exact in both languages.
"""
import json
import os
import sys

import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
import ai_edge_litert

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "tests", "fixtures", "mediapipe")
MODELS = os.path.join(
    os.environ.get("EFFECTC_MODELS", os.path.expanduser("~/.cache/effectc/models")), "mediapipe-0.10.21"
)
PHOTO = os.path.join(
    os.environ.get("EFFECTC_SAMPLES", os.path.expanduser("~/.cache/effectc/samples-skimage-0.26.0")),
    "astronaut.png",
)

# model -> (input size, input range, {output name: stride}); outputs in LiteRT's order.
# The pose landmark model's segmentation and heatmap outputs (0.9 M floats) are kept
# every 61st element, which still checks them everywhere without a megabyte of fixture.
SPECS = {
    "face_detection_short_range": (128, "-1..1", [("regressors", 1), ("classificators", 1)]),
    "face_landmark": (192, "0..1", [("conv2d_21", 1), ("conv2d_31", 1)]),
    "pose_detection": (224, "-1..1", [("Identity", 1), ("Identity_1", 1)]),
    "pose_landmark_full": (
        256,
        "0..1",
        [("Identity", 1), ("Identity_1", 1), ("Identity_2", 61), ("Identity_3", 61), ("Identity_4", 1)],
    ),
}


def synthetic(size):
    y, x, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    return ((31 * y + 17 * x + 71 * c + (x * y) % 13) % 256).astype(np.uint8)


def to_float(u8, rng):
    a = u8.astype(np.float32)
    if rng == "-1..1":
        return a / np.float32(127.5) - np.float32(1.0)
    return a / np.float32(255.0)


def nearest(img, size):
    """The photo at size x size by the nearest source pixel, in integers (exact in Rust too)."""
    h, w = img.shape[:2]
    ys = [(2 * i + 1) * h // (2 * size) for i in range(size)]
    xs = [(2 * i + 1) * w // (2 * size) for i in range(size)]
    return np.ascontiguousarray(img[ys][:, xs])


def main():
    os.makedirs(ROOT, exist_ok=True)
    photo = Image.open(PHOTO).convert("RGB")
    manifest = {"litert": ai_edge_litert.__version__ if hasattr(ai_edge_litert, "__version__") else "?", "models": {}}
    for model, (size, rng, outputs) in SPECS.items():
        it = Interpreter(model_path=os.path.join(MODELS, model + ".tflite"))
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        assert list(inp["shape"]) == [1, size, size, 3], (model, inp["shape"])
        details = {d["name"]: d for d in it.get_output_details()}
        resized = nearest(np.asarray(photo, dtype=np.uint8), size)
        entry = {"size": size, "range": rng, "outputs": []}
        for name, stride in outputs:
            entry["outputs"].append({"name": name, "stride": stride, "shape": [int(s) for s in details[name]["shape"]]})
        for case, u8 in [("photo", resized), ("synthetic", synthetic(size))]:
            it.set_tensor(inp["index"], to_float(u8, rng)[None])
            it.invoke()
            for name, stride in outputs:
                out = it.get_tensor(details[name]["index"]).astype("<f4").reshape(-1)[::stride]
                out.tofile(os.path.join(ROOT, f"{model}.{name}.{case}.f32"))
                print(f"{model} {case} {name}: {out.size} values, max |x| {np.abs(out).max():.4g}")
        manifest["models"][model] = entry
    with open(os.path.join(ROOT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    pipeline()


def pipeline():
    import mediapipe as mp

    out = {"mediapipe": mp.__version__, "photos": {}}
    for name in ["astronaut.png", "coffee.png", "rocket.jpg"]:
        img = np.asarray(Image.open(os.path.join(os.path.dirname(PHOTO), name)).convert("RGB"))
        h, w = img.shape[:2]
        r = {"faces": [], "mesh": None, "pose": None}
        with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as fd:
            for d in fd.process(img).detections or []:
                b = d.location_data.relative_bounding_box
                r["faces"].append({
                    "score": d.score[0],
                    "bbox": [b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h],
                    "keypoints": [[k.x * w, k.y * h] for k in d.location_data.relative_keypoints],
                })
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=False, max_num_faces=1) as fm:
            res = fm.process(img)
            if res.multi_face_landmarks:
                r["mesh"] = [[l.x * w, l.y * h, l.z * w] for l in res.multi_face_landmarks[0].landmark]
        with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as po:
            res = po.process(img)
            if res.pose_landmarks:
                r["pose"] = [[l.x * w, l.y * h, l.z * w, l.visibility] for l in res.pose_landmarks.landmark]
        out["photos"][name] = r
        print(f"pipeline {name}: {len(r['faces'])} faces, mesh {r['mesh'] is not None}, pose {r['pose'] is not None}")
    with open(os.path.join(ROOT, "pipeline.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
