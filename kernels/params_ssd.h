// Params of the ssd kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>

// Mamba-2 SSD chunked prefill over a packed varlen batch, in four launches that share this struct:
//   ssd_chunk_cb_<dt>      per (chunk, group, 64x64 tile on or below the diagonal): C B^T -> cb
//                          (f32), computed once per group and read by each of its H/G heads;
//   ssd_chunk_state3_<dt>_n<N> per (chunk, head, 64 rows of P) over all N (ssd_chunk_state2_<dt>
//                          and ssd_chunk_state_<dt>: per 64x64 tile of [P, N]): the chunk's own state
//                          S_c = sum_t exp(cum_end - cum_t) dt_t x_t^T B_t -> chunk_states (in the
//                          input dtype), and cum_end (the chunk's total log decay) -> chunk_cum_end;
//   ssd_state_pass_<dt>    per (sequence, head, slice of P*N): S_in(c+1) = exp(cum_end(c)) S_in(c)
//                          + S_c carried in f32, from the slot's initial state; overwrites
//                          chunk_states[c] with S_in(c) and writes the final state to the slot;
//   ssd_chunk_scan_<dt>_p<PT> per (chunk x 64-row tile, head, PT columns of P):
//                          y = (cb o L)(dt x) + exp(cum) C S_in^T + D x.
// A chunk never straddles two sequences: the host splits every sequence into chunks of
// chunk_size tokens (the last may be shorter) and lists them in chunk_info.
typedef struct SsdParams {
    const void* x;        // [T, H, P] (T = total tokens), row stride x_row_stride
    const void* dt;       // [T, H] raw time step, row stride dt_row_stride
    const void* dt_bias;  // [H]
    const void* a_log;    // [H], A = -exp(a_log)
    const void* b;        // [T, G, N], row stride b_row_stride
    const void* c;        // [T, G, N], row stride c_row_stride
    const void* d;        // [H] skip (y += D x) or NULL
    void* y;              // [T, H, P], row stride y_row_stride
    void* state;          // f32 [slots, H, P, N]: initial state in (when has_initial_state), final out
    void* chunk_states;   // scratch [n_chunks, H, P, N] in the input dtype
    void* chunk_cum_end;  // f32 scratch [n_chunks, H]
    void* cb;             // f32 scratch [n_chunks, G, chunk_size, chunk_size]; only the tiles on
                          // or below the diagonal and inside the chunk are written and read
    const void* chunk_info;  // int32 [n_chunks, 2]: first token (row of x), length (1..chunk_size)
    const void* seq_chunks;  // int32 [batch + 1]: first chunk of each sequence, then n_chunks
    const void* slots;       // int32 [batch]: state slot of each sequence, or NULL for slot = index
    int64_t n_chunks;
    int64_t batch;
    int64_t heads;        // H
    int64_t head_dim;     // P (64 or 128)
    int64_t groups;       // G (H % G == 0; head h reads group h / (H / G))
    int64_t state_dim;    // N (64, 128 or 256)
    int64_t chunk_size;   // 64, 128 or 256
    int64_t x_row_stride;
    int64_t dt_row_stride;
    int64_t b_row_stride;
    int64_t c_row_stride;
    int64_t y_row_stride;
    int32_t has_initial_state;  // 0: every sequence starts from zeros (state is only written)
    int32_t vec_loads;    // 1: x, b, c (pointers and row strides) are 16-byte aligned, so tiles
                          // are read in 16-byte pieces; 0: element by element
    float dt_lo;          // dt = clamp(softplus(dt + dt_bias), dt_lo, dt_hi)
    float dt_hi;
} SsdParams;
