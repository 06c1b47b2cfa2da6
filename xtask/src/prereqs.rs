//! What weft needs on a Debian 12 machine, how to tell whether it is there,
//! and how to install it.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Debian packages: the eBPF toolchain (LLVM 22 for bpf-linker), protoc (for
/// etcd-client's gRPC code), the lab's real parts, and the tools the tests
/// and benchmarks drive.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libzstd-dev",
    "etcd-server",
    "containernetworking-plugins",
    "bpftool",
    "iperf3",
    "sockperf",
    "iproute2",
    "ethtool",
    "tcpdump",
    "iputils-ping",
    "protobuf-compiler",
    "libprotobuf-dev",
    "nftables",
    "openssl",
];

const BPF_LINKER_INSTALL: &str = "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22";

/// One missing prerequisite and the command that fixes it.
struct Missing {
    what: String,
    fix: String,
}

fn missing() -> Vec<Missing> {
    let mut missing = Vec::new();
    let packages = missing_packages();
    if !packages.is_empty() {
        missing.push(Missing {
            what: format!("apt packages {}", packages.join(" ")),
            fix: format!(
                "apt-get update && apt-get install -y {}",
                packages.join(" ")
            ),
        });
    }
    if !nightly_has_rust_src() {
        missing.push(Missing {
            what: "the nightly toolchain's rust-src component".into(),
            fix: "rustup component add rust-src --toolchain nightly".into(),
        });
    }
    if !succeeds("bpf-linker", &["--version"]) {
        missing.push(Missing {
            what: "bpf-linker".into(),
            fix: BPF_LINKER_INSTALL.into(),
        });
    }
    if !bpffs_mounted() {
        missing.push(Missing {
            what: "bpffs at /sys/fs/bpf".into(),
            fix: "mount -t bpf bpf /sys/fs/bpf".into(),
        });
    }
    missing
}

/// Fails naming exactly what is missing and the command that fixes each.
pub fn check() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|m| format!("  missing {}: fix with `{}`", m.what, m.fix))
        .collect();
    bail!(
        "prerequisites missing (or run `cargo xtask setup` for all of them):\n{}",
        list.join("\n")
    )
}

/// Installs whatever is missing, in dependency order, saying what it did.
pub fn setup() -> Result<()> {
    let packages = missing_packages();
    if packages.is_empty() {
        println!("setup: apt packages present");
    } else {
        println!("setup: installing apt packages: {}", packages.join(" "));
        run("apt-get", &["update", "-q"], &[])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(packages.iter().map(String::as_str));
        run("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])?;
    }
    if nightly_has_rust_src() {
        println!("setup: nightly rust-src present");
    } else {
        println!("setup: adding rust-src to the nightly toolchain");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
            &[],
        )?;
    }
    if succeeds("bpf-linker", &["--version"]) {
        println!("setup: bpf-linker present");
    } else {
        println!("setup: installing bpf-linker (about a minute)");
        run(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ],
            &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
        )?;
    }
    if bpffs_mounted() {
        println!("setup: bpffs mounted at /sys/fs/bpf");
    } else {
        println!("setup: mounting bpffs at /sys/fs/bpf");
        run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])?;
    }
    check()
}

fn missing_packages() -> Vec<String> {
    APT_PACKAGES
        .iter()
        .filter(|package| {
            let status = Command::new("dpkg-query")
                .args(["-W", "-f=${db:Status-Status}", package])
                .stderr(Stdio::null())
                .output();
            !matches!(status, Ok(out) if out.stdout == b"installed")
        })
        .map(|package| package.to_string())
        .collect()
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|line| line.starts_with("rust-src"))
        })
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            line.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                && line.split_whitespace().nth(2) == Some("bpf")
        })
    })
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
