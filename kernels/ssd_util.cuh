// Warp-level 16x16x16 matrix products for the SSD kernels, one API over two implementations:
// bf16/f16 operands go to the tensor cores through nvcuda::wmma (f32 accumulate, sm_80+), f32
// operands take an exact scalar path with the same fragment layout contract, so the f32 parity
// build runs the very same tiling code. Operands live in shared memory; accumulators are stored
// row-major as f32.
#pragma once
#include <mma.h>
#include <type_traits>
#include "common.cuh"

namespace {
namespace ssd {

namespace wmma = nvcuda::wmma;
using wmma::col_major;
using wmma::row_major;

// 16x16 f32 accumulator of one warp.
template <typename Tc> struct Acc {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> f;
    __device__ __forceinline__ void zero() { wmma::fill_fragment(f, 0.f); }
    __device__ __forceinline__ void store(float* p, int ld) const {
        wmma::store_matrix_sync(p, f, ld, wmma::mem_row_major);
    }
};
// Scalar stand-in: lane l owns row l/2, columns (l%2)*8 .. +8.
template <> struct Acc<float> {
    float v[8];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = 0.f;
    }
    __device__ __forceinline__ void store(float* p, int ld) const {
        const int lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll
        for (int i = 0; i < 8; ++i) p[r * ld + c0 + i] = v[i];
    }
};

// A operand (16 x 16, rows x k) in layout L.
template <typename Tc, typename L> struct FragA {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, Tc, L> f;
    __device__ __forceinline__ void load(const Tc* p, int ld) { wmma::load_matrix_sync(f, p, ld); }
};
template <typename L> struct FragA<float, L> {
    const float* p;
    int ld;
    __device__ __forceinline__ void load(const float* q, int l) { p = q, ld = l; }
    __device__ __forceinline__ float at(int r, int k) const {
        return std::is_same<L, row_major>::value ? p[r * ld + k] : p[k * ld + r];
    }
};

// B operand (16 x 16, k x cols) in layout L.
template <typename Tc, typename L> struct FragB {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, Tc, L> f;
    __device__ __forceinline__ void load(const Tc* p, int ld) { wmma::load_matrix_sync(f, p, ld); }
};
template <typename L> struct FragB<float, L> {
    const float* p;
    int ld;
    __device__ __forceinline__ void load(const float* q, int l) { p = q, ld = l; }
    __device__ __forceinline__ float at(int k, int c) const {
        return std::is_same<L, row_major>::value ? p[k * ld + c] : p[c * ld + k];
    }
};

// acc += a * b
template <typename Tc, typename LA, typename LB>
__device__ __forceinline__ void mma(Acc<Tc>& acc, const FragA<Tc, LA>& a, const FragB<Tc, LB>& b) {
    wmma::mma_sync(acc.f, a.f, b.f, acc.f);
}
template <typename LA, typename LB>
__device__ __forceinline__ void mma(Acc<float>& acc, const FragA<float, LA>& a,
                                    const FragB<float, LB>& b) {
    const int lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll 4
    for (int k = 0; k < 16; ++k) {
        const float av = a.at(r, k);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc.v[i] = fmaf(av, b.at(k, c0 + i), acc.v[i]);
    }
}

// torch's softplus (threshold 20), then the clamp in torch's order (max with lo, then min with hi).
__device__ __forceinline__ float dt_value(float raw, float bias, float lo, float hi) {
    const float v = raw + bias;
    const float sp = v > 20.f ? v : log1pf(expf(v));
    return fminf(fmaxf(sp, lo), hi);
}

constexpr int kThreads = 128;  // 4 warps, each owning 16 rows of a 64-row tile
constexpr int kTile = 64;      // rows/cols of the smem tiles

template <typename Tc, int V> struct alignas(V * sizeof(Tc)) Pack {
    Tc v[V];
};

// Fills a shared tile dst[ROWS][LD] (row-major, Tc, W columns used) from global rows of `src`
// (row r at src + r * stride, W contiguous elements), each row scaled by scale(r) in f32 and
// rounded to Tc; rows r >= valid are zeros (and never read). With `vec` (src and stride 16-byte
// aligned) in 16-byte pieces. NT threads share the work. LD > W pads each row so that the
// fragment loads of consecutive rows fall in different shared-memory banks (a row of 64 bf16
// is 128 bytes: unpadded, the 8 rows of an 8x8 fragment all start in bank 0).
template <int ROWS, int W, int LD = W, int NT = kThreads, typename Tc, typename S, typename F>
__device__ __forceinline__ void fill_tile(Tc* dst, const S* src, int64_t stride, int valid, bool vec,
                                          F scale) {
    constexpr int V = 16 / sizeof(S);
    static_assert(W % V == 0, "tile width must be a multiple of the vector width");
    if (vec) {
#pragma unroll 2
        for (int e = threadIdx.x * V; e < ROWS * W; e += NT * V) {
            const int r = e / W, col = e % W;
            Pack<Tc, V> out;
            if (r < valid) {
                const uint4 u = *reinterpret_cast<const uint4*>(src + r * stride + col);
                const S* in = reinterpret_cast<const S*>(&u);
                const float sc = scale(r);
#pragma unroll
                for (int i = 0; i < V; ++i) out.v[i] = fh1::from_f32<Tc>(fh1::to_f32(in[i]) * sc);
            } else {
#pragma unroll
                for (int i = 0; i < V; ++i) out.v[i] = fh1::from_f32<Tc>(0.f);
            }
            *reinterpret_cast<Pack<Tc, V>*>(dst + r * LD + col) = out;
        }
    } else {
#pragma unroll 2
        for (int e = threadIdx.x; e < ROWS * W; e += NT) {
            const int r = e / W, col = e % W;
            dst[r * LD + col] = fh1::from_f32<Tc>(r < valid ? fh1::to_f32(src[r * stride + col]) * scale(r) : 0.f);
        }
    }
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte global -> shared copy that bypasses L1; valid = false writes 16 zero bytes, reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copies a tile dst[ROWS][LD] (W columns used) from global rows of `src` (row r at src + r *
// stride) without conversion: with `vec` (16-byte aligned rows) by cp.async, which the caller
// commits and waits for; otherwise element by element (complete on return). Rows >= valid are
// zeros.
template <int ROWS, int W, int LD, int NT, typename Tc>
__device__ __forceinline__ void copy_tile(Tc* dst, const Tc* src, int64_t stride, int valid, bool vec) {
    constexpr int V = 16 / sizeof(Tc);
    static_assert(W % V == 0 && LD % V == 0, "tile rows must be whole 16-byte pieces");
    if (vec) {
#pragma unroll 4
        for (int e = threadIdx.x * V; e < ROWS * W; e += NT * V) {
            const int r = e / W, col = e % W;
            const bool ok = r < valid;
            cp_async16(dst + r * LD + col, ok ? src + r * stride + col : src, ok);
        }
    } else {
#pragma unroll 2
        for (int e = threadIdx.x; e < ROWS * W; e += NT) {
            const int r = e / W, col = e % W;
            dst[r * LD + col] = r < valid ? src[r * stride + col] : fh1::from_f32<Tc>(0.f);
        }
    }
}


// Raw tensor-core fragments (mma.sync m16n8k16, f32 accumulate) for the kernels that manage their
// own register tiles. ldmatrix.x4.trans: lane l gives the shared address of row l % 8 of 8x8
// matrix l / 8 (16 contiguous bytes); register j receives matrix j, transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
// d += a (16x16, row) * b (16x8, col): a0..a3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7),
// (rows 0-7, k 8-15), (rows 8-15, k 8-15); b0, b1 = k 0-7, k 8-15; d0, d1 at row lane/4,
// columns 2 (lane % 4) + {0, 1}, d2, d3 the same 8 rows below.
template <typename Tc>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace ssd
}  // namespace
