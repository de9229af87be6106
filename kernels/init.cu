// fill_uniform_{f32,bf16,f16}: deterministic uniform values on the device (FillParams in params.h).
// Grid-stride over the buffer; value i depends only on (seed, i), so the grid size does not change
// the result.
#include "common.cuh"
#include "params.h"

namespace fh1_init {

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

template <typename T>
__device__ void fill_uniform(const FillParams& p) {
    T* out = static_cast<T*>(p.out);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        // The top 24 bits give a float in [0, 1) exactly.
        const float u = (float)(splitmix64(p.seed ^ (uint64_t)i * 0xD1B54A32D192ED03ull) >> 40) *
                        (1.0f / 16777216.0f);
        out[i] = fh1::from_f32<T>(p.lo + (p.hi - p.lo) * u);
    }
}

}  // namespace fh1_init

extern "C" __global__ void fill_uniform_f32(const FillParams p) { fh1_init::fill_uniform<float>(p); }
extern "C" __global__ void fill_uniform_bf16(const FillParams p) { fh1_init::fill_uniform<__nv_bfloat16>(p); }
extern "C" __global__ void fill_uniform_f16(const FillParams p) { fh1_init::fill_uniform<__half>(p); }
