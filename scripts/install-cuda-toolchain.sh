#!/usr/bin/env bash
# Installs what `--features cuda` needs on a machine with no CUDA toolkit, idempotently:
#   - libclang (Debian's libclang-dev), for bindgen on kernels/params.h;
#   - nvcc 13.0 from NVIDIA's pip wheels, pinned to the driver of our GPU machines, in a venv under
#     ${FALCON_H1_TOOLCHAIN:-<repo>/.toolchain}/nvcc-venv. Unpinned, pip pulls a newer nvvm whose
#     PTX the 13.0 ptxas rejects.
#
#   bash scripts/install-cuda-toolchain.sh          # install, then print where nvcc is
#   eval "$(bash scripts/install-cuda-toolchain.sh --env)"   # install quietly, export NVCC and PATH
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${FALCON_H1_TOOLCHAIN:-$repo/.toolchain}
venv=$root/nvcc-venv
quiet=0
[ "${1:-}" = "--env" ] && quiet=1
log() { if [ $quiet = 1 ]; then echo "$*" >&2; else echo "$*"; fi; }

have_libclang() {
  ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1
}
if ! have_libclang; then
  log "installing libclang-dev (apt)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libclang-dev >&2
fi

pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
nvcc=$venv/lib/python$pyver/site-packages/nvidia/cu13/bin/nvcc
if [ ! -x "$nvcc" ]; then
  log "installing nvcc 13.0 (pip wheels) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 >&2
fi
[ -x "$nvcc" ] || { echo "nvcc not found at $nvcc after install" >&2; exit 1; }
if [ $quiet = 1 ]; then
  echo "export NVCC='$nvcc'"
  echo "export PATH='$(dirname "$nvcc")':\"\$PATH\""
else
  "$nvcc" --version | tail -n 2
  echo "nvcc: $nvcc"
  echo "use it with: eval \"\$(bash scripts/install-cuda-toolchain.sh --env)\""
fi
