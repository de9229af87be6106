//! Every GPU bench, in one binary (each binary embeds the fatbin and the crate, and the GPU bundle
//! must fit a 64 MiB carry). `cargo bench --features cuda --bench gpu [-- name-filter]`: runs the
//! benches whose name contains the filter (all without one). Each prints its figures next to the
//! PERF.md anchors and one `BENCH {json}` line per measurement.

mod cuda_attention;
mod cuda_conv1d;
mod cuda_gemm;
mod cuda_ssd;
mod cuda_ssm_update;

fn main() {
    // cargo passes `--bench`; the first other argument filters by name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let benches: [(&str, fn()); 5] = [
        ("cuda_attention", cuda_attention::run),
        ("cuda_conv1d", cuda_conv1d::run),
        ("cuda_gemm", cuda_gemm::run),
        ("cuda_ssd", cuda_ssd::run),
        ("cuda_ssm_update", cuda_ssm_update::run),
    ];
    for (name, run) in benches {
        if filter.as_deref().map_or(true, |f| name.contains(f)) {
            println!("== {name}");
            run();
        }
    }
}
