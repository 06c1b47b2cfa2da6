//! `cargo xtask`: build, set up, test, run the lab and the demo.
//!
//! xtask itself depends only on clap and anyhow, so `cargo xtask setup` builds
//! on a fresh machine before anything the eBPF build needs is installed.

mod build;
mod flanneld;
mod image;
mod kubernetes;
mod package;
mod prereqs;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "weft's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (apt packages, nightly rust-src, bpf-linker),
    /// idempotently, and build the reference flanneld and the lab's
    /// Kubernetes (kube-apiserver, kube-controller-manager, kubectl v1.20.2)
    /// if their sources are given.
    Setup,
    /// Build (once, then cached) the lab's Kubernetes from Debian's source
    /// package (`WEFT_KUBERNETES_SOURCE`) and print the binaries' directory.
    Kubernetes,
    /// Build the eBPF object and print its path.
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// The quality gate: rustfmt, clippy -D warnings on the user-space crates
    /// and, separately, on the eBPF crate.
    Lint,
    /// Run the quality gate, then every test: unit, program and privileged
    /// lab tests (set up first).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The node package: a .deb with the release binary, the systemd unit
    /// and /etc/default/weft; prints its path.
    Package {
        /// Where to write the .deb.
        #[arg(long, default_value_os_t = build::package_dir())]
        out_dir: std::path::PathBuf,
    },
    /// The node image the DaemonSets run: an OCI archive (Debian's nft and
    /// iproute2, the release binary, OCI labels), reproducible; prints its
    /// path.
    Image {
        /// Where to write the archive.
        #[arg(long, default_value_os_t = image::image_dir())]
        out_dir: std::path::PathBuf,
    },
    /// The cluster lab: `up`, `status`, `down` (see `cargo xtask lab --help`).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks: floor, stock flannel paths and weft's fast path, in one run.
    Bench {
        /// Arguments for the bench (`--quick`, `--out DIR`, `--config NAME`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The demo: a 2-node lab with agents, pod-to-pod traffic, the counters, teardown.
    Demo {
        #[arg(long, default_value = "weft-demo")]
        name: String,
        /// `kube`: the agents take their subnets from Node objects in a real
        /// kube-apiserver, as `flanneld --kube-subnet-mgr` does (builds the
        /// lab's Kubernetes first, once: WEFT_KUBERNETES_SOURCE or
        /// WEFT_KUBERNETES_BIN, see `cargo xtask kubernetes`).
        #[arg(long, value_enum, default_value_t = DemoSubnetManager::Etcd)]
        subnet_manager: DemoSubnetManager,
        /// `flanneld`: stock flanneld on every node instead of weft (builds
        /// the reference flanneld first, once: WEFT_FLANNEL_SOURCE or
        /// WEFT_FLANNELD).
        #[arg(long, value_enum, default_value_t = DemoAgent::Weft)]
        agent: DemoAgent,
        /// Dual-stack: IPv6 on the underlay and every pod too, and IPv6
        /// traffic between pods next to IPv4.
        #[arg(long)]
        dual_stack: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoSubnetManager {
    Etcd,
    Kube,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoAgent {
    Weft,
    Flanneld,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Setup => {
            prereqs::setup()?;
            reference_flanneld()?;
            lab_kubernetes().map(drop)
        }
        Command::Kubernetes => {
            prereqs::check()?;
            let dir = kubernetes::ensure()?.ok_or_else(|| {
                anyhow::anyhow!("no Kubernetes source: {}", kubernetes::HOW_TO_PROVIDE)
            })?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::BuildEbpf { release } => {
            prereqs::check()?;
            let object = build::ebpf_object(release)?;
            println!("{}", object.display());
            Ok(())
        }
        Command::Lint => {
            prereqs::check()?;
            build::lint()
        }
        Command::Test { args } => {
            prereqs::setup()?;
            let flanneld = reference_flanneld()?;
            let kubernetes = lab_kubernetes()?;
            build::lint()?;
            build::user_space()?;
            // The packaging and image tests check the .deb and the image
            // users install: built here, after the debug build, so a test run
            // needs no cargo of its own.
            build::release_agent()?;
            let deb = package::deb(&build::release_binary(), &build::package_dir())?;
            let image = image::build(&build::release_binary(), &image::image_dir())?;
            build::run_tests(
                &args,
                &deb,
                &image,
                flanneld.as_deref(),
                kubernetes.as_deref(),
            )
        }
        Command::Package { out_dir } => {
            prereqs::check()?;
            build::release_agent()?;
            let deb = package::deb(&build::release_binary(), &out_dir)?;
            println!("{}", deb.display());
            Ok(())
        }
        Command::Image { out_dir } => {
            prereqs::check()?;
            build::release_agent()?;
            let archive = image::build(&build::release_binary(), &out_dir)?;
            println!("{}", archive.display());
            Ok(())
        }
        Command::Lab { args } => {
            prereqs::check()?;
            let flanneld = flanneld::ensure()?;
            let kubernetes = kubernetes::ensure()?;
            build::user_space()?;
            build::run_lab(&args, flanneld.as_deref(), kubernetes.as_deref())
        }
        Command::Bench { args } => {
            prereqs::check()?;
            let flanneld = reference_flanneld()?;
            build::release()?;
            build::run_bench(&args, flanneld.as_deref())
        }
        Command::Demo {
            name,
            subnet_manager,
            agent,
            dual_stack,
        } => {
            prereqs::setup()?;
            // Only what was asked for: the plain demo builds neither
            // flanneld nor Kubernetes.
            let flanneld = match agent {
                DemoAgent::Weft => None,
                DemoAgent::Flanneld => Some(flanneld::ensure()?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--agent flanneld needs the reference flanneld: {}",
                        flanneld::HOW_TO_PROVIDE
                    )
                })?),
            };
            let kubernetes = match subnet_manager {
                DemoSubnetManager::Etcd => None,
                DemoSubnetManager::Kube => Some(kubernetes::ensure()?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--subnet-manager kube needs the lab's Kubernetes: {}",
                        kubernetes::HOW_TO_PROVIDE
                    )
                })?),
            };
            build::user_space()?;
            let mut args = vec![
                "demo",
                "--name",
                &name,
                "--subnet-manager",
                match subnet_manager {
                    DemoSubnetManager::Etcd => "etcd",
                    DemoSubnetManager::Kube => "kube",
                },
                "--agent",
                match agent {
                    DemoAgent::Weft => "weft",
                    DemoAgent::Flanneld => "flanneld",
                },
            ];
            if dual_stack {
                args.push("--dual-stack");
            }
            let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
            build::run_lab(&args, flanneld.as_deref(), kubernetes.as_deref())
        }
    }
}

/// The reference flanneld, built on first use; without one, says once what
/// is skipped and how to provide it.
fn reference_flanneld() -> Result<Option<std::path::PathBuf>> {
    let flanneld = flanneld::ensure()?;
    if flanneld.is_none() {
        println!(
            "setup: no reference flanneld: the stock-flannel bench rows and the mixed-cluster tests skip ({})",
            flanneld::HOW_TO_PROVIDE
        );
    }
    Ok(flanneld)
}

/// The lab's Kubernetes, built on first use; without it, says once what is
/// skipped and how to provide it.
fn lab_kubernetes() -> Result<Option<std::path::PathBuf>> {
    let dir = kubernetes::ensure()?;
    if dir.is_none() {
        println!(
            "setup: no Kubernetes for the lab: the kube subnet manager tests skip ({})",
            kubernetes::HOW_TO_PROVIDE
        );
    }
    Ok(dir)
}
