//! Attention on the GPU: RoPE + KV-cache append, causal flash prefill, split-KV decode.
