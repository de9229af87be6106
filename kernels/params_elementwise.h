// Small fused elementwise kernels (embedding gather, residual add, SwiGLU, row gather). Included by
// params.h.
#pragma once
#include <stdint.h>
