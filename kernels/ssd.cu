// Mamba-2 SSD chunked prefill (mamba's mamba_chunk_scan_combined, HF mamba2_chunk_scan) over a
// packed varlen batch. Four launches, see params_ssd.h for who computes what. The matrix work
// (C B^T, (C B^T o L) x, x^T B, C S^T) is done in 16x16x16 warp tiles: tensor cores for bf16/f16
// (operands rounded to the input dtype, as the Triton kernels do, f32 accumulate), exact scalar
// f32 for the f32 build. Every decay exponent is clamped at 0 so that a segment sum that
// rounding makes slightly positive can never turn a decay into growth.
#include "common.cuh"
#include "params.h"
#include "ssd_util.cuh"

namespace {
namespace ssd {

constexpr int kMaxChunk = 256;

// dt and the inclusive cumsum of dt*A over the chunk's tokens (0 beyond len, so the sum stays
// flat there); warp 0 computes, the caller syncs. Each lane owns chunk/32 consecutive tokens.
template <typename T>
__device__ __forceinline__ void chunk_cumsum(const SsdParams& p, int64_t tok0, int len, int h,
                                             float* s_dt, float* s_cum) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    const int per = (int)p.chunk_size / 32;
    const T* dt = static_cast<const T*>(p.dt);
    const float bias = fh1::to_f32(static_cast<const T*>(p.dt_bias)[h]);
    const float a = -expf(fh1::to_f32(static_cast<const T*>(p.a_log)[h]));
    float run = 0.f;
    for (int k = 0; k < per; ++k) {
        const int i = lane * per + k;
        float d = 0.f;
        if (i < len) d = dt_value(fh1::to_f32(dt[(tok0 + i) * p.dt_row_stride + h]), bias, p.dt_lo, p.dt_hi);
        s_dt[i] = d;
        run += d * a;
        s_cum[i] = run;
    }
    // Exclusive prefix of the lanes' totals.
    float incl = run;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    const float offset = incl - run;
    for (int k = 0; k < per; ++k) s_cum[lane * per + k] += offset;
}

// S_c[P, N] tile (64 x 64) of one (chunk, head): X'^T B over the chunk's tokens, with
// X'[t, p] = x[t, p] * dt_t * exp(min(cum_end - cum_t, 0)).
template <typename T, int LD>
__device__ __forceinline__ void chunk_state(const SsdParams& p) {
    constexpr int LDO = LD == kTile ? kTile : kTile + 4;  // f32 output tile row
    using Tc = T;
    const int c = blockIdx.x, h = blockIdx.y;
    const int H = (int)p.heads, P = (int)p.head_dim, N = (int)p.state_dim;
    const int n_ntiles = N / kTile;
    const int pt = blockIdx.z / n_ntiles, nt = blockIdx.z % n_ntiles;
    const int* info = static_cast<const int*>(p.chunk_info);
    const int64_t tok0 = info[2 * c];
    const int len = info[2 * c + 1];
    const int g = h / (H / (int)p.groups);
    const int warp = threadIdx.x >> 5;

    __shared__ float s_dt[kMaxChunk], s_cum[kMaxChunk], s_w[kMaxChunk];
    // The X' and B tiles, then the f32 S_c tile on its way out.
    constexpr int kBytes = 2 * kTile * LD * (int)sizeof(Tc) > kTile * LDO * 4
                               ? 2 * kTile * LD * (int)sizeof(Tc)
                               : kTile * LDO * 4;
    __shared__ __align__(128) unsigned char smem[kBytes];
    Tc* sX = reinterpret_cast<Tc*>(smem);
    Tc* sB = sX + kTile * LD;

    chunk_cumsum<T>(p, tok0, len, h, s_dt, s_cum);
    __syncthreads();
    const float cum_end = s_cum[len - 1];
    for (int i = threadIdx.x; i < len; i += kThreads)
        s_w[i] = s_dt[i] * expf(fminf(cum_end - s_cum[i], 0.f));
    if (pt == 0 && nt == 0 && threadIdx.x == 0)
        static_cast<float*>(p.chunk_cum_end)[(int64_t)c * H + h] = cum_end;
    __syncthreads();

    const T* x = static_cast<const T*>(p.x) + (int64_t)h * P + pt * kTile;
    const T* b = static_cast<const T*>(p.b) + (int64_t)g * N + nt * kTile;
    Acc<Tc> acc[4];
#pragma unroll
    for (int f = 0; f < 4; ++f) acc[f].zero();
    const bool vec = p.vec_loads != 0;
    for (int k0 = 0; k0 < len; k0 += kTile) {
        fill_tile<kTile, kTile, LD>(sX, x + (tok0 + k0) * p.x_row_stride, p.x_row_stride, len - k0, vec,
                                    [&](int r) { return s_w[k0 + r]; });
        fill_tile<kTile, kTile, LD>(sB, b + (tok0 + k0) * p.b_row_stride, p.b_row_stride, len - k0, vec,
                                    [](int) { return 1.f; });
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTile; kk += 16) {
            FragA<Tc, col_major> fa;  // A = X'^T: element (p, t) at t * LD + p
            fa.load(sX + kk * LD + warp * 16, LD);
#pragma unroll
            for (int f = 0; f < 4; ++f) {
                FragB<Tc, row_major> fb;
                fb.load(sB + kk * LD + f * 16, LD);
                mma(acc[f], fa, fb);
            }
        }
        __syncthreads();
    }
    // S_c leaves in the input dtype (as Triton hands states on in C's dtype): through smem,
    // then 16-byte stores of whole rows.
    float* sO = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int f = 0; f < 4; ++f) acc[f].store(sO + warp * 16 * LDO + f * 16, LDO);
    __syncthreads();
    constexpr int V = 16 / sizeof(Tc);
    Tc* out = static_cast<Tc*>(p.chunk_states) + (((int64_t)c * H + h) * P + pt * kTile) * N + nt * kTile;
#pragma unroll 2
    for (int e = threadIdx.x * V; e < kTile * kTile; e += kThreads * V) {
        const int r = e / kTile, col = e % kTile;
        Pack<Tc, V> v;
#pragma unroll
        for (int i = 0; i < V; ++i) v.v[i] = fh1::from_f32<Tc>(sO[r * LDO + col + i]);
        *reinterpret_cast<Pack<Tc, V>*>(out + (int64_t)r * N + col) = v;
    }
}

// Sequential over each sequence's chunks; one thread carries V consecutive state elements in
// f32 (chunk states come and go in ST, the input dtype).
template <typename ST>
__device__ __forceinline__ void state_pass(const SsdParams& p) {
    constexpr int V = 16 / sizeof(ST);
    const int64_t PN = p.head_dim * p.state_dim;
    const int64_t e = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (e >= PN) return;
    const int h = blockIdx.y, s = blockIdx.z, H = (int)p.heads;
    const int* seq = static_cast<const int*>(p.seq_chunks);
    const int slot = p.slots ? static_cast<const int*>(p.slots)[s] : s;
    float* st_ptr = static_cast<float*>(p.state) + ((int64_t)slot * H + h) * PN + e;
    float st[V];
#pragma unroll
    for (int i = 0; i < V; i += 4) {
        const float4 v = p.has_initial_state ? *reinterpret_cast<const float4*>(st_ptr + i)
                                             : make_float4(0.f, 0.f, 0.f, 0.f);
        st[i] = v.x, st[i + 1] = v.y, st[i + 2] = v.z, st[i + 3] = v.w;
    }
    const float* cum_end = static_cast<const float*>(p.chunk_cum_end);
    ST* cs = static_cast<ST*>(p.chunk_states);
    // Four chunks per step: their loads are all issued before the dependent updates, so four
    // global latencies overlap instead of one per chunk.
    const int c_end = seq[s + 1];
    for (int c0 = seq[s]; c0 < c_end; c0 += 4) {
        Pack<ST, V> sc[4];
        float dec[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (c0 + k < c_end) {
                const int64_t ch = (int64_t)(c0 + k) * H + h;
                sc[k] = *reinterpret_cast<const Pack<ST, V>*>(cs + ch * PN + e);
                dec[k] = expf(fminf(cum_end[ch], 0.f));
            }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (c0 + k < c_end) {
                Pack<ST, V> out;
#pragma unroll
                for (int i = 0; i < V; ++i) {
                    out.v[i] = fh1::from_f32<ST>(st[i]);
                    st[i] = fmaf(dec[k], st[i], fh1::to_f32(sc[k].v[i]));
                }
                *reinterpret_cast<Pack<ST, V>*>(cs + ((int64_t)(c0 + k) * H + h) * PN + e) = out;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < V; i += 4)
        *reinterpret_cast<float4*>(st_ptr + i) = make_float4(st[i], st[i + 1], st[i + 2], st[i + 3]);
}

// C B^T of one (chunk, group), 64 x 64 tile (rows m0.., columns j0.. <= m0): shared by the
// H/G heads of the group, so computed once here instead of in every head's scan.
template <typename T, int LD>
__device__ __forceinline__ void chunk_cb(const SsdParams& p) {
    using Tc = T;
    const int Q = (int)p.chunk_size, n_mtiles = Q / kTile;
    const int c = blockIdx.x, g = blockIdx.y;
    const int m0 = (blockIdx.z / n_mtiles) * kTile, j0 = (blockIdx.z % n_mtiles) * kTile;
    const int N = (int)p.state_dim;
    const int* info = static_cast<const int*>(p.chunk_info);
    const int64_t tok0 = info[2 * c];
    const int len = info[2 * c + 1];
    if (j0 > m0 || m0 >= len) return;  // above the diagonal or past the chunk: never read
    const int warp = threadIdx.x >> 5;
    const bool vec = p.vec_loads != 0;
    const T* bg = static_cast<const T*>(p.b) + (int64_t)g * N;
    const T* cg = static_cast<const T*>(p.c) + (int64_t)g * N;

    __shared__ __align__(128) Tc sC[kTile * LD];
    __shared__ __align__(128) Tc sB[kTile * LD];
    Acc<Tc> cb[4];
#pragma unroll
    for (int f = 0; f < 4; ++f) cb[f].zero();
    for (int n0 = 0; n0 < N; n0 += kTile) {
        fill_tile<kTile, kTile, LD>(sC, cg + (tok0 + m0) * p.c_row_stride + n0, p.c_row_stride, len - m0,
                                    vec, [](int) { return 1.f; });
        fill_tile<kTile, kTile, LD>(sB, bg + (tok0 + j0) * p.b_row_stride + n0, p.b_row_stride, len - j0,
                                    vec, [](int) { return 1.f; });
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTile; kk += 16) {
            FragA<Tc, row_major> fa;
            fa.load(sC + warp * 16 * LD + kk, LD);
#pragma unroll
            for (int f = 0; f < 4; ++f) {
                FragB<Tc, col_major> fb;  // B^T: element (n, j) at j * LD + n
                fb.load(sB + f * 16 * LD + kk, LD);
                mma(cb[f], fa, fb);
            }
        }
        __syncthreads();
    }
    float* out = static_cast<float*>(p.cb) + (((int64_t)c * p.groups + g) * Q + m0 + warp * 16) * Q + j0;
#pragma unroll
    for (int f = 0; f < 4; ++f) cb[f].store(out + f * 16, Q);
}

// Bytes of the scan kernel's shared region: the largest of its phases (see chunk_scan).
template <typename Tc, int PT> struct ScanSmem {
    static constexpr int kCb = kTile * kTile * 4;  // f32 C B^T tile
    static constexpr int kCbt = std::is_same<Tc, float>::value ? 0 : kTile * kTile * (int)sizeof(Tc);
    static constexpr int kPhase1 = kCb;
    static constexpr int kPhase2 = kCb + kCbt + kTile * PT * (int)sizeof(Tc);
    static constexpr int kPhase3 = (kTile + PT) * kTile * (int)sizeof(Tc);
    static constexpr int kOut = kTile * PT * 4;
    static constexpr int a = kPhase1 > kPhase2 ? kPhase1 : kPhase2;
    static constexpr int b = kPhase3 > kOut ? kPhase3 : kOut;
    static constexpr int kBytes = a > b ? a : b;
};

// y rows [m0, m0 + 64) of one chunk and columns [pt * PT, +PT) of one head.
template <typename T, int PT>
__device__ __forceinline__ void chunk_scan(const SsdParams& p) {
    using Tc = T;
    constexpr int NF = PT / 16;
    const int n_mtiles = (int)p.chunk_size / kTile;
    const int c = blockIdx.x / n_mtiles, m0 = (blockIdx.x % n_mtiles) * kTile;
    const int h = blockIdx.y, pt = blockIdx.z;
    const int H = (int)p.heads, P = (int)p.head_dim, N = (int)p.state_dim;
    const int* info = static_cast<const int*>(p.chunk_info);
    const int64_t tok0 = info[2 * c];
    const int len = info[2 * c + 1];
    if (m0 >= len) return;  // uniform over the block, before any barrier
    const int g = h / (H / (int)p.groups);
    const int warp = threadIdx.x >> 5;

    __shared__ float s_dt[kMaxChunk], s_cum[kMaxChunk], s_ec[kMaxChunk];
    __shared__ __align__(128) unsigned char smem[ScanSmem<Tc, PT>::kBytes];
    chunk_cumsum<T>(p, tok0, len, h, s_dt, s_cum);
    __syncthreads();
    // exp(cum_i): the decay from the chunk start, scaling C_i in the carried-state term.
    for (int i = threadIdx.x; i < len; i += kThreads) s_ec[i] = expf(fminf(s_cum[i], 0.f));
    __syncthreads();
    const bool vec = p.vec_loads != 0;

    const int Q = (int)p.chunk_size;
    const T* xg = static_cast<const T*>(p.x) + (int64_t)h * P + pt * PT;
    const T* cg = static_cast<const T*>(p.c) + (int64_t)g * N;
    const float* cbg = static_cast<const float*>(p.cb) + ((int64_t)c * p.groups + g) * Q * Q;

    Acc<Tc> yacc[NF];
#pragma unroll
    for (int f = 0; f < NF; ++f) yacc[f].zero();

    // Intra-chunk: causal blocks of 64 source tokens j0 <= m0.
    for (int j0 = 0; j0 <= m0; j0 += kTile) {
        // C_i . B_j of this tile, computed once per group by chunk_cb.
        float* sCb = reinterpret_cast<float*>(smem);
        fill_tile<kTile, kTile>(sCb, cbg + (int64_t)m0 * Q + j0, (int64_t)Q, kTile, true,
                                [](int) { return 1.f; });
        __syncthreads();
        Tc* sCbt = std::is_same<Tc, float>::value ? reinterpret_cast<Tc*>(sCb)
                                                  : reinterpret_cast<Tc*>(smem + ScanSmem<Tc, PT>::kCb);
        Tc* sX = reinterpret_cast<Tc*>(smem + ScanSmem<Tc, PT>::kCb + ScanSmem<Tc, PT>::kCbt);
#pragma unroll 2
        for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
            const int r = e / kTile, col = e % kTile;
            const int i = m0 + r, j = j0 + col;
            float v = 0.f;
            if (j <= i && i < len) v = sCb[e] * expf(fminf(s_cum[i] - s_cum[j], 0.f)) * s_dt[j];
            sCbt[e] = fh1::from_f32<Tc>(v);
        }
        fill_tile<kTile, PT>(sX, xg + (tok0 + j0) * p.x_row_stride, p.x_row_stride, len - j0, vec,
                             [](int) { return 1.f; });
        __syncthreads();
#pragma unroll 1
        for (int kk = 0; kk < kTile; kk += 16) {
            FragA<Tc, row_major> fa;
            fa.load(sCbt + warp * 16 * kTile + kk, kTile);
#pragma unroll
            for (int f = 0; f < NF; ++f) {
                FragB<Tc, row_major> fb;
                fb.load(sX + kk * PT + f * 16, PT);
                mma(yacc[f], fa, fb);
            }
        }
        __syncthreads();
    }

    // From the carried state: y += (exp(cum_i) C_i) S_in^T (S_in is stored in the input dtype).
    {
        Tc* sC = reinterpret_cast<Tc*>(smem);
        Tc* sS = sC + kTile * kTile;
        const Tc* sg = static_cast<const Tc*>(p.chunk_states) + (((int64_t)c * H + h) * P + pt * PT) * N;
        for (int n0 = 0; n0 < N; n0 += kTile) {
            fill_tile<kTile, kTile>(sC, cg + (tok0 + m0) * p.c_row_stride + n0, p.c_row_stride, len - m0,
                                    vec, [&](int r) { return s_ec[m0 + r]; });
            // chunk_states rows are N elements of a 256-byte aligned allocation: always 16-byte.
            fill_tile<PT, kTile>(sS, sg + n0, (int64_t)N, PT, true, [](int) { return 1.f; });
            __syncthreads();
#pragma unroll 1
            for (int kk = 0; kk < kTile; kk += 16) {
                FragA<Tc, row_major> fa;
                fa.load(sC + warp * 16 * kTile + kk, kTile);
#pragma unroll
                for (int f = 0; f < NF; ++f) {
                    FragB<Tc, col_major> fb;  // S^T: element (n, p) at p * 64 + n
                    fb.load(sS + f * 16 * kTile + kk, kTile);
                    mma(yacc[f], fa, fb);
                }
            }
            __syncthreads();
        }
    }

    // Out: through smem, then + D x, rounded to T.
    float* sY = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int f = 0; f < NF; ++f) yacc[f].store(sY + warp * 16 * PT + f * 16, PT);
    __syncthreads();
    const float dskip = p.d ? fh1::to_f32(static_cast<const T*>(p.d)[h]) : 0.f;
    T* yg = static_cast<T*>(p.y) + (int64_t)h * P + pt * PT;
#pragma unroll 2
    for (int e = threadIdx.x; e < kTile * PT; e += kThreads) {
        const int r = e / PT, col = e % PT, i = m0 + r;
        if (i >= len) continue;
        float v = sY[e];
        if (dskip != 0.f) v = fmaf(dskip, fh1::to_f32(xg[(tok0 + i) * p.x_row_stride + col]), v);
        yg[(tok0 + i) * p.y_row_stride + col] = fh1::from_f32<T>(v);
    }
}

// ---- The chunk scan, second form (the default; chunk_scan above is FH1_SSD_LEGACY=1) ----
// One block of 8 warps per (chunk x 64-row tile, head, PT columns of P), the warps 2 (rows) x 4
// (columns) over the 64 x PT output, so each warp loads 2 A and PT/64 B fragments per 2 * PT/64
// products instead of 1 A and PT/16 B per PT/16. Every shared tile has its rows padded by 16
// bytes (no bank conflicts in the fragment loads). The state term streams N in steps of 64
// through two stages: the S tile by cp.async and the C tile through registers (it is scaled by
// exp(cum_i) on the way), both for step k+1 in flight while step k multiplies. The intra-chunk
// operand (C B^T o L) dt is built straight from the f32 C B^T in global memory (L2) into Tc.
constexpr int kScanThreads = 256;
constexpr int kLd = kTile + 8;  // padded row of a 64-wide tile, in elements

template <typename Tc, int PT> struct Scan2 {
    static constexpr int kLdX = PT + 8;      // x tile row (Tc)
    static constexpr int kLdY = PT + 4;      // f32 output tile row
    static constexpr int kStageC = kTile * kLd;            // C tile [64][kLd], elements
    static constexpr int kStage = (kTile + PT) * kLd;      // C tile, then S tile [PT][kLd]
    static constexpr int kIntra = kTile * kLd + kTile * kLdX;  // Cbt [64][kLd], x [64][kLdX]
    static_assert(kIntra <= kStage, "the intra-chunk tiles live in stage 1");
    static constexpr int kStagesBytes = 2 * kStage * (int)sizeof(Tc);
    static constexpr int kOutBytes = kTile * kLdY * 4;
    // Dynamic shared memory of the launch (src/cuda/ssd.rs computes the same figure).
    static constexpr int kBytes = kStagesBytes > kOutBytes ? kStagesBytes : kOutBytes;
    static constexpr int WC = PT / 4;  // columns per warp
    static constexpr int NF = WC / 16;
};

// The 64 x 64 C tile of one state step, held in registers between its load and its store.
template <typename Tc, int NT> struct CTile {
    static constexpr int V = 16 / sizeof(Tc);
    static constexpr int K = kTile * kTile / (NT * V);
    uint4 u[K];
    // With vec: 16-byte loads of rows < valid (zeros beyond). Without, store() reads.
    __device__ __forceinline__ void load(const Tc* src, int64_t stride, int valid, bool vec) {
        if (!vec) return;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int e = (threadIdx.x + k * NT) * V, r = e / kTile, col = e % kTile;
            u[k] = r < valid ? *reinterpret_cast<const uint4*>(src + r * stride + col) : make_uint4(0, 0, 0, 0);
        }
    }
    // dst[r][col] = C[r][col] * scale[r] rounded to Tc (rows >= valid: 0).
    __device__ __forceinline__ void store(Tc* dst, const Tc* src, int64_t stride, int valid, bool vec,
                                          const float* scale) {
        if (!vec) {
            fill_tile<kTile, kTile, kLd, NT>(dst, src, stride, valid, false, [&](int r) { return scale[r]; });
            return;
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int e = (threadIdx.x + k * NT) * V, r = e / kTile, col = e % kTile;
            const float sc = r < valid ? scale[r] : 0.f;
            const Tc* in = reinterpret_cast<const Tc*>(&u[k]);
            Pack<Tc, V> out;
#pragma unroll
            for (int i = 0; i < V; ++i) out.v[i] = fh1::from_f32<Tc>(fh1::to_f32(in[i]) * sc);
            *reinterpret_cast<Pack<Tc, V>*>(dst + r * kLd + col) = out;
        }
    }
};

template <typename T, int PT>
__device__ __forceinline__ void chunk_scan2(const SsdParams& p, unsigned char* smem) {
    using Tc = T;
    using L = Scan2<Tc, PT>;
    constexpr int NT = kScanThreads, NF = L::NF, WC = L::WC;
    const int Q = (int)p.chunk_size, n_mtiles = Q / kTile;
    const int c = blockIdx.x / n_mtiles, m0 = (blockIdx.x % n_mtiles) * kTile;
    const int h = blockIdx.y, pt = blockIdx.z;
    const int H = (int)p.heads, P = (int)p.head_dim, N = (int)p.state_dim;
    const int* info = static_cast<const int*>(p.chunk_info);
    const int64_t tok0 = info[2 * c];
    const int len = info[2 * c + 1];
    if (m0 >= len) return;  // uniform over the block, before any barrier
    const int g = h / (H / (int)p.groups);
    const int warp = threadIdx.x >> 5, wr = warp >> 2, wc = warp & 3;
    const bool vec = p.vec_loads != 0;

    __shared__ float s_dt[kMaxChunk], s_cum[kMaxChunk], s_ec[kMaxChunk];
    Tc* const st0 = reinterpret_cast<Tc*>(smem);
    Tc* const st1 = st0 + L::kStage;

    const int64_t cs = p.c_row_stride, xs = p.x_row_stride;
    const T* cg = static_cast<const T*>(p.c) + (int64_t)g * N + (tok0 + m0) * cs;
    const Tc* sg = static_cast<const Tc*>(p.chunk_states) + (((int64_t)c * H + h) * P + pt * PT) * N;
    const int c_valid = len - m0;
    const int n_steps = N / kTile;

    // S of state step 0 in flight during the cumsum and the intra-chunk term. chunk_states rows are N
    // elements of a 256-byte aligned allocation: always 16-byte pieces.
    copy_tile<PT, kTile, kLd, NT>(st0 + L::kStageC, sg, (int64_t)N, PT, true);
    cp_async_commit();

    chunk_cumsum<T>(p, tok0, len, h, s_dt, s_cum);
    __syncthreads();
    for (int i = threadIdx.x; i < len; i += NT) s_ec[i] = expf(fminf(s_cum[i], 0.f));

    Acc<Tc> acc[2][NF];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int f = 0; f < NF; ++f) acc[i][f].zero();

    // Intra-chunk: causal blocks of 64 source tokens j0 <= m0, in stage 1.
    {
        Tc* sCbt = st1;
        Tc* sX = st1 + kTile * kLd;
        const float* cbg = static_cast<const float*>(p.cb) + (((int64_t)c * p.groups + g) * Q + m0) * Q;
        const T* xg = static_cast<const T*>(p.x) + (int64_t)h * P + pt * PT;
        for (int j0 = 0; j0 <= m0; j0 += kTile) {
            copy_tile<kTile, PT, L::kLdX, NT>(sX, xg + (tok0 + j0) * xs, xs, len - j0, vec);
            cp_async_commit();
            // (C B^T)[i, j] exp(cum_i - cum_j) dt_j for j <= i < len, else 0; four columns a thread.
#pragma unroll 1
            for (int e = threadIdx.x * 4; e < kTile * kTile; e += NT * 4) {
                const int r = e / kTile, col = e % kTile, i = m0 + r, j = j0 + col;
                Pack<Tc, 4> out;
                if (i < len && j <= i) {
                    // The whole 64 x 64 tile was written by chunk_cb (it is on or below the diagonal).
                    const float4 v = *reinterpret_cast<const float4*>(cbg + (int64_t)r * Q + j);
                    const float cv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                    for (int q = 0; q < 4; ++q)
                        out.v[q] = fh1::from_f32<Tc>(
                            j + q <= i ? cv[q] * expf(fminf(s_cum[i] - s_cum[j + q], 0.f)) * s_dt[j + q] : 0.f);
                } else {
#pragma unroll
                    for (int q = 0; q < 4; ++q) out.v[q] = fh1::from_f32<Tc>(0.f);
                }
                *reinterpret_cast<Pack<Tc, 4>*>(sCbt + r * kLd + col) = out;
            }
            cp_async_wait<0>();
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < kTile; kk += 16) {
                FragA<Tc, row_major> fa[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) fa[i].load(sCbt + (wr * 32 + i * 16) * kLd + kk, kLd);
#pragma unroll
                for (int f = 0; f < NF; ++f) {
                    FragB<Tc, row_major> fb;
                    fb.load(sX + kk * L::kLdX + wc * WC + f * 16, L::kLdX);
#pragma unroll
                    for (int i = 0; i < 2; ++i) mma(acc[i][f], fa[i], fb);
                }
            }
            __syncthreads();
        }
    }

    // From the carried state: y += (exp(cum_i) C_i) S_in^T, N in steps of 64, two stages.
    // (C's step-0 registers are loaded only here: held across the intra-chunk term they push
    // the 16-bit P=128 build past 128 registers.)
    CTile<Tc, NT> creg;
    creg.load(cg, cs, c_valid, vec);
    creg.store(st0, cg, cs, c_valid, vec, s_ec + m0);
    for (int k = 0; k < n_steps; ++k) {
        Tc* cur = (k & 1) ? st1 : st0;
        Tc* nxt = (k & 1) ? st0 : st1;
        if (k + 1 < n_steps) {
            copy_tile<PT, kTile, kLd, NT>(nxt + L::kStageC, sg + (k + 1) * kTile, (int64_t)N, PT, true);
            cp_async_commit();
            creg.load(cg + (k + 1) * kTile, cs, c_valid, vec);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const Tc* sC = cur;
        const Tc* sS = cur + L::kStageC;
#pragma unroll
        for (int kk = 0; kk < kTile; kk += 16) {
            FragA<Tc, row_major> fa[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) fa[i].load(sC + (wr * 32 + i * 16) * kLd + kk, kLd);
#pragma unroll
            for (int f = 0; f < NF; ++f) {
                FragB<Tc, col_major> fb;  // S^T: element (n, p) at p * kLd + n
                fb.load(sS + (wc * WC + f * 16) * kLd + kk, kLd);
#pragma unroll
                for (int i = 0; i < 2; ++i) mma(acc[i][f], fa[i], fb);
            }
        }
        __syncthreads();
        if (k + 1 < n_steps) creg.store(nxt, cg + (k + 1) * kTile, cs, c_valid, vec, s_ec + m0);
    }

    // Out: through smem (f32), then + D x, rounded to T, V columns a thread.
    float* sY = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int f = 0; f < NF; ++f)
            acc[i][f].store(sY + (wr * 32 + i * 16) * L::kLdY + wc * WC + f * 16, L::kLdY);
    __syncthreads();
    const float dskip = p.d ? fh1::to_f32(static_cast<const T*>(p.d)[h]) : 0.f;
    const T* xg = static_cast<const T*>(p.x) + (int64_t)h * P + pt * PT;
    T* yg = static_cast<T*>(p.y) + (int64_t)h * P + pt * PT;
    constexpr int V = 16 / sizeof(T);
#pragma unroll 1
    for (int e = threadIdx.x * V; e < kTile * PT; e += NT * V) {
        const int r = e / PT, col = e % PT, i = m0 + r;
        if (i >= len) continue;
        Pack<T, V> xin;
        if (dskip != 0.f) {
            const T* xr = xg + (tok0 + i) * xs + col;
            if (vec) {
                xin = *reinterpret_cast<const Pack<T, V>*>(xr);
            } else {
#pragma unroll
                for (int q = 0; q < V; ++q) xin.v[q] = xr[q];
            }
        }
        Pack<T, V> out;
#pragma unroll
        for (int q = 0; q < V; ++q) {
            float v = sY[r * L::kLdY + col + q];
            if (dskip != 0.f) v = fmaf(dskip, fh1::to_f32(xin.v[q]), v);
            out.v[q] = fh1::from_f32<T>(v);
        }
        // y is a dense [T, H, P] allocation: rows and the V-column pieces are 16-byte aligned.
        *reinterpret_cast<Pack<T, V>*>(yg + (tok0 + i) * p.y_row_stride + col) = out;
    }
}


// ---- Chunk states, third form (the default; FH1_SSD_STATE=2 picks chunk_state<T, kLd>) ----
// One block of 8 warps per (chunk, head, 64-row tile of P) covering all of N, so the chunk's
// cumsum and decay weights are computed once per block instead of once per 64 x 64 tile. The
// chunk's tokens (the K dimension) stream in steps of KT through NS = 3 stages: B by cp.async
// two steps ahead, x through registers one step ahead, scaled there by w_t = dt_t exp(cum_end -
// cum_t) and rounded to Tc on the way to shared memory (x is the smaller operand). One barrier
// per step: stage k + 2 (B) and k + 1 (x) are written while the warps multiply stage k. Tokens
// past the chunk's length are zeros in both tiles (and w = 0 there).
// bf16/f16: the warps 2 (rows of P) x 4 (columns of N), mma.sync m16n8k16 fed by ldmatrix.trans
// from padded rows (16 bytes a row: no bank conflicts), f32 accumulators, S_c rounded to Tc
// through shared memory and written in 16-byte stores. f32: exact scalar FMAs in token order,
// each thread 8 rows x N/32 columns, written straight from registers (8-byte, coalesced).
constexpr int kStateThreads = 256;
constexpr int kStateStages = 3;

template <typename Tc, int N> struct State3 {
    static constexpr bool kF32 = std::is_same<Tc, float>::value;
    static constexpr int KT = kF32 ? 16 : 32;                 // tokens per step
    static constexpr int kPad = 16 / (int)sizeof(Tc);         // 16 bytes a row
    static constexpr int kLdX = kTile + kPad;                 // x tile [KT][kLdX]
    static constexpr int kLdB = N + kPad;                     // B tile [KT][kLdB]
    static constexpr int kStage = KT * (kLdX + kLdB);         // elements
    static constexpr int kStagesBytes = kStateStages * kStage * (int)sizeof(Tc);
    static constexpr int kLdO = N + kPad;                     // Tc output tile [64][kLdO]
    static constexpr int kOutBytes = kF32 ? 0 : kTile * kLdO * (int)sizeof(Tc);
    // Dynamic shared memory of the launch (src/cuda/ssd.rs computes the same figure).
    static constexpr int kBytes = kStagesBytes > kOutBytes ? kStagesBytes : kOutBytes;
    static constexpr int V = 16 / (int)sizeof(Tc);
    static_assert(KT * kTile / V == kStateThreads, "one 16-byte piece of x a thread and step");
    static_assert((KT * N / V) % kStateThreads == 0, "whole 16-byte pieces of B a thread");
};

// One thread's 16-byte piece of the step's x tile (row threadIdx / (64 / V)), held in registers
// from its load to its scaled store.
template <typename Tc> struct XPiece {
    static constexpr int V = 16 / sizeof(Tc);
    uint4 u;
    __device__ __forceinline__ int row() const { return threadIdx.x / (kTile / V); }
    __device__ __forceinline__ int col() const { return (threadIdx.x % (kTile / V)) * V; }
    // With vec: a 16-byte load of row < valid (zeros beyond). Without, store() reads.
    __device__ __forceinline__ void load(const Tc* src, int64_t stride, int valid, bool vec) {
        if (!vec) return;
        const int r = row();
        u = r < valid ? *reinterpret_cast<const uint4*>(src + r * stride + col()) : make_uint4(0, 0, 0, 0);
    }
    // dst[r][col..] = x[r][col..] * w[r] rounded to Tc (rows >= valid: 0).
    __device__ __forceinline__ void store(Tc* dst, int ld, const Tc* src, int64_t stride, int valid, bool vec,
                                          const float* w) {
        const int r = row(), c = col();
        const float sc = r < valid ? w[r] : 0.f;
        Tc in[V];
        if (vec) {
            *reinterpret_cast<uint4*>(in) = u;
        } else {
#pragma unroll
            for (int i = 0; i < V; ++i) in[i] = r < valid ? src[r * stride + c + i] : fh1::from_f32<Tc>(0.f);
        }
        Pack<Tc, V> out;
#pragma unroll
        for (int i = 0; i < V; ++i) out.v[i] = fh1::from_f32<Tc>(fh1::to_f32(in[i]) * sc);
        *reinterpret_cast<Pack<Tc, V>*>(dst + r * ld + c) = out;
    }
};

// The accumulators of one thread and their products over one step (KT tokens) of a stage.
template <typename Tc, int N, bool F32 = std::is_same<Tc, float>::value> struct StateAcc;

// bf16/f16: warp (wr, wc) owns rows wr * 32 .. +32 of the P tile and columns wc * N/4 .. +N/4.
template <typename Tc, int N> struct StateAcc<Tc, N, false> {
    static constexpr int WN = N / 4, NF = WN / 8;  // columns a warp, n8 fragments
    using L = State3<Tc, N>;
    float d[2][NF][4];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int f = 0; f < NF; ++f)
#pragma unroll
                for (int q = 0; q < 4; ++q) d[i][f][q] = 0.f;
    }
    // d += X'^T B over the step: A = X'^T (element (p, t) at sX[t][p]), B (element (t, n) at
    // sB[t][n]); both stored k-major, so both come through ldmatrix.trans.
    __device__ __forceinline__ void step(const Tc* sX, const Tc* sB) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wr = warp >> 2, wc = warp & 3;
        const int j = lane >> 3, r = lane & 7;
        // A: matrix j covers p 8 (j & 1) .., t 8 (j >> 1) ..; B: t 8 (j & 1) .., n 8 (j >> 1) ...
        const Tc* xa = sX + (r + (j >> 1) * 8) * L::kLdX + wr * 32 + (j & 1) * 8;
        const Tc* ba = sB + (r + (j & 1) * 8) * L::kLdB + wc * WN + (j >> 1) * 8;
#pragma unroll
        for (int kk = 0; kk < L::KT; kk += 16) {
            uint32_t a[2][4];
#pragma unroll
            for (int i = 0; i < 2; ++i) ldmatrix_x4_trans(a[i], xa + kk * L::kLdX + i * 16);
#pragma unroll
            for (int f = 0; f < NF; f += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, ba + kk * L::kLdB + f * 8);
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    mma16816<Tc>(d[i][f], a[i], b[0], b[1]);
                    mma16816<Tc>(d[i][f + 1], a[i], b[2], b[3]);
                }
            }
        }
    }
    // S_c (rows of the P tile, all N columns) -> out [64][N] (row stride N), rounded to Tc,
    // through the shared tile sO [64][kLdO].
    __device__ __forceinline__ void write(Tc* sO, Tc* out) const {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wr = warp >> 2, wc = warp & 3;
        const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int f = 0; f < NF; ++f)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    Pack<Tc, 2> v;
                    v.v[0] = fh1::from_f32<Tc>(d[i][f][2 * h]);
                    v.v[1] = fh1::from_f32<Tc>(d[i][f][2 * h + 1]);
                    *reinterpret_cast<Pack<Tc, 2>*>(sO + (wr * 32 + i * 16 + h * 8 + g) * L::kLdO + wc * WN +
                                                    f * 8 + t2) = v;
                }
        __syncthreads();
        constexpr int V = L::V;
#pragma unroll 4
        for (int e = threadIdx.x * V; e < kTile * N; e += kStateThreads * V) {
            const int r = e / N, col = e % N;
            *reinterpret_cast<uint4*>(out + (int64_t)r * N + col) =
                *reinterpret_cast<const uint4*>(sO + r * L::kLdO + col);
        }
    }
};

// f32: thread (warp, lane) owns rows warp * 8 .. +8 and the column pairs lane * 2 + 64 j (a warp
// reads and writes 64 consecutive columns at a time: no bank conflicts, coalesced stores).
template <int N> struct StateAcc<float, N, true> {
    static constexpr int NJ = N / 64;
    using L = State3<float, N>;
    float d[8][NJ][2];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j) d[i][j][0] = d[i][j][1] = 0.f;
    }
    __device__ __forceinline__ void step(const float* sX, const float* sB) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll 2
        for (int k = 0; k < L::KT; ++k) {
            float xv[8];
            float2 bv[NJ];
#pragma unroll
            for (int i = 0; i < 8; i += 4)
                *reinterpret_cast<float4*>(xv + i) = *reinterpret_cast<const float4*>(sX + k * L::kLdX + warp * 8 + i);
#pragma unroll
            for (int j = 0; j < NJ; ++j) bv[j] = *reinterpret_cast<const float2*>(sB + k * L::kLdB + j * 64 + lane * 2);
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    d[i][j][0] = fmaf(xv[i], bv[j].x, d[i][j][0]);
                    d[i][j][1] = fmaf(xv[i], bv[j].y, d[i][j][1]);
                }
        }
    }
    __device__ __forceinline__ void write(float*, float* out) const {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j)
                *reinterpret_cast<float2*>(out + (int64_t)(warp * 8 + i) * N + j * 64 + lane * 2) =
                    make_float2(d[i][j][0], d[i][j][1]);
    }
};

// The figures src/cuda/ssd.rs `state3_smem_bytes` computes (its unit test checks the same).
static_assert(State3<__nv_bfloat16, 256>::kBytes == 64512 && State3<__half, 128>::kBytes == 39936 &&
                  State3<__half, 64>::kBytes == 27648 && State3<float, 256>::kBytes == 62976 &&
                  State3<float, 128>::kBytes == 38400 && State3<float, 64>::kBytes == 26112,
              "State3 shared-memory sizes changed: update state3_smem_bytes in src/cuda/ssd.rs");

template <typename T, int N>
__device__ __forceinline__ void chunk_state3(const SsdParams& p, unsigned char* smem) {
    using Tc = T;
    using L = State3<Tc, N>;
    constexpr int NT = kStateThreads, NS = kStateStages, KT = L::KT;
    const int c = blockIdx.x, h = blockIdx.y, pt = blockIdx.z;
    const int H = (int)p.heads, P = (int)p.head_dim;
    const int* info = static_cast<const int*>(p.chunk_info);
    const int64_t tok0 = info[2 * c];
    const int len = info[2 * c + 1];
    const int g = h / (H / (int)p.groups);
    const bool vec = p.vec_loads != 0;
    const int n_steps = (len + KT - 1) / KT;

    __shared__ float s_dt[kMaxChunk], s_cum[kMaxChunk], s_w[kMaxChunk];
    Tc* const stages = reinterpret_cast<Tc*>(smem);
    auto sx = [&](int k) { return stages + (k % NS) * L::kStage; };
    auto sb = [&](int k) { return stages + (k % NS) * L::kStage + KT * L::kLdX; };

    const int64_t xs = p.x_row_stride, bs = p.b_row_stride;
    const T* xg = static_cast<const T*>(p.x) + (int64_t)h * P + pt * kTile + tok0 * xs;
    const T* bg = static_cast<const T*>(p.b) + (int64_t)g * N + tok0 * bs;
    // B of steps 0 .. NS-2 (one commit group each, empty past the chunk) and x of step 0 in
    // flight during the cumsum.
#pragma unroll
    for (int k = 0; k < NS - 1; ++k) {
        if (k < n_steps) copy_tile<KT, N, L::kLdB, NT>(sb(k), bg + (int64_t)k * KT * bs, bs, len - k * KT, vec);
        cp_async_commit();
    }
    XPiece<Tc> xr;
    xr.load(xg, xs, len, vec);

    chunk_cumsum<T>(p, tok0, len, h, s_dt, s_cum);
    __syncthreads();
    const float cum_end = s_cum[len - 1];
    for (int i = threadIdx.x; i < (int)p.chunk_size; i += NT)
        s_w[i] = i < len ? s_dt[i] * expf(fminf(cum_end - s_cum[i], 0.f)) : 0.f;
    if (pt == 0 && threadIdx.x == 0) static_cast<float*>(p.chunk_cum_end)[(int64_t)c * H + h] = cum_end;
    __syncthreads();
    xr.store(sx(0), L::kLdX, xg, xs, len, vec, s_w);

    StateAcc<Tc, N> acc;
    acc.zero();
#pragma unroll 1
    for (int k = 0; k < n_steps; ++k) {
        cp_async_wait<NS - 2>();  // B of step k has landed (this thread's part)
        __syncthreads();          // ... everyone's, and x of step k; stage k - 1 is free
        const int kn = k + NS - 1;
        if (kn < n_steps)
            copy_tile<KT, N, L::kLdB, NT>(sb(kn), bg + (int64_t)kn * KT * bs, bs, len - kn * KT, vec);
        cp_async_commit();
        const bool more = k + 1 < n_steps;
        const T* xn = xg + (int64_t)(k + 1) * KT * xs;
        const int xvalid = len - (k + 1) * KT;
        if (more) xr.load(xn, xs, xvalid, vec);
        acc.step(sx(k), sb(k));
        // Stage k + 1 was last read at step k + 1 - NS <= k - 2, before this step's barrier.
        if (more) xr.store(sx(k + 1), L::kLdX, xn, xs, xvalid, vec, s_w + (k + 1) * KT);
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the stages: they become the output tile

    Tc* out = static_cast<Tc*>(p.chunk_states) + (((int64_t)c * H + h) * P + pt * kTile) * N;
    acc.write(stages, out);
}

}  // namespace ssd
}  // namespace

#define SSD_LB __launch_bounds__(ssd::kThreads, 2)
// Legacy forms (FH1_SSD_LEGACY=1): unpadded tiles, the 4-warp chunk scan.
extern "C" __global__ void SSD_LB ssd_chunk_cb_f32(SsdParams p) { ssd::chunk_cb<float, ssd::kTile>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_cb_bf16(SsdParams p) { ssd::chunk_cb<__nv_bfloat16, ssd::kTile>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_cb_f16(SsdParams p) { ssd::chunk_cb<__half, ssd::kTile>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state_f32(SsdParams p) { ssd::chunk_state<float, ssd::kTile>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state_bf16(SsdParams p) { ssd::chunk_state<__nv_bfloat16, ssd::kTile>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state_f16(SsdParams p) { ssd::chunk_state<__half, ssd::kTile>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_f32_p64(SsdParams p) { ssd::chunk_scan<float, 64>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_bf16_p64(SsdParams p) { ssd::chunk_scan<__nv_bfloat16, 64>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_bf16_p128(SsdParams p) { ssd::chunk_scan<__nv_bfloat16, 128>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_f16_p64(SsdParams p) { ssd::chunk_scan<__half, 64>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_f16_p128(SsdParams p) { ssd::chunk_scan<__half, 128>(p); }
// Shared by both forms.
extern "C" __global__ void __launch_bounds__(256) ssd_state_pass_f32(SsdParams p) { ssd::state_pass<float>(p); }
extern "C" __global__ void __launch_bounds__(256) ssd_state_pass_bf16(SsdParams p) { ssd::state_pass<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(256) ssd_state_pass_f16(SsdParams p) { ssd::state_pass<__half>(p); }
// Default forms: padded tiles; the 8-warp, two-stage chunk scan with dynamic shared memory.
extern "C" __global__ void SSD_LB ssd_chunk_cb2_f32(SsdParams p) { ssd::chunk_cb<float, ssd::kLd>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_cb2_bf16(SsdParams p) { ssd::chunk_cb<__nv_bfloat16, ssd::kLd>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_cb2_f16(SsdParams p) { ssd::chunk_cb<__half, ssd::kLd>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state2_f32(SsdParams p) { ssd::chunk_state<float, ssd::kLd>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state2_bf16(SsdParams p) { ssd::chunk_state<__nv_bfloat16, ssd::kLd>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state2_f16(SsdParams p) { ssd::chunk_state<__half, ssd::kLd>(p); }
#undef SSD_LB
#define SSD_SCAN2(name, T, PT)                                                        \
    extern "C" __global__ void __launch_bounds__(ssd::kScanThreads, 2) name(SsdParams p) { \
        extern __shared__ __align__(128) unsigned char ssd_scan2_smem[];              \
        ssd::chunk_scan2<T, PT>(p, ssd_scan2_smem);                                  \
    }
SSD_SCAN2(ssd_chunk_scan2_f32_p64, float, 64)
SSD_SCAN2(ssd_chunk_scan2_bf16_p64, __nv_bfloat16, 64)
SSD_SCAN2(ssd_chunk_scan2_bf16_p128, __nv_bfloat16, 128)
SSD_SCAN2(ssd_chunk_scan2_f16_p64, __half, 64)
SSD_SCAN2(ssd_chunk_scan2_f16_p128, __half, 128)
#undef SSD_SCAN2
#define SSD_STATE3(name, T, N)                                                          \
    extern "C" __global__ void __launch_bounds__(ssd::kStateThreads, 2) name(SsdParams p) { \
        extern __shared__ __align__(128) unsigned char ssd_state3_smem[];               \
        ssd::chunk_state3<T, N>(p, ssd_state3_smem);                                    \
    }
SSD_STATE3(ssd_chunk_state3_f32_n64, float, 64)
SSD_STATE3(ssd_chunk_state3_f32_n128, float, 128)
SSD_STATE3(ssd_chunk_state3_f32_n256, float, 256)
SSD_STATE3(ssd_chunk_state3_bf16_n64, __nv_bfloat16, 64)
SSD_STATE3(ssd_chunk_state3_bf16_n128, __nv_bfloat16, 128)
SSD_STATE3(ssd_chunk_state3_bf16_n256, __nv_bfloat16, 256)
SSD_STATE3(ssd_chunk_state3_f16_n64, __half, 64)
SSD_STATE3(ssd_chunk_state3_f16_n128, __half, 128)
SSD_STATE3(ssd_chunk_state3_f16_n256, __half, 256)
#undef SSD_STATE3
