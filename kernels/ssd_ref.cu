// ssd_scan_ref_{f32,bf16,f16}(SsdParams): the SSD as the plain recurrence, one token at a time, for
// any P and N (P * N <= 8192): the path for sizes the chunked kernels are not built for (the tiny
// test models), far slower than them at the model sizes. Per (head, sequence) block of 256 threads,
// the f32 state [P, N] in shared memory; per token
//   dt = clamp(softplus(dt_raw + dt_bias)), S = exp(dt A) S + (dt B) x^T, y = S C + D x,
// with the arithmetic of ssm_update.cu (the one-token step), which equals cpu::ssd_recurrent.
// It reads `chunk_info` as one entry per sequence (first token, length: any length >= 0) and
// n_chunks == batch; chunk_size, chunk_states, chunk_cum_end, cb and seq_chunks are unused.
#include "common.cuh"
#include "params.h"

namespace fh1_ssd_ref {
using namespace fh1;

constexpr int THREADS = 256;

__device__ __forceinline__ float softplus(float v) { return v > 20.f ? v : log1pf(expf(v)); }

template <typename T>
__device__ void scan(const SsdParams& p) {
    extern __shared__ float smem[];
    const int64_t P = p.head_dim, N = p.state_dim;
    float* S = smem;           // [P, N]
    float* bs = S + P * N;     // [N]: dt * B
    float* cs = bs + N;        // [N]
    float* xs = cs + N;        // [P]
    __shared__ float dA;

    const int64_t h = blockIdx.x, b = blockIdx.y;
    const int32_t* info = static_cast<const int32_t*>(p.chunk_info);
    const int64_t first = info[2 * b], len = info[2 * b + 1];
    const int64_t slot = p.slots ? static_cast<const int32_t*>(p.slots)[b] : b;
    const int64_t g = h / (p.heads / p.groups);
    float* st = static_cast<float*>(p.state) + (slot * p.heads + h) * P * N;
    for (int64_t e = threadIdx.x; e < P * N; e += THREADS) S[e] = p.has_initial_state ? st[e] : 0.f;
    const float a = -expf(to_f32(static_cast<const T*>(p.a_log)[h]));
    const float bias = to_f32(static_cast<const T*>(p.dt_bias)[h]);
    const float dskip = p.d ? to_f32(static_cast<const T*>(p.d)[h]) : 0.f;
    for (int64_t t = first; t < first + len; ++t) {
        const float raw = to_f32(static_cast<const T*>(p.dt)[t * p.dt_row_stride + h]) + bias;
        const float dt = fminf(fmaxf(softplus(raw), p.dt_lo), p.dt_hi);
        if (threadIdx.x == 0) dA = expf(dt * a);
        const T* bp = static_cast<const T*>(p.b) + t * p.b_row_stride + g * N;
        const T* cp = static_cast<const T*>(p.c) + t * p.c_row_stride + g * N;
        const T* xp = static_cast<const T*>(p.x) + t * p.x_row_stride + h * P;
        for (int64_t n = threadIdx.x; n < N; n += THREADS) {
            bs[n] = dt * to_f32(bp[n]);
            cs[n] = to_f32(cp[n]);
        }
        for (int64_t q = threadIdx.x; q < P; q += THREADS) xs[q] = to_f32(xp[q]);
        __syncthreads();
        const float da = dA;
        for (int64_t e = threadIdx.x; e < P * N; e += THREADS) {
            const int64_t q = e / N, n = e - q * N;
            S[e] = fmaf(da, S[e], bs[n] * xs[q]);
        }
        __syncthreads();
        T* yp = static_cast<T*>(p.y) + t * p.y_row_stride + h * P;
        for (int64_t q = threadIdx.x; q < P; q += THREADS) {
            float acc = 0.f;
            for (int64_t n = 0; n < N; ++n) acc = fmaf(S[q * N + n], cs[n], acc);
            yp[q] = from_f32<T>(acc + dskip * xs[q]);
        }
        // The next token overwrites bs, cs, xs and dA only after every thread is done with them.
        __syncthreads();
    }
    for (int64_t e = threadIdx.x; e < P * N; e += THREADS) st[e] = S[e];
}

}  // namespace fh1_ssd_ref

extern "C" __global__ void __launch_bounds__(fh1_ssd_ref::THREADS) ssd_scan_ref_f32(const SsdParams p) {
    fh1_ssd_ref::scan<float>(p);
}
extern "C" __global__ void __launch_bounds__(fh1_ssd_ref::THREADS) ssd_scan_ref_bf16(const SsdParams p) {
    fh1_ssd_ref::scan<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(fh1_ssd_ref::THREADS) ssd_scan_ref_f16(const SsdParams p) {
    fh1_ssd_ref::scan<__half>(p);
}
