//! Every GPU test, in one binary (each test binary embeds the fatbin and the crate, and the GPU
//! bundle must fit a 64 MiB carry): each kernel family against its CPU reference, and the whole
//! model on the GPU. Built only with `--features cuda`; where there is no GPU or driver every
//! test fails, saying so. `cargo test --release --features cuda --test gpu [filter]`.

#[path = "../common/mod.rs"]
mod common;

mod cuda_attention;
mod cuda_conv1d;
mod cuda_elementwise;
mod cuda_gated_norm;
mod cuda_gemm;
mod cuda_model;
mod cuda_rmsnorm;
mod cuda_ssd;
mod cuda_ssm_update;
