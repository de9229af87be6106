//! `falcon-h1`: run, generate with and check parity of Falcon-H1 models.
//!
//! - `falcon-h1` / `falcon-h1 run`: the bundled tiny model: prefill + greedy decode of its golden
//!   prompts, the tokens, the time and the largest error against the golden outputs.
//! - `falcon-h1 generate --model DIR --prompt TEXT` (or `--tokens 1,2,3`).
//! - `falcon-h1 parity --model DIR [--reference FILE] [--tol 1e-4]`: per-layer table; exits 1 when
//!   an error passes the tolerance or a greedy token differs.

use clap::{Args, Parser, Subcommand};
use falcon_h1_kernels::model::{generate, CpuBackend, HybridModel, Sampling};
use falcon_h1_kernels::parity::{run_parity, Reference};
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
    /// Compare against golden outputs of HF transformers, layer by layer.
    Parity {
        /// Model folder.
        #[arg(long)]
        model: PathBuf,
        /// Reference file (default: MODEL/reference.safetensors).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Largest relative L2 error allowed for any row.
        #[arg(long, default_value_t = 1e-4)]
        tol: f64,
    },
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
    let m = load_cpu(&a.model)?;
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
    let g = generate(
        &m,
        std::slice::from_ref(&prompt),
        a.max_new_tokens,
        &sampling,
        &eos,
        false,
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
        "{} prompt tokens, {} new: prefill {:.2} ms, decode {:.3} ms/token",
        prompt.len(),
        new.len(),
        g.prefill_secs * 1e3,
        g.decode_secs * 1e3 / new.len().max(1) as f64
    );
    Ok(true)
}

fn cmd_parity(model: PathBuf, reference: Option<PathBuf>, tol: f64) -> Result<bool> {
    let m = load_cpu(&model)?;
    let rpath = reference.unwrap_or_else(|| model.join("reference.safetensors"));
    let r = Reference::load(&rpath)?;
    let report = run_parity(&m, &r)?;
    println!(
        "parity of {} (cpu, f32) against {}",
        model.display(),
        rpath.display()
    );
    print!("{}", report.table(tol));
    let ok = report.passes(tol);
    println!(
        "{}: worst relative error {:.3e} (tolerance {tol:.1e}), greedy tokens {}",
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run { model: None }) {
        Command::Run { model } => cmd_run(model),
        Command::Generate(a) => cmd_generate(a),
        Command::Parity {
            model,
            reference,
            tol,
        } => cmd_parity(model, reference, tol),
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
