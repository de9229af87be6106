// Params of the gated_norm kernel family (see params.h for the conventions).
#pragma once
#include <stdint.h>

// Mamba-2 gated group RMSNorm (HF FalconH1RMSNormGated), per row of Ds channels split into G
// contiguous groups normalised apart, computed in f32:
//   norm_before_gate = 0: v = y * silu(z); out = w * round(v * rsqrt(mean_group(v^2) + eps))
//   norm_before_gate = 1: out = round(w * round(y * rsqrt(mean_group(y^2) + eps))) * silu(z)
// round() is to the input dtype, where HF casts (a no-op for f32); the output is rounded last.
// weight NULL: no norm, out = y * silu(z). z NULL: no gate.
// Kernels gated_norm_<dt>: grid (rows, G), one block per group of a row (up to 1024 threads).
typedef struct GatedNormParams {
    const void* y;       // [rows, Ds], row stride y_row_stride
    const void* z;       // [rows, Ds] gate or NULL, row stride z_row_stride
    const void* weight;  // [Ds] or NULL
    void* out;           // [rows, Ds], row stride out_row_stride
    int64_t rows;
    int64_t dim;         // Ds
    int64_t groups;      // G (Ds % G == 0)
    int64_t y_row_stride;
    int64_t z_row_stride;
    int64_t out_row_stride;
    float eps;
    int32_t norm_before_gate;
    int32_t vec;         // 1: y, z, weight, out (pointers, row strides) and Ds/G allow 16-byte
                         // accesses; 0: element by element
} GatedNormParams;
