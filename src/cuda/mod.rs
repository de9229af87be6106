//! CUDA backend
