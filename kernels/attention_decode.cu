// Split-KV decode attention (one new query token per sequence, already appended to the cache), its
// log-sum-exp combine, and the scalar f32 prefill kernel (AttnParams in params_attention.h).
//
// attn_decode_<T>_hd<HD>_g<GQ>: grid (num_splits, Hkv * chunks, batch), block 128 (4 warps).
//   Block (s, g * chunks + c, b) serves query heads g*rep + c*GQ .. + GQ (rep = Hq / Hkv; heads past
//   rep are masked) of sequence b against split s of kv head g, so K/V of that head are read from
//   memory once per split for all GQ heads. L = seq_start[b] + 1 keys; with
//   chunk = max(ceil(L / S), 256), split s covers [s * chunk, min(L, (s + 1) * chunk)) (possibly
//   empty), computed here from seq_start, so a captured graph replays with new lengths. A lane group of LPK = HD / VEC lanes (VEC = 16 / sizeof(T)
//   elements per 16-byte load) owns one key row; a warp takes 32 / LPK keys per step, U steps per
//   iteration, and issues the next iteration's K and V loads before this one's math (2 U steps of
//   16-byte loads in flight per lane; U is chosen per (HD, GQ) to stay within 168 to 240 registers
//   without spills). Scores are in log2 units (q pre-scaled by scale * log2 e)
//   with an online softmax per lane group; the groups and warps are merged at the end. Writes
//   partial_out [batch, Hq, S, HD] (normalised) and partial_lse [batch, Hq, S] (natural log; -inf and
//   zeros for a split without keys).
// attn_decode_combine_<T>: grid (Hq, batch), block 256: out = sum_s w_s o_s / sum_s w_s with
//   w_s = exp(lse_s - max lse), rounded to T, into row cu_seqlens[b] of out (S <= 1024; the
//   threads split the splits x hd/4 float4 columns so that the loads are independent).
// attn_fwd_f32, attn_fwd_ref_{bf16,f16}: grid (ceil(max_new / 4), Hq, batch), block 128: one warp
//   per (query row, head), in T's storage with f32 math,
//   lanes own dims lane + 32 j (hd <= 256), keys 4 at a time with warp sums, online softmax in f32.
#include "common.cuh"
#include "params.h"

namespace fh1_attn_dec {
using namespace fh1;

constexpr int DEC_WARPS = 4;
constexpr int DEC_THREADS = DEC_WARPS * 32;
constexpr int DEC_MIN_CHUNK = 256;  // fewest keys per non-empty split (see the header comment)
#define FH1_DEC_NEG_INF (-__int_as_float(0x7f800000))

template <typename T> __device__ __forceinline__ void unpack(const uint4& r, float* f);
template <> __device__ __forceinline__ void unpack<float>(const uint4& r, float* f) {
    f[0] = __uint_as_float(r.x); f[1] = __uint_as_float(r.y);
    f[2] = __uint_as_float(r.z); f[3] = __uint_as_float(r.w);
}
template <> __device__ __forceinline__ void unpack<__nv_bfloat16>(const uint4& r, float* f) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
template <> __device__ __forceinline__ void unpack<__half>(const uint4& r, float* f) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
        const float2 v = __half22float2(h);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// exp2 of a - b where a may be -inf (then 0): the online softmax's correction factors.
__device__ __forceinline__ float exp2_diff(float a, float b) { return a == FH1_DEC_NEG_INF ? 0.f : exp2f(a - b); }
__device__ __forceinline__ float exp_diff(float a, float b) { return a == FH1_DEC_NEG_INF ? 0.f : expf(a - b); }

// Max over the block; every thread gets it. `scratch` holds 32 floats.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int nwarps = (blockDim.x + 31) >> 5;
    v = lane < nwarps ? scratch[lane] : FH1_DEC_NEG_INF;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <typename T, int HD, int GQ, int U>
__device__ __forceinline__ void decode_split(const AttnParams& p) {
    constexpr int VEC = 16 / sizeof(T);
    constexpr int LPK = HD / VEC;
    constexpr int KPW = 32 / LPK;
    static_assert(LPK >= 1 && LPK <= 32 && (LPK & (LPK - 1)) == 0, "lanes per key");
    __shared__ float sm_acc[DEC_WARPS][GQ][HD];
    __shared__ float sm_m[DEC_WARPS][GQ], sm_l[DEC_WARPS][GQ];

    const int s = blockIdx.x, b = blockIdx.z;
    const int64_t hkv = p.n_kv_heads, hq = p.n_heads, S = p.num_splits;
    const int rep = static_cast<int>(hq / hkv);
    const int chunks = (rep + GQ - 1) / GQ;
    const int g = blockIdx.y / chunks, c = blockIdx.y - g * chunks;
    const int h0 = g * rep + c * GQ;
    const int nh = min(GQ, rep - c * GQ);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kg = lane / LPK, sub = lane % LPK;

    const int64_t L = static_cast<int64_t>(p.seq_start[b]) + 1;
    // At least DEC_MIN_CHUNK keys per split: a sequence much shorter than the scratch's max_kv
    // (for which S was chosen) uses its first few splits, and the others exit at once.
    const int64_t chunk = max((L + S - 1) / S, static_cast<int64_t>(DEC_MIN_CHUNK));
    const int64_t start = min(L, s * chunk), end = min(L, start + chunk);
    const int64_t row = p.cu_seqlens[b];
    const int64_t slot = p.slot_idx[b];
    const bool ok = slot >= 0 && slot < p.slots && L <= p.capacity;

    // q of this block's heads, this lane's VEC dims, pre-scaled into log2 units.
    float q[GQ][VEC];
    const T* qp = static_cast<const T*>(p.q) + row * p.q_row_stride;
#pragma unroll
    for (int h = 0; h < GQ; ++h) {
        if (h < nh) {
            float f[VEC];
            unpack<T>(*reinterpret_cast<const uint4*>(qp + (h0 + h) * HD + sub * VEC), f);
#pragma unroll
            for (int e = 0; e < VEC; ++e) q[h][e] = f[e] * p.scale_log2;
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) q[h][e] = 0.f;
        }
    }
    float acc[GQ][VEC], m[GQ], l[GQ];
#pragma unroll
    for (int h = 0; h < GQ; ++h) {
        m[h] = FH1_DEC_NEG_INF;
        l[h] = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[h][e] = 0.f;
    }

    const int64_t tok_stride = hkv * HD;  // elements between consecutive tokens of one kv head
    const T* kbase = static_cast<const T*>(p.k_cache) + (slot * p.capacity * hkv + g) * HD + sub * VEC;
    const T* vbase = static_cast<const T*>(p.v_cache) + (slot * p.capacity * hkv + g) * HD + sub * VEC;
    constexpr int STEP = KPW * U;  // keys per warp per iteration
    // Double-buffered: the loads of the warp's next step are issued before this step's math, so
    // 2 * STEP keys of K and V are in flight per warp.
    uint4 kn[U], vn[U];
    auto load = [&](int64_t b0) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t t = b0 + u * KPW + kg;
            if (ok && t < end) {
                kn[u] = ld_stream(kbase + t * tok_stride);
                vn[u] = ld_stream(vbase + t * tok_stride);
            } else {
                kn[u] = make_uint4(0, 0, 0, 0);
                vn[u] = make_uint4(0, 0, 0, 0);
            }
        }
    };
    load(start + warp * STEP);
    for (int64_t base = start + warp * STEP; ok && base < end; base += DEC_WARPS * STEP) {
        uint4 kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            kr[u] = kn[u];
            vr[u] = vn[u];
        }
        load(base + DEC_WARPS * STEP);
        float sc[U][GQ];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[VEC];
            unpack<T>(kr[u], kf);
#pragma unroll
            for (int h = 0; h < GQ; ++h) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < VEC; ++e) d = fmaf(q[h][e], kf[e], d);
                sc[u][h] = d;
            }
        }
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1) {
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int h = 0; h < GQ; ++h) sc[u][h] += __shfl_xor_sync(0xffffffffu, sc[u][h], o);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (base + u * KPW + kg >= end) {
#pragma unroll
                for (int h = 0; h < GQ; ++h) sc[u][h] = FH1_DEC_NEG_INF;
            }
        }
#pragma unroll
        for (int h = 0; h < GQ; ++h) {
            float mx = m[h];
#pragma unroll
            for (int u = 0; u < U; ++u) mx = fmaxf(mx, sc[u][h]);
            const float corr = exp2_diff(m[h], mx);
            m[h] = mx;
            l[h] *= corr;
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[h][e] *= corr;
#pragma unroll
            for (int u = 0; u < U; ++u) sc[u][h] = exp2_diff(sc[u][h], mx);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float vf[VEC];
            unpack<T>(vr[u], vf);
#pragma unroll
            for (int h = 0; h < GQ; ++h) {
                l[h] += sc[u][h];
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[h][e] = fmaf(sc[u][h], vf[e], acc[h][e]);
            }
        }
    }

    // Merge the KPW lane groups of the warp (lanes with the same `sub`).
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
        for (int h = 0; h < GQ; ++h) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[h], o);
            const float mx = fmaxf(m[h], mo);
            const float ca = exp2_diff(m[h], mx), cb = exp2_diff(mo, mx);
            const float lo = __shfl_xor_sync(0xffffffffu, l[h], o);
            l[h] = l[h] * ca + lo * cb;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const float ao = __shfl_xor_sync(0xffffffffu, acc[h][e], o);
                acc[h][e] = acc[h][e] * ca + ao * cb;
            }
            m[h] = mx;
        }
    }
    if (kg == 0) {
#pragma unroll
        for (int h = 0; h < GQ; ++h) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) sm_acc[warp][h][sub * VEC + e] = acc[h][e];
            if (sub == 0) {
                sm_m[warp][h] = m[h];
                sm_l[warp][h] = l[h];
            }
        }
    }
    __syncthreads();
    // Merge the warps; thread i handles (head, dim) pairs i, i + 128, ...
    constexpr float LN2 = 0.6931471805599453f;
    for (int i = threadIdx.x; i < GQ * HD; i += DEC_THREADS) {
        const int h = i / HD, d = i - h * HD;
        if (h >= nh) continue;
        float mx = FH1_DEC_NEG_INF;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) mx = fmaxf(mx, sm_m[w][h]);
        float den = 0.f, num = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float cw = exp2_diff(sm_m[w][h], mx);
            den += sm_l[w][h] * cw;
            num += sm_acc[w][h][d] * cw;
        }
        const int64_t head = h0 + h;
        const int64_t idx = (b * hq + head) * S + s;
        p.partial_out[idx * HD + d] = den > 0.f ? num / den : 0.f;
        if (d == 0) p.partial_lse[idx] = den > 0.f ? (mx + log2f(den)) * LN2 : FH1_DEC_NEG_INF;
    }
}

constexpr int COMB_THREADS = 256;
constexpr int COMB_MAX_SPLITS = 1024;  // the host's DECODE_MAX_SPLITS

// Block (h, b): weights w_s = exp(lse_s - max) into shared memory, then the 256 threads split
// (splits x hd/4): thread t reads float4 column t % (hd/4) of splits t / (hd/4), t / (hd/4) +
// groups, ... (independent loads, unrolled), and the groups are summed through shared memory.
template <typename T>
__device__ __forceinline__ void decode_combine(const AttnParams& p) {
    __shared__ float w[COMB_MAX_SPLITS];
    __shared__ float4 red[COMB_THREADS];
    __shared__ float scratch[32];
    const int h = blockIdx.x, b = blockIdx.y;
    const int S = static_cast<int>(min(p.num_splits, static_cast<int64_t>(COMB_MAX_SPLITS)));
    const int hd = static_cast<int>(p.head_dim);
    const int64_t idx = (static_cast<int64_t>(b) * p.n_heads + h) * p.num_splits;
    const float* lse = p.partial_lse + idx;
    float mx = FH1_DEC_NEG_INF;
    for (int s = threadIdx.x; s < S; s += COMB_THREADS) mx = fmaxf(mx, lse[s]);
    mx = block_max(mx, scratch);
    float den = 0.f;
    for (int s = threadIdx.x; s < S; s += COMB_THREADS) {
        const float ws = exp_diff(lse[s], mx);
        w[s] = ws;
        den += ws;
    }
    den = block_sum(den, scratch);  // also orders the writes of w before the reads below
    const int cols = hd >> 2, groups = COMB_THREADS / cols;
    const int col = threadIdx.x % cols, grp = threadIdx.x / cols;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (grp < groups) {
        const float4* po = reinterpret_cast<const float4*>(p.partial_out + idx * hd) + col;
#pragma unroll 4
        for (int s = grp; s < S; s += groups) {
            const float ws = w[s];
            if (ws != 0.f) {  // empty splits (and negligible ones) cost no load
                const float4 v = po[static_cast<int64_t>(s) * cols];
                acc.x = fmaf(ws, v.x, acc.x);
                acc.y = fmaf(ws, v.y, acc.y);
                acc.z = fmaf(ws, v.z, acc.z);
                acc.w = fmaf(ws, v.w, acc.w);
            }
        }
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    const int64_t row = p.cu_seqlens[b];
    T* out = static_cast<T*>(p.out) + row * p.o_row_stride + static_cast<int64_t>(h) * hd;
    const float inv = den > 0.f ? 1.f / den : 0.f;
    for (int d = threadIdx.x; d < hd; d += COMB_THREADS) {
        const int c = d >> 2, e = d & 3;
        float sum = 0.f;
        for (int g = 0; g < groups; ++g) {
            const float4 v = red[g * cols + c];
            sum += e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
        }
        out[d] = from_f32<T>(sum * inv);
    }
}

constexpr int FWD32_WARPS = 4;
constexpr int FWD32_MAXJ = 8;  // head_dim <= 256

// The scalar attention of any even head dim <= 256, in T's storage with f32 math (attn_fwd_f32 is
// the f32 model's prefill; attn_fwd_ref_{bf16,f16} serve head dims the tensor-core kernels are not
// built for, e.g. the tiny test models).
template <typename T>
__device__ __forceinline__ void fwd_scalar(const AttnParams& p) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.y, b = blockIdx.z;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * FWD32_WARPS + warp;
    const int64_t r0 = p.cu_seqlens[b], n_new = p.cu_seqlens[b + 1] - r0;
    if (i >= n_new) return;
    const int64_t slot = p.slot_idx[b];
    const int64_t nk = static_cast<int64_t>(p.seq_start[b]) + i + 1;
    if (slot < 0 || slot >= p.slots || nk > p.capacity) return;
    const int hd = static_cast<int>(p.head_dim);
    const int64_t hkv = p.n_kv_heads, g = h / (p.n_heads / hkv);
    const T* qp = static_cast<const T*>(p.q) + (r0 + i) * p.q_row_stride + h * hd;
    const T* kp = static_cast<const T*>(p.k_cache) + (slot * p.capacity * hkv + g) * hd;
    const T* vp = static_cast<const T*>(p.v_cache) + (slot * p.capacity * hkv + g) * hd;
    const int64_t ts = hkv * hd;
    float q[FWD32_MAXJ], acc[FWD32_MAXJ];
#pragma unroll
    for (int j = 0; j < FWD32_MAXJ; ++j) {
        const int d = lane + 32 * j;
        q[j] = d < hd ? to_f32<T>(qp[d]) * p.scale : 0.f;
        acc[j] = 0.f;
    }
    float m = FH1_DEC_NEG_INF, l = 0.f;
    constexpr int KB = 4;
    for (int64_t t0 = 0; t0 < nk; t0 += KB) {
        float sc[KB];
#pragma unroll
        for (int u = 0; u < KB; ++u) {
            const int64_t t = t0 + u;
            float d0 = 0.f;
            if (t < nk) {
#pragma unroll
                for (int j = 0; j < FWD32_MAXJ; ++j) {
                    const int d = lane + 32 * j;
                    if (d < hd) d0 = fmaf(q[j], to_f32<T>(kp[t * ts + d]), d0);
                }
            }
            sc[u] = d0;
        }
#pragma unroll
        for (int u = 0; u < KB; ++u) sc[u] = warp_sum(sc[u]);
        float mx = m;
#pragma unroll
        for (int u = 0; u < KB; ++u) {
            if (t0 + u >= nk) sc[u] = FH1_DEC_NEG_INF;
            mx = fmaxf(mx, sc[u]);
        }
        const float corr = m == FH1_DEC_NEG_INF ? 0.f : expf(m - mx);
        m = mx;
        l *= corr;
#pragma unroll
        for (int j = 0; j < FWD32_MAXJ; ++j) acc[j] *= corr;
#pragma unroll
        for (int u = 0; u < KB; ++u) {
            const int64_t t = t0 + u;
            if (t >= nk) continue;
            const float pr = expf(sc[u] - mx);
            l += pr;
#pragma unroll
            for (int j = 0; j < FWD32_MAXJ; ++j) {
                const int d = lane + 32 * j;
                if (d < hd) acc[j] = fmaf(pr, to_f32<T>(vp[t * ts + d]), acc[j]);
            }
        }
    }
    T* op = static_cast<T*>(p.out) + (r0 + i) * p.o_row_stride + h * hd;
    const float inv = 1.f / l;
#pragma unroll
    for (int j = 0; j < FWD32_MAXJ; ++j) {
        const int d = lane + 32 * j;
        if (d < hd) op[d] = from_f32<T>(acc[j] * inv);
    }
}

}  // namespace fh1_attn_dec

#define FH1_DECODE(T, NAME, HD, GQ, U)                                                                   \
    extern "C" __global__ void __launch_bounds__(fh1_attn_dec::DEC_THREADS)                            \
        attn_decode_##NAME##_hd##HD##_g##GQ(const AttnParams p) {                                     \
        fh1_attn_dec::decode_split<T, HD, GQ, U>(p);                                                  \
    }
#define FH1_DECODE_ALL(T, NAME)                                                                        \
    FH1_DECODE(T, NAME, 64, 1, 4)                                                                      \
    FH1_DECODE(T, NAME, 64, 2, 4)                                                                      \
    FH1_DECODE(T, NAME, 64, 4, 4)                                                                      \
    FH1_DECODE(T, NAME, 64, 6, 2)                                                                      \
    FH1_DECODE(T, NAME, 64, 8, 1)                                                                      \
    FH1_DECODE(T, NAME, 128, 1, 4)                                                                     \
    FH1_DECODE(T, NAME, 128, 2, 4)                                                                     \
    FH1_DECODE(T, NAME, 128, 4, 4)                                                                     \
    FH1_DECODE(T, NAME, 128, 6, 3)                                                                     \
    FH1_DECODE(T, NAME, 128, 8, 1)                                                                     \
    extern "C" __global__ void __launch_bounds__(fh1_attn_dec::COMB_THREADS) attn_decode_combine_##NAME(const AttnParams p) { \
        fh1_attn_dec::decode_combine<T>(p);                                                           \
    }

FH1_DECODE_ALL(__nv_bfloat16, bf16)
FH1_DECODE_ALL(__half, f16)
FH1_DECODE_ALL(float, f32)

extern "C" __global__ void __launch_bounds__(fh1_attn_dec::FWD32_WARPS * 32) attn_fwd_f32(const AttnParams p) {
    fh1_attn_dec::fwd_scalar<float>(p);
}
extern "C" __global__ void __launch_bounds__(fh1_attn_dec::FWD32_WARPS * 32) attn_fwd_ref_bf16(const AttnParams p) {
    fh1_attn_dec::fwd_scalar<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(fh1_attn_dec::FWD32_WARPS * 32) attn_fwd_ref_f16(const AttnParams p) {
    fh1_attn_dec::fwd_scalar<__half>(p);
}
