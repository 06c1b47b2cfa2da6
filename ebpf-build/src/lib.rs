//! Builds weft's eBPF object: the one recipe the agent's build script (which
//! embeds the object) and `cargo xtask build-ebpf` share.
//!
//! The nested cargo runs on nightly with `-Z build-std=core` for the
//! `bpfel-unknown-none` target and links with bpf-linker, keeping debug info
//! so the linker emits BTF (`bpftool map dump` then prints field names).
//! Its output is captured and shown only when the build fails: a clean build
//! of the agent prints nothing about the eBPF crate.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// The target the programs are compiled for (the host is little-endian).
pub const TARGET: &str = "bpfel-unknown-none";
/// The eBPF crate's package name and the object (binary target) it builds.
pub const PACKAGE: &str = "weft-ebpf";
pub const OBJECT: &str = "weft";

/// `--cfg bpf_target_arch` lets aya-ebpf pick the host's register layout
/// for kprobe-style contexts; `--btf` keeps type info in the object.
const RUSTFLAGS: &[&str] = &[
    "--cfg=bpf_target_arch=\"x86_64\"",
    "-Cdebuginfo=2",
    "-Clink-arg=--btf",
];

/// A failed eBPF build, with everything the nested cargo printed.
#[derive(Debug)]
pub struct BuildError {
    pub what: String,
    pub output: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)?;
        if !self.output.is_empty() {
            write!(f, ":\n{}", self.output.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildError {}

/// `rustup run nightly cargo <subcommand>` for the eBPF crate's binary on
/// its target, with `-Z build-std=core` and the flags the object is built
/// with: `build` makes the object, `clippy` lints exactly that code.
pub fn nightly_cargo(workspace_root: &Path, subcommand: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .current_dir(workspace_root)
        .args(["run", "nightly", "cargo", subcommand, "--quiet"])
        .args(["--package", PACKAGE, "--bins", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        // Set by the stable cargo that runs us; they would pin the nested
        // cargo to stable (and to the outer build's wrappers).
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR");
    command
}

/// Builds the object from the workspace at `workspace_root` into
/// `target_dir` and returns its path. `release` picks the cargo profile
/// (both optimise the eBPF crate: see the workspace Cargo.toml).
pub fn build(
    workspace_root: &Path,
    target_dir: &Path,
    release: bool,
) -> Result<PathBuf, BuildError> {
    let mut command = nightly_cargo(workspace_root, "build");
    command.arg("--target-dir").arg(target_dir);
    if release {
        command.arg("--release");
    }
    let output = command.output().map_err(|error| BuildError {
        what: format!("cannot run `rustup run nightly cargo` for the eBPF object: {error}"),
        output: String::new(),
    })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(BuildError {
            what: format!(
                "building the eBPF object failed ({}); `cargo xtask setup` installs nightly rust-src and bpf-linker",
                output.status
            ),
            output: text,
        });
    }
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir.join(TARGET).join(profile).join(OBJECT))
}
