#!/usr/bin/env bash
# Builds the GPU bundle for a machine with a GPU and no Rust (see README, "CUDA"): the shared
# ../shared/gpu/bundle.sh, then only what needs a GPU is kept (the GPU test binary, the GPU bench
# binary and the CLI; the CPU tests and the library's unit tests, which need no GPU, run in CI),
# stripped, so that the bundle (each binary embeds the ~13 MB fatbin) stays under the 64 MiB a
# device call carries. Then, on the device:
#   BENCH=1 bash .gpu-bundle/run.sh [filter]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
eval "$(bash scripts/install-cuda-toolchain.sh --env)"
bash ../shared/gpu/bundle.sh "$@"
for f in .gpu-bundle/tests/* .gpu-bundle/benches/*; do
  case "$(basename "$f")" in
    gpu-*) strip "$f" ;;
    *) rm -f "$f" ;;
  esac
done
for f in .gpu-bundle/*; do
  [ -f "$f" ] && [ -x "$f" ] && [ "$(basename "$f")" != run.sh ] && strip "$f" 2>/dev/null || true
done
du -sh .gpu-bundle >&2
ls -la .gpu-bundle .gpu-bundle/tests .gpu-bundle/benches >&2
