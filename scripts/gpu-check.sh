#!/usr/bin/env bash
# One timed check on a GPU machine: the brick demo trained with --device cuda, then a
# second build that must run nothing. Prepared for the device tool: build here, strip
# and carry the binaries (strip -o gpu-bin/effectc target/release/effectc; the same for
# effectc-nn; gpu-bin/ is untracked, so it travels), then run
#   OUT=<dir> scripts/gpu-check.sh gpu-bin
# LIBTORCH_LIB points at the device's libtorch 2.11.0 (the same as ours).
set -u
BIN=$(cd "${1:-gpu-bin}" && pwd)
OUT=${OUT:-/tmp/gpu-check}
export LD_LIBRARY_PATH=${LIBTORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
mkdir -p "$OUT"
nvidia-smi -L
ldd "$BIN/effectc-nn" | grep "not found" || echo "libraries: ok"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
t=$(date +%s%N)
"$BIN/effectc" --cache /tmp/gpu-cache build brick --device cuda --json >"$OUT/events.jsonl" 2>"$OUT/stderr.txt"
echo "first build: exit $?, $(ms "$t") ms"
grep '"stage-finished"' "$OUT/events.jsonl" | grep -E 'train-teacher|distill-student|verify' | cut -c1-600
tail -n 1 "$OUT/events.jsonl"
tail -n 20 "$OUT/stderr.txt"
cp out/brick/bundle-contact-sheet.png "$OUT/" 2>/dev/null
t=$(date +%s%N)
"$BIN/effectc" --cache /tmp/gpu-cache build brick --json | tail -n 1
echo "second build: $(ms "$t") ms"
