//! The hybrid model written once over a [`Backend`], with the hybrid cache and generation.

mod backend;
mod batch;
mod cpu_backend;
#[cfg(feature = "cuda")]
mod cuda_backend;
#[cfg(feature = "cuda")]
mod cuda_graph;
mod generate;
mod hybrid;

pub use backend::{AttnShape, Backend, MambaParams, SsdShape, StateKind};
pub use batch::SeqBatch;
pub use cpu_backend::{CpuBackend, CpuBatch, CpuKvCache, CpuState};
#[cfg(feature = "cuda")]
pub use cuda_backend::{
    CudaBackend, CudaBatch, CudaKvCache, CudaState, CudaTensor, CudaWeight, ModelDtype,
};
#[cfg(feature = "cuda")]
pub use cuda_graph::DecodeGraph;
pub use generate::{
    argmax, generate, generate_with, sample, DecodeStep, Generation, Sampling, StepOutput,
};
pub use hybrid::{ForwardOutput, HybridCache, HybridModel, LayerCache, Logits};
