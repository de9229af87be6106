#!/usr/bin/env python3
"""Lists the images in a CUDA fatbin (no CUDA toolkit needed) and checks the expected targets.

    python3 scripts/check-fatbin.py PATH/kernels.fatbin [sm_80 sm_86 sm_89 sm_90 ptx_80]

Fatbin layout: a 16-byte header (magic 0xBA55ED50, version, header size, body size), then entries
each starting with kind (u16: 1 PTX, 2 ELF), version (u16), header size (u32), payload size (u64),
..., and the SM number (u32) at offset 28.
"""
import struct
import sys


def images(data):
    magic, _ver, hsize, body = struct.unpack_from("<IHHQ", data, 0)
    if magic != 0xBA55ED50:
        raise SystemExit(f"not a fatbin (magic {magic:#x})")
    off, end = hsize, hsize + body
    while off < end:
        kind, _v, ehsize, payload = struct.unpack_from("<HHIQ", data, off)
        arch = struct.unpack_from("<I", data, off + 28)[0]
        yield ("ptx" if kind == 1 else "sm") + f"_{arch}"
        off += ehsize + payload


def main():
    path = sys.argv[1]
    want = sys.argv[2:] or ["sm_80", "sm_86", "sm_89", "sm_90", "ptx_80"]
    found = sorted(set(images(open(path, "rb").read())))
    print("fatbin images:", " ".join(found))
    missing = [w for w in want if w not in found]
    if missing:
        raise SystemExit(f"missing targets: {missing}")


if __name__ == "__main__":
    main()
