// Parameter structs shared by the CUDA kernels and Rust (bindgen generates the Rust side from this
// file, so the two cannot drift). One struct per kernel family; every kernel takes its struct by
// value as its only argument.
//
// Conventions:
//   - pointers are device pointers in the kernel's element type (void* here: one struct serves every
//     dtype); an optional pointer is NULL when absent;
//   - strides are in elements, as int64_t, outermost first;
//   - sizes are int64_t too, so that no product overflows on long sequences.
#pragma once
#include <stdint.h>

// The Mamba-2 families keep their struct in a header of their own, included here so that this file
// stays the one entry point for the kernels and for bindgen.
#include "params_attention.h"
#include "params_conv1d.h"
#include "params_elementwise.h"
#include "params_gated_norm.h"
#include "params_ssd.h"
#include "params_ssm_update.h"

// RMSNorm over rows, with an optional fused residual add:
//   with residual: residual[r] += x[r] (written back), out[r] = rmsnorm(residual[r]) * weight
//   without:       out[r] = rmsnorm(x[r]) * weight
// rmsnorm(v) = v * rsqrt(mean(v^2) + eps), accumulated in f32; as HF does, the normalised value is
// rounded to the input dtype before the weight multiplies it.
typedef struct RmsNormParams {
    const void* x;       // [rows, cols], row stride x_row_stride
    const void* weight;  // [cols]
    void* residual;      // [rows, cols] or NULL, row stride residual_row_stride, updated in place
    void* out;           // [rows, cols], row stride out_row_stride
    int64_t rows;
    int64_t cols;
    int64_t x_row_stride;
    int64_t residual_row_stride;
    int64_t out_row_stride;
    float eps;
} RmsNormParams;

// Fills a buffer with values uniform in [lo, hi) from a counter-based hash (splitmix64 of
// seed + index), so that weights for benchmarks of big presets are made on the device, in parallel,
// the same on every run.
typedef struct FillParams {
    void* out;       // [n]
    int64_t n;
    float lo;
    float hi;
    uint64_t seed;
} FillParams;
