//! With `--features cuda` on a machine without a driver or GPU, opening the device is an error
//! that says so, never a panic. Where a GPU is present it checks that the kernels load.

#![cfg(feature = "cuda")]

#[test]
fn opening_the_device_never_panics() {
    match falcon_h1_kernels::cuda::Gpu::new(0) {
        Ok(g) => {
            println!("GPU: {}", g.name().unwrap());
            g.function("rms_norm_f32").expect("kernels load");
            assert!(g.function("no_such_kernel").is_err());
        }
        Err(e) => {
            let m = e.to_string();
            println!("no GPU here: {m}");
            assert!(m.starts_with("cuda:"), "{m}");
        }
    }
    // A device index that cannot exist is an error on any machine.
    assert!(falcon_h1_kernels::cuda::Gpu::new(1 << 20).is_err());
}
