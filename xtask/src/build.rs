//! Builds and runs: the eBPF object, the user-space binaries, the tests.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the eBPF object with nightly and returns its path. The build is
/// the agent's own recipe (weft-ebpf-build), so this object is the one
/// `weft` embeds.
pub fn ebpf_object(release: bool) -> Result<PathBuf> {
    Ok(weft_ebpf_build::build(
        &workspace_root(),
        &target_dir(),
        release,
    )?)
}

/// The quality gate: formatting, then clippy with warnings as errors on the
/// user-space crates (stable) and on the eBPF crate (nightly, its own
/// target: it cannot go through `--workspace`, whose host build would pull
/// in a second panic handler).
pub fn lint() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt, "cargo fmt --check (run `cargo fmt --all` to fix)")?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--quiet",
        "--workspace",
        "--exclude",
        weft_ebpf_build::PACKAGE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy, "clippy on the user-space crates")?;
    let mut ebpf = weft_ebpf_build::nightly_cargo(&workspace_root(), "clippy");
    ebpf.arg("--target-dir")
        .arg(target_dir())
        .args(["--", "-D", "warnings"]);
    run(ebpf, "clippy on the eBPF crate")?;
    println!("lint: rustfmt and clippy clean");
    Ok(())
}

/// Builds the `weft` agent (which embeds the object) and the lab CLI.
pub fn user_space() -> Result<()> {
    let mut command = cargo();
    command.args([
        "build",
        "--package",
        "weft-agent",
        "--package",
        "weft-tests",
        "--bins",
    ]);
    run(command, "building weft and weft-lab")
}

/// `cargo test` over every host crate, with the freshly built agent, node
/// package, node image and (when there are) reference flanneld and
/// Kubernetes.
pub fn run_tests(
    args: &[String],
    deb: &Path,
    image: &Path,
    flanneld: Option<&Path>,
    kubernetes: Option<&Path>,
) -> Result<()> {
    let mut command = cargo();
    command
        .args(["test", "--workspace", "--exclude", "weft-ebpf"])
        .args(args)
        .env("WEFT_BIN", target_dir().join("debug/weft"))
        .env("WEFT_DEB", deb)
        .env("WEFT_IMAGE", image);
    with_flanneld(&mut command, flanneld);
    with_kubernetes(&mut command, kubernetes);
    run(command, "the tests")
}

/// Release builds of the agent and the bench CLI, for benchmarks: the
/// control plane is measured as users run it.
pub fn release() -> Result<()> {
    release_build(&["weft-agent", "weft-bench"])
}

/// The release build of the agent alone: what the node package ships.
pub fn release_agent() -> Result<()> {
    release_build(&["weft-agent"])
}

fn release_build(packages: &[&str]) -> Result<()> {
    let mut command = cargo();
    command.args(["build", "--release", "--bins"]);
    for package in packages {
        command.args(["--package", package]);
    }
    run(
        command,
        &format!("building {} (release)", packages.join(" and ")),
    )
}

pub fn release_binary() -> PathBuf {
    target_dir().join("release/weft")
}

/// Where `cargo xtask package` writes the .deb by default.
pub fn package_dir() -> PathBuf {
    target_dir().join("debian")
}

pub fn run_bench(args: &[String], flanneld: Option<&Path>) -> Result<()> {
    let mut command = Command::new(target_dir().join("release/weft-bench"));
    if !args
        .iter()
        .any(|arg| arg == "--out" || arg.starts_with("--out="))
    {
        command.args(["--out", &target_dir().join("bench").display().to_string()]);
    }
    command
        .args(args)
        .env("WEFT_BIN", target_dir().join("release/weft"));
    with_flanneld(&mut command, flanneld);
    run(command, "weft-bench")
}

pub fn run_lab(args: &[String], flanneld: Option<&Path>, kubernetes: Option<&Path>) -> Result<()> {
    let mut command = Command::new(target_dir().join("debug/weft-lab"));
    command
        .args(args)
        .env("WEFT_BIN", target_dir().join("debug/weft"));
    with_flanneld(&mut command, flanneld);
    with_kubernetes(&mut command, kubernetes);
    run(command, "weft-lab")
}

/// The lab, the bench and the tests find the reference flanneld here.
fn with_flanneld(command: &mut Command, flanneld: Option<&Path>) {
    if let Some(flanneld) = flanneld {
        command.env(crate::flanneld::BINARY_ENV, flanneld);
    }
}

/// The lab and the tests find kube-apiserver and its peers here.
fn with_kubernetes(command: &mut Command, kubernetes: Option<&Path>) {
    if let Some(dir) = kubernetes {
        command.env(crate::kubernetes::BINARY_ENV, dir);
    }
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn run(mut command: Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
