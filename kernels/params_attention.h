// Attention family: the RoPE + KV-append kernel, the causal prefill (flash) kernel and the
// split-KV decode kernels. Included by params.h.
//
// KV cache layout (one buffer for K, one for V, per layer): [slots, capacity, Hkv, hd], dense,
// in the activation dtype. Token t of slot s, kv head g starts at ((s * capacity + t) * Hkv + g) * hd,
// so one token's keys for every kv head are one contiguous row of Hkv*hd values (the append writes
// whole rows; a kv head's keys are hd-contiguous with a token stride of Hkv*hd).
//
// Batches are packed (varlen, no padding) and described by three int32 arrays that live on the
// device, so that a captured CUDA graph can replay with new values written into the same buffers:
//   cu_seqlens [batch + 1]: the new tokens of sequence b are packed rows cu_seqlens[b] .. cu_seqlens[b+1];
//   seq_start  [batch]    : tokens already in the cache for sequence b before these (the position of its
//                           first new token, i.e. the query offset of chunked prefill and decode);
//   slot_idx   [batch]    : the cache slot of sequence b (validated on the host: 0 <= slot < slots,
//                           seq_start + new tokens <= capacity, distinct slots).
// After the append, sequence b's keys are cache rows 0 .. seq_start[b] + n_new(b) of its slot, and new
// token i (0-based within the sequence) attends causally to rows 0 .. seq_start[b] + i.
#pragma once
#include <stdint.h>

// Prefill kernel launch contract (the Rust launcher reads these through bindgen):
//   kernels attn_fwd_{bf16,f16}_hd{64,128}(AttnParams), grid (ceil(max_new / ATTN_FWD_BLOCK_M), Hq, batch),
//   block ATTN_FWD_THREADS, dynamic shared memory ATTN_FWD_SMEM_HD64 / ATTN_FWD_SMEM_HD128 bytes
//   (the launcher raises the function's max dynamic shared memory to that).
#define ATTN_FWD_BLOCK_M 128
#define ATTN_FWD_THREADS 256
#define ATTN_FWD_SMEM_HD64 49152
#define ATTN_FWD_SMEM_HD128 98304

// Hopper prefill kernels (attention_prefill_sm90.cu, compute capability 9.0 only): the same contract,
//   kernels attn_fwd_{bf16,f16}_hd{64,128}_sm90(AttnParams), grid (ceil(max_new / ATTN_FWD_SM90_BLOCK_M),
//   Hq, batch), block ATTN_FWD_SM90_THREADS, dynamic shared memory ATTN_FWD_SM90_SMEM_HD64 / _HD128
//   bytes (Q tile + K/V stages of ATTN_FWD_SM90_BLOCK_N keys + 1024 bytes of alignment slack).
#define ATTN_FWD_SM90_BLOCK_M 128
#define ATTN_FWD_SM90_BLOCK_N 128
#define ATTN_FWD_SM90_THREADS 256
#define ATTN_FWD_SM90_SMEM_HD64 115712
#define ATTN_FWD_SM90_SMEM_HD128 230400

typedef struct AttnParams {
    const void* q;              // [tokens, Hq, hd]: packed row r at q + r * q_row_stride, head h at + h * hd
    const void* k_cache;        // [slots, capacity, Hkv, hd] (layout above)
    const void* v_cache;        // [slots, capacity, Hkv, hd]
    void* out;                  // [tokens, Hq, hd]: row r at out + r * o_row_stride
    const int32_t* cu_seqlens;  // [batch + 1]
    const int32_t* seq_start;   // [batch]
    const int32_t* slot_idx;    // [batch]
    float* partial_out;         // decode only: [batch, Hq, num_splits, hd] f32, one partial output per split
    float* partial_lse;         // decode only: [batch, Hq, num_splits] f32 natural-log sum-exp of each split
    int64_t batch;
    int64_t n_heads;            // Hq
    int64_t n_kv_heads;         // Hkv, Hq % Hkv == 0; query head h reads kv head h / (Hq / Hkv)
    int64_t head_dim;           // 64 or 128
    int64_t capacity;
    int64_t slots;
    int64_t q_row_stride;       // elements between packed rows of q (>= Hq * hd)
    int64_t o_row_stride;       // elements between packed rows of out (>= Hq * hd)
    int64_t max_new;            // upper bound of any cu_seqlens[b+1] - cu_seqlens[b] (the grid's x extent)
    int64_t num_splits;         // decode: KV splits per (sequence, kv head) (>= 1)
    float scale;                // softmax scale, 1 / sqrt(hd)
    float scale_log2;           // scale * log2(e), for exp2-based softmax
    uint32_t* decode_counters;  // fused decode only: [batch, Hkv * head chunks] arrival tickets, zero
                                // between launches (the last block of each group resets its own)
} AttnParams;

// Fused split-KV decode (attention_decode.cu, attn_decode_fused_<T>_hd<HD>_g<GQ>): each warp owns a
// ring of ATTN_DEC_STAGES stages of ATTN_DEC_STAGE_BYTES (K and V of 8 keys per lane group, 16 bytes
// per lane per row), so the launch takes ATTN_DEC_STAGES * ATTN_DEC_STAGE_BYTES bytes of dynamic
// shared memory per warp, 2 to ATTN_DEC_MAX_WARPS warps per block (the launcher picks the most the
// device's opt-in shared memory allows).
#define ATTN_DEC_STAGE_BYTES 8192
#define ATTN_DEC_STAGES 3
#define ATTN_DEC_MAX_WARPS 8

typedef struct KvAppendParams {
    void* q;                    // [tokens, Hq, hd], row stride q_row_stride: RoPE applied in place
    const void* k;              // [tokens, Hkv * hd], row stride k_row_stride: roped, scaled by k_scale, appended
    const void* v;              // [tokens, Hkv * hd], row stride v_row_stride: appended as is
    void* k_cache;              // [slots, capacity, Hkv, hd]
    void* v_cache;              // [slots, capacity, Hkv, hd]
    const float* inv_freq;      // [hd / 2] f32 RoPE inverse frequencies (cpu::rope_inv_freq)
    const int32_t* cu_seqlens;  // [batch + 1]
    const int32_t* seq_start;   // [batch]; new token i of sequence b has position seq_start[b] + i
    const int32_t* slot_idx;    // [batch]
    int64_t tokens;
    int64_t batch;
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t head_dim;           // even
    int64_t capacity;
    int64_t slots;
    int64_t q_row_stride;
    int64_t k_row_stride;
    int64_t v_row_stride;
    float k_scale;              // key multiplier (1 when it is folded into k_proj)
} KvAppendParams;
