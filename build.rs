//! With the `cuda` feature: compile every kernels/*.cu into one fatbin (sm_80, sm_86, sm_89, sm_90a
//! machine code plus compute_80 PTX for newer cards) and run bindgen on kernels/params.h. Without
//! the feature this does nothing, so the crate builds with no CUDA anywhere.
//!
//! One fatbin from many .cu files: nvcc links several translation units into one image only with
//! relocatable device code, which costs inlining and registers. Instead a generated unity file
//! #includes every kernels/*.cu and is compiled once; each .cu keeps its helpers in an anonymous
//! namespace and its kernels under unique `extern "C"` names, so they coexist.

#[cfg(feature = "cuda")]
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    build_cuda();
}

/// nvcc on the unity file, then bindgen on params.h.
#[cfg(feature = "cuda")]
fn build_cuda() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels = manifest.join("kernels");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", kernels.display());
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=FALCON_H1_NVCC_FLAGS");

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("cu" | "cuh" | "h")
            )
        })
        .collect();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let cu: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cu"))
        .collect();

    let nvcc = find_nvcc();
    let unity = out.join("all_kernels.cu");
    let body: String = cu
        .iter()
        .map(|p| format!("#include \"{}\"\n", p.display()))
        .collect();
    std::fs::write(&unity, body).expect("write the unity file");

    let fatbin = out.join("kernels.fatbin");
    let mut cmd = Command::new(&nvcc);
    cmd.arg("-fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        .arg("-lineinfo")
        .arg("-Xptxas=-v")
        .arg("-I")
        .arg(&kernels);
    for (arch, code) in [
        ("compute_80", "sm_80"),
        ("compute_86", "sm_86"),
        ("compute_89", "sm_89"),
        ("compute_90a", "sm_90a"),
        ("compute_80", "compute_80"),
    ] {
        cmd.arg(format!("-gencode=arch={arch},code={code}"));
    }
    if let Ok(extra) = env::var("FALCON_H1_NVCC_FLAGS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.arg("-o").arg(&fatbin).arg(&unity);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", nvcc.display()));
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    std::fs::write(out.join("ptxas.log"), &log).ok();
    if !output.status.success() {
        panic!(
            "nvcc failed compiling kernels/*.cu:\n{}\n{log}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    report_spills(&log);

    bindgen::Builder::default()
        .header(kernels.join("params.h").to_string_lossy())
        .allowlist_type(".*Params")
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen on kernels/params.h (needs libclang: scripts/install-cuda-toolchain.sh)")
        .write_to_file(out.join("params.rs"))
        .expect("write params.rs");
}

#[cfg(feature = "cuda")]
/// nvcc from `NVCC`, then `CUDA_HOME/bin`, then `PATH`; a clear failure naming all three.
fn find_nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        panic!("NVCC={} does not exist", p.display());
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the `cuda` feature needs nvcc, found none: set NVCC to its path, or CUDA_HOME to a CUDA \
         toolkit, or put nvcc on PATH. Without a toolkit: \
         eval \"$(bash scripts/install-cuda-toolchain.sh --env)\" installs nvcc 13.0 from pip wheels."
    );
}

#[cfg(feature = "cuda")]
/// ptxas -v prints, per kernel and target, "N bytes spill stores"; any spill is worth a warning.
fn report_spills(log: &str) {
    let mut function = String::new();
    for line in log.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + 26..];
            function = rest.split('\'').next().unwrap_or("").to_string();
            if let Some(j) = line.find("for '") {
                function = format!("{function} ({})", line[j + 5..].trim_end_matches("'"));
            }
        }
        if line.contains("spill stores") && !line.contains(" 0 bytes spill stores") {
            println!(
                "cargo:warning=register spills in {function}: {}",
                line.trim()
            );
        }
    }
}
