// Small fused elementwise kernels (embedding gather, residual add, SwiGLU, row gather, strided copy).
// Included by params.h. One struct serves the whole family (kernels/elementwise.cu); each kernel
// documents which fields it reads. Matrices are [rows, cols] row-major with a row stride in
// elements; `idx` is an int32 device array.
#pragma once
#include <stdint.h>

typedef struct ElementwiseParams {
    void* out;               // [rows, cols], row stride out_row_stride (add: x, updated in place)
    const void* x;           // first input, row stride x_row_stride: embedding's table [vocab, cols],
                             // add's x (== out), swiglu's gate, gather's / copy's source
    const void* y;           // second input, row stride y_row_stride: add's y, swiglu's up; else NULL
    const int32_t* idx;      // [rows]: embedding ids, gather row indices; else NULL
    int64_t rows;            // rows of out
    int64_t cols;            // columns of every matrix
    int64_t out_row_stride;
    int64_t x_row_stride;
    int64_t y_row_stride;
    int64_t vocab;           // rows of x that idx may address (embedding, gather): others write zeros
} ElementwiseParams;
