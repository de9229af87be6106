// Mamba-2 gated group RMSNorm and the plain SiLU gate (GatedNormParams in params_gated_norm.h).
//
// One block per (row, group): a group is 1536 to 4096 channels in Falcon-H1, so up to 1024
// threads keep every lane busy at batch 1. The group is read twice (sum of squares, then
// normalise); the second read comes from L1/L2, so DRAM sees y and z once and out once. 16-byte
// accesses when every pointer, row stride and the group size allow it (uniform over the block).
#include "common.cuh"
#include "params.h"

namespace {
using namespace fh1;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) GnPack {
    T v[VEC];
};

__device__ __forceinline__ float gn_silu(float v) { return v / (1.f + expf(-v)); }

// Rounds to T and back: where HF casts to the input dtype.
template <typename T>
__device__ __forceinline__ float gn_round(float v) { return to_f32(from_f32<T>(v)); }

template <typename T, int VEC>
__device__ __forceinline__ void gated_norm_group(const GatedNormParams& p, float* scratch) {
    using P = GnPack<T, VEC>;
    const int64_t row = blockIdx.x;
    const int64_t gs = p.dim / p.groups;
    const int64_t col0 = static_cast<int64_t>(blockIdx.y) * gs;
    const int64_t packs = gs / VEC;
    const P* y = reinterpret_cast<const P*>(static_cast<const T*>(p.y) + row * p.y_row_stride + col0);
    const P* z = p.z ? reinterpret_cast<const P*>(static_cast<const T*>(p.z) + row * p.z_row_stride + col0)
                     : nullptr;
    const P* w = p.weight ? reinterpret_cast<const P*>(static_cast<const T*>(p.weight) + col0) : nullptr;
    P* out = reinterpret_cast<P*>(static_cast<T*>(p.out) + row * p.out_row_stride + col0);
    const bool gate_first = !p.norm_before_gate;

    float inv = 1.f;
    if (w) {
        float ss = 0.f;
        for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
            const P a = y[i];
            P g;
            if (z && gate_first) g = z[i];
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                float v = to_f32(a.v[k]);
                if (z && gate_first) v *= gn_silu(to_f32(g.v[k]));
                ss += v * v;
            }
        }
        inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(gs) + p.eps);
    }

    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
        const P a = y[i];
        P g, wv, o;
        if (z) g = z[i];
        if (w) wv = w[i];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float sg = z ? gn_silu(to_f32(g.v[k])) : 1.f;
            float v = to_f32(a.v[k]);
            if (!w) {
                v *= sg;  // the gate alone
            } else if (gate_first) {
                // HF: weight * (v * rsqrt(.)).to(dtype), v = y * silu(z) in f32.
                v = to_f32(wv.v[k]) * gn_round<T>(v * sg * inv);
            } else {
                // HF: (weight * (y * rsqrt(.)).to(dtype)) in the dtype, then * silu(z) in f32.
                v = gn_round<T>(to_f32(wv.v[k]) * gn_round<T>(v * inv)) * sg;
            }
            o.v[k] = from_f32<T>(v);
        }
        out[i] = o;
    }
}

template <typename T>
__device__ __forceinline__ void gated_norm(const GatedNormParams& p) {
    __shared__ float scratch[32];
    if (p.vec) gated_norm_group<T, 16 / sizeof(T)>(p, scratch);
    else gated_norm_group<T, 1>(p, scratch);
}

}  // namespace

// Launch: grid (rows, G), block of up to 1024 threads (a multiple of 32), no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(1024) gated_norm_f32(GatedNormParams p) { gated_norm<float>(p); }
extern "C" __global__ void __launch_bounds__(1024) gated_norm_bf16(GatedNormParams p) { gated_norm<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(1024) gated_norm_f16(GatedNormParams p) { gated_norm<__half>(p); }
