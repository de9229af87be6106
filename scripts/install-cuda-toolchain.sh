#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine with no CUDA toolkit (no GPU is
# needed to build), idempotently; a second run installs nothing and takes a second:
#   - libclang (Debian's libclang-dev), for bindgen on kernels/params.h, unless one is found;
#   - g++, nvcc's host compiler, unless present;
#   - nvcc 13.0 from NVIDIA's pip wheels, in a venv at
#     ${FALCON_H1_TOOLCHAIN:-<repo>/.toolchain}/nvcc-venv. The wheels are pinned: the GPU
#     machines' driver is CUDA 13.0, and an unpinned install pulls a newer nvvm whose PTX the 13.0
#     ptxas rejects. A stamp file records the pins, so changing them here reinstalls.
#
# Usage:
#   bash scripts/install-cuda-toolchain.sh                   # install, then say where nvcc is
#   eval "$(bash scripts/install-cuda-toolchain.sh --env)"   # install (log on stderr), then
#                                                            # export NVCC and put nvcc on PATH
#   cargo build --release --features cuda                    # build.rs finds nvcc through NVCC
#
# apt needs root (or sudo); `apt-get update` runs only when something must be installed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${FALCON_H1_TOOLCHAIN:-$repo/.toolchain}
venv=$root/nvcc-venv
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
      nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88)

env_mode=0
case "${1:-}" in
  --env) env_mode=1 ;;
  "") ;;
  -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "usage: $0 [--env]" >&2; exit 2 ;;
esac
# In --env mode stdout is eval'd: everything but the exports goes to stderr.
log() { echo "install-cuda-toolchain: $*" >&2; }

apt_updated=0
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ $apt_updated = 0 ]; then
    $sudo apt-get update -qq >&2
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

have_libclang() {
  if [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/libclang*.so* >/dev/null 2>&1; then
    return 0
  fi
  ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' && return 0
  ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* \
     /usr/lib/aarch64-linux-gnu/libclang*.so* >/dev/null 2>&1
}
if have_libclang; then
  :
else
  log "libclang not found: installing libclang-dev (apt)"
  apt_install libclang-dev
  have_libclang || { log "libclang still not found after installing libclang-dev"; exit 1; }
fi

if ! command -v g++ >/dev/null 2>&1; then
  log "g++ (nvcc's host compiler) not found: installing g++ (apt)"
  apt_install g++
fi

stamp=$venv/.falcon-h1-pins
find_nvcc() { ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1; }
nvcc=$(find_nvcc || true)
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ] \
   || ! "$nvcc" --version >/dev/null 2>&1; then
  log "installing nvcc 13.0 (pip wheels) into $venv"
  rm -rf "$venv"
  mkdir -p "$root"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" >&2
  nvcc=$(find_nvcc || true)
  if [ -z "$nvcc" ] || ! "$nvcc" --version >/dev/null 2>&1; then
    log "nvcc does not run after the install (looked in $venv/lib/python3*/site-packages/nvidia/cu13/bin)"
    exit 1
  fi
  echo "${pins[*]}" > "$stamp"
fi

if [ $env_mode = 1 ]; then
  printf "export NVCC=%q\n" "$nvcc"
  printf "export PATH=%q:\"\$PATH\"\n" "$(dirname "$nvcc")"
else
  "$nvcc" --version | tail -n 2
  echo "nvcc: $nvcc"
  echo "use it with: eval \"\$(bash scripts/install-cuda-toolchain.sh --env)\""
fi
