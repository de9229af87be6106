// Params of the ssm_update kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>

// Mamba-2 one-token SSM state update (decode), per sequence b and head h (group g = h / (H/G)):
//   dt  = clamp(softplus(dt_raw[b,h] + dt_bias[h]), dt_lo, dt_hi),  dA = exp(dt * -exp(A_log[h]))
//   S[p,n] = S[p,n] * dA + dt * B[b,g,n] * x[b,h,p]            (in place)
//   y[b,h,p] = (sum_n S[p,n] * C[b,g,n] + D[h] * x[b,h,p]) * silu(z[b,h,p])
// in f32, the state stored in f32 or bf16 (the kernel name's second dtype).
// Kernels ssm_update_<input dt>_state_<state dt>: grid (ceil(P / rows_per_block), H, batch), block
// of 128 threads = 4 warps; a warp owns rows of P, its lanes split N, and y is a warp sum over N.
// x, dt, B, C, z and y are rows of wider matrices (column slices of the input projection), hence
// the row strides; within a row, head h channel p is column h*P + p and group g state n is g*N + n.
typedef struct SsmUpdateParams {
    void* state;          // [slots, H, P, N] f32 or bf16, updated in place
    const void* x;        // [batch, H*P], row stride x_row_stride
    const void* dt;       // [batch, H] raw, row stride dt_row_stride
    const void* dt_bias;  // [H]
    const void* a_log;    // [H], A = -exp(a_log)
    const void* b;        // [batch, G*N], row stride b_row_stride
    const void* c;        // [batch, G*N], row stride c_row_stride
    const void* d;        // [H] or NULL
    const void* z;        // [batch, H*P] gate or NULL, row stride z_row_stride
    const void* slot_idx; // int32 [batch] or NULL (slot = b); a slot outside [0, slots) marks
                          // padding: its state is not touched and its y row not written
    void* y;              // [batch, H*P], row stride y_row_stride
    int64_t batch;
    int64_t heads;        // H
    int64_t head_dim;     // P
    int64_t groups;       // G
    int64_t state_dim;    // N
    int64_t slots;
    int64_t x_row_stride;
    int64_t dt_row_stride;
    int64_t b_row_stride;
    int64_t c_row_stride;
    int64_t z_row_stride;
    int64_t y_row_stride;
    int64_t rows_per_block;  // rows of P per block: a multiple of 4 (one share per warp)
    float dt_lo;
    float dt_hi;
} SsmUpdateParams;
