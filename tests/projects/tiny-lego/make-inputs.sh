#!/usr/bin/env bash
# Makes tiny-lego's inputs in this folder: photos/ (the four sample photos: a face
# portrait, a cat, a coffee cup, a rocket) and clips/astronaut.mp4 (2 s at 10 fps, a
# 400 px window drifting over the portrait, so frames differ but all show the face).
# The photos come from $EFFECTC_SAMPLES, else ~/.cache/effectc/samples-skimage-0.26.0,
# where an effectc clone's `scripts/samples.sh` (run by `make test`) unpacks them from
# scikit-image's wheel. tests/tiny_lego.rs runs this script too. Needs ffmpeg.
set -euo pipefail
cd "$(dirname "$0")"
SAMPLES="${EFFECTC_SAMPLES:-$HOME/.cache/effectc/samples-skimage-0.26.0}"
for photo in astronaut.png chelsea.png coffee.png rocket.jpg; do
    if [ ! -f "$SAMPLES/$photo" ]; then
        echo "make-inputs: $SAMPLES/$photo not found: run scripts/samples.sh in an effectc clone (make test runs it), or set EFFECTC_SAMPLES to a folder with $photo" >&2
        exit 1
    fi
done
mkdir -p photos clips
cp "$SAMPLES"/astronaut.png "$SAMPLES"/chelsea.png "$SAMPLES"/coffee.png "$SAMPLES"/rocket.jpg photos/
ffmpeg -hide_banner -loglevel error -y -loop 1 -i "$SAMPLES/astronaut.png" \
    -t 2 -r 10 -vf "crop=w=400:h=400:x='40+t*20':y='10+t*10',scale=256:256" \
    -c:v libx264 -pix_fmt yuv420p clips/astronaut.mp4
echo "make-inputs: $(ls photos | wc -l) photos in photos/, clips/astronaut.mp4; now \`effectc build tiny-lego\`"
