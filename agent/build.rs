//! Builds the eBPF object (nightly, `-Z build-std=core`, bpf-linker, BTF kept)
//! into OUT_DIR so `src/dataplane/ebpf.rs` can embed it: the release `weft`
//! binary is then one self-contained file to copy to a node.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "weft-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
