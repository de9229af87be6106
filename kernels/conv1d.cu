// Causal depthwise conv1d + bias + SiLU for Mamba-2 (Conv1dParams in params_conv1d.h): packed
// varlen prefill, the final conv state, and the one-token decode update.
//
// Prefill is memory bound (K <= 4 multiply-adds per element): the design reads every x element
// from DRAM about once and writes out once. A thread owns VEC channels (one 16-byte pack) and walks
// a run of tokens, keeping the K-1 previous inputs in registers, so the only re-reads are the K-1
// rows before each run (from L2: the neighbouring run's block just read them). Loads are issued U
// tokens at a time before any is used, so each thread keeps U = 8 16-byte loads in flight.
#include "common.cuh"
#include "params.h"

namespace {
using namespace fh1;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) ConvPack {
    T v[VEC];
};

__device__ __forceinline__ float conv_silu(float v) { return v / (1.f + expf(-v)); }

// cu_seqlens[i] clamped to [0, tokens], so that a malformed table cannot send a thread outside x.
__device__ __forceinline__ int64_t conv_cu(const Conv1dParams& p, int64_t i) {
    if (!p.cu_seqlens) return i == 0 ? 0 : p.tokens;
    const int64_t v = static_cast<const int32_t*>(p.cu_seqlens)[i];
    return v < 0 ? 0 : (v > p.tokens ? p.tokens : v);
}

// The state slot of sequence s, or -1 when it has none.
__device__ __forceinline__ int64_t conv_slot(const Conv1dParams& p, int64_t s) {
    if (!p.conv_state) return -1;
    const int64_t slot = p.slot_idx ? static_cast<const int32_t*>(p.slot_idx)[s] : s;
    return (slot >= 0 && slot < p.slots) ? slot : -1;
}

template <typename T, int VEC, int K>
__device__ __forceinline__ void conv_fwd_body(const Conv1dParams& p) {
    using P = ConvPack<T, VEC>;
    constexpr int U = 8;  // tokens loaded before first use
    const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
    if (c0 >= p.channels) return;
    const int64_t t_begin = static_cast<int64_t>(blockIdx.y) * p.tokens_per_block;
    if (t_begin >= p.tokens) return;
    const int64_t t_end = min(t_begin + p.tokens_per_block, p.tokens);
    const T* x = static_cast<const T*>(p.x) + c0;
    T* out = static_cast<T*>(p.out) + c0;
    const T* wt = static_cast<const T*>(p.weight);
    const T* st = static_cast<const T*>(p.conv_state);

    // Weights stay in T (two bf16 or f16 per register) and widen at use: the conversion is one
    // integer op, and the saved registers let 8 blocks of 64 threads share an SM without spills.
    T w[K][VEC];
    float b[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
#pragma unroll
        for (int k = 0; k < K; ++k) w[k][v] = wt[(c0 + v) * K + k];
        b[v] = p.bias ? to_f32(static_cast<const T*>(p.bias)[c0 + v]) : 0.f;
    }

    // The sequence holding t_begin: the last s with cu[s] <= t_begin.
    int64_t lo = 0, hi = p.batch - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) >> 1;
        if (conv_cu(p, mid) <= t_begin) lo = mid; else hi = mid - 1;
    }
    int64_t t = t_begin;
    for (int64_t s = lo; s < p.batch && t < t_end; ++s) {
        const int64_t seq_start = conv_cu(p, s);
        const int64_t seq_end = max(conv_cu(p, s + 1), seq_start);
        if (seq_end <= t) continue;
        if (t < seq_start) t = seq_start;  // only with a malformed table
        const int64_t slot = conv_slot(p, s);
        // h[j] = input of token t-(K-1)+j: from x inside the sequence, else from the slot's state
        // (state[i] is token seq_start-(K-1)+i), else zero.
        float h[K - 1][VEC];
#pragma unroll
        for (int j = 0; j < K - 1; ++j) {
            const int64_t tok = t - (K - 1) + j;
            if (tok >= seq_start) {
                const P a = *reinterpret_cast<const P*>(x + tok * p.x_row_stride);
#pragma unroll
                for (int v = 0; v < VEC; ++v) h[j][v] = to_f32(a.v[v]);
            } else if (slot >= 0) {
                const int64_t i = tok - seq_start + (K - 1);
#pragma unroll
                for (int v = 0; v < VEC; ++v)
                    h[j][v] = to_f32(st[(slot * p.channels + c0 + v) * (K - 1) + i]);
            } else {
#pragma unroll
                for (int v = 0; v < VEC; ++v) h[j][v] = 0.f;
            }
        }
        const int64_t seg_end = min(seq_end, t_end);
        // One output from the history and the current input, then the history shifts.
        auto step = [&](const P& a, int64_t tt) {
            P o;
#pragma unroll
            for (int v = 0; v < VEC; ++v) {
                const float cur = to_f32(a.v[v]);
                float acc = b[v];
#pragma unroll
                for (int k = 0; k < K - 1; ++k) acc = fmaf(to_f32(w[k][v]), h[k][v], acc);
                acc = fmaf(to_f32(w[K - 1][v]), cur, acc);
#pragma unroll
                for (int k = 0; k < K - 2; ++k) h[k][v] = h[k + 1][v];
                h[K - 2][v] = cur;
                o.v[v] = from_f32<T>(p.silu ? conv_silu(acc) : acc);
            }
            *reinterpret_cast<P*>(out + tt * p.out_row_stride) = o;
        };
        for (; t + U <= seg_end; t += U) {
            P a[U];
#pragma unroll
            for (int u = 0; u < U; ++u) a[u] = *reinterpret_cast<const P*>(x + (t + u) * p.x_row_stride);
#pragma unroll
            for (int u = 0; u < U; ++u) step(a[u], t + u);
        }
        for (; t < seg_end; ++t) step(*reinterpret_cast<const P*>(x + t * p.x_row_stride), t);
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void conv_fwd_width(const Conv1dParams& p) {
    switch (p.width) {
        case 2: conv_fwd_body<T, VEC, 2>(p); break;
        case 3: conv_fwd_body<T, VEC, 3>(p); break;
        case 4: conv_fwd_body<T, VEC, 4>(p); break;
        default: break;  // rejected by the launcher
    }
}

template <typename T>
__device__ __forceinline__ void conv_fwd(const Conv1dParams& p) {
    if (p.vec) conv_fwd_width<T, 16 / sizeof(T)>(p);
    else conv_fwd_width<T, 1>(p);
}

// Final state of sequence blockIdx.y: the last K-1 inputs of state ++ x. Runs after conv1d_fwd
// (same stream), so no block can still be reading the initial state it overwrites.
template <typename T>
__device__ __forceinline__ void conv_fwd_state(const Conv1dParams& p) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t s = blockIdx.y;
    if (c >= p.channels || s >= p.batch) return;
    const int64_t slot = conv_slot(p, s);
    if (slot < 0) return;
    const int64_t seq_start = conv_cu(p, s);
    const int64_t seq_end = max(conv_cu(p, s + 1), seq_start);
    const int64_t len = seq_end - seq_start;
    const int km1 = static_cast<int>(p.width) - 1;
    const T* x = static_cast<const T*>(p.x) + c;
    T* st = static_cast<T*>(p.conv_state) + (slot * p.channels + c) * km1;
    T v[3];
    // Every read before any write: for len < K-1 the new row is the old one shifted left by len.
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        if (i < km1) {
            const int64_t tok = seq_end - km1 + i;  // in x when >= seq_start
            v[i] = tok >= seq_start ? x[tok * p.x_row_stride] : st[i + len];
        }
    }
#pragma unroll
    for (int i = 0; i < 3; ++i)
        if (i < km1) st[i] = v[i];
}

// One decode token per sequence; thread = (sequence blockIdx.y, channel).
template <typename T, int K>
__device__ __forceinline__ void conv_update_body(const Conv1dParams& p) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t s = blockIdx.y;
    if (c >= p.channels || s >= p.batch) return;
    const int64_t slot = conv_slot(p, s);
    const T* wt = static_cast<const T*>(p.weight) + c * K;
    float h[K - 1];
    T* st = slot >= 0 ? static_cast<T*>(p.conv_state) + (slot * p.channels + c) * (K - 1) : nullptr;
#pragma unroll
    for (int j = 0; j < K - 1; ++j) h[j] = st ? to_f32(st[j]) : 0.f;
    const T xr = static_cast<const T*>(p.x)[s * p.x_row_stride + c];
    const float cur = to_f32(xr);
    float acc = p.bias ? to_f32(static_cast<const T*>(p.bias)[c]) : 0.f;
#pragma unroll
    for (int j = 0; j < K - 1; ++j) acc = fmaf(to_f32(wt[j]), h[j], acc);
    acc = fmaf(to_f32(wt[K - 1]), cur, acc);
    if (st) {
#pragma unroll
        for (int j = 0; j < K - 2; ++j) st[j] = from_f32<T>(h[j + 1]);  // exact: h came from T
        st[K - 2] = xr;
    }
    static_cast<T*>(p.out)[s * p.out_row_stride + c] = from_f32<T>(p.silu ? conv_silu(acc) : acc);
}

template <typename T>
__device__ __forceinline__ void conv_update(const Conv1dParams& p) {
    switch (p.width) {
        case 2: conv_update_body<T, 2>(p); break;
        case 3: conv_update_body<T, 3>(p); break;
        case 4: conv_update_body<T, 4>(p); break;
        default: break;
    }
}

}  // namespace

// Launch: grids as in params_conv1d.h, no shared memory. conv1d_fwd: blocks of 64 threads (its
// weights, bias, history and 8 loads in flight take up to ~140 registers for bf16, K = 4); the
// others: up to 1024.
extern "C" __global__ void __launch_bounds__(64) conv1d_fwd_f32(Conv1dParams p) { conv_fwd<float>(p); }
extern "C" __global__ void __launch_bounds__(64) conv1d_fwd_bf16(Conv1dParams p) { conv_fwd<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(64) conv1d_fwd_f16(Conv1dParams p) { conv_fwd<__half>(p); }
extern "C" __global__ void __launch_bounds__(1024) conv1d_fwd_state_f32(Conv1dParams p) { conv_fwd_state<float>(p); }
extern "C" __global__ void __launch_bounds__(1024) conv1d_fwd_state_bf16(Conv1dParams p) { conv_fwd_state<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(1024) conv1d_fwd_state_f16(Conv1dParams p) { conv_fwd_state<__half>(p); }
extern "C" __global__ void __launch_bounds__(1024) conv1d_update_f32(Conv1dParams p) { conv_update<float>(p); }
extern "C" __global__ void __launch_bounds__(1024) conv1d_update_bf16(Conv1dParams p) { conv_update<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(1024) conv1d_update_f16(Conv1dParams p) { conv_update<__half>(p); }
