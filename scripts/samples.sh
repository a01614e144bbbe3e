#!/usr/bin/env bash
# Installs the four sample photos the tests read (astronaut, chelsea, coffee, rocket): they
# ship inside PyPI's scikit-image==0.26.0 wheel (skimage/data/; a wheel is a zip), public
# domain or CC0 as scikit-image documents them. Unpacked into $EFFECTC_SAMPLES (default
# ~/.cache/effectc/samples-skimage-0.26.0, beside set-up's libtorch and models), so the
# suite needs nothing outside the clone. Idempotent: skips when every photo is there with
# the SHA-256 pinned here (the bytes of the copies the MediaPipe fixtures were made from).
set -euo pipefail
SKIMAGE_VERSION=0.26.0
DEST="${EFFECTC_SAMPLES:-$HOME/.cache/effectc/samples-skimage-$SKIMAGE_VERSION}"
# file in skimage/data/, SHA-256
PHOTOS=(
    "astronaut.png 88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"
    "chelsea.png 596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"
    "coffee.png cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"
    "rocket.jpg c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"
)

all_present() {
    local entry file digest
    for entry in "${PHOTOS[@]}"; do
        read -r file digest <<<"$entry"
        echo "$digest  $DEST/$file" | sha256sum --check --status 2>/dev/null || return 1
    done
}

all_present && exit 0

echo "test-deps: fetching the sample photos from scikit-image $SKIMAGE_VERSION into $DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# Any platform's wheel holds the same photos: ask for one fixed wheel, whatever python runs pip.
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
    -d "$TMP" "scikit-image==$SKIMAGE_VERSION"
WHEEL="$(ls "$TMP"/scikit_image-*.whl)"
mkdir -p "$TMP/photos"
for entry in "${PHOTOS[@]}"; do
    read -r file digest <<<"$entry"
    python3 -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
        "$WHEEL" "skimage/data/$file" "$TMP/photos/$file"
    echo "$digest  $TMP/photos/$file" | sha256sum --check --status \
        || { echo "test-deps: skimage/data/$file in $(basename "$WHEEL") does not have SHA-256 $digest" >&2; exit 1; }
done
mkdir -p "$DEST"
mv "$TMP"/photos/* "$DEST"/
echo "test-deps: sample photos in $DEST"
