//! Builds the eBPF object into OUT_DIR so `src/dataplane/ebpf.rs` can embed
//! it: the release `weft` binary is one self-contained file to copy to a
//! node. The nested build prints nothing unless it fails.
use std::{
    env,
    path::{Path, PathBuf},
};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("the agent lives in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // Rebuild the object whenever the programs or the map types they share
    // with the agent change (cargo scans these directories recursively).
    for dir in ["ebpf", "common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    // A separate target dir: the outer cargo holds the lock on its own.
    let target_dir = out_dir.join("ebpf-target");
    match weft_ebpf_build::build(workspace, &target_dir, true) {
        Ok(object) => copy(&object, &out_dir.join(weft_ebpf_build::OBJECT)),
        Err(error) => {
            // cargo shows a failed build script's stderr in full.
            eprintln!("{error}");
            std::process::exit(1);
        }
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(error) = std::fs::copy(from, to) {
        eprintln!(
            "cannot copy {} to {}: {error}",
            from.display(),
            to.display()
        );
        std::process::exit(1);
    }
}
