// Causal GQA flash-attention forward (prefill and chunked prefill) for Hopper (sm_90a): the same
// contract and numerics as the sm_80 kernels of attention_prefill.cu (read that header first), on
// warpgroup MMA (wgmma.mma_async) with operands in shared memory. Kernels
// attn_fwd_{bf16,f16}_hd{64,128}_sm90(AttnParams); grid (ceil(max_new / 128), Hq, batch),
// ATTN_FWD_SM90_THREADS = 256 threads, ATTN_FWD_SM90_SMEM_HD{64,128} bytes of dynamic shared memory.
// On every target but sm_90a the kernels exist with a body that traps (the launcher only selects
// them on compute capability 9.0), so that the fatbin holds the symbols everywhere.
//
// Design (a first Hopper kernel: wgmma + cp.async, no TMA and no warp specialisation yet):
//   One block = (query tile of kBM = 128 rows, query head h, sequence b), two warpgroups; warpgroup
//   wg owns query rows 64 wg .. 64 wg + 63 (one wgmma M = 64), warp w of the block owns rows
//   16 w .. 16 w + 15 exactly as in the sm_80 kernel, so the row statistics are quad reductions.
//   K/V tiles of kBN = 128 keys are walked from the last tile down (masked tiles first), as sm_80.
//   Per tile and warpgroup:
//     S[64 x 128] = Q K^T: hd/16 wgmma m64n128k16, A = Q from shared memory (K-major), B = K tile
//       from shared memory (K-major, i.e. stored [key][d]); f32 accumulators in registers.
//     mask + online softmax on the accumulator fragment (same formulas as sm_80);
//     O[64 x hd] += P V: kBN/16 wgmma m64n{hd}k16 with A = P from registers (the S accumulator
//       fragment of keys 16kk..16kk+15, rounded to T and packed in pairs, is exactly the wgmma A
//       register fragment) and B = V tile from shared memory, MN-major (imm-trans-b = 1: V is
//       stored [key][d], d contiguous = N-major).
//   Each GEMM is one wgmma group (fence, mma_async x n, commit). The main loop is software
//   pipelined as FlashAttention-3's intra-warpgroup overlap: S_{it+1} and P_it V_it are issued
//   back to back, wait_group 1 returns with S_{it+1} while P V still runs, the softmax of
//   S_{it+1} (f32, in the accumulator registers) overlaps it, and only after wait_group 0 is O
//   rescaled and P_{it+1} packed into the A registers (registers of a running wgmma must not be
//   redefined; ptxas would serialize the whole chain). Details at the loop. Building with
//   -DFH1_ATTN_SM90_SIMPLE selects a plain loop instead (per tile: S, wait, softmax, P V, wait),
//   kept for bisecting on a GPU.
// Loads: plain 16-byte cp.async by all 256 threads into the 128-byte-swizzled layout, a ring of
//   kStages = 3 K+V stages. Every stage switch is: cp.async.wait_group (this thread's copies of
//   the next tile landed), fence.proxy.async (cp.async writes are generic-proxy, wgmma reads
//   shared memory through the async proxy), __syncthreads (every thread's copies landed; every
//   wgmma that read the stage about to be refilled has completed: each warpgroup waited for its
//   groups before arriving), then the loads of a later tile into the freed stage. No mbarriers:
//   with all threads both loading and computing, the block barrier is the release/acquire.
//   (TMA would need a tensor map per cache buffer and call, encoded on the host with
//   cuTensorMapEncodeTiled; 1-D cp.async.bulk cannot gather a kv head's hd-wide rows, which are
//   strided by Hkv * hd. A TMA + mbarrier pipeline with a warp-specialised producer warpgroup is
//   the next step.) Rows past kv_end and Q rows past n_new are zero-filled (cp.async src-size
//   0), so nothing undefined enters a wgmma.
//
// Shared memory (base rounded up to 1024 bytes; every region a multiple of 1024 bytes): hd64
//   16 KB Q + 3 x 32 KB K/V = 112 KB (+1 KB slack); hd128 32 KB Q + 3 x 64 KB = 224 KB (+1 KB
//   slack, 230400 bytes of the 232448 an H100/H200 block may opt into). One block per SM.
// Layout:
//   Q [hd/64 column blocks][128 rows][64 elements]; then per stage K [hd/64][kBN][64] and
//   V [hd/64][kBN][64]. A column block row is 128 bytes; its 16-byte chunk c of row r is stored at
//   chunk c ^ (r & 7): the 128-byte swizzle (Swizzle<3,4,3>: address bits 4-6 ^= bits 7-9), which
//   the hardware applies to the absolute shared address, hence the 1024-byte alignment of every
//   8-row atom.
// wgmma matrix descriptors (PTX ISA "Matrix Descriptor Format"): bits 0-13 start address >> 4,
//   16-29 leading dimension byte offset >> 4, 32-45 stride dimension byte offset >> 4, 49-51 base
//   offset (0: atoms are 1024-aligned), 62-63 swizzle mode (1 = 128B).
//   K-major (Q as A, K as B): SBO = 1024 (the next 8 rows), LBO unused with swizzling (1). The k16
//     step kk reads column block kk / 4 at byte 32 * (kk % 4) of the row: start address
//     = block base + 32 (kk % 4) (+ 64 wg * 128 for Q); the hardware's address swizzle then finds
//     the chunk (2 (kk%4) + c) ^ (r & 7) where we stored it.
//   MN-major (V as B, trans-b = 1): the atom is 8 keys x 64 d (128 bytes per key row); SBO = 1024
//     (the next 8 keys), LBO = kBN * 128 (the next 64 d: the next column block). The k16 step kk
//     (keys 16 kk ..) starts at V base + 16 kk * 128 bytes.
// Fragment layouts (PTX ISA, wgmma .m64nNk16, f32 accumulators, per thread of the warpgroup with
//   warp w = warp-in-group, gid = lane >> 2, tig = lane & 3): accumulator d[n8][e] holds
//   (row 16 w + gid + 8 (e >> 1), col 8 n8 + 2 tig + (e & 1)) -- the mma.m16n8 C layout per n8
//   tile; the A register fragment (4 x b16x2) is (row 16 w + gid, k 2tig..+1), (row +8, same k),
//   (row 16 w + gid, k 2tig+8..+9), (row +8, same) -- the mma.m16n8k16 A layout.
#include "common.cuh"
#include "params.h"
#include "attention_util.cuh"
#include <type_traits>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace fh1_attn_fwd_sm90 {
using namespace fh1_attn;

constexpr int kBM = ATTN_FWD_SM90_BLOCK_M;  // query rows per block (two warpgroups of 64)
constexpr int kBN = ATTN_FWD_SM90_BLOCK_N;  // keys per K/V tile
constexpr int kThreads = ATTN_FWD_SM90_THREADS;
static_assert(kBM == 128 && kThreads == 256, "two warpgroups of 64 query rows");
template <int HD> __host__ __device__ constexpr int stages() { return 3; }
// Bytes: Q tile + stages x (K + V tiles) + 1024 for aligning the base.
template <int HD> __host__ __device__ constexpr int smem_bytes() { return kBM * HD * 2 + stages<HD>() * 2 * kBN * HD * 2 + 1024; }
static_assert(smem_bytes<64>() == ATTN_FWD_SM90_SMEM_HD64, "ATTN_FWD_SM90_SMEM_HD64 must match the tiling");
static_assert(smem_bytes<128>() == ATTN_FWD_SM90_SMEM_HD128, "ATTN_FWD_SM90_SMEM_HD128 must match the tiling");

// Orders this thread's generic-proxy shared memory writes (landed cp.async data, st.shared)
// before later async-proxy reads (wgmma operands).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins accumulator registers in program order relative to the volatile wgmma asm statements, so
// that the compiler neither reads them before wgmma_wait nor writes them while a wgmma is in flight.
template <int R, int C> __device__ __forceinline__ void fence_regs(float (&d)[R][C]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < C; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}

template <int R, int C> __device__ __forceinline__ void fence_regs(uint32_t (&d)[R][C]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < C; ++j) asm volatile("" : "+r"(d[i][j])::"memory");
}

// 128B-swizzle wgmma descriptor of the shared address `addr` (the start address field is the only
// one that changes per k-step; adding (bytes >> 4) to the descriptor moves it, as addresses stay
// below 256 KB).
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo_bytes >> 4) & 0x3FFFu) << 16) |
           ((uint64_t)((sbo_bytes >> 4) & 0x3FFFu) << 32) | (1ull << 62);
}

// D (+)= A * B: A and B from shared memory, both K-major. scale_d 0: D = A * B.
template <typename T, int N> __device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db, int scale_d);
// D += A * B: A from registers, B from shared memory MN-major (trans-b).
template <typename T, int N> __device__ __forceinline__ void wgmma_rs_tb(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db);
template <> __device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 64>(float (&d)[8][4], uint64_t da, uint64_t db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(da), "l"(db), "r"(scale_d));
}
template <> __device__ __forceinline__ void wgmma_rs_tb<__nv_bfloat16, 64>(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
}
template <> __device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 128>(float (&d)[16][4], uint64_t da, uint64_t db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(da), "l"(db), "r"(scale_d));
}
template <> __device__ __forceinline__ void wgmma_rs_tb<__nv_bfloat16, 128>(float (&d)[16][4], const uint32_t (&a)[4], uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
}
template <> __device__ __forceinline__ void wgmma_ss<__half, 64>(float (&d)[8][4], uint64_t da, uint64_t db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(da), "l"(db), "r"(scale_d));
}
template <> __device__ __forceinline__ void wgmma_rs_tb<__half, 64>(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
}
template <> __device__ __forceinline__ void wgmma_ss<__half, 128>(float (&d)[16][4], uint64_t da, uint64_t db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(da), "l"(db), "r"(scale_d));
}
template <> __device__ __forceinline__ void wgmma_rs_tb<__half, 128>(float (&d)[16][4], const uint32_t (&a)[4], uint64_t db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
}


// Byte offset of 16-byte chunk c (0 .. HD/8 - 1) of row r in a 128B-swizzled [HD/64][ROWS][64] tile.
template <int ROWS> __device__ __forceinline__ uint32_t swz128(int r, int c) {
    return (uint32_t)((c >> 3) * (ROWS * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}
// Element offset of chunk c of row r in the plain XOR-swizzled [kBM][HD] output staging tile.
template <int HD> __device__ __forceinline__ int swz_out(int r, int c) { return r * HD + ((c ^ (r & 7)) << 3); }

template <typename T, int HD>
__device__ __forceinline__ void attn_fwd(const AttnParams& p) {
    extern __shared__ __align__(1024) unsigned char fh1_attn_fwd_sm90_smem[];
    constexpr int kStages = stages<HD>();
    constexpr int kChunks = HD / 8;           // 16-byte chunks per row
    constexpr int kQBytes = kBM * HD * 2;
    constexpr int kTileBytes = kBN * HD * 2;  // one K or V tile
    constexpr int kStageBytes = 2 * kTileBytes;
    constexpr int kKSteps = HD / 16;          // k16 steps of Q K^T
    constexpr int kPSteps = kBN / 16;         // k16 steps of P V
    constexpr int kNT = kBN / 8;              // n8 tiles of S
    constexpr int kDT = HD / 8;               // n8 tiles of O

    // 1024-aligned base (the 128B swizzle atoms), from a window that has 1024 bytes of slack.
    const uint32_t raw = smem_u32(fh1_attn_fwd_sm90_smem);
    const uint32_t base = (raw + 1023u) & ~1023u;
    unsigned char* const sbase = fh1_attn_fwd_sm90_smem + (base - raw);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int b = blockIdx.z, h = blockIdx.y;
    const int m = gridDim.x - 1 - blockIdx.x;  // heaviest query tiles first
    const int row_beg = p.cu_seqlens[b];
    const int n_new = p.cu_seqlens[b + 1] - row_beg;
    const int q_lo = m * kBM;
    if (q_lo >= n_new) return;  // whole block, before any barrier
    const int q_hi = min(n_new, q_lo + kBM);
    const int start = p.seq_start[b];
    const int64_t slot = p.slot_idx[b];
    const int g = h / (int)(p.n_heads / p.n_kv_heads);

    const int kv_end = start + q_hi;  // keys 0 .. kv_end - 1
    const int n_tiles = (kv_end + kBN - 1) / kBN;
    const int n_masked = n_tiles - (start + q_lo + 1) / kBN;  // see attention_prefill.cu

    const T* qg = static_cast<const T*>(p.q) + ((int64_t)row_beg + q_lo) * p.q_row_stride + (int64_t)h * HD;
    const int64_t kv_stride = p.n_kv_heads * HD;
    const int64_t kv_off = (slot * p.capacity * p.n_kv_heads + g) * HD;
    const T* kg = static_cast<const T*>(p.k_cache) + kv_off;
    const T* vg = static_cast<const T*>(p.v_cache) + kv_off;

    const uint32_t sQ = base;
    auto stage_base = [&](int s) { return base + kQBytes + (uint32_t)s * kStageBytes; };

    // Q: rows >= q_hi - q_lo zero-filled (address clamped to row 0).
    {
        const int nvalid = q_hi - q_lo;
#pragma unroll
        for (int i = 0; i < kBM * kChunks / kThreads; ++i) {
            const int idx = tid + i * kThreads;
            const int r = idx / kChunks, c = idx % kChunks;
            const bool ok = r < nvalid;
            cp_async16(sQ + swz128<kBM>(r, c), qg + (ok ? (int64_t)r * p.q_row_stride : (int64_t)0) + c * 8, ok);
        }
    }
    // Iteration it processes kv tile n_tiles - 1 - it; always commits a (possibly empty) group.
    auto load_kv = [&](int it, int stage, auto check_tag) {
        constexpr bool kCheck = decltype(check_tag)::value;
        if (it < n_tiles) {
            constexpr int kRowsPerPass = kThreads / kChunks;
            const int j0 = (n_tiles - 1 - it) * kBN;
            const uint32_t sk = stage_base(stage), sv = sk + kTileBytes;
            const int r0 = tid / kChunks, c = tid % kChunks;
#pragma unroll
            for (int i = 0; i < kBN / kRowsPerPass; ++i) {
                const int r = r0 + i * kRowsPerPass;
                const bool ok = !kCheck || j0 + r < kv_end;
                const int64_t off = (int64_t)(ok ? j0 + r : j0) * kv_stride + c * 8;
                cp_async16(sk + swz128<kBN>(r, c), kg + off, ok);
                cp_async16(sv + swz128<kBN>(r, c), vg + off, ok);
            }
        }
        cp_async_commit();
    };
    // Prologue: group 0 = Q + tile 0 (stage 0), group s = tile s (stage s), s < kStages - 1.
    load_kv(0, 0, std::true_type{});
#pragma unroll
    for (int s = 1; s < kStages - 1; ++s) load_kv(s, s, std::false_type{});

    // Descriptors at k-step 0 (K-major: LBO field 1, SBO 1024; V MN-major: LBO kBN*128, SBO 1024).
    const uint64_t dq0 = make_desc(sQ + wg * 64 * 128, 16, 1024);
    const uint64_t dkv0 = make_desc(stage_base(0), 16, 1024);                 // K of stage 0
    const uint64_t dv0 = make_desc(stage_base(0) + kTileBytes, kBN * 128, 1024);  // V of stage 0

    float o[kDT][4];
#pragma unroll
    for (int d = 0; d < kDT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};
    const float sl2 = p.scale_log2;
    const int qpos0 = start + q_lo + warp * 16 + (lane >> 2);  // position of row gid; gid+8 is +8

    // S = Q K^T of the tile in `stage` into s (one committed wgmma group; the caller fences).
    auto issue_s = [&](float (&s)[kNT][4], int stage) {
        const uint64_t soff = (uint64_t)((stage * kStageBytes) >> 4);
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
            const uint64_t a = dq0 + (uint64_t)(((kk >> 2) * (kBM * 128) + (kk & 3) * 32) >> 4);
            const uint64_t bk = dkv0 + soff + (uint64_t)(((kk >> 2) * (kBN * 128) + (kk & 3) * 32) >> 4);
            wgmma_ss<T, kBN>(s, a, bk, kk > 0 ? 1 : 0);
        }
        wgmma_commit();
    };
    // O += P V of the tile in `stage` (one committed wgmma group; the caller fences).
    auto issue_pv = [&](const uint32_t (&pa)[kPSteps][4], int stage) {
        const uint64_t soff = (uint64_t)((stage * kStageBytes) >> 4);
#pragma unroll
        for (int kk = 0; kk < kPSteps; ++kk) wgmma_rs_tb<T, HD>(o, pa[kk], dv0 + soff + (uint64_t)((kk * 16 * 128) >> 4));
        wgmma_commit();
    };
    // Mask (tile it, if kMask) and online softmax of s: updates row_max / row_sum, returns the O
    // rescale factors in alpha and leaves P (f32) in s.
    auto softmax = [&](float (&s)[kNT][4], int it, float (&alpha)[2], auto mask_tag) {
        constexpr bool kMask = decltype(mask_tag)::value;
        if constexpr (kMask) {
            const int j0 = (n_tiles - 1 - it) * kBN + 2 * (lane & 3);
#pragma unroll
            for (int n = 0; n < kNT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    if (j0 + n * 8 + (e & 1) > qpos0 + 8 * (e >> 1)) s[n][e] = -INFINITY;
                }
            }
        }
        float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
            mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
        }
        float neg_ms[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = quad_max(mx[r]);
            const float mu = mx[r] == -INFINITY ? 0.f : mx[r];  // all masked so far: P = 0, no NaN
            alpha[r] = exp2_fast((row_max[r] - mu) * sl2);      // first tile: 2^-inf = 0
            row_max[r] = mx[r];
            row_sum[r] *= alpha[r];
            neg_ms[r] = -mu * sl2;
        }
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = exp2_fast(fmaf(s[n][e], sl2, neg_ms[e >> 1]));
            row_sum[0] += s[n][0] + s[n][1];
            row_sum[1] += s[n][2] + s[n][3];
        }
    };
    auto softmax_any = [&](float (&s)[kNT][4], int it, float (&alpha)[2]) {
        if (it < n_masked)
            softmax(s, it, alpha, std::true_type{});
        else
            softmax(s, it, alpha, std::false_type{});
    };
    // P rounded to T and packed as the wgmma A fragments: n8 tile n of S is half (n & 1) of k-step
    // n >> 1 (a0/a1 from the even tile, a2/a3 from the odd one).
    auto pack_p = [&](const float (&s)[kNT][4], uint32_t (&pa)[kPSteps][4]) {
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
            pa[n >> 1][2 * (n & 1)] = pack2<T>(s[n][0], s[n][1]);
            pa[n >> 1][2 * (n & 1) + 1] = pack2<T>(s[n][2], s[n][3]);
        }
    };
    auto rescale_o = [&](const float (&alpha)[2]) {
#pragma unroll
        for (int d = 0; d < kDT; ++d) {
            o[d][0] *= alpha[0];
            o[d][1] *= alpha[0];
            o[d][2] *= alpha[1];
            o[d][3] *= alpha[1];
        }
    };

#if !defined(FH1_ATTN_SM90_SIMPLE)
    // Software pipeline (FlashAttention-3's intra-warpgroup overlap): while the tensor cores run
    // P_it V_it, the warpgroup does the softmax of S_{it+1}, whose wgmma was issued just before.
    // Invariant at the top of iteration it: s of tile it has been soft-maxed into pa (P_it, in
    // units of row_max after tile it), O is in the same units, tile t sits in stage t % kStages,
    // and the committed cp.async groups are tiles 0 .. it + kStages - 2.
    // Iterations it = 0 .. n_tiles - 2 (the last tile then runs its P V alone):
    //   a. wait until tile it+1 landed (cp.async group), proxy fence, __syncthreads: tile it+1 is
    //      visible, and both warpgroups finished iteration it-1 (its PV and S_it wgmmas completed:
    //      each waited for them), so the stage of tile it-1 is free;
    //   b. wgmma S_{it+1} = Q K_{it+1}^T (group 1), then O += P_it V_it (group 2);
    //   c. cp.async tile it + kStages - 1 into the freed stage ((it - 1) % kStages);
    //   d. wait_group 1 (S_{it+1} done, PV may run on), softmax of S_{it+1} (f32 P in s), alpha;
    //   e. wait_group 0 (PV done), O *= alpha, P_{it+1} rounded and packed into pa.
    // kStages = 3: stage it % 3 (V_it, read by PV_it), (it+1) % 3 (K_{it+1}, V_{it+1}) and the one
    // being loaded.
    static_assert(kStages == 3, "the pipelined loop holds tiles it, it+1 and the load of it+2");
    uint32_t pa[kPSteps][4];
    {
        cp_async_wait<kStages - 2>();  // group 0: Q and tile 0
        fence_proxy_async();
        __syncthreads();
        float s[kNT][4];
        wgmma_fence();
        issue_s(s, 0);
        wgmma_wait<0>();
        fence_regs(s);
        float alpha[2];
        softmax_any(s, 0, alpha);  // O is 0: nothing to rescale
        pack_p(s, pa);
    }
    int stage = 0;  // it % 3
    for (int it = 0; it < n_tiles - 1; ++it) {
        const int next = stage == kStages - 1 ? 0 : stage + 1;  // (it + 1) % 3
        const int prev = stage == 0 ? kStages - 1 : stage - 1;  // (it - 1) % 3 = (it + 2) % 3
        cp_async_wait<kStages - 3>();
        fence_proxy_async();
        __syncthreads();
        float s[kNT][4];
        fence_regs(o);
        fence_regs(pa);
        wgmma_fence();
        issue_s(s, next);
        issue_pv(pa, stage);
        // The loads go out while the tensor cores work; their stage is read by neither wgmma.
        load_kv(it + kStages - 1, prev, std::false_type{});
        wgmma_wait<1>();
        fence_regs(s);
        float alpha[2];
        softmax_any(s, it + 1, alpha);
        // P_{it+1} goes into pa only now: pa is an input of the PV wgmma in flight, and registers
        // of a running wgmma must not be redefined (ptxas would serialize the chain).
        wgmma_wait<0>();
        fence_regs(o);
        rescale_o(alpha);
        pack_p(s, pa);
        stage = next;
    }
    // The last tile (visible since the last barrier): P V only.
    fence_regs(o);
    fence_regs(pa);
    wgmma_fence();
    issue_pv(pa, stage);
    wgmma_wait<0>();
    fence_regs(o);
#else
    // The simple loop (no overlap; -DFH1_ATTN_SM90_SIMPLE): per tile, S then PV, each waited.
    int stage = 0;
    auto step = [&](int it, auto mask_tag) {
        cp_async_wait<kStages - 2>();  // tile it (and Q) landed for this thread
        fence_proxy_async();           // ... and is visible to the async proxy (wgmma)
        __syncthreads();               // every thread's part landed; every wgmma of tile it-1 done
        load_kv(it + kStages - 1, stage == 0 ? kStages - 1 : stage - 1, std::false_type{});

        // S = Q K^T (64 rows of this warpgroup x kBN keys).
        float s[kNT][4];
        wgmma_fence();
        issue_s(s, stage);
        wgmma_wait<0>();
        fence_regs(s);

        uint32_t pa[kPSteps][4];
        float alpha[2];
        softmax(s, it, alpha, mask_tag);
        rescale_o(alpha);
        pack_p(s, pa);

        // O += P V (O rescaled and P packed before the fence, in program order).
        fence_regs(o);
        fence_regs(pa);
        wgmma_fence();
        issue_pv(pa, stage);
        wgmma_wait<0>();
        fence_regs(o);
        stage = stage == kStages - 1 ? 0 : stage + 1;
    };

    int it = 0;
    for (; it < n_masked; ++it) step(it, std::true_type{});
    for (; it < n_tiles; ++it) step(it, std::false_type{});

#endif

    // Epilogue: normalise, round, stage through the Q region (a plain XOR-swizzled [kBM][HD] tile,
    // each warp only its own 16 rows), then 16-byte row-contiguous stores of the valid rows.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = quad_sum(row_sum[r]);
        inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    cp_async_wait<0>();  // only empty groups can be pending
    __syncthreads();     // every wgmma of both warpgroups (which read Q) has completed
    T* sO = reinterpret_cast<T*>(sbase);
    const int orow = warp * 16 + (lane >> 2);
#pragma unroll
    for (int d = 0; d < kDT; ++d) {
        *reinterpret_cast<uint32_t*>(sO + swz_out<HD>(orow, d) + 2 * (lane & 3)) =
            pack2<T>(o[d][0] * inv[0], o[d][1] * inv[0]);
        *reinterpret_cast<uint32_t*>(sO + swz_out<HD>(orow + 8, d) + 2 * (lane & 3)) =
            pack2<T>(o[d][2] * inv[1], o[d][3] * inv[1]);
    }
    __syncwarp();
    const int e_q_lo = (int)(gridDim.x - 1 - blockIdx.x) * kBM;
    const int e_beg = p.cu_seqlens[blockIdx.z];
    const int e_rows = p.cu_seqlens[blockIdx.z + 1] - e_beg - e_q_lo;
    T* og = static_cast<T*>(p.out) + ((int64_t)e_beg + e_q_lo) * p.o_row_stride + (int64_t)blockIdx.y * HD;
#pragma unroll
    for (int i = 0; i < 16 * kChunks / 32; ++i) {
        const int idx = lane + 32 * i;
        const int r = warp * 16 + idx / kChunks, c = idx % kChunks;
        if (r < e_rows)
            *reinterpret_cast<uint4*>(og + (int64_t)r * p.o_row_stride + c * 8) =
                *reinterpret_cast<const uint4*>(sO + swz_out<HD>(r, c));
    }
}

}  // namespace fh1_attn_fwd_sm90

#define FH1_ATTN_SM90_BODY(T, HD) fh1_attn_fwd_sm90::attn_fwd<T, HD>(p)
#else
// Not sm_90a: the symbols exist so that every image of the fatbin has them; the launcher never
// selects these kernels on other cards.
#define FH1_ATTN_SM90_BODY(T, HD) __trap()
#endif

extern "C" __global__ void __launch_bounds__(ATTN_FWD_SM90_THREADS, 1) attn_fwd_bf16_hd64_sm90(const AttnParams p) {
    FH1_ATTN_SM90_BODY(__nv_bfloat16, 64);
}
extern "C" __global__ void __launch_bounds__(ATTN_FWD_SM90_THREADS, 1) attn_fwd_bf16_hd128_sm90(const AttnParams p) {
    FH1_ATTN_SM90_BODY(__nv_bfloat16, 128);
}
extern "C" __global__ void __launch_bounds__(ATTN_FWD_SM90_THREADS, 1) attn_fwd_f16_hd64_sm90(const AttnParams p) {
    FH1_ATTN_SM90_BODY(__half, 64);
}
extern "C" __global__ void __launch_bounds__(ATTN_FWD_SM90_THREADS, 1) attn_fwd_f16_hd128_sm90(const AttnParams p) {
    FH1_ATTN_SM90_BODY(__half, 128);
}
#undef FH1_ATTN_SM90_BODY
