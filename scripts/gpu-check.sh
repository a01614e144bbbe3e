#!/usr/bin/env bash
# One timed check on a GPU machine, in one call of under 10 minutes on an H100:
#  1. the brick demo trained with --device cuda, then a second build that must run nothing;
#  2. the full-size project (tests/projects/fullsize: the lego recipe's shape at 512 px,
#     student 32/6, teacher 128, batch 8, real photos) built with --device cuda, through
#     benches/fullsize (its table of every stage's time);
#  3. one SD-1.5-sized diffusion pair at 512 px with random weights (benches/diffusion:
#     the real UNet, 2 ControlNets and InstructPix2Pix, 20 steps, batch 1 and 8);
#  4. one table: teacher and student steps/s at 512 px and batch 8, seconds per pair,
#     peak GPU memory (nvidia-smi, sampled every 200 ms over the whole script).
#
# Prepared for the device tool: build here, strip and carry the binaries and the samples
# (gpu-bin/ is untracked, so it travels):
#   cargo build --release && cargo bench --no-run --bench fullsize --bench diffusion
#   strip -o gpu-bin/effectc target/release/effectc; the same for effectc-nn;
#   strip -o gpu-bin/fullsize target/release/deps/fullsize-HASH; gpu-bin/diffusion the same
#   scripts/samples.sh && cp -r ~/.cache/effectc/samples-skimage-0.26.0 gpu-bin/samples
# then run, from the repository root:
#   OUT=<dir> scripts/gpu-check.sh gpu-bin
# LIBTORCH_LIB points at the device's libtorch 2.11.0 (the same as ours).
# Checked without a GPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=64 (a small size: a CPU
# needs minutes per 512 px step), which skips the brick demo's cuda build and nvidia-smi.
# GPU_CHECK_TARGETS (default onnx): the full-size build's targets; fp16/int8 verification
# ran at about 4 min a 512 px frame on CPU when this was written, too slow for 10 minutes.
set -u
BIN=$(cd "${1:-gpu-bin}" && pwd)
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-512}
TARGETS=${GPU_CHECK_TARGETS:-onnx}
export LD_LIBRARY_PATH=${LIBTORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
mkdir -p "$OUT"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

PEAK_PID=
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/gpu-memory.txt" &
    PEAK_PID=$!
fi
ldd "$BIN/effectc-nn" | grep "not found" || echo "libraries: ok"

if [ "$DEVICE" != cpu ]; then
    t=$(date +%s%N)
    "$BIN/effectc" --cache /tmp/gpu-cache build brick --device "$DEVICE" --json >"$OUT/events.jsonl" 2>"$OUT/stderr.txt"
    echo "brick, first build: exit $?, $(ms "$t") ms"
    grep '"stage-finished"' "$OUT/events.jsonl" | grep -E 'train-teacher|distill-student|verify' | cut -c1-600
    tail -n 1 "$OUT/events.jsonl"
    tail -n 20 "$OUT/stderr.txt"
    cp out/brick/bundle-contact-sheet.png "$OUT/" 2>/dev/null
    t=$(date +%s%N)
    "$BIN/effectc" --cache /tmp/gpu-cache build brick --json | tail -n 1
    echo "brick, second build: $(ms "$t") ms"
fi

echo "== full-size project at $SIZE px on $DEVICE (targets $TARGETS)"
t=$(date +%s%N)
EFFECTC_BIN="$BIN/effectc" EFFECTC_SAMPLES="${EFFECTC_SAMPLES:-$BIN/samples}" \
    EFFECTC_FULLSIZE_DEVICE="$DEVICE" EFFECTC_FULLSIZE_SIZE="$SIZE" \
    EFFECTC_FULLSIZE_TARGETS="$TARGETS" EFFECTC_FULLSIZE_STEPS="${GPU_CHECK_STEPS:-20}" \
    EFFECTC_FULLSIZE_KEEP="$OUT/fullsize" "$BIN/fullsize" | tee "$OUT/fullsize.txt"
echo "full-size: $(ms "$t") ms"

echo "== one SD 1.5 pair at $SIZE px (random weights) on $DEVICE"
if [ "$DEVICE" = cpu ]; then BATCHES=${GPU_CHECK_BATCHES:-1}; else BATCHES=${GPU_CHECK_BATCHES:-1,8}; fi
EFFECTC_BENCH_DEVICE="$DEVICE" EFFECTC_BENCH_SIZE="$SIZE" EFFECTC_BENCH_BATCHES="$BATCHES" \
    "$BIN/diffusion" | tee "$OUT/diffusion.txt"

[ -n "$PEAK_PID" ] && kill "$PEAK_PID"
# The table, from the steps/s the trainers report (batch 8: the face-mask base's) and
# the diffusion bench's rows (the largest batch's seconds per pair).
metric() { grep "^| $1 " "$OUT/fullsize.txt" | grep -o '[0-9.]* steps/s' | head -1 | cut -d' ' -f1; }
pair=$(grep -E "^\| (Cuda|Cpu)" "$OUT/diffusion.txt" | tail -1 | awk -F'|' '{gsub(/ /,"",$7); print $7}')
peak=-
[ -s "$OUT/gpu-memory.txt" ] && peak="$(sort -n "$OUT/gpu-memory.txt" | tail -1) MiB"
echo
echo "| device | size | batch | teacher steps/s | student steps/s | s per pair (SD 1.5, 20 steps) | peak GPU memory |"
echo "|---|---:|---:|---:|---:|---:|---:|"
echo "| $DEVICE | $SIZE | 8 | $(metric train-teacher) | $(metric distill-student) | $pair | $peak |"
