// NeoX RoPE on q and k, k *= k_scale, and the append of k and v to the KV cache (KvAppendParams in
// params_attention.h).
//
// Geometry: one block of 128 threads per packed token row r (grid (tokens, 1, 1)). The block finds
// its sequence b by binary search in cu_seqlens (a few cached loads), so one launch serves any
// varlen batch and replays in a CUDA graph with new cu_seqlens / seq_start / slot_idx.
//
// Numerics match cpu::rope_neox exactly (up to the one rounding to T at the end): the angle is the
// f32 product (float)pos * inv_freq[i]; its cos and sin are evaluated in f64 and rounded to f32
// (once per token and pair, into shared memory, shared by every head); the rotation
// x1' = x1*cos + (-x2)*sin, x2' = x2*cos + x1*sin is done in f32 with explicit _rn intrinsics so
// that nvcc cannot contract it into FMAs the reference does not use. The reference does not round
// cos/sin to the activation dtype, so neither does this kernel. k' = round_T(rope(k) * k_scale).
#include "common.cuh"
#include "params.h"

namespace fh1_kv_append {
using namespace fh1;

constexpr int KVA_THREADS = 128;
constexpr int KVA_MAX_HALF = 256;  // head_dim <= 512 (checked on the host)

template <typename T>
__device__ __forceinline__ void kv_append_row(const KvAppendParams& p) {
    __shared__ float cs[KVA_MAX_HALF], sn[KVA_MAX_HALF];
    const int64_t r = blockIdx.x;
    if (r >= p.tokens) return;
    // Largest b with cu_seqlens[b] <= r (sequences are non-empty, validated on the host).
    int lo = 0, hi = static_cast<int>(p.batch) - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (p.cu_seqlens[mid] <= r) lo = mid; else hi = mid - 1;
    }
    const int b = lo;
    const int64_t pos = static_cast<int64_t>(p.seq_start[b]) + (r - p.cu_seqlens[b]);
    const int64_t slot = p.slot_idx[b];
    // Defensive: the host validated these; never write outside the cache.
    if (slot < 0 || slot >= p.slots || pos < 0 || pos >= p.capacity) return;

    const int hd = static_cast<int>(p.head_dim), half = hd >> 1;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float ang = __fmul_rn(static_cast<float>(pos), p.inv_freq[i]);
        double s, c;
        sincos(static_cast<double>(ang), &s, &c);
        cs[i] = static_cast<float>(c);
        sn[i] = static_cast<float>(s);
    }
    __syncthreads();

    const int64_t hq = p.n_heads, hkv = p.n_kv_heads;
    T* q = static_cast<T*>(p.q) + r * p.q_row_stride;
    const T* k = static_cast<const T*>(p.k) + r * p.k_row_stride;
    const T* v = static_cast<const T*>(p.v) + r * p.v_row_stride;
    const int64_t dst = ((slot * p.capacity + pos) * hkv) * hd;
    T* kc = static_cast<T*>(p.k_cache) + dst;
    T* vc = static_cast<T*>(p.v_cache) + dst;

    const int64_t pairs = (hq + hkv) * half;
    for (int64_t idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
        const int64_t head = idx / half;
        const int i = static_cast<int>(idx - head * half);
        const float c = cs[i], s = sn[i];
        if (head < hq) {
            T* x = q + head * hd;
            const float a = to_f32(x[i]), bb = to_f32(x[i + half]);
            x[i] = from_f32<T>(__fadd_rn(__fmul_rn(a, c), __fmul_rn(-bb, s)));
            x[i + half] = from_f32<T>(__fadd_rn(__fmul_rn(bb, c), __fmul_rn(a, s)));
        } else {
            const int64_t kh = head - hq;
            const T* x = k + kh * hd;
            const float a = to_f32(x[i]), bb = to_f32(x[i + half]);
            const float y1 = __fadd_rn(__fmul_rn(a, c), __fmul_rn(-bb, s));
            const float y2 = __fadd_rn(__fmul_rn(bb, c), __fmul_rn(a, s));
            kc[kh * hd + i] = from_f32<T>(__fmul_rn(y1, p.k_scale));
            kc[kh * hd + i + half] = from_f32<T>(__fmul_rn(y2, p.k_scale));
        }
    }
    const int64_t row = hkv * hd;
    for (int64_t j = threadIdx.x; j < row; j += blockDim.x) vc[j] = v[j];
}

}  // namespace fh1_kv_append

extern "C" __global__ void __launch_bounds__(fh1_kv_append::KVA_THREADS) kv_append_bf16(const KvAppendParams p) {
    fh1_kv_append::kv_append_row<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(fh1_kv_append::KVA_THREADS) kv_append_f16(const KvAppendParams p) {
    fh1_kv_append::kv_append_row<__half>(p);
}
extern "C" __global__ void __launch_bounds__(fh1_kv_append::KVA_THREADS) kv_append_f32(const KvAppendParams p) {
    fh1_kv_append::kv_append_row<float>(p);
}
