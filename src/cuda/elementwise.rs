//! Small fused elementwise ops on the GPU: embedding gather, residual add, SwiGLU, row gather.
