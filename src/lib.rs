//! Falcon-H1 kernels: hand-written CUDA kernels (feature `cuda`) for the Falcon-H1 hybrid
//! language models, a CPU f32 reference of every op, and the hybrid model written once over
//! both backends.
//!
//! - [`config`]: `config.json`, validation and the released shapes as presets.
//! - [`weights`]: safetensors checkpoints (single or sharded, memory-mapped) and multiplier folding.
//! - [`cpu`]: the f32 reference ops.
//! - [`model`]: the backend trait, the hybrid model, its cache and generation.
//! - [`parity`]: comparison against golden outputs of HF transformers.
//! - `cuda` (feature `cuda`): the embedded fatbin, module cache and safe launchers.

pub mod config;
pub mod cpu;
pub mod error;
pub mod model;
pub mod parity;
pub mod tensor;
pub mod weights;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use error::{Error, Result};

use config::Config;
use std::path::Path;
use weights::{Checkpoint, FoldedWeights, ModelWeights};

/// Loads a model folder (`config.json` + safetensors) and folds its multipliers: what every
/// backend's model is built from.
pub fn load_model_dir(dir: &Path, progress: bool) -> Result<(Config, FoldedWeights)> {
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    let weights = ModelWeights::load(&ckpt, &cfg, progress)?.fold_multipliers(&cfg);
    Ok((cfg, weights))
}
