#!/usr/bin/env bash
# One-command set-up for effectc on a fresh Linux machine with the Rust toolchain and python3.
#  1. libtorch 2.11.0 (tch 0.24's match) from PyPI's torch==2.11.0 wheel, in a versioned
#     virtualenv outside the repo, re-used when present;
#  2. MediaPipe's face and pose models (scripts/mediapipe-models.sh) in the models directory;
#  3. ffmpeg (video previews) from Debian when it is missing and we may install it;
#  4. the release binary target/release/effectc, linked with an rpath to libtorch.
# Idempotent: a second run only re-checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

if [ ! -f "$EFFECTC_TORCH_VENV/.complete" ]; then
    echo "setup: installing torch==$EFFECTC_TORCH_VERSION into $EFFECTC_TORCH_VENV (about 4.6 GB)"
    rm -rf "$EFFECTC_TORCH_VENV"
    python3 -m venv "$EFFECTC_TORCH_VENV"
    "$EFFECTC_TORCH_VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$EFFECTC_TORCH_VERSION"
    "$EFFECTC_TORCH_VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$EFFECTC_TORCH_VERSION'), torch.__version__"
    touch "$EFFECTC_TORCH_VENV/.complete"
else
    echo "setup: libtorch $EFFECTC_TORCH_VERSION found in $EFFECTC_TORCH_VENV"
fi

scripts/mediapipe-models.sh

if ! command -v ffmpeg >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ffmpeg (video previews)"
        (apt-get install -y -qq ffmpeg >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq ffmpeg >/dev/null; }) \
            || echo "setup: warning: could not install ffmpeg; video previews will say so"
    else
        echo "setup: warning: ffmpeg not found; install it for video previews"
    fi
fi

echo "setup: building target/release/effectc"
cargo build --release --locked
echo "setup: done: $(pwd)/target/release/effectc"
