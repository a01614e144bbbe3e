#!/usr/bin/env bash
# A no-op rebuild of effectc next to DVC's on the same real files, in one run.
#
#     scripts/bench_dvc.sh [COUNT...]        (default: 1000 10000)
#
# For each COUNT: COUNT distinct 24x24 PNGs (ffmpeg's test pattern, one frame per file);
# an effectc project over them (`images "data/*.png"`, center crop, procedural teacher)
# and a DVC project over the same folder with two stages (crop, then pairs), as a data
# pipeline in DVC would be written. Both are built once, then each no-op rebuild is timed
# (whole process, median of 7), and the table gives the ratio.
# Needs: target/release/effectc (make setup), ffmpeg, python3 (DVC is installed into
# $EFFECTC_DVC_VENV, default ~/.cache/effectc/dvc-venv, on first use).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
effectc="${EFFECTC:-$root/target/release/effectc}"
venv="${EFFECTC_DVC_VENV:-$HOME/.cache/effectc/dvc-venv}"
counts=("${@:-1000 10000}")
# shellcheck disable=SC2206
counts=(${counts[*]})

[ -x "$effectc" ] || { echo "bench_dvc: $effectc is missing: run make setup" >&2; exit 2; }
command -v ffmpeg >/dev/null || { echo "bench_dvc: ffmpeg is missing (apt-get install ffmpeg)" >&2; exit 2; }
if [ ! -x "$venv/bin/dvc" ]; then
    echo "bench_dvc: installing dvc into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check dvc
fi
dvc="$venv/bin/dvc"

# Median wall time in ms of 7 runs of the command, run in $1.
median_ms() {
    local dir="$1"; shift
    local times=()
    for _ in 1 2 3 4 5 6 7; do
        local start end
        start=$(date +%s%N)
        (cd "$dir" && "$@" >/dev/null 2>&1) || { echo "bench_dvc: failed in $dir: $*" >&2; exit 1; }
        end=$(date +%s%N)
        times+=($(( (end - start) / 1000000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n 4p
}

trap 'echo "bench_dvc: failed at line $LINENO" >&2' ERR
work="$(mktemp -d "${TMPDIR:-/tmp}/effectc-bench-dvc.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "| files | effectc build (no-op) | dvc repro (no-op) | ratio |"
echo "|---:|---:|---:|---:|"
for count in "${counts[@]}"; do
    data="$work/$count/data"
    mkdir -p "$data"
    ffmpeg -nostdin -loglevel error -f lavfi -i "testsrc=size=24x24:rate=25" -frames:v "$count" "$data/%05d.png"

    e="$work/$count/effectc"
    mkdir -p "$e/effects"
    ln -s "$data" "$e/data"
    cat > "$e/effects/many.kdl" <<'EOF'
effect "many" {
    sources {
        images "data/*.png"
        crop "center" size=16
    }
    teacher "procedural" { stud-size 4; }
}
EOF
    (cd "$e" && "$effectc" build --quiet many >/dev/null 2>&1) || { echo "bench_dvc: effectc build failed in $e" >&2; exit 1; }

    d="$work/$count/dvc"
    mkdir -p "$d"
    ln -s "$data" "$d/data"
    (
        cd "$d"
        "$dvc" init --no-scm --quiet
        "$dvc" stage add --quiet -n crop -d data -o crops "cp -r data/ crops"
        "$dvc" stage add --quiet -n pairs -d crops -o pairs "cp -r crops/ pairs"
        "$dvc" repro --quiet >/dev/null
    ) || { echo "bench_dvc: dvc set-up failed in $d" >&2; exit 1; }

    ours=$(median_ms "$e" "$effectc" build --quiet many)
    theirs=$(median_ms "$d" "$dvc" repro --quiet)
    ratio=$(python3 -c "print(f'{$theirs / max($ours, 1):.1f}x')")
    echo "| $count | $ours ms | $theirs ms | $ratio |"
done
