//! What weft's build, tests and lab need on a Debian 12 machine, how to tell
//! whether each thing works (not merely whether a package is installed),
//! and how to install it.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Every Debian package setup installs, in one place:
/// - the eBPF toolchain: LLVM 22 and zstd to build bpf-linker;
/// - protoc and its well-known protos, which etcd-client's build compiles;
/// - the lab's real parts: etcd, the CNI plugins, iproute2, nftables and
///   iptables (iptables-nft) with conntrack, as a Kubernetes node has them;
/// - what the tests and the bench drive: bpftool, iperf3, sockperf, ethtool,
///   tcpdump, ping, openssl (test certificates for etcd TLS), perf (the
///   bench's `--profile`);
/// - Go 1.19, which builds the reference flanneld from flannel's source
///   (`flanneld.rs`), and Prometheus, which the lab runs to scrape the agents;
/// - the node image's tools: mmdebstrap builds its base from Debian's
///   archive (no container engine: xtask writes the image layout itself);
///   its test reads the archive back with skopeo and imports and runs it
///   with containerd (a private instance) and runc, as a node does.
/// - kmod, whose modprobe loads br_netfilter (Kubernetes requires it).
/// - what building the lab's Kubernetes from Debian's source package needs
///   (`kubernetes.rs`): make, rsync, patch, and Debian's reflect2 1.0.2
///   source, which replaces the vendored copy that crashes under Go 1.19.
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libzstd-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    "containernetworking-plugins",
    "iproute2",
    "nftables",
    "iptables",
    "conntrack",
    "bpftool",
    "iperf3",
    "sockperf",
    "linux-perf",
    "ethtool",
    "tcpdump",
    "iputils-ping",
    "openssl",
    "golang-1.19",
    "prometheus",
    "mmdebstrap",
    "skopeo",
    "containerd",
    "kmod",
    "make",
    "rsync",
    "patch",
    "golang-github-modern-go-reflect2-dev",
];

const BPF_LINKER_INSTALL: &str = "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22";
const CNI_DIR: &str = "/usr/lib/cni";

/// One thing the build or the lab uses, how to check that it works, and
/// how to get it.
struct Requirement {
    what: &'static str,
    works: fn() -> bool,
    fix: Fix,
}

enum Fix {
    Apt(&'static str),
    NightlyComponent(&'static str),
    BpfLinker,
    MountBpffs,
    Modprobe(&'static str),
}

impl Fix {
    fn command(&self) -> String {
        match self {
            Fix::Apt(package) => format!("apt-get update && apt-get install -y {package}"),
            Fix::NightlyComponent(component) => {
                format!("rustup component add {component} --toolchain nightly")
            }
            Fix::BpfLinker => BPF_LINKER_INSTALL.into(),
            Fix::MountBpffs => "mount -t bpf bpf /sys/fs/bpf".into(),
            Fix::Modprobe(module) => format!("modprobe {module}"),
        }
    }
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "protoc (etcd-client's build compiles its .proto files)",
        works: || succeeds("protoc", &["--version"]),
        fix: Fix::Apt("protobuf-compiler"),
    },
    Requirement {
        what: "protoc's well-known protos (google/protobuf/descriptor.proto)",
        works: protoc_finds_well_known_protos,
        fix: Fix::Apt("libprotobuf-dev"),
    },
    Requirement {
        what: "the nightly toolchain's rust-src (-Z build-std=core for the eBPF crate)",
        works: || nightly_has("rust-src"),
        fix: Fix::NightlyComponent("rust-src"),
    },
    Requirement {
        what: "the nightly toolchain's clippy (the eBPF crate's lint gate)",
        works: || nightly_has("clippy"),
        fix: Fix::NightlyComponent("clippy"),
    },
    Requirement {
        what: "LLVM 22 (bpf-linker links against it)",
        works: || Path::new("/usr/lib/llvm-22/lib").is_dir(),
        fix: Fix::Apt("llvm-22-dev"),
    },
    Requirement {
        what: "bpf-linker",
        works: || succeeds("bpf-linker", &["--version"]),
        fix: Fix::BpfLinker,
    },
    Requirement {
        what: "etcd (the lab's and the tests' etcd)",
        works: || succeeds("etcd", &["--version"]),
        fix: Fix::Apt("etcd-server"),
    },
    Requirement {
        what: "the CNI plugins bridge, host-local and portmap in /usr/lib/cni",
        works: || {
            ["bridge", "host-local", "portmap"]
                .iter()
                .all(|plugin| Path::new(CNI_DIR).join(plugin).is_file())
        },
        fix: Fix::Apt("containernetworking-plugins"),
    },
    Requirement {
        what: "ip (iproute2)",
        works: || succeeds("ip", &["-V"]),
        fix: Fix::Apt("iproute2"),
    },
    Requirement {
        what: "nft",
        works: || succeeds("nft", &["--version"]),
        fix: Fix::Apt("nftables"),
    },
    Requirement {
        what: "iptables",
        works: || succeeds("iptables", &["--version"]),
        fix: Fix::Apt("iptables"),
    },
    Requirement {
        what: "conntrack",
        works: || succeeds("conntrack", &["--version"]),
        fix: Fix::Apt("conntrack"),
    },
    Requirement {
        what: "bpftool",
        works: || succeeds("bpftool", &["version"]),
        fix: Fix::Apt("bpftool"),
    },
    Requirement {
        what: "iperf3",
        works: || succeeds("iperf3", &["--version"]),
        fix: Fix::Apt("iperf3"),
    },
    Requirement {
        what: "sockperf",
        works: || succeeds("sockperf", &["--version"]),
        fix: Fix::Apt("sockperf"),
    },
    Requirement {
        what: "ethtool",
        works: || succeeds("ethtool", &["--version"]),
        fix: Fix::Apt("ethtool"),
    },
    Requirement {
        what: "tcpdump",
        works: || succeeds("tcpdump", &["--version"]),
        fix: Fix::Apt("tcpdump"),
    },
    Requirement {
        what: "ping",
        works: || succeeds("ping", &["-V"]),
        fix: Fix::Apt("iputils-ping"),
    },
    Requirement {
        what: "openssl",
        works: || succeeds("openssl", &["version"]),
        fix: Fix::Apt("openssl"),
    },
    Requirement {
        what: "Go 1.19 (builds the reference flanneld)",
        works: || succeeds("/usr/lib/go-1.19/bin/go", &["version"]),
        fix: Fix::Apt("golang-1.19"),
    },
    Requirement {
        what: "prometheus (the lab's metrics scraper)",
        works: || succeeds("prometheus", &["--version"]),
        fix: Fix::Apt("prometheus"),
    },
    Requirement {
        what: "mmdebstrap (builds the node image's base from Debian's archive)",
        works: || succeeds("mmdebstrap", &["--version"]),
        fix: Fix::Apt("mmdebstrap"),
    },
    Requirement {
        what: "skopeo (the image test reads the OCI archive with it)",
        works: || succeeds("skopeo", &["--version"]),
        fix: Fix::Apt("skopeo"),
    },
    Requirement {
        what: "containerd and ctr (the image test imports and runs the image)",
        works: || succeeds("containerd", &["--version"]) && succeeds("ctr", &["--version"]),
        fix: Fix::Apt("containerd"),
    },
    Requirement {
        what: "make, rsync and patch (build the lab's Kubernetes from source)",
        works: || {
            succeeds("make", &["--version"])
                && succeeds("rsync", &["--version"])
                && succeeds("patch", &["--version"])
        },
        fix: Fix::Apt("make rsync patch"),
    },
    Requirement {
        what: "reflect2 1.0.2's source (the lab's Kubernetes build needs it under Go 1.19)",
        works: || {
            Path::new("/usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go").is_file()
        },
        fix: Fix::Apt("golang-github-modern-go-reflect2-dev"),
    },
    Requirement {
        what: "bpffs at /sys/fs/bpf",
        works: bpffs_mounted,
        fix: Fix::MountBpffs,
    },
    Requirement {
        what: "br_netfilter (as Kubernetes requires: netfilter sees the lab's same-node pod traffic)",
        works: || std::path::Path::new(BRIDGE_NF_CALL_IPTABLES).exists(),
        fix: Fix::Modprobe("br_netfilter"),
    },
];

/// Present once br_netfilter is loaded.
const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn missing() -> Vec<&'static Requirement> {
    REQUIREMENTS
        .iter()
        .filter(|requirement| !(requirement.works)())
        .collect()
}

/// Fails naming exactly what is missing and the command that fixes each.
pub fn check() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|m| format!("  missing {}: fix with `{}`", m.what, m.fix.command()))
        .collect();
    bail!(
        "prerequisites missing (or run `cargo xtask setup` for all of them):\n{}",
        list.join("\n")
    )
}

/// Installs whatever is missing, in dependency order (apt packages first:
/// bpf-linker needs LLVM), saying what it does, then checks everything.
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
    for requirement in missing() {
        match requirement.fix {
            Fix::Apt(_) => {} // installed above; checked again below
            Fix::NightlyComponent(component) => {
                println!("setup: adding {component} to the nightly toolchain");
                run(
                    "rustup",
                    &["component", "add", component, "--toolchain", "nightly"],
                    &[],
                )?;
            }
            Fix::BpfLinker => {
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
            Fix::MountBpffs => {
                println!("setup: mounting bpffs at /sys/fs/bpf");
                run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])?;
            }
            Fix::Modprobe(module) => {
                println!("setup: loading {module}");
                run("modprobe", &[module], &[])?;
            }
        }
    }
    check()?;
    println!("setup: everything weft builds and tests with is present");
    Ok(())
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

/// Compiles a proto that imports descriptor.proto, as etcd-client's build
/// does: protoc alone is not enough without the well-known protos.
fn protoc_finds_well_known_protos() -> bool {
    let dir = std::env::temp_dir().join(format!("weft-protoc-check-{}", std::process::id()));
    let works = (|| -> Result<bool> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("check.proto"),
            "syntax = \"proto3\";\nimport \"google/protobuf/descriptor.proto\";\n",
        )?;
        let status = Command::new("protoc")
            .arg("--descriptor_set_out=/dev/null")
            .arg(format!("--proto_path={}", dir.display()))
            .arg("check.proto")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        Ok(status.success())
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_dir_all(&dir);
    works
}

fn nightly_has(component: &str) -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|line| line.starts_with(component))
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
