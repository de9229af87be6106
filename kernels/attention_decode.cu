// Split-KV decode attention (one new query token per sequence, already appended to the cache), its
// log-sum-exp combine, and the scalar f32 prefill kernel (AttnParams in params_attention.h).
//
// attn_decode_fused_<T>_hd<HD>_g<GQ> (the default; see "Fused split-KV decode" below): per-warp
//   cp.async rings in shared memory and the combine folded in through arrival tickets, one launch.
//   The two kernels described next are the two-pass path (FH1_ATTN_DECODE=two_pass), kept for
//   bisecting.
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
#include "attention_util.cuh"
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

// ---------------------------------------------------------------------------------------------
// Fused split-KV decode: attn_decode_fused_<T>_hd<HD>_g<GQ>, grid (S, Hkv * chunks, batch), block
// NW * 32 threads (NW = 2 .. ATTN_DEC_MAX_WARPS, chosen by the launcher from the device's shared
// memory), dynamic shared memory NW * ATTN_DEC_STAGES * ATTN_DEC_STAGE_BYTES.
//
// Why: the register double-buffered kernel above keeps ~16 KB of K/V in flight per block and fits
// ~2 blocks per SM, so each SM has ~32 KB outstanding; at ~1-2 us of loaded HBM latency that caps
// it near 1.2-1.8 TB/s. Here every warp streams its keys through a private ring of ATTN_DEC_STAGES
// stages of 8 KB with cp.async.cg (16 B, L1 bypassed): 2 stages (16 KB) are always in flight per
// warp while the third is computed, i.e. 128 KB per SM with 8 warps, enough for the SM's share of
// 4.15 TB/s (~31 GB/s) at up to ~4 us of latency, and no registers are spent on buffering.
//
// The lane layout is that of decode_split: a lane group of LPK = HD / VEC lanes owns one key row,
// lane `sub` of it dims sub*VEC .. +VEC. A stage is 8 rows per lane group (TK = 8 * KPW keys for the
// warp): row i of the stage is key tile0 + i * KPW + kg, and lane (kg, sub) copies exactly the 16
// bytes it will later read (K at stage word [i][lane], V at [8 + i][lane]), so a lane only ever
// reads shared memory it filled itself: cp.async.wait_group alone orders it, no __syncwarp or
// __syncthreads in the main loop, and the warp's 32 x 16 B reads are conflict-free. A stage is 8 KB
// for every (T, HD): TK * HD * sizeof(T) = 8 * 32 * 16 B for K, the same for V.
//
// The split's keys are cut into tiles of TK keys dealt round-robin to the warps; each warp keeps its
// own online softmax, then the lane groups (shuffles) and warps (shared memory) are merged.
//
// Combine, folded in: with L = seq_start[b] + 1 keys and chunk = max(ceil(L / S), DEC_MIN_CHUNK),
// only n = ceil(L / chunk) splits have keys; splits >= n exit at once. If n == 1, split 0 writes the
// output row directly. Otherwise each non-empty split writes its normalised partial and natural-log
// lse (as decode_split does), then __threadfence + atomicAdd on decode_counters[b, y]; the block that
// draws ticket n - 1 is the last, resets the counter to 0 (so the next launch, e.g. a graph replay,
// starts from zero) and merges the n partials of its heads (weights exp(lse - max) through shared
// memory, partials read with ld.global.cg so no stale L1 line is used). Everything depends only on
// device-side lengths, so a captured graph replays with new lengths.
// ---------------------------------------------------------------------------------------------
constexpr int FUSED_ROWS = 8;  // rows (keys) per lane group per stage
constexpr int FUSED_STAGES = ATTN_DEC_STAGES;
static_assert(FUSED_STAGES >= 2, "a ring needs two stages");
constexpr int FUSED_STAGE_WORDS = 2 * FUSED_ROWS * 32;  // uint4 per stage per warp (K rows then V rows)
static_assert(FUSED_STAGE_WORDS * 16 == ATTN_DEC_STAGE_BYTES, "stage size of params_attention.h");

// Fast 2^(a - b) with a == -inf giving 0 even when b is -inf (ex2.approx: ~2 ulp, well inside the
// f32 path's 1e-5; exp2f's accurate range handling costs several instructions per score).
__device__ __forceinline__ float exp2_diff_fast(float a, float b) {
    return a == FH1_DEC_NEG_INF ? 0.f : fh1_attn::exp2_fast(a - b);
}

template <typename T, int HD, int GQ, int UC>
__device__ __forceinline__ void decode_fused(const AttnParams& p) {
    constexpr int VEC = 16 / sizeof(T);
    constexpr int LPK = HD / VEC;
    constexpr int KPW = 32 / LPK;
    constexpr int TK = FUSED_ROWS * KPW;  // keys per warp tile (one stage)
    static_assert(LPK >= 1 && LPK <= 32 && (LPK & (LPK - 1)) == 0, "lanes per key");
    static_assert(FUSED_ROWS % UC == 0, "compute sub-steps divide the stage");
    extern __shared__ uint4 fused_smem[];

    const int s = blockIdx.x, b = blockIdx.z;
    const int nw = blockDim.x >> 5;
    const int64_t hkv = p.n_kv_heads, hq = p.n_heads, S = p.num_splits;
    const int rep = static_cast<int>(hq / hkv);
    const int chunks = (rep + GQ - 1) / GQ;
    const int g = blockIdx.y / chunks, c = blockIdx.y - g * chunks;
    const int h0 = g * rep + c * GQ;
    const int nh = min(GQ, rep - c * GQ);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kg = lane / LPK, sub = lane % LPK;

    const int64_t slot = p.slot_idx[b];
    int64_t L = static_cast<int64_t>(p.seq_start[b]) + 1;
    if (!(slot >= 0 && slot < p.slots && L <= p.capacity)) L = 0;  // validated on the host; zeros
    const int64_t chunk = max((L + S - 1) / S, static_cast<int64_t>(DEC_MIN_CHUNK));
    const int64_t n_splits = L == 0 ? 1 : (L + chunk - 1) / chunk;  // non-empty splits (1 if none)
    if (s >= n_splits) return;  // uniform over the block: no barrier is skipped by part of it
    const int64_t start = min(L, s * chunk), end = min(L, start + chunk);
    const int64_t row = p.cu_seqlens[b];

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

    const int64_t tok_stride = hkv * HD;
    const T* kbase = static_cast<const T*>(p.k_cache) + (slot * p.capacity * hkv + g) * HD + sub * VEC;
    const T* vbase = static_cast<const T*>(p.v_cache) + (slot * p.capacity * hkv + g) * HD + sub * VEC;
    uint4* ring = fused_smem + static_cast<size_t>(warp) * FUSED_STAGES * FUSED_STAGE_WORDS;
    const uint32_t ring_u32 = fh1_attn::smem_u32(ring) + lane * 16;

    // Tiles j = warp, warp + nw, ... of the split; this warp's i-th tile starts at key
    // start + (i * nw + warp) * TK.
    const int64_t n_tiles = (end - start + TK - 1) / TK;
    const int my_tiles = n_tiles > warp ? static_cast<int>((n_tiles - warp + nw - 1) / nw) : 0;
    auto issue = [&](int i) {
        if (i < my_tiles) {
            const int64_t t0 = start + (static_cast<int64_t>(i) * nw + warp) * TK + kg;
            const uint32_t dst = ring_u32 + (i % FUSED_STAGES) * FUSED_STAGE_WORDS * 16;
#pragma unroll
            for (int r = 0; r < FUSED_ROWS; ++r) {
                const int64_t t = t0 + r * KPW;
                const bool valid = t < end;
                const int64_t tt = valid ? t : start;  // any in-bounds address; nothing is read
                fh1_attn::cp_async16(dst + r * 32 * 16, kbase + tt * tok_stride, valid);
                fh1_attn::cp_async16(dst + (FUSED_ROWS + r) * 32 * 16, vbase + tt * tok_stride, valid);
            }
        }
        fh1_attn::cp_async_commit();  // empty groups keep the wait count uniform
    };
#pragma unroll
    for (int i = 0; i < FUSED_STAGES - 1; ++i) issue(i);

    for (int i = 0; i < my_tiles; ++i) {
        issue(i + FUSED_STAGES - 1);  // into the stage computed at i - 1 (this lane's own words)
        fh1_attn::cp_async_wait<FUSED_STAGES - 1>();
        const uint4* st = ring + (i % FUSED_STAGES) * FUSED_STAGE_WORDS + lane;
        const int64_t t0 = start + (static_cast<int64_t>(i) * nw + warp) * TK + kg;
#pragma unroll
        for (int u0 = 0; u0 < FUSED_ROWS; u0 += UC) {
            float sc[UC][GQ];
#pragma unroll
            for (int u = 0; u < UC; ++u) {
                float kf[VEC];
                unpack<T>(st[(u0 + u) * 32], kf);
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
                for (int u = 0; u < UC; ++u)
#pragma unroll
                    for (int h = 0; h < GQ; ++h) sc[u][h] += __shfl_xor_sync(0xffffffffu, sc[u][h], o);
            }
#pragma unroll
            for (int u = 0; u < UC; ++u) {
                if (t0 + (u0 + u) * KPW >= end) {
#pragma unroll
                    for (int h = 0; h < GQ; ++h) sc[u][h] = FH1_DEC_NEG_INF;
                }
            }
#pragma unroll
            for (int h = 0; h < GQ; ++h) {
                float mx = m[h];
#pragma unroll
                for (int u = 0; u < UC; ++u) mx = fmaxf(mx, sc[u][h]);
                const float corr = exp2_diff_fast(m[h], mx);
                m[h] = mx;
                l[h] *= corr;
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[h][e] *= corr;
#pragma unroll
                for (int u = 0; u < UC; ++u) sc[u][h] = exp2_diff_fast(sc[u][h], mx);
            }
#pragma unroll
            for (int u = 0; u < UC; ++u) {
                float vf[VEC];
                unpack<T>(st[(FUSED_ROWS + u0 + u) * 32], vf);
#pragma unroll
                for (int h = 0; h < GQ; ++h) {
                    l[h] += sc[u][h];
#pragma unroll
                    for (int e = 0; e < VEC; ++e) acc[h][e] = fmaf(sc[u][h], vf[e], acc[h][e]);
                }
            }
        }
    }
    fh1_attn::cp_async_wait<0>();  // only empty groups remain; the ring is reused below

    // Merge the KPW lane groups of the warp (lanes with the same `sub`).
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
        for (int h = 0; h < GQ; ++h) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[h], o);
            const float mx = fmaxf(m[h], mo);
            const float ca = exp2_diff_fast(m[h], mx), cb = exp2_diff_fast(mo, mx);
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
    // The ring becomes [nw][GQ][HD] accumulators + [nw][GQ] maxima and sums (nw * GQ * (HD + 2)
    // floats <= 8 * 8 * 130 * 4 = 33 KB, inside the nw * 24 KB ring).
    float* sm_acc = reinterpret_cast<float*>(fused_smem);
    float* sm_m = sm_acc + nw * GQ * HD;
    float* sm_l = sm_m + nw * GQ;
    __syncthreads();  // every warp is done with its ring
    if (kg == 0) {
#pragma unroll
        for (int h = 0; h < GQ; ++h) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) sm_acc[(warp * GQ + h) * HD + sub * VEC + e] = acc[h][e];
            if (sub == 0) {
                sm_m[warp * GQ + h] = m[h];
                sm_l[warp * GQ + h] = l[h];
            }
        }
    }
    __syncthreads();
    constexpr float LN2 = 0.6931471805599453f;
    const bool direct = n_splits == 1;
    T* out_row = static_cast<T*>(p.out) + row * p.o_row_stride;
    for (int i = threadIdx.x; i < GQ * HD; i += blockDim.x) {
        const int h = i / HD, d = i - h * HD;
        if (h >= nh) continue;
        float mx = FH1_DEC_NEG_INF;
        for (int w = 0; w < nw; ++w) mx = fmaxf(mx, sm_m[w * GQ + h]);
        float den = 0.f, num = 0.f;
        for (int w = 0; w < nw; ++w) {
            const float cw = exp2_diff_fast(sm_m[w * GQ + h], mx);
            den += sm_l[w * GQ + h] * cw;
            num = fmaf(sm_acc[(w * GQ + h) * HD + d], cw, num);
        }
        const int64_t head = h0 + h;
        const float o = den > 0.f ? num / den : 0.f;
        if (direct) {
            out_row[head * HD + d] = from_f32<T>(o);
        } else {
            const int64_t idx = (b * hq + head) * S + s;
            p.partial_out[idx * HD + d] = o;
            if (d == 0) p.partial_lse[idx] = den > 0.f ? (mx + log2f(den)) * LN2 : FH1_DEC_NEG_INF;
        }
    }
    if (direct) return;

    // Arrival ticket: the partial writes above are made visible device-wide before the count.
    __shared__ int last_block;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t* ctr = p.decode_counters + static_cast<int64_t>(b) * gridDim.y + blockIdx.y;
        const uint32_t ticket = atomicAdd(ctr, 1u);
        last_block = ticket == static_cast<uint32_t>(n_splits - 1);
        if (last_block) *ctr = 0u;  // every other split has drawn its ticket: reset for the next launch
    }
    __syncthreads();
    if (!last_block) return;
    __threadfence();  // acquire side: the other splits' partials are read after their tickets

    // Combine the n_splits partials of this block's nh heads. Weights w[h][s] = exp(lse - max) / sum
    // (one warp per head) into shared memory (GQ * S <= 8 * 1024 floats = 32 KB, inside the ring).
    const int ns = static_cast<int>(n_splits);
    float* wts = reinterpret_cast<float*>(fused_smem);
    for (int h = warp; h < nh; h += nw) {  // (the ticket's barriers ordered the merge's reads before)
        const float* lse = p.partial_lse + (b * hq + h0 + h) * S;
        float mx = FH1_DEC_NEG_INF;
        for (int j = lane; j < ns; j += 32) mx = fmaxf(mx, __ldcg(lse + j));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float den = 0.f;
        for (int j = lane; j < ns; j += 32) {
            const float w = exp_diff(__ldcg(lse + j), mx);
            wts[h * ns + j] = w;
            den += w;
        }
        den = warp_sum(den);
        const float inv = den > 0.f ? 1.f / den : 0.f;
        for (int j = lane; j < ns; j += 32) wts[h * ns + j] *= inv;  // this lane's own entries
    }
    __syncthreads();
    constexpr int COLS = HD / 4;  // float4 columns per head
    for (int cidx = threadIdx.x; cidx < nh * COLS; cidx += blockDim.x) {
        const int h = cidx / COLS, col = cidx - h * COLS;
        const float4* po = reinterpret_cast<const float4*>(p.partial_out + (b * hq + h0 + h) * S * HD) + col;
        const float* w = wts + h * ns;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int j = 0; j < ns; ++j) {
            const float ws = w[j];
            const float4 v = __ldcg(po + static_cast<int64_t>(j) * COLS);
            a.x = fmaf(ws, v.x, a.x);
            a.y = fmaf(ws, v.y, a.y);
            a.z = fmaf(ws, v.z, a.z);
            a.w = fmaf(ws, v.w, a.w);
        }
        T* o = out_row + (h0 + h) * HD + col * 4;
        o[0] = from_f32<T>(a.x);
        o[1] = from_f32<T>(a.y);
        o[2] = from_f32<T>(a.z);
        o[3] = from_f32<T>(a.w);
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

#define FH1_DECODE_FUSED(T, NAME, HD, GQ, UC)                                                          \
    extern "C" __global__ void __launch_bounds__(ATTN_DEC_MAX_WARPS * 32, 1)                          \
        attn_decode_fused_##NAME##_hd##HD##_g##GQ(const AttnParams p) {                               \
        fh1_attn_dec::decode_fused<T, HD, GQ, UC>(p);                                                 \
    }
// UC: keys per lane group whose scores are held at once (the stage's 8 rows in 8 / UC sub-steps);
// smaller for GQ = 8 so that q, acc and the scores fit the registers without spills.
#define FH1_DECODE_FUSED_ALL(T, NAME)                                                                  \
    FH1_DECODE_FUSED(T, NAME, 64, 1, 8)                                                                \
    FH1_DECODE_FUSED(T, NAME, 64, 2, 8)                                                                \
    FH1_DECODE_FUSED(T, NAME, 64, 4, 8)                                                                \
    FH1_DECODE_FUSED(T, NAME, 64, 6, 8)                                                                \
    FH1_DECODE_FUSED(T, NAME, 64, 8, 4)                                                                \
    FH1_DECODE_FUSED(T, NAME, 128, 1, 8)                                                               \
    FH1_DECODE_FUSED(T, NAME, 128, 2, 8)                                                               \
    FH1_DECODE_FUSED(T, NAME, 128, 4, 8)                                                               \
    FH1_DECODE_FUSED(T, NAME, 128, 6, 8)                                                               \
    FH1_DECODE_FUSED(T, NAME, 128, 8, 4)

FH1_DECODE_FUSED_ALL(__nv_bfloat16, bf16)
FH1_DECODE_FUSED_ALL(__half, f16)
FH1_DECODE_FUSED_ALL(float, f32)

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
