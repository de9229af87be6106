// Mamba-2 one-token SSM state update (SsmUpdateParams in params_ssm_update.h).
//
// Memory bound on the state (read and written once: 7B b64 f32 is 402 MB of traffic, b1 3.1 MB).
// A block of 4 warps owns rows_per_block rows of one (sequence, head) P x N state; a warp owns
// rows_per_block / 4 of them and its lanes split N (for N = 32 * NPL, NPL contiguous elements per
// lane: one or two 16-byte accesses). Every row of the warp is loaded before the first is used, so
// at batch 1 a thread has all its loads in flight at once and the kernel is one DRAM latency deep;
// splitting P across blocks gives batch 1 enough blocks (192 for 7B) to spread over the SMs.
// y[p] is a warp sum over N of the updated f32 state times C (before any rounding of the state).
#include "common.cuh"
#include "params.h"

namespace {
using namespace fh1;

constexpr int SSMU_WARPS = 4;
constexpr int SSMU_MAX_ROWS_PER_WARP = 4;  // rows_per_block <= 16

template <typename S, int NPL>
struct alignas(sizeof(S) * NPL >= 16 ? 16 : sizeof(S) * NPL) SsmuPack {
    S v[NPL];
};

__device__ __forceinline__ float ssmu_softplus(float v) { return v > 20.f ? v : log1pf(expf(v)); }
__device__ __forceinline__ float ssmu_silu(float v) { return v / (1.f + expf(-v)); }

// Everything one (sequence, head) needs besides the state rows.
struct SsmuHead {
    int64_t slot, b, h, g;
    float dt, da, dskip;
};

template <typename T>
__device__ __forceinline__ bool ssmu_head(const SsmUpdateParams& p, SsmuHead& hd) {
    hd.b = blockIdx.z;
    hd.h = blockIdx.y;
    hd.slot = p.slot_idx ? static_cast<const int32_t*>(p.slot_idx)[hd.b] : hd.b;
    if (hd.slot < 0 || hd.slot >= p.slots) return false;  // padding entry
    hd.g = hd.h / (p.heads / p.groups);
    const float raw = to_f32(static_cast<const T*>(p.dt)[hd.b * p.dt_row_stride + hd.h])
        + to_f32(static_cast<const T*>(p.dt_bias)[hd.h]);
    hd.dt = fminf(fmaxf(ssmu_softplus(raw), p.dt_lo), p.dt_hi);
    hd.da = expf(hd.dt * -expf(to_f32(static_cast<const T*>(p.a_log)[hd.h])));
    hd.dskip = p.d ? to_f32(static_cast<const T*>(p.d)[hd.h]) : 0.f;
    return true;
}

// y for row `pr` from its state dot C (already summed over the warp) and the skip and gate.
template <typename T>
__device__ __forceinline__ void ssmu_store_y(const SsmUpdateParams& p, const SsmuHead& hd, int64_t pr,
                                             float dot, float xv) {
    float out = dot + hd.dskip * xv;
    if (p.z) out *= ssmu_silu(to_f32(static_cast<const T*>(p.z)[hd.b * p.z_row_stride + hd.h * p.head_dim + pr]));
    static_cast<T*>(p.y)[hd.b * p.y_row_stride + hd.h * p.head_dim + pr] = from_f32<T>(out);
}

// N = 32 * NPL: lane l owns state columns [l*NPL, (l+1)*NPL) of every row.
template <typename T, typename S, int NPL>
__device__ __forceinline__ void ssmu_fast(const SsmUpdateParams& p, const SsmuHead& hd) {
    using Pk = SsmuPack<S, NPL>;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t n0 = static_cast<int64_t>(lane) * NPL;
    const T* bp = static_cast<const T*>(p.b) + hd.b * p.b_row_stride + hd.g * p.state_dim + n0;
    const T* cp = static_cast<const T*>(p.c) + hd.b * p.c_row_stride + hd.g * p.state_dim + n0;
    float db[NPL], cv[NPL];
#pragma unroll
    for (int i = 0; i < NPL; ++i) {
        db[i] = hd.dt * to_f32(bp[i]);
        cv[i] = to_f32(cp[i]);
    }
    const int rows_per_warp = static_cast<int>(p.rows_per_block / SSMU_WARPS);
    const int64_t p_first = static_cast<int64_t>(blockIdx.x) * p.rows_per_block + warp * rows_per_warp;
    S* st = static_cast<S*>(p.state) + ((hd.slot * p.heads + hd.h) * p.head_dim) * p.state_dim + n0;
    const T* xp = static_cast<const T*>(p.x) + hd.b * p.x_row_stride + hd.h * p.head_dim;

    Pk s[SSMU_MAX_ROWS_PER_WARP];
    float xv[SSMU_MAX_ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < SSMU_MAX_ROWS_PER_WARP; ++r) {
        const int64_t pr = p_first + r;
        if (r < rows_per_warp && pr < p.head_dim) {
            s[r] = *reinterpret_cast<const Pk*>(st + pr * p.state_dim);
            xv[r] = to_f32(xp[pr]);
        }
    }
#pragma unroll
    for (int r = 0; r < SSMU_MAX_ROWS_PER_WARP; ++r) {
        const int64_t pr = p_first + r;
        if (r < rows_per_warp && pr < p.head_dim) {  // uniform across the warp
            float dot = 0.f;
            Pk o;
#pragma unroll
            for (int i = 0; i < NPL; ++i) {
                const float v = to_f32(s[r].v[i]) * hd.da + db[i] * xv[r];
                o.v[i] = from_f32<S>(v);
                dot += v * cv[i];
            }
            *reinterpret_cast<Pk*>(st + pr * p.state_dim) = o;
            dot = warp_sum(dot);
            if (lane == 0) ssmu_store_y<T>(p, hd, pr, dot, xv[r]);
        }
    }
}

// Any N: lanes stride over the row one element at a time.
template <typename T, typename S>
__device__ __forceinline__ void ssmu_generic(const SsmUpdateParams& p, const SsmuHead& hd) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* bp = static_cast<const T*>(p.b) + hd.b * p.b_row_stride + hd.g * p.state_dim;
    const T* cp = static_cast<const T*>(p.c) + hd.b * p.c_row_stride + hd.g * p.state_dim;
    const int64_t rows_per_warp = p.rows_per_block / SSMU_WARPS;
    const int64_t p_first = static_cast<int64_t>(blockIdx.x) * p.rows_per_block + warp * rows_per_warp;
    const T* xp = static_cast<const T*>(p.x) + hd.b * p.x_row_stride + hd.h * p.head_dim;
    for (int64_t pr = p_first; pr < p_first + rows_per_warp && pr < p.head_dim; ++pr) {
        S* st = static_cast<S*>(p.state) + (((hd.slot * p.heads + hd.h) * p.head_dim) + pr) * p.state_dim;
        const float x = to_f32(xp[pr]);
        float dot = 0.f;
        for (int64_t n = lane; n < p.state_dim; n += 32) {
            const float v = to_f32(st[n]) * hd.da + (hd.dt * to_f32(bp[n])) * x;
            st[n] = from_f32<S>(v);
            dot += v * to_f32(cp[n]);
        }
        dot = warp_sum(dot);
        if (lane == 0) ssmu_store_y<T>(p, hd, pr, dot, x);
    }
}

template <typename T, typename S>
__device__ __forceinline__ void ssm_update(const SsmUpdateParams& p) {
    SsmuHead hd;
    if (!ssmu_head<T>(p, hd)) return;
    switch (p.state_dim) {
        case 64: ssmu_fast<T, S, 2>(p, hd); break;
        case 128: ssmu_fast<T, S, 4>(p, hd); break;
        case 256: ssmu_fast<T, S, 8>(p, hd); break;
        default: ssmu_generic<T, S>(p, hd); break;
    }
}

}  // namespace

// Launch: grid (ceil(P / rows_per_block), H, batch), block 128 threads, no shared memory.
#define FH1_SSMU(TN, T, SN, S) \
    extern "C" __global__ void __launch_bounds__(128) ssm_update_##TN##_state_##SN(SsmUpdateParams p) { ssm_update<T, S>(p); }
FH1_SSMU(f32, float, f32, float)
FH1_SSMU(bf16, __nv_bfloat16, f32, float)
FH1_SSMU(f16, __half, f32, float)
FH1_SSMU(f32, float, bf16, __nv_bfloat16)
FH1_SSMU(bf16, __nv_bfloat16, bf16, __nv_bfloat16)
FH1_SSMU(f16, __half, bf16, __nv_bfloat16)
#undef FH1_SSMU
