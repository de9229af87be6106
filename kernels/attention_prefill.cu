// Causal GQA flash-attention forward (prefill and chunked prefill) over a packed varlen batch and
// the paged-by-slot KV cache of params_attention.h, bf16 and f16, head_dim 64 and 128, on the
// sm_80 tensor-core path (mma.sync m16n8k16, ldmatrix, cp.async). FlashAttention-2 scheme:
//
//   One block = one (query tile of kBM = 128 rows, query head h, sequence b); 8 warps, warp w owns
//   query rows w*16 .. w*16+15 of the tile and all head_dim output columns, so the softmax
//   statistics of a row never leave its warp (row max/sum combine the 4 lanes of a quad only).
//   Q is read once into registers as mma A fragments. The kv range 0 .. kv_end (the causal bound
//   of the tile's last valid row) is walked in kBN = 64-key tiles from the LAST tile down to tile
//   0, so that the (at most three) tiles that need the causal / length mask come first and the
//   rest run a mask-free body. Per tile, with S = Q K^T (f32):
//       m_new = max(m, rowmax S);  alpha = 2^((m - m_new) * scale_log2)
//       P = 2^(S * scale_log2 - m_new * scale_log2)   (f32, then rounded to T for the mma, as FA2)
//       l = l * alpha + rowsum P (f32 P);  O = O * alpha + P V (f32 accumulate)
//   and at the end out = O / l, rounded to T. A row whose running max is still -inf (every key
//   seen so far masked: happens for early rows in the first, diagonal tiles since we walk
//   backwards) uses 0 as its max, so no inf - inf NaN appears; its O and l stay exactly 0.
//
// Shared memory: three stages of kBM * HD elements each (48 KB for hd64, 96 KB for hd128). A stage
// holds one K tile [kBN][HD] followed by one V tile [kBN][HD]; since kBM = 2 * kBN, the Q tile
// [kBM][HD] is exactly one stage, and Q is first loaded into stage 2 (read into registers before
// anything else is written there). K/V tiles cycle through the stages with a prefetch distance of
// two tiles and one __syncthreads per tile:
//   iteration it: wait until the group of tile it has landed; __syncthreads (tile it visible to all,
//   and every warp is done with tile it-1, whose stage (it+2)%3 is now free); issue cp.async for
//   tile it+2 into stage (it+2)%3; compute on stage it%3.
// At the end stage 0 (after a __syncthreads) stages the block's output tile so that the global
// stores are 16-byte and row-contiguous. Rows of K/V past kv_end and Q rows past n_new are
// zero-filled by cp.async (src-size 0), so nothing undefined ever enters an mma: masked scores
// become -inf -> P = 0, and 0 * (zero V row) = 0.
//
// Every tile row is HD * 2 bytes (8 or 16 chunks of 16 bytes); chunk c of row r is stored at
// chunk c ^ (r & 7) (XOR swizzle). ldmatrix reads 8 rows at one logical chunk per 8x8 matrix;
// with the swizzle the 8 rows land in 8 different 16-byte bank groups, so ldmatrix, the cp.async
// writes and the output staging are all free of bank conflicts.
// Addressing: every ldmatrix row a lane supplies has r & 7 == lane & 7, and the logical chunk is
// 2i + x (i = k-step or d-pair, x in {0,1} per lane), so its byte offset in the row is
// ((2i + x) ^ (lane & 7)) * 16 = (((x ^ (lane & 7)) * 16) ^ (i << 5)): one per-lane offset,
// XORed with a constant per k-step. Stage bases and row offsets are multiples of 256 bytes
// (hd128) or leave bits 4-6 clear (hd64), so the XOR only ever touches the chunk bits; this keeps
// the K/V address registers to two per lane (hd64 then fits 128 registers: 2 blocks per SM).
//
// Fragment layouts relied on (PTX ISA, mma.m16n8k16 with .f16/.bf16 operands, f32 accumulate;
// lane = 4 * gid + tig, gid = lane >> 2, tig = lane & 3; a register holds 2 b16 values, the lower
// column / k index in the low half):
//   A (16x16, row major, 4 regs): a0 = (row gid,   k 2tig..+1)   a1 = (row gid+8, k 2tig..+1)
//                                 a2 = (row gid,   k 2tig+8..+9) a3 = (row gid+8, k 2tig+8..+9)
//   B (16x8, "col", 2 regs):      b0 = (k 2tig..+1, col gid)     b1 = (k 2tig+8..+9, col gid)
//   C (16x8 f32, 4 regs):         c0,c1 = (row gid, col 2tig, 2tig+1)  c2,c3 = (row gid+8, same)
//   ldmatrix .x4: lanes 8i .. 8i+7 give the row addresses of matrix i, destination register i
//   receives matrix i with lane holding (row lane>>2, cols 2(lane&3), +1); with .trans it holds
//   (rows 2(lane&3), +1 ; col lane>>2) of the stored matrix, i.e. the transpose.
// Hence:
//   Q A fragment (k-step kk): lane supplies row (lane & 15), chunk 2kk + (lane >> 4):
//     matrices = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0..a3.
//   K as B of S = Q K^T (K stored [key][d], i.e. B(k=d, n=key) column major, no .trans): lane
//     supplies key (lane & 7) + 8 (lane >> 4), chunk 2kk + ((lane >> 3) & 1): registers =
//     b0, b1 of key n-tile 2np and b0, b1 of n-tile 2np+1.
//   V as B of O = P V (V stored [key][d] = B(k=key, n=d) row major, so .trans): lane supplies
//     key (lane & 15), chunk 2dp + (lane >> 4): registers = b0, b1 of d n-tile 2dp, then of 2dp+1.
//   P: the C fragments of S n-tiles 2kk and 2kk+1 are, element for element, the A fragment of
//     k-step kk of P V: a0 = (c0,c1) of n-tile 2kk, a1 = (c2,c3) of 2kk, a2 = (c0,c1) of 2kk+1,
//     a3 = (c2,c3) of 2kk+1. So P never leaves registers.
//   Mask: C element e of S n-tile nt in a lane is (query row w*16 + gid + 8*(e>>1),
//     key tile_start + nt*8 + 2 tig + (e&1)); it is masked when key > query position.
#include "common.cuh"
#include "params.h"
#include "attention_util.cuh"
#include <type_traits>

namespace fh1_attn_fwd {
using namespace fh1_attn;

constexpr int kBM = ATTN_FWD_BLOCK_M;      // query rows per block
constexpr int kBN = 64;                    // keys per K/V tile
constexpr int kThreads = ATTN_FWD_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kStages = 3;
static_assert(kWarps * 16 == kBM, "one warp per 16 query rows");
static_assert(kBM == 2 * kBN, "the Q tile must fill exactly one K+V stage");
static_assert(kStages * kBM * 64 * 2 == ATTN_FWD_SMEM_HD64, "ATTN_FWD_SMEM_HD64 must match the tiling");
static_assert(kStages * kBM * 128 * 2 == ATTN_FWD_SMEM_HD128, "ATTN_FWD_SMEM_HD128 must match the tiling");


__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a * b, m16n8k16, f32 accumulate.
template <typename T> __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}


// Element offset of 16-byte chunk c of row r in a swizzled [rows][HD] tile.
template <int HD> __device__ __forceinline__ int swz(int r, int c) { return r * HD + ((c ^ (r & 7)) << 3); }

// cp.async a [ROWS][HD] tile whose row r is at g + r * stride into swizzled shared memory; rows
// >= nvalid are zero-filled (their source address is clamped to row 0, which is never read).
template <typename T, int HD, int ROWS>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t stride, int nvalid, int tid) {
    constexpr int kChunks = HD / 8;
    static_assert((ROWS * kChunks) % kThreads == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < ROWS * kChunks / kThreads; ++i) {
        const int idx = tid + i * kThreads;
        const int r = idx / kChunks, c = idx % kChunks;
        const bool ok = r < nvalid;
        const T* src = g + (ok ? (int64_t)r * stride : (int64_t)0) + c * 8;
        cp_async16(smem_u32(s + swz<HD>(r, c)), src, ok);
    }
}

template <typename T, int HD>
__device__ __forceinline__ void attn_fwd(const AttnParams& p) {
    extern __shared__ __align__(1024) unsigned char fh1_attn_fwd_smem[];
    T* smem = reinterpret_cast<T*>(fh1_attn_fwd_smem);
    // The XOR addressing of the K/V ldmatrix needs a 256-byte aligned base. The dynamic window is
    // 1 KB aligned (the declaration asks for it, and no static shared memory precedes it); should
    // that ever not hold, fail loudly instead of reading the wrong rows.
    if (smem_u32(smem) & 255u) __trap();
    constexpr int kStage = kBM * HD;      // elements per stage
    constexpr int kKSteps = HD / 16;      // k-steps of Q K^T
    constexpr int kDTiles = HD / 8;       // n8 tiles of the output
    constexpr int kNTiles = kBN / 8;      // n8 tiles of S
    constexpr int kPSteps = kBN / 16;     // k-steps of P V

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, h = blockIdx.y;
    // The heaviest (last) query tiles first: they have the most kv tiles to walk.
    const int m = gridDim.x - 1 - blockIdx.x;
    const int row_beg = p.cu_seqlens[b];
    const int n_new = p.cu_seqlens[b + 1] - row_beg;
    const int q_lo = m * kBM;
    if (q_lo >= n_new) return;  // whole block: before any barrier
    const int q_hi = min(n_new, q_lo + kBM);
    const int start = p.seq_start[b];
    const int64_t slot = p.slot_idx[b];
    const int g = h / (int)(p.n_heads / p.n_kv_heads);

    // Keys 0 .. kv_end - 1: the causal bound of the last valid row (position start + q_hi - 1).
    const int kv_end = start + q_hi;
    const int n_tiles = (kv_end + kBN - 1) / kBN;
    // Tile kt needs the mask iff its last key kt*kBN + kBN - 1 exceeds the first row's position
    // start + q_lo, i.e. kt >= (start + q_lo + 1) / kBN; those are the first n_masked iterations.
    // (The partial last tile is always among them, since kv_end - 1 >= start + q_lo.)
    const int n_masked = n_tiles - (start + q_lo + 1) / kBN;

    const T* qg = static_cast<const T*>(p.q) + ((int64_t)row_beg + q_lo) * p.q_row_stride + (int64_t)h * HD;
    const int64_t kv_stride = p.n_kv_heads * HD;  // elements between consecutive tokens of one kv head
    const int64_t kv_off = (slot * p.capacity * p.n_kv_heads + g) * HD;

    // Iteration it processes kv tile n_tiles - 1 - it in stage it % 3; always commits a group
    // (possibly empty) so that the wait counts below stay uniform. K and V rows share offsets.
    // Only the first tile (it = 0, the last kv tile) can be partial, so only it checks rows.
    auto load_kv = [&](int it, int stage, auto check_tag) {
        constexpr bool kCheck = decltype(check_tag)::value;
        if (it < n_tiles) {
            constexpr int kChunks = HD / 8, kRowsPerPass = kThreads / kChunks;
            const int j0 = (n_tiles - 1 - it) * kBN;
            T* st = smem + stage * kStage;
            const int r0 = tid / kChunks, c = tid % kChunks;
#pragma unroll
            for (int i = 0; i < kBN / kRowsPerPass; ++i) {
                const int r = r0 + i * kRowsPerPass;
                const bool ok = !kCheck || j0 + r < kv_end;  // rows past kv_end: zero-filled, address clamped
                const int64_t off = kv_off + (int64_t)(ok ? j0 + r : j0) * kv_stride + c * 8;
                cp_async16(smem_u32(st + swz<HD>(r, c)), static_cast<const T*>(p.k_cache) + off, ok);
                cp_async16(smem_u32(st + kBN * HD + swz<HD>(r, c)), static_cast<const T*>(p.v_cache) + off, ok);
            }
        }
        cp_async_commit();
    };

    // Prologue: group 0 = Q (stage 2) + tile it=0 (stage 0); group 1 = tile it=1 (stage 1).
    const T* sQ = smem + 2 * kStage;
    load_tile<T, HD, kBM>(smem + 2 * kStage, qg, p.q_row_stride, q_hi - q_lo, tid);
    load_kv(0, 0, std::true_type{});
    load_kv(1, 1, std::false_type{});
    cp_async_wait<1>();
    __syncthreads();

    uint32_t qf[kKSteps][4];
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk)
        ldsm_x4(smem_u32(sQ + swz<HD>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4))), qf[kk]);

    float o[kDTiles][4];
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};  // rows gid and gid+8 of the warp, raw score units
    float row_sum[2] = {0.f, 0.f};              // this lane's partial sums; quad-reduced at the end
    const float sl2 = p.scale_log2;
    const int qpos0 = start + q_lo + warp * 16 + (lane >> 2);  // position of row gid; gid+8 is +8

    // Byte offsets within a stage of this lane's K / V ldmatrix row at k-step / d-pair 0; k-step
    // (d-pair) i is then at offset ^ (i << 5) (see "Addressing" in the header).
    const uint32_t k_lane = (uint32_t)(((lane & 7) + ((lane >> 4) << 3)) * HD * 2 + ((((lane >> 3) & 1) ^ (lane & 7)) << 4));
    const uint32_t v_lane = (uint32_t)(kBN * HD * 2 + (lane & 15) * HD * 2 + (((lane >> 4) ^ (lane & 7)) << 4));

    int stage = 0;  // it % 3
    auto step = [&](int it, auto mask_tag) {
        constexpr bool kMask = decltype(mask_tag)::value;
        cp_async_wait<1>();  // all but the newest group (tile it+1) done: tile it landed
        __syncthreads();
        load_kv(it + 2, stage == 0 ? 2 : stage - 1, std::false_type{});  // (it + 2) % 3: the stage of tile it-1

        const uint32_t st = smem_u32(smem) + stage * (kStage * 2);

        // S = Q K^T for this warp's 16 rows x 64 keys.
        float s[kNTiles][4];
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
            for (int np = 0; np < kNTiles / 2; ++np) {
                uint32_t kb[4];
                ldsm_x4((st + k_lane + np * 16 * HD * 2) ^ (kk << 5), kb);
                mma<T>(s[2 * np], qf[kk], kb[0], kb[1]);
                mma<T>(s[2 * np + 1], qf[kk], kb[2], kb[3]);
            }
        }

        if constexpr (kMask) {
            // Key of element e of n-tile n: j0 + n*8 + (e & 1); row position qpos0 + 8*(e >> 1).
            const int j0 = (n_tiles - 1 - it) * kBN + 2 * (lane & 3);
#pragma unroll
            for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    if (j0 + n * 8 + (e & 1) > qpos0 + 8 * (e >> 1)) s[n][e] = -INFINITY;
                }
            }
        }

        // Online softmax; the max includes the previous one (uniform over the quad).
        float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
            mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
        }
        float neg_ms[2], alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = quad_max(mx[r]);
            const float mu = mx[r] == -INFINITY ? 0.f : mx[r];  // all masked so far: P = 0, no NaN
            alpha[r] = exp2_fast((row_max[r] - mu) * sl2);      // first tile: 2^-inf = 0 (O, l are 0)
            row_max[r] = mx[r];
            row_sum[r] *= alpha[r];
            neg_ms[r] = -mu * sl2;
        }
#pragma unroll
        for (int d = 0; d < kDTiles; ++d) {
            o[d][0] *= alpha[0];
            o[d][1] *= alpha[0];
            o[d][2] *= alpha[1];
            o[d][3] *= alpha[1];
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = exp2_fast(fmaf(s[n][e], sl2, neg_ms[e >> 1]));
            row_sum[0] += s[n][0] + s[n][1];
            row_sum[1] += s[n][2] + s[n][3];
        }

        // O += P V: P's C fragments re-packed as A fragments (header), V through ldmatrix.trans.
#pragma unroll
        for (int kk = 0; kk < kPSteps; ++kk) {
            const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < kDTiles / 2; ++dp) {
                uint32_t vb[4];
                ldsm_x4_trans((st + v_lane + kk * 16 * HD * 2) ^ (dp << 5), vb);
                mma<T>(o[2 * dp], pa, vb[0], vb[1]);
                mma<T>(o[2 * dp + 1], pa, vb[2], vb[3]);
            }
        }
        stage = stage == 2 ? 0 : stage + 1;
    };

    int it = 0;
    for (; it < n_masked; ++it) step(it, std::true_type{});
    for (; it < n_tiles; ++it) step(it, std::false_type{});

    // Epilogue: normalise, round, stage through shared memory (stage 0 as a [kBM][HD] tile; each
    // warp touches only its own 16 rows), then 16-byte row-contiguous stores of the valid rows.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = quad_sum(row_sum[r]);
        inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    cp_async_wait<0>();  // only empty groups can be pending; keep the tail clean anyway
    __syncthreads();     // every warp is done reading the K/V stages
    T* sO = smem;
    const int w = threadIdx.x >> 5, ln = threadIdx.x & 31;
    const int orow = w * 16 + (ln >> 2);
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) {
        *reinterpret_cast<uint32_t*>(sO + swz<HD>(orow, d) + 2 * (ln & 3)) = pack2<T>(o[d][0] * inv[0], o[d][1] * inv[0]);
        *reinterpret_cast<uint32_t*>(sO + swz<HD>(orow + 8, d) + 2 * (ln & 3)) =
            pack2<T>(o[d][2] * inv[1], o[d][3] * inv[1]);
    }
    __syncwarp();
    // The row range is recomputed from the launch indices and re-read from cu_seqlens (the
    // "memory" clobber of the cp.async wait forces the reload) rather than kept live through the
    // kv loop: that keeps hd64 within 128 registers without spilling.
    const int e_q_lo = (int)(gridDim.x - 1 - blockIdx.x) * kBM;
    const int e_beg = p.cu_seqlens[blockIdx.z];
    const int e_rows = p.cu_seqlens[blockIdx.z + 1] - e_beg - e_q_lo;  // valid rows of the tile
    T* og = static_cast<T*>(p.out) + ((int64_t)e_beg + e_q_lo) * p.o_row_stride + (int64_t)blockIdx.y * HD;
    constexpr int kChunks = HD / 8;
#pragma unroll
    for (int i = 0; i < 16 * kChunks / 32; ++i) {
        const int idx = ln + 32 * i;
        const int r = w * 16 + idx / kChunks, c = idx % kChunks;
        if (r < e_rows)
            *reinterpret_cast<uint4*>(og + (int64_t)r * p.o_row_stride + c * 8) =
                *reinterpret_cast<const uint4*>(sO + swz<HD>(r, c));
    }
}

}  // namespace fh1_attn_fwd

// hd64 fits two blocks per SM (128 registers without spills, 2 x 48 KB of shared memory); hd128
// holds O (64), Q (32) and S (32) per lane and takes ~200-210 registers: one 8-warp block per SM.
extern "C" __global__ void __launch_bounds__(ATTN_FWD_THREADS, 2) attn_fwd_bf16_hd64(const AttnParams p) {
    fh1_attn_fwd::attn_fwd<__nv_bfloat16, 64>(p);
}
extern "C" __global__ void __launch_bounds__(ATTN_FWD_THREADS, 1) attn_fwd_bf16_hd128(const AttnParams p) {
    fh1_attn_fwd::attn_fwd<__nv_bfloat16, 128>(p);
}
extern "C" __global__ void __launch_bounds__(ATTN_FWD_THREADS, 2) attn_fwd_f16_hd64(const AttnParams p) {
    fh1_attn_fwd::attn_fwd<__half, 64>(p);
}
extern "C" __global__ void __launch_bounds__(ATTN_FWD_THREADS, 1) attn_fwd_f16_hd128(const AttnParams p) {
    fh1_attn_fwd::attn_fwd<__half, 128>(p);
}
