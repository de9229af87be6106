//! `falcon-h1`: run, generate with and check parity of Falcon-H1 models.
//!
//! - `falcon-h1` / `falcon-h1 run`: the bundled tiny model: prefill + greedy decode of its golden
//!   prompts, the tokens, the time and the largest error against the golden outputs.
//! - `falcon-h1 generate --model DIR --prompt TEXT` (or `--tokens 1,2,3`).
//! - `falcon-h1 parity --model DIR [--reference FILE] [--tol 1e-4]`: per-layer table; exits 1 when
//!   an error passes the tolerance or a greedy token differs.
//! - `falcon-h1 bench --preset 7b [--batch 1 --prompt-len 8192 --decode-tokens 32]`: random
//!   weights of a preset's shape, prefill tokens/s and decode ms/token.
//!
//! Built with the `cuda` feature, `generate`, `parity` and `bench` run on the GPU when one is
//! present (`--cpu` forces the CPU; `--dtype bf16|f16|f32` picks the GPU dtype, bf16 by default).

use clap::{Args, Parser, Subcommand};
use falcon_h1_kernels::config::{Config, Preset};
use falcon_h1_kernels::model::{
    argmax, generate, Backend, CpuBackend, HybridModel, Logits, Sampling,
};
use falcon_h1_kernels::parity::{compare_models, run_parity, Reference};
use falcon_h1_kernels::weights::FoldedWeights;
use falcon_h1_kernels::{load_model_dir, Error, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "falcon-h1",
    version,
    about = "Falcon-H1 hybrid models: CPU reference and CUDA kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Prefill + greedy decode of the bundled tiny model's golden prompts (the default).
    Run {
        /// Model folder (config.json, model.safetensors, reference.safetensors).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Generate text (or token ids) from a prompt.
    Generate(GenerateArgs),
    /// Compare against golden outputs of HF transformers, layer by layer (on the GPU: GPU vs
    /// golden, CPU vs golden and GPU vs CPU).
    Parity {
        /// Model folder.
        #[arg(long)]
        model: PathBuf,
        /// Reference file (default: MODEL/reference.safetensors).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Largest relative L2 error allowed for any row (default: 1e-4 in f32, 2e-2 in bf16/f16).
        #[arg(long)]
        tol: Option<f64>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Time prefill and decode with random weights of a preset's shape.
    Bench(BenchArgs),
}

/// Where a command runs.
#[derive(Args, Clone)]
struct DeviceArgs {
    /// Run on the CPU (f32 reference) even when a GPU is present.
    #[arg(long)]
    cpu: bool,
    /// GPU dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Run each layer's attention and Mamba branches one after the other on one stream
    /// (default: the attention branch on a second stream, concurrently).
    #[arg(long)]
    one_stream: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Model shape: 0.5b, 1.5b, 1.5b-deep, 3b, 7b, 34b.
    #[arg(long)]
    preset: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 8192)]
    prompt_len: usize,
    /// Decode steps after the prefill (0: prefill only).
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Prefill in chunks of this many tokens per sequence (0: one forward), each chunk attending to
    /// the cache; what makes very long prompts fit.
    #[arg(long, default_value_t = 16384)]
    chunk: usize,
    /// Decode with plain launches instead of a replayed CUDA graph.
    #[arg(long)]
    no_graph: bool,
    /// Timed prefills (each into a fresh cache); the median is reported. Default: 3, or 1 for
    /// prompts of 65536 tokens or more.
    #[arg(long)]
    reps: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct GenerateArgs {
    /// Model folder (config.json, model.safetensors or its index, tokenizer.json for --prompt).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (needs MODEL/tokenizer.json).
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// Prompt token ids, comma separated, when there is no tokenizer.
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Most new tokens.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

/// The backend a command runs on.
enum Device {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<falcon_h1_kernels::cuda::Gpu>, GpuDtype, bool),
}

#[cfg(feature = "cuda")]
#[derive(Clone, Copy)]
enum GpuDtype {
    Bf16,
    F16,
    F32,
}

/// The GPU when built with `cuda`, one is present and `--cpu` is not given; the CPU otherwise.
fn pick_device(d: &DeviceArgs) -> Result<Device> {
    if !["bf16", "f16", "f32"].contains(&d.dtype.as_str()) {
        return Err(Error::invalid(format!(
            "--dtype must be bf16, f16 or f32, got `{}`",
            d.dtype
        )));
    }
    if d.cpu {
        return Ok(Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    {
        match falcon_h1_kernels::cuda::Gpu::new(d.device) {
            Ok(gpu) => {
                let dt = match d.dtype.as_str() {
                    "f16" => GpuDtype::F16,
                    "f32" => GpuDtype::F32,
                    _ => GpuDtype::Bf16,
                };
                return Ok(Device::Cuda(std::sync::Arc::new(gpu), dt, !d.one_stream));
            }
            Err(e) => eprintln!("no GPU ({e}); running on the CPU"),
        }
    }
    Ok(Device::Cpu)
}

/// Calls `$f(backend, $args...)` with the backend `$dev` names, monomorphised per dtype.
macro_rules! on_device {
    ($dev:expr, $f:ident ( $($arg:expr),* )) => {
        match $dev {
            Device::Cpu => $f(CpuBackend, $($arg),*),
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu, GpuDtype::Bf16, two) => {
                let be = falcon_h1_kernels::model::CudaBackend::<half::bf16>::new(gpu);
                be.set_concurrent_branches(two);
                $f(be, $($arg),*)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu, GpuDtype::F16, two) => {
                let be = falcon_h1_kernels::model::CudaBackend::<half::f16>::new(gpu);
                be.set_concurrent_branches(two);
                $f(be, $($arg),*)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu, GpuDtype::F32, two) => {
                let be = falcon_h1_kernels::model::CudaBackend::<f32>::new(gpu);
                be.set_concurrent_branches(two);
                $f(be, $($arg),*)
            }
        }
    };
}

fn bundled_model() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR; a copied binary falls back to the build-time path,
    // then to the current directory.
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let p = root.join("tests/data/tiny");
    if p.exists() {
        p
    } else {
        PathBuf::from("tests/data/tiny")
    }
}

fn load_cpu(dir: &Path) -> Result<HybridModel<CpuBackend>> {
    let (cfg, weights) = load_model_dir(dir, true)?;
    HybridModel::new(CpuBackend, cfg, &weights)
}

/// The tolerance of a parity run: given, or by dtype (the bars).
/// f32: 1e-4; bf16/f16: 2e-2, or HF's own bf16 error on this model where larger
/// ([`falcon_h1_kernels::parity::bf16_tolerance`]).
fn default_tol(be_name: &str, model: &Path) -> f64 {
    if be_name.starts_with("cpu") || be_name.contains("f32") {
        1e-4
    } else {
        falcon_h1_kernels::parity::bf16_tolerance(model)
    }
}

fn cmd_run(model: Option<PathBuf>) -> Result<bool> {
    let dir = model.unwrap_or_else(bundled_model);
    let t0 = Instant::now();
    let m = load_cpu(&dir)?;
    let load = t0.elapsed().as_secs_f64();
    let r = Reference::load(&dir.join("reference.safetensors"))?;
    let c = m.config();
    println!(
        "model {}: {} layers, d {}, attention {}/{}x{}, mamba H {} P {} N {} G {}, vocab {} (loaded in {:.1} ms)",
        dir.display(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.mamba_n_heads,
        c.mamba_d_head,
        c.mamba_d_state,
        c.mamba_n_groups,
        c.vocab_size,
        load * 1e3
    );
    let steps = r.decode_ids.first().map_or(8, |d| d.len());
    let g = generate(&m, &r.input_ids, steps, &Sampling::greedy(), &[], false)?;
    let ntok: usize = r.input_ids.iter().map(|p| p.len()).sum();
    println!(
        "prefill: {} prompts, {ntok} tokens in {:.2} ms; decode: {steps} steps in {:.2} ms ({:.3} ms/step)",
        r.input_ids.len(),
        g.prefill_secs * 1e3,
        g.decode_secs * 1e3,
        g.decode_secs * 1e3 / steps.max(1) as f64
    );
    for (i, t) in g.tokens.iter().enumerate() {
        println!("seq {i}: {t:?}");
    }
    let report = run_parity(&m, &r)?;
    let tol = 1e-4;
    println!(
        "max relative error against the HF golden: {:.3e} over {} comparisons; greedy tokens {}",
        report.worst(),
        report.rows.len(),
        if report.tokens_match() {
            "identical"
        } else {
            "DIFFER"
        }
    );
    Ok(report.passes(tol))
}

fn cmd_generate(a: GenerateArgs) -> Result<bool> {
    let dev = pick_device(&a.device)?;
    let (cfg, weights) = load_model_dir(&a.model, true)?;
    on_device!(dev, generate_on(cfg, &weights, &a))
}

/// [`generate`], with the decode steps replayed from a CUDA graph when the model is on the GPU.
fn generate_any<B: Backend + 'static>(
    m: &HybridModel<B>,
    prompts: &[Vec<u32>],
    max_new: usize,
    sampling: &Sampling,
    eos: &[u32],
) -> Result<falcon_h1_kernels::model::Generation> {
    #[cfg(feature = "cuda")]
    {
        use falcon_h1_kernels::model::CudaBackend;
        use std::any::Any;
        let any = m as &dyn Any;
        if let Some(g) = any.downcast_ref::<HybridModel<CudaBackend<half::bf16>>>() {
            return g.generate_graphed(prompts, max_new, sampling, eos, false);
        }
        if let Some(g) = any.downcast_ref::<HybridModel<CudaBackend<half::f16>>>() {
            return g.generate_graphed(prompts, max_new, sampling, eos, false);
        }
        if let Some(g) = any.downcast_ref::<HybridModel<CudaBackend<f32>>>() {
            return g.generate_graphed(prompts, max_new, sampling, eos, false);
        }
    }
    generate(m, prompts, max_new, sampling, eos, false)
}

fn generate_on<B: Backend + 'static>(
    be: B,
    cfg: Config,
    weights: &FoldedWeights,
    a: &GenerateArgs,
) -> Result<bool> {
    let m = HybridModel::new(be, cfg, weights)?;
    let tokenizer = if a.prompt.is_some() {
        let path = a.model.join("tokenizer.json");
        Some(tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            Error::Tokenizer(format!(
                "{}: {e} (use --tokens 1,2,3 without a tokenizer)",
                path.display()
            ))
        })?)
    } else {
        None
    };
    let prompt: Vec<u32> = match (&a.prompt, &a.tokens, &tokenizer) {
        (Some(text), _, Some(tk)) => tk
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec(),
        (None, Some(ids), _) => ids.clone(),
        _ => return Err(Error::invalid("give --prompt TEXT or --tokens 1,2,3")),
    };
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    let eos = m.config().eos_token_ids.clone();
    let g = generate_any(
        &m,
        std::slice::from_ref(&prompt),
        a.max_new_tokens,
        &sampling,
        &eos,
    )?;
    let new = &g.tokens[0];
    match &tokenizer {
        Some(tk) => {
            let text = tk
                .decode(new, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            println!("{}{}", a.prompt.as_deref().unwrap_or(""), text);
        }
        None => println!("{new:?}"),
    }
    eprintln!(
        "{}: {} prompt tokens, {} new: prefill {:.2} ms, decode {:.3} ms/token",
        m.backend().name(),
        prompt.len(),
        new.len(),
        g.prefill_secs * 1e3,
        g.decode_secs * 1e3 / new.len().max(1) as f64
    );
    Ok(true)
}

fn cmd_parity(
    model: PathBuf,
    reference: Option<PathBuf>,
    tol: Option<f64>,
    device: DeviceArgs,
) -> Result<bool> {
    let dev = pick_device(&device)?;
    let (cfg, weights) = load_model_dir(&model, true)?;
    let rpath = reference.unwrap_or_else(|| model.join("reference.safetensors"));
    let r = Reference::load(&rpath)?;
    on_device!(dev, parity_on(cfg, &weights, &r, &model, &rpath, tol))
}

fn parity_on<B: Backend>(
    be: B,
    cfg: Config,
    weights: &FoldedWeights,
    r: &Reference,
    model: &Path,
    rpath: &Path,
    tol: Option<f64>,
) -> Result<bool> {
    let name = be.name();
    let tol = tol.unwrap_or_else(|| default_tol(&name, model));
    let m = HybridModel::new(be, cfg.clone(), weights)?;
    let report = run_parity(&m, r)?;
    println!(
        "parity of {} ({name}) against {}",
        model.display(),
        rpath.display()
    );
    print!("{}", report.table(tol));
    if !name.starts_with("cpu") {
        // The same prompts on the CPU reference: its error against the golden, and ours against it.
        let cpu = HybridModel::new(CpuBackend, cfg, weights)?;
        let cpu_report = run_parity(&cpu, r)?;
        let prompts: Vec<&[u32]> = r.input_ids.iter().map(|p| p.as_slice()).collect();
        let vs_cpu = compare_models(&m, &cpu, &prompts)?;
        println!(
            "{:<28} {:>14} {:>14} {:>14}",
            "compared", "gpu vs golden", "cpu vs golden", "gpu vs cpu"
        );
        for row in &report.rows {
            let c = cpu_report.rows.iter().find(|x| x.name == row.name);
            let v = vs_cpu.iter().find(|x| x.name == row.name);
            let fmt = |x: Option<f64>| x.map_or("-".to_string(), |e| format!("{e:.3e}"));
            println!(
                "{:<28} {:>14} {:>14} {:>14}",
                row.name,
                format!("{:.3e}", row.rel_err),
                fmt(c.map(|x| x.rel_err)),
                fmt(v.map(|x| x.rel_err))
            );
        }
    }
    let ok = report.passes(tol);
    println!(
        "{}: worst relative error {:.3e} (tolerance {tol:.2e}), greedy tokens {}",
        if ok { "PASS" } else { "FAIL" },
        report.worst(),
        if report.tokens_match() {
            "identical"
        } else {
            "differ"
        }
    );
    Ok(ok)
}

fn cmd_bench(a: BenchArgs) -> Result<bool> {
    let preset: Preset = a.preset.parse()?;
    if a.batch == 0 || a.prompt_len == 0 {
        return Err(Error::invalid(
            "bench: --batch and --prompt-len must be at least 1",
        ));
    }
    let dev = pick_device(&a.device)?;
    on_device!(dev, bench_on(Config::preset(preset), &a))
}

fn bench_on<B: Backend + 'static>(be: B, cfg: Config, a: &BenchArgs) -> Result<bool> {
    let name = be.name();
    let t0 = Instant::now();
    let m = HybridModel::random(be, cfg, 1)?;
    let c = m.config();
    println!(
        "{} on {name}: {} layers, d {}, random weights made in {:.1} s",
        a.preset,
        c.num_hidden_layers,
        c.hidden_size,
        t0.elapsed().as_secs_f64()
    );
    let vocab = c.vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..a.batch)
        .map(|b| {
            (0..a.prompt_len)
                .map(|i| ((i as u64 * 2_654_435_761 + b as u64 * 97) % vocab as u64) as u32)
                .collect()
        })
        .collect();
    let slots: Vec<usize> = (0..a.batch).collect();

    // Warm-up at the timed shapes (kernels loaded, every GEMM shape of a chunk and of a decode
    // step tuned and cached), on a cache that is then dropped: one chunk's worth of each prompt,
    // then one decode step.
    let chunk = if a.chunk == 0 { a.prompt_len } else { a.chunk };
    {
        let warm_len = chunk.min(a.prompt_len).max(1);
        let mut warm = m.new_cache(a.batch, warm_len + 2)?;
        let short: Vec<&[u32]> = prompts
            .iter()
            .map(|p| &p[..p.len().min(warm_len)])
            .collect();
        m.forward(&short, &slots, &mut warm, Logits::Last, false)?;
        let one: Vec<[u32; 1]> = (0..a.batch).map(|_| [1]).collect();
        let one: Vec<&[u32]> = one.iter().map(|t| t.as_slice()).collect();
        m.forward(&one, &slots, &mut warm, Logits::Last, false)?;
    }

    let reps = a
        .reps
        .unwrap_or(if a.prompt_len >= 65536 { 1 } else { 3 })
        .max(1);
    let mut times = Vec::with_capacity(reps);
    let mut logits = None;
    let mut cache = None;
    for _ in 0..reps {
        // The previous repetition's cache is freed before the next one is made.
        cache = None;
        let c = cache.insert(m.new_cache(a.batch, a.prompt_len + a.decode_tokens.max(1))?);
        let t1 = Instant::now();
        let mut start = 0;
        while start < a.prompt_len {
            let end = (start + chunk).min(a.prompt_len);
            let part: Vec<&[u32]> = prompts.iter().map(|p| &p[start..end]).collect();
            let mode = if end == a.prompt_len {
                Logits::Last
            } else {
                Logits::None
            };
            logits = m.forward(&part, &slots, c, mode, false)?.logits;
            start = end;
        }
        times.push(t1.elapsed().as_secs_f64());
    }
    let mut cache = cache.expect("at least one repetition");
    times.sort_by(f64::total_cmp);
    let prefill = times[times.len() / 2];
    let total = a.batch * a.prompt_len;
    let chunks = a.prompt_len.div_ceil(chunk);
    println!(
        "prefill: {} x {} tokens ({chunks} chunk(s) of {chunk}) in {:.1} ms (median of {reps}): {:.0} tokens/s",
        a.batch,
        a.prompt_len,
        prefill * 1e3,
        total as f64 / prefill
    );
    let bench = |what: &str, shape: String, ms: f64| {
        println!("BENCH {{\"name\":\"{what}\",\"shape\":\"{shape}\",\"ms\":{ms:.4},\"gbps\":null,\"tflops\":null}}");
    };
    bench(
        "model_prefill",
        format!(
            "{} b{} L{} chunk{chunk} {name}",
            a.preset, a.batch, a.prompt_len
        ),
        prefill * 1e3,
    );
    let logits = logits.ok_or_else(|| Error::invalid("prefill returned no logits"))?;
    let v = vocab as usize;
    let mut next: Vec<u32> = (0..a.batch)
        .map(|b| argmax(&logits.data[b * v..(b + 1) * v]))
        .collect();
    if a.decode_tokens > 0 {
        let (ms, how) = decode_steps(
            &m,
            &mut cache,
            &slots,
            &mut next,
            a.decode_tokens,
            !a.no_graph,
        )?;
        println!(
            "decode: batch {}, {} steps after {} cached tokens ({how}): {ms:.3} ms/step, {:.0} tokens/s",
            a.batch,
            a.decode_tokens,
            a.prompt_len,
            a.batch as f64 * 1e3 / ms
        );
        bench(
            "model_decode",
            format!(
                "{} b{} after L{} {how} {name}",
                a.preset, a.batch, a.prompt_len
            ),
            ms,
        );
    }
    if let Some(peak) = m.backend().peak_memory() {
        println!(
            "peak device memory: {:.2} GiB",
            peak as f64 / (1u64 << 30) as f64
        );
    }
    Ok(true)
}

/// Runs `steps` greedy decode steps; returns the mean ms per step (the first step, which captures
/// the graph, is not counted when there are more) and how they ran.
fn decode_steps<B: Backend + 'static>(
    m: &HybridModel<B>,
    cache: &mut falcon_h1_kernels::model::HybridCache<B>,
    slots: &[usize],
    next: &mut [u32],
    steps: usize,
    graph: bool,
) -> Result<(f64, &'static str)> {
    let v = m.config().vocab_size;
    #[cfg(feature = "cuda")]
    if graph {
        use std::any::Any;
        macro_rules! try_graph {
            ($t:ty) => {
                if let Some(mc) = (m as &dyn Any)
                    .downcast_ref::<HybridModel<falcon_h1_kernels::model::CudaBackend<$t>>>()
                {
                    let cc = (cache as &mut dyn Any)
                        .downcast_mut::<falcon_h1_kernels::model::HybridCache<
                            falcon_h1_kernels::model::CudaBackend<$t>,
                        >>()
                        .expect("the cache matches the model");
                    let (l, mut g) = mc.capture_decode(next, slots, cc)?;
                    for (b, t) in next.iter_mut().enumerate() {
                        *t = argmax(&l.data[b * v..(b + 1) * v]);
                    }
                    let t0 = Instant::now();
                    for _ in 1..steps {
                        // The argmax runs in the graph: one int per sequence comes back.
                        let ids = mc.replay_decode_greedy(&mut g, next, cc)?;
                        next.copy_from_slice(&ids);
                    }
                    let n = steps.saturating_sub(1).max(1);
                    return Ok((t0.elapsed().as_secs_f64() * 1e3 / n as f64, "CUDA graph"));
                }
            };
        }
        try_graph!(half::bf16);
        try_graph!(half::f16);
        try_graph!(f32);
    }
    let _ = graph;
    let t0 = Instant::now();
    for _ in 0..steps {
        let lists: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let lists: Vec<&[u32]> = lists.iter().map(|t| t.as_slice()).collect();
        let l = m
            .forward(&lists, slots, cache, Logits::Last, false)?
            .logits
            .expect("logits asked");
        for (b, t) in next.iter_mut().enumerate() {
            *t = argmax(&l.data[b * v..(b + 1) * v]);
        }
    }
    Ok((
        t0.elapsed().as_secs_f64() * 1e3 / steps as f64,
        "plain launches",
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run { model: None }) {
        Command::Run { model } => cmd_run(model),
        Command::Generate(a) => cmd_generate(a),
        Command::Parity {
            model,
            reference,
            tol,
            device,
        } => cmd_parity(model, reference, tol, device),
        Command::Bench(a) => cmd_bench(a),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
