//! The hybrid model written once over a [`Backend`], with the hybrid cache and generation.

mod backend;
mod batch;
mod cpu_backend;
mod generate;
mod hybrid;

pub use backend::{AttnShape, Backend, MambaParams, SsdShape, StateKind};
pub use batch::SeqBatch;
pub use cpu_backend::{CpuBackend, CpuBatch, CpuKvCache, CpuState};
pub use generate::{argmax, generate, sample, Generation, Sampling};
pub use hybrid::{ForwardOutput, HybridCache, HybridModel, LayerCache, Logits};
