#!/usr/bin/env bash
# Per-kernel times of whole-model runs under Nsight Compute, on the device machine after
# `bash scripts/gpu-bundle.sh` (carry ".gpu-bundle"): `bash scripts/gpu-profile.sh`. Each run's raw CSV
# (in /tmp) and its table (scripts/kernel-table.py: prompt and one decode step, kernels by time) go to $OUT.
# ncu serialises the launches, so the tables show kernel time, not overlap or launch gaps; compare their
# sums with the bench's own (unprofiled) figures for those.
set -uo pipefail
cd "$(dirname "$0")/.."
for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s, "lib") for p in nvidia.__path__ for s in os.listdir(p) if os.path.isdir(os.path.join(p, s, "lib"))))' 2>/dev/null); do
  LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH CARGO_MANIFEST_DIR="$PWD"
out=${OUT:-/tmp}
command -v ncu >/dev/null || PATH="$PATH:$(ls -d /opt/nvidia/nsight-compute/*/ /usr/local/cuda/bin 2>/dev/null | tr '\n' :)"
cli=.gpu-bundle/falcon-h1
prof() {  # name layers bench-args...
  local name=$1 layers=$2
  shift 2
  echo "== $name: bench $*"
  timeout "${T:-120}" ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    --print-kernel-base function --log-file "/tmp/$name.csv" $cli bench "$@" --no-graph --one-stream \
    || echo "!! exit $? from ncu $name"
  python3 scripts/kernel-table.py "/tmp/$name.csv" --layers "$layers" > "$out/$name.txt" 2>&1
  cat "$out/$name.txt"
}
{
  prof 7b-L8192 44 --preset 7b --prompt-len 8192 --decode-tokens 3 --chunk 0
  prof 7b-b32 44 --preset 7b --prompt-len 512 --batch 32 --decode-tokens 3
  prof 05b-b1 36 --preset 0.5b --prompt-len 512 --decode-tokens 3
} 2>&1 | tee "$out/gpu-profile.log"
