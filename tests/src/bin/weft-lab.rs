//! `weft-lab`: the lab CLI behind `cargo xtask lab` and `cargo xtask demo`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec,
    host::HostSnapshot,
    lab::{self, default_weft_bin},
    netns,
    privileged::ensure_bpffs,
};

#[derive(Parser)]
#[command(
    name = "weft-lab",
    about = "weft's cluster lab: nodes and pods in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a lab up and leave it running.
    Up(UpArgs),
    /// Show every namespace, address, subnet and agent of a lab.
    Status(NameArg),
    /// Remove everything a lab created.
    Down(NameArg),
    /// 2 nodes x 2 pods with agents, pod-to-pod traffic, the counters, teardown.
    Demo(NameArg),
}

#[derive(clap::Args)]
struct NameArg {
    #[arg(long, default_value = "weft")]
    name: String,
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, default_value = "weft")]
    name: String,
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    #[arg(long, default_value_t = 2)]
    pods_per_node: usize,
    #[arg(long, value_enum, default_value_t = BackendArg::Vxlan)]
    backend: BackendArg,
    #[arg(long, value_enum, default_value_t = DataplaneArg::Ebpf)]
    dataplane: DataplaneArg,
    /// Run the agents with --ip-masq (pods reach the underlay masqueraded).
    #[arg(long)]
    ip_masq: bool,
    /// The weft binary the nodes run (default: $WEFT_BIN or target/debug/weft).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Vxlan,
    HostGw,
}

#[derive(Clone, Copy, ValueEnum)]
enum DataplaneArg {
    Ebpf,
    Kernel,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-lab: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the lab needs root (network namespaces, BPF)"
    );
    ensure_bpffs();
    match cli.command {
        Command::Up(args) => {
            let spec = LabSpec {
                name: args.name,
                nodes: args.nodes,
                pods_per_node: args.pods_per_node,
                backend: match args.backend {
                    BackendArg::Vxlan => Backend::Vxlan,
                    BackendArg::HostGw => Backend::HostGw,
                },
                dataplane: match args.dataplane {
                    DataplaneArg::Ebpf => Dataplane::Ebpf,
                    DataplaneArg::Kernel => Dataplane::Kernel,
                },
                node_dataplanes: Vec::new(),
                weft_bin: args.weft_bin.unwrap_or_else(default_weft_bin),
                preset_subnet_env: None,
                ip_masq: args.ip_masq,
                agent_args: Vec::new(),
                network_config: None,
            };
            let state = Lab::up(&spec)?.keep();
            print!("{}", lab::status(&state.name)?);
            println!(
                "lab {} is up; remove it with `cargo xtask lab down --name {}`",
                state.name, state.name
            );
            Ok(())
        }
        Command::Status(NameArg { name }) => {
            print!("{}", lab::status(&name)?);
            Ok(())
        }
        Command::Down(NameArg { name }) => {
            lab::down(&name)?;
            println!("lab {name} is down");
            Ok(())
        }
        Command::Demo(NameArg { name }) => demo(&name),
    }
}

fn demo(name: &str) -> Result<()> {
    let spec = LabSpec::new(name, 2, 2);
    let host_before = HostSnapshot::take()?;
    println!(
        "== bringing up lab {name}: etcd, 2 nodes x 2 pods, weft agent (vxlan, ebpf) on each node"
    );
    let lab = Lab::up(&spec)?;
    print!("{}", lab::status(name)?);

    println!("\n== the leases the agents wrote to etcd (flanneld's keys and format)");
    for (key, value) in lab
        .etcd()
        .get_prefix(&format!("{}/subnets/", lab::ETCD_PREFIX))?
    {
        println!("  {key}\n    {value}");
    }
    println!("\n== {}: subnet.env and routes", lab.node(1).ns);
    print!("{}", std::fs::read_to_string(&lab.node(1).subnet_file)?);
    print!(
        "{}",
        netns::run_host(&["ip", "-n", &lab.node(1).ns, "route", "show"])?
    );

    println!("\n== pod-to-pod traffic: 20 pings between every pair of pods");
    let pods: Vec<_> = lab.pods().cloned().collect();
    for from in &pods {
        for to in pods.iter().filter(|to| to.ns != from.ns) {
            let out = lab.ping(from, to.ip(), 20)?;
            let summary = out
                .lines()
                .find(|line| line.contains("packets transmitted"))
                .unwrap_or_default();
            println!("  {:<14} -> {:<12} {summary}", from.ns, to.ip());
        }
    }

    let weft = spec.weft_bin.display().to_string();
    for node in &lab.state.nodes {
        let pin_dir = node.pin_dir.display().to_string();
        println!("\n== {}: weft maps stats --bpf-pin-dir {pin_dir}", node.ns);
        print!(
            "{}",
            netns::run_host(&[&weft, "maps", "stats", "--bpf-pin-dir", &pin_dir])?
        );
    }
    let first = lab.node(1).pin_dir.join("STATS").display().to_string();
    println!("\n== bpftool map dump pinned {first}   (BTF: named fields)");
    let dump = netns::run_host(&["bpftool", "map", "dump", "pinned", &first]).context("bpftool")?;
    print!("{}", dump.lines().take(24).collect::<Vec<_>>().join("\n"));
    println!("\n  ...");

    println!("\n== tearing down lab {name}");
    drop(lab);
    let host_after = HostSnapshot::take()?;
    anyhow::ensure!(
        host_after == host_before,
        "teardown left something behind: before {host_before:?}, after {host_after:?}"
    );
    println!("done: namespaces, links and bpffs pins are exactly as before the demo");
    Ok(())
}
