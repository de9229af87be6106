// RMSNorm with an optional fused residual add (RmsNormParams in params.h).
//
// One block per row: a Falcon-H1 row is 1024 to 5120 wide, so up to 1024 threads keep every lane
// busy even at batch 1 (decode), and the row is read twice (sum of squares, then normalise) with
// the second read served from L1/L2, not HBM. Loads and stores are 16 bytes wide when every pointer
// and row stride allows it, scalar otherwise; the choice is uniform across the block.
#include "common.cuh"
#include "params.h"

namespace {
using namespace fh1;

// VEC consecutive elements moved as one 16-byte (or, for VEC = 1, one element) access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
    T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void rms_norm_row(const RmsNormParams& p, float* scratch) {
    using P = Pack<T, VEC>;
    const int64_t row = blockIdx.x;
    const int64_t packs = p.cols / VEC;
    const P* x = reinterpret_cast<const P*>(static_cast<const T*>(p.x) + row * p.x_row_stride);
    const P* w = reinterpret_cast<const P*>(p.weight);
    P* res = p.residual
        ? reinterpret_cast<P*>(static_cast<T*>(p.residual) + row * p.residual_row_stride)
        : nullptr;
    P* out = reinterpret_cast<P*>(static_cast<T*>(p.out) + row * p.out_row_stride);

    float ss = 0.f;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
        P a = x[i];
        if (res) {
            // The sum is rounded to T and stored: the residual stream stays in the model dtype,
            // and the norm is of the rounded sum, as in HF.
            const P r = res[i];
#pragma unroll
            for (int k = 0; k < VEC; ++k) a.v[k] = from_f32<T>(to_f32(r.v[k]) + to_f32(a.v[k]));
            res[i] = a;
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float v = to_f32(a.v[k]);
            ss += v * v;
        }
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(p.cols) + p.eps);

    const P* src = res ? res : x;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
        // Each thread re-reads only what it wrote itself in the first loop: no barrier needed.
        const P a = src[i];
        const P g = w[i];
        P o;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            // HF casts the normalised value to the input dtype before the weight multiplies it.
            const float normed = to_f32(from_f32<T>(to_f32(a.v[k]) * inv));
            o.v[k] = from_f32<T>(normed * to_f32(g.v[k]));
        }
        out[i] = o;
    }
}

__device__ __forceinline__ bool aligned16(const void* ptr) {
    return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

template <typename T>
__device__ __forceinline__ void rms_norm(const RmsNormParams& p) {
    __shared__ float scratch[32];
    constexpr int V = 16 / sizeof(T);
    // Every row must start on a 16-byte boundary, so the strides count too.
    const bool vec = p.cols % V == 0 && p.x_row_stride % V == 0 && p.out_row_stride % V == 0
        && aligned16(p.x) && aligned16(p.weight) && aligned16(p.out)
        && (!p.residual || (p.residual_row_stride % V == 0 && aligned16(p.residual)));
    if (vec) {
        rms_norm_row<T, V>(p, scratch);
    } else {
        rms_norm_row<T, 1>(p, scratch);
    }
}

}  // namespace

// Launch: grid (rows), block of up to 1024 threads (a multiple of 32), no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(1024) rms_norm_f32(RmsNormParams p) { rms_norm<float>(p); }
extern "C" __global__ void __launch_bounds__(1024) rms_norm_bf16(RmsNormParams p) { rms_norm<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(1024) rms_norm_f16(RmsNormParams p) { rms_norm<__half>(p); }
