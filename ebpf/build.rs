//! Rebuild the eBPF object when bpf-linker changes: cargo does not track the
//! linker, and a stale object built by an older linker is a confusing failure.
fn main() {
    let bpf_linker = which::which("bpf-linker")
        .expect("bpf-linker not found on PATH; run `cargo xtask setup` to install it");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
