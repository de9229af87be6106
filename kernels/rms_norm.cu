// RMSNorm with an optional fused residual add (RmsNormParams in params.h). One block per row: a
// Falcon-H1 row is 1024 to 5120 wide, so a block of 256 threads keeps every lane busy, and the row
// is read twice from L1/L2 (sum of squares, then normalise), not from HBM.
#include "common.cuh"
#include "params.h"

namespace {
using namespace fh1;

template <typename T>
__device__ void rms_norm_row(const RmsNormParams& p) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    const T* x = static_cast<const T*>(p.x) + row * p.x_row_stride;
    const T* w = static_cast<const T*>(p.weight);
    T* res = p.residual ? static_cast<T*>(p.residual) + row * p.residual_row_stride : nullptr;
    T* out = static_cast<T*>(p.out) + row * p.out_row_stride;

    float ss = 0.f;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
        float v = to_f32(x[c]);
        if (res) {
            // The sum is rounded to T and stored: the residual stream stays in the model dtype.
            T s = from_f32<T>(to_f32(res[c]) + v);
            res[c] = s;
            v = to_f32(s);
        }
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(p.cols) + p.eps);
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
        // Each thread re-reads the values it wrote itself: no barrier needed.
        const float v = res ? to_f32(res[c]) : to_f32(x[c]);
        const float normed = to_f32(from_f32<T>(v * inv));
        out[c] = from_f32<T>(normed * to_f32(w[c]));
    }
}

}  // namespace

extern "C" __global__ void rms_norm_f32(RmsNormParams p) { rms_norm_row<float>(p); }
extern "C" __global__ void rms_norm_bf16(RmsNormParams p) { rms_norm_row<__nv_bfloat16>(p); }
extern "C" __global__ void rms_norm_f16(RmsNormParams p) { rms_norm_row<__half>(p); }
