//! With the `cuda` feature: compile every kernels/*.cu into one fatbin (sm_80, sm_86, sm_89, sm_90a
//! machine code plus compute_80 PTX, which the driver JIT-compiles on newer cards) and run bindgen
//! on kernels/params.h. Without the feature this does nothing (bindgen is not even a dependency),
//! so the crate builds with no CUDA anywhere.
//!
//! One fatbin from many .cu files: nvcc links several translation units into one image only with
//! relocatable device code (-rdc + a device link), which costs cross-file inlining and registers
//! and adds a link step. Instead a generated unity file #includes every kernels/*.cu and is
//! compiled once; each .cu keeps its helpers in an anonymous namespace and its kernels under
//! unique `extern "C"` names, so they coexist, and the Rust side loads one module.
//!
//! Outputs in OUT_DIR: kernels.fatbin (embedded by src/cuda/mod.rs), params.rs (included by
//! src/cuda/params.rs), all_kernels.cu (the unity file), nvcc-command.txt, ptxas.log (the full
//! `-Xptxas -v` output) and ptxas-summary.txt (registers and spills per kernel and target).
//! A kernel that spills becomes a cargo warning.
//!
//! Environment: NVCC (path to nvcc), else CUDA_HOME/bin/nvcc, else nvcc on PATH;
//! FALCON_H1_NVCC_FLAGS: extra nvcc flags, split on whitespace (e.g. `-DFH1_DEBUG`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// `-gencode` pairs: machine code for every card we run on, plus PTX of the oldest for the rest.
    const GENCODE: [(&str, &str); 5] = [
        ("compute_80", "sm_80"),
        ("compute_86", "sm_86"),
        ("compute_89", "sm_89"),
        ("compute_90a", "sm_90a"),
        ("compute_80", "compute_80"),
    ];

    /// nvcc on the unity file, then bindgen on params.h.
    pub fn build() {
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let kernels = manifest.join("kernels");
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        // The directory itself, so that adding or removing a file reruns the build.
        println!("cargo:rerun-if-changed={}", kernels.display());
        println!("cargo:rerun-if-env-changed=NVCC");
        println!("cargo:rerun-if-env-changed=CUDA_HOME");
        println!("cargo:rerun-if-env-changed=FALCON_H1_NVCC_FLAGS");

        let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", kernels.display()))
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
        if cu.is_empty() {
            panic!("no kernels/*.cu to compile in {}", kernels.display());
        }

        let unity = out.join("all_kernels.cu");
        let body: String = cu
            .iter()
            .map(|p| format!("#include \"{}\"\n", p.display()))
            .collect();
        std::fs::write(&unity, body).expect("write the unity file");

        let nvcc = find_nvcc();
        let fatbin = out.join("kernels.fatbin");
        let mut cmd = Command::new(&nvcc);
        // No --use_fast_math: the kernels are held to parity with the f32 reference.
        // -lineinfo maps SASS back to source for profilers and costs nothing at run time.
        // --threads 0 compiles the five targets in parallel.
        // -compress-all: the images shrink about 6x (15.7 to 2.7 MB), which every binary embeds and
        // the GPU bundle carries; the driver decompresses them when the module loads.
        cmd.args(["-fatbin", "-O3", "-std=c++17", "-lineinfo", "-Xptxas=-v"])
            .args(["--threads", "0", "-Xfatbin=-compress-all"])
            .arg("-I")
            .arg(&kernels);
        for (arch, code) in GENCODE {
            cmd.arg(format!("-gencode=arch={arch},code={code}"));
        }
        if let Ok(extra) = env::var("FALCON_H1_NVCC_FLAGS") {
            cmd.args(extra.split_whitespace());
        }
        cmd.arg("-o").arg(&fatbin).arg(&unity);
        std::fs::write(out.join("nvcc-command.txt"), format!("{cmd:?}\n")).ok();
        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("failed to run {}: {e}", nvcc.display()));
        let log = String::from_utf8_lossy(&output.stderr).to_string();
        std::fs::write(out.join("ptxas.log"), &log).ok();
        if !output.status.success() {
            panic!(
                "nvcc ({}) failed compiling kernels/*.cu:\n{}\n{log}",
                nvcc.display(),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        let summary = ptxas_summary(&log);
        let mut text = String::new();
        for k in &summary {
            let _ = writeln!(
                text,
                "{} {}: {} registers, {} bytes stack, {} bytes spill stores, {} bytes spill loads",
                k.function, k.target, k.registers, k.stack, k.spill_stores, k.spill_loads
            );
            if k.spill_stores > 0 || k.spill_loads > 0 {
                println!(
                    "cargo:warning=register spills: {} for {}: {} registers, {} bytes spill stores, \
                     {} bytes spill loads",
                    k.function, k.target, k.registers, k.spill_stores, k.spill_loads
                );
            }
        }
        std::fs::write(out.join("ptxas-summary.txt"), text).ok();

        bindgen::Builder::default()
            .header(kernels.join("params.h").to_string_lossy())
            .clang_arg(format!("-I{}", kernels.display()))
            .allowlist_type(".*Params")
            .allowlist_var("ATTN_.*")
            .derive_default(true)
            .derive_debug(true)
            .derive_copy(true)
            .layout_tests(true)
            .generate()
            .unwrap_or_else(|e| {
                panic!(
                    "bindgen on kernels/params.h failed: {e}. It needs libclang: install \
                     libclang-dev, or run scripts/install-cuda-toolchain.sh"
                )
            })
            .write_to_file(out.join("params.rs"))
            .expect("write params.rs");
    }

    /// nvcc from `NVCC`, then `CUDA_HOME/bin`, then `PATH`; a clear failure naming all three.
    fn find_nvcc() -> PathBuf {
        if let Some(p) = env::var_os("NVCC") {
            let p = PathBuf::from(p);
            if p.is_file() {
                return p;
            }
            panic!(
                "NVCC={} is not a file: point NVCC at nvcc, or unset it to search CUDA_HOME and PATH",
                p.display()
            );
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
            "the `cuda` feature needs nvcc and found none: NVCC is unset, CUDA_HOME/bin/nvcc does \
             not exist (CUDA_HOME={:?}) and no nvcc is on PATH. Set NVCC to nvcc's path, or \
             CUDA_HOME to a CUDA toolkit, or put nvcc on PATH; without a toolkit, \
             `eval \"$(bash scripts/install-cuda-toolchain.sh --env)\"` installs nvcc 13.0 from pip \
             wheels and sets NVCC.",
            env::var_os("CUDA_HOME")
        );
    }

    /// One kernel compiled for one target, as ptxas -v reports it.
    #[derive(Default)]
    struct KernelInfo {
        function: String,
        target: String,
        registers: u32,
        stack: u32,
        spill_stores: u32,
        spill_loads: u32,
    }

    /// Parses ptxas -v: "Compiling entry function 'F' for 'sm_XX'", then "N bytes stack frame,
    /// N bytes spill stores, N bytes spill loads", then "Used N registers".
    fn ptxas_summary(log: &str) -> Vec<KernelInfo> {
        fn number_before(line: &str, what: &str) -> Option<u32> {
            let end = line.find(what)?;
            line[..end].split_whitespace().last()?.parse().ok()
        }
        let mut kernels: Vec<KernelInfo> = Vec::new();
        for line in log.lines() {
            if let Some(i) = line.find("Compiling entry function '") {
                let rest = &line[i + "Compiling entry function '".len()..];
                let mut parts = rest.split('\'');
                let function = parts.next().unwrap_or("").to_string();
                let target = parts.nth(1).unwrap_or("").to_string();
                kernels.push(KernelInfo {
                    function,
                    target,
                    ..Default::default()
                });
            } else if let Some(k) = kernels.last_mut() {
                if line.contains("spill stores") {
                    k.stack = number_before(line, "bytes stack frame").unwrap_or(0);
                    k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                    k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
                } else if line.contains("Used") && line.contains("registers") {
                    k.registers = number_before(line, "registers").unwrap_or(0);
                }
            }
        }
        kernels
    }
}
