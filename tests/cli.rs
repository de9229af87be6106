//! The `falcon-h1` binary: run, parity and generate on the bundled models.

mod common;

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_falcon-h1"));
    c.env(
        "CARGO_MANIFEST_DIR",
        std::env::var("CARGO_MANIFEST_DIR").unwrap(),
    );
    c
}

#[test]
fn run_is_the_default_and_reports_the_error() {
    let out = bin().output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {s}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.contains("max relative error"), "{s}");
    assert!(s.contains("identical"), "{s}");
    assert!(s.contains("ms"), "{s}");
}

#[test]
fn parity_passes_and_fails_on_tolerance() {
    let dir = common::data_dir().join("g2_nbg");
    let out = bin()
        .args(["parity", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("layer 0") && s.contains("PASS"), "{s}");
    let out = bin()
        .args(["parity", "--tol", "1e-12", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An explicit reference file of another model is a shape error, exit code 2.
    let other = common::data_dir().join("tiny/reference.safetensors");
    let out = bin()
        .args(["parity", "--model"])
        .arg(&dir)
        .arg("--reference")
        .arg(&other)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn generate_from_text_and_from_tokens() {
    let dir = common::data_dir().join("tiny");
    let out = bin()
        .args([
            "generate",
            "--max-new-tokens",
            "5",
            "--prompt",
            "Hello, Falcon!",
            "--model",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.starts_with("Hello, Falcon!"), "{s}");
    let out = bin()
        .args([
            "generate",
            "--tokens",
            "1,2,3",
            "--max-new-tokens",
            "4",
            "--temperature",
            "0.7",
            "--top-k",
            "10",
            "--seed",
            "5",
            "--model",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert_eq!(
        s.trim().trim_matches(['[', ']']).split(',').count(),
        4,
        "{s}"
    );
}

#[test]
fn a_missing_model_is_a_clean_error() {
    let out = bin()
        .args(["parity", "--model", "/nonexistent/falcon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("/nonexistent/falcon"), "{e}");
}
