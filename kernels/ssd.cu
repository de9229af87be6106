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
template <typename T>
__device__ __forceinline__ void chunk_state(const SsdParams& p) {
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
    constexpr int kBytes = 2 * kTile * kTile * (int)sizeof(Tc) > kTile * kTile * 4
                               ? 2 * kTile * kTile * (int)sizeof(Tc)
                               : kTile * kTile * 4;
    __shared__ __align__(128) unsigned char smem[kBytes];
    Tc* sX = reinterpret_cast<Tc*>(smem);
    Tc* sB = sX + kTile * kTile;

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
        fill_tile<kTile, kTile>(sX, x + (tok0 + k0) * p.x_row_stride, p.x_row_stride, len - k0, vec,
                                [&](int r) { return s_w[k0 + r]; });
        fill_tile<kTile, kTile>(sB, b + (tok0 + k0) * p.b_row_stride, p.b_row_stride, len - k0, vec,
                                [](int) { return 1.f; });
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTile; kk += 16) {
            FragA<Tc, col_major> fa;  // A = X'^T: element (p, t) at t * 64 + p
            fa.load(sX + kk * kTile + warp * 16, kTile);
#pragma unroll
            for (int f = 0; f < 4; ++f) {
                FragB<Tc, row_major> fb;
                fb.load(sB + kk * kTile + f * 16, kTile);
                mma(acc[f], fa, fb);
            }
        }
        __syncthreads();
    }
    // S_c leaves in the input dtype (as Triton hands states on in C's dtype): through smem,
    // then 16-byte stores of whole rows.
    float* sO = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int f = 0; f < 4; ++f) acc[f].store(sO + warp * 16 * kTile + f * 16, kTile);
    __syncthreads();
    constexpr int V = 16 / sizeof(Tc);
    Tc* out = static_cast<Tc*>(p.chunk_states) + (((int64_t)c * H + h) * P + pt * kTile) * N + nt * kTile;
#pragma unroll 2
    for (int e = threadIdx.x * V; e < kTile * kTile; e += kThreads * V) {
        const int r = e / kTile, col = e % kTile;
        Pack<Tc, V> v;
#pragma unroll
        for (int i = 0; i < V; ++i) v.v[i] = fh1::from_f32<Tc>(sO[e + i]);
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
template <typename T>
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

    __shared__ __align__(128) Tc sC[kTile * kTile];
    __shared__ __align__(128) Tc sB[kTile * kTile];
    Acc<Tc> cb[4];
#pragma unroll
    for (int f = 0; f < 4; ++f) cb[f].zero();
    for (int n0 = 0; n0 < N; n0 += kTile) {
        fill_tile<kTile, kTile>(sC, cg + (tok0 + m0) * p.c_row_stride + n0, p.c_row_stride, len - m0, vec,
                                [](int) { return 1.f; });
        fill_tile<kTile, kTile>(sB, bg + (tok0 + j0) * p.b_row_stride + n0, p.b_row_stride, len - j0, vec,
                                [](int) { return 1.f; });
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTile; kk += 16) {
            FragA<Tc, row_major> fa;
            fa.load(sC + warp * 16 * kTile + kk, kTile);
#pragma unroll
            for (int f = 0; f < 4; ++f) {
                FragB<Tc, col_major> fb;  // B^T: element (n, j) at j * 64 + n
                fb.load(sB + f * 16 * kTile + kk, kTile);
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

}  // namespace ssd
}  // namespace

#define SSD_LB __launch_bounds__(ssd::kThreads, 2)
extern "C" __global__ void SSD_LB ssd_chunk_cb_f32(SsdParams p) { ssd::chunk_cb<float>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_cb_bf16(SsdParams p) { ssd::chunk_cb<__nv_bfloat16>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_cb_f16(SsdParams p) { ssd::chunk_cb<__half>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state_f32(SsdParams p) { ssd::chunk_state<float>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state_bf16(SsdParams p) { ssd::chunk_state<__nv_bfloat16>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_state_f16(SsdParams p) { ssd::chunk_state<__half>(p); }
extern "C" __global__ void __launch_bounds__(256) ssd_state_pass_f32(SsdParams p) { ssd::state_pass<float>(p); }
extern "C" __global__ void __launch_bounds__(256) ssd_state_pass_bf16(SsdParams p) { ssd::state_pass<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(256) ssd_state_pass_f16(SsdParams p) { ssd::state_pass<__half>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_f32_p64(SsdParams p) { ssd::chunk_scan<float, 64>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_bf16_p64(SsdParams p) { ssd::chunk_scan<__nv_bfloat16, 64>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_bf16_p128(SsdParams p) { ssd::chunk_scan<__nv_bfloat16, 128>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_f16_p64(SsdParams p) { ssd::chunk_scan<__half, 64>(p); }
extern "C" __global__ void SSD_LB ssd_chunk_scan_f16_p128(SsdParams p) { ssd::chunk_scan<__half, 128>(p); }
#undef SSD_LB
