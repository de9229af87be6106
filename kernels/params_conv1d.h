// Params of the conv1d kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>

// Causal depthwise conv1d (+ bias, + optional SiLU) over the Mamba-2 xBC channels:
//   out_t[c] = act(bias[c] + sum_{k<K} w[c,k] * x_{t-K+1+k}[c]), w[c,K-1] times the current token,
// the K-1 inputs before a sequence's first token coming from its conv state (zeros without one).
//
// Prefill, two launches sharing this struct:
//   conv1d_fwd_<dt>        grid (ceil(C/VEC/blockDim.x), ceil(tokens/tokens_per_block)): each thread
//                          owns VEC channels over tokens_per_block tokens, keeping the K-1 previous
//                          inputs in registers; reads the conv state, never writes it.
//   conv1d_fwd_state_<dt>  grid (ceil(C/blockDim.x), batch): one thread per (sequence, channel)
//                          writes the sequence's final state (last K-1 inputs of state ++ x).
// The split removes the in-place race of one kernel doing both (a block still reading a slot's
// initial state while the block holding that sequence's tail overwrites it): on one stream the
// second launch starts after every read of the first. The second kernel reads the old state only
// for sequences shorter than K-1, and each thread reads its whole channel row before writing it.
//
// Decode (one token per sequence), one launch:
//   conv1d_update_<dt>     grid (ceil(C/blockDim.x), batch): state row shifted left by one, x
//                          appended, in place; each thread owns one (sequence, channel) row.
//
// Sequences: prefill packs `batch` sequences along the token axis, sequence s being tokens
// [cu_seqlens[s], cu_seqlens[s+1]) (int32, non-decreasing, from 0 to `tokens`; NULL = one sequence
// of all the tokens). Decode has one token per row of x. The state of sequence s is slot
// slot_idx[s] (int32; NULL = slot s); a slot outside [0, slots) means "no state": the sequence
// starts from zeros and nothing is written back (padding entries use -1).
typedef struct Conv1dParams {
    const void* x;           // [tokens, C] (decode: [batch, C]), row stride x_row_stride
    const void* weight;      // [C, K]
    const void* bias;        // [C] or NULL
    void* out;               // [tokens, C] (decode: [batch, C]), row stride out_row_stride
    void* conv_state;        // [slots, C, K-1] in the input dtype (oldest first), or NULL
    const void* cu_seqlens;  // int32 [batch + 1] or NULL (prefill only)
    const void* slot_idx;    // int32 [batch] or NULL
    int64_t batch;
    int64_t tokens;          // rows of x (decode: = batch)
    int64_t channels;        // C
    int64_t width;           // K, 2..=4
    int64_t slots;           // first dimension of conv_state (0 without one)
    int64_t x_row_stride;
    int64_t out_row_stride;
    int64_t tokens_per_block;  // conv1d_fwd: tokens each thread walks through
    int32_t silu;            // 1: SiLU on the output
    int32_t vec;             // conv1d_fwd: 1 when x, out (pointers, row strides) and C allow
                             // 16-byte accesses; 0: one channel per thread
} Conv1dParams;
