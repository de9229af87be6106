//! Helpers shared by the integration tests.
#![allow(dead_code)]

#[cfg(feature = "cuda")]
pub mod gpu_check;

use falcon_h1_kernels::model::{CpuBackend, HybridModel};
use std::path::PathBuf;

/// tests/data, found at run time (never baked in with env!, so copied test binaries work).
pub fn data_dir() -> PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    PathBuf::from(root).join("tests/data")
}

/// Every bundled model folder (those with a reference.safetensors).
pub fn golden_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("tests/data exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.safetensors").exists() && p.join("config.json").exists())
        .collect();
    v.sort();
    v
}

/// Loads a bundled model on the CPU backend.
pub fn cpu_model(name: &str) -> HybridModel<CpuBackend> {
    let dir = data_dir().join(name);
    let (cfg, w) = falcon_h1_kernels::load_model_dir(&dir, false)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
    HybridModel::new(CpuBackend, cfg, &w).expect("model builds")
}
