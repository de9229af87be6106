#!/usr/bin/env bash
# Every GPU check and timing of the project in one run, on the device machine, after
# `bash scripts/gpu-bundle.sh` here (carry ".gpu-bundle"):
#   bash scripts/gpu-check.sh            # tests + kernel benches + whole-model figures
#   QUICK=1 bash scripts/gpu-check.sh    # tests only
#   FIGURES=1 bash scripts/gpu-check.sh  # benches, GPU parity and model figures, no tests
# (two device calls, QUICK then FIGURES, keep each under the 10-minute limit of one call)
# Output goes to $OUT/gpu-check.log (and the bundle's own $OUT/gpu-run.log).
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_MANIFEST_DIR="$PWD"
# cuBLASLt may live only in the pip wheels of the machine's PyTorch.
for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s, "lib") for p in nvidia.__path__ for s in os.listdir(p) if os.path.isdir(os.path.join(p, s, "lib"))))' 2>/dev/null); do
  LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
log=${OUT:-/tmp}/gpu-check.log
cli=.gpu-bundle/falcon-h1
status=0
run() { echo "== $*"; timeout "${T:-300}" "$@" || { echo "!! exit $? from: $*"; status=1; }; }
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  if [ "${QUICK:-0}" = 1 ]; then
    bash .gpu-bundle/run.sh || status=1
  else
    if [ "${FIGURES:-0}" = 1 ]; then
      for b in .gpu-bundle/benches/*; do run "$b" --bench; done
    else
      BENCH=1 bash .gpu-bundle/run.sh || status=1
    fi
    for m in tests/data/*/; do
      [ -f "$m/reference.safetensors" ] || continue
      run $cli parity --model "$m" --dtype bf16
      run $cli parity --model "$m" --dtype f32
    done
    run $cli bench --preset 0.5b --prompt-len 8192 --decode-tokens 64
    run $cli bench --preset 7b --prompt-len 8192 --decode-tokens 64 --chunk 0
    FH1_ATTN_SM90=1 run $cli bench --preset 7b --prompt-len 8192 --decode-tokens 0 --chunk 0
    run $cli bench --preset 7b --prompt-len 8192 --decode-tokens 16 --chunk 0 --one-stream
    run $cli bench --preset 7b --prompt-len 512 --decode-tokens 32 --batch 32
    T=600 run $cli bench --preset 7b --prompt-len 131072 --decode-tokens 8
    T=600 run $cli bench --preset 7b --prompt-len 262144 --decode-tokens 8
  fi
  echo "gpu-check exit status: $status"
} 2>&1 | tee "$log"
exit $status
