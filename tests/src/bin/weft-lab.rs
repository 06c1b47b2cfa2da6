//! `weft-lab`: the lab CLI behind `cargo xtask lab` and `cargo xtask demo`.

// The binary sees every dependency of its package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, SubnetManager, host::HostSnapshot, inspect, lab,
    netns, privileged::ensure_bpffs, traffic,
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
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    #[arg(long, default_value = "weft")]
    name: String,
    /// Where the agents get subnets and peers: the lab's etcd, or Node
    /// objects in a real kube-apiserver (needs $WEFT_KUBERNETES_BIN).
    #[arg(long, value_enum, default_value_t = SubnetManagerArg::Etcd)]
    subnet_manager: SubnetManagerArg,
    /// Which agent every node runs: weft (eBPF), or stock flanneld
    /// (needs $WEFT_FLANNELD).
    #[arg(long, value_enum, default_value_t = AgentArg::Weft)]
    agent: AgentArg,
    /// Dual-stack: IPv6 on the underlay and the pods too, IPv6 traffic
    /// between pods next to IPv4.
    #[arg(long)]
    dual_stack: bool,
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
    /// Which agent every node runs: weft (with --dataplane), or stock flanneld.
    #[arg(long, value_enum, default_value_t = AgentArg::Weft)]
    agent: AgentArg,
    /// Nodes (1-based, comma-separated) that run stock flanneld whatever
    /// --agent says: a mixed cluster.
    #[arg(long, value_delimiter = ',')]
    flanneld_nodes: Vec<usize>,
    /// The flanneld binary (default: $WEFT_FLANNELD, which `cargo xtask`
    /// sets to the reference flanneld it built).
    #[arg(long)]
    flanneld: Option<PathBuf>,
    /// Where the agents get subnets and peers: the lab's etcd, or a real
    /// kube-apiserver in the underlay (Nodes with podCIDRs), with weft or
    /// `--agent flanneld`. Needs $WEFT_KUBERNETES_BIN, which `cargo xtask`
    /// sets when it built Kubernetes (WEFT_KUBERNETES_SOURCE).
    #[arg(long, value_enum, default_value_t = SubnetManagerArg::Etcd)]
    subnet_manager: SubnetManagerArg,
    /// Run a real Prometheus in the underlay that scrapes every weft agent.
    #[arg(long)]
    prometheus: bool,
    /// One more flag for every weft agent (repeatable), e.g.
    /// `--agent-arg=--verdict-ttl-ms=5000`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Dual-stack: every node's eth0 also gets fd00:192:168:77::N/64, the
    /// network config enables IPv6 (IPv6Network fd00:10:244::/56) and every
    /// pod gets an IPv6 address too.
    #[arg(long)]
    dual_stack: bool,
    /// IPv6-only (with --subnet-manager kube, as flannel runs it): the
    /// dual-stack underlay, EnableIPv4 false, one IPv6 podCIDR per Node and
    /// IPv6-only pods.
    #[arg(long)]
    ipv6_only: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum AgentArg {
    Weft,
    Flanneld,
}

#[derive(Clone, Copy, ValueEnum)]
enum SubnetManagerArg {
    Etcd,
    Kube,
}

impl SubnetManagerArg {
    fn manager(self) -> SubnetManager {
        match self {
            SubnetManagerArg::Etcd => SubnetManager::Etcd,
            SubnetManagerArg::Kube => SubnetManager::Kube,
        }
    }
}

/// flanneld's default `--kube-annotation-prefix`, which the lab's agents use.
const FLANNEL_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Vxlan,
    HostGw,
}

#[derive(Clone, Copy, ValueEnum)]
enum DataplaneArg {
    Ebpf,
    Kernel,
    /// No overlay, no agent: plain routes between nodes.
    Floor,
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
            let spec = up_spec(args)?;
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
        Command::Demo(args) => demo(&args),
    }
}

fn up_spec(args: UpArgs) -> Result<LabSpec> {
    let weft_dataplane = match args.dataplane {
        DataplaneArg::Ebpf => Dataplane::Ebpf,
        DataplaneArg::Kernel => Dataplane::Kernel,
        DataplaneArg::Floor => Dataplane::Floor,
    };
    let dataplane = match args.agent {
        AgentArg::Weft => weft_dataplane,
        AgentArg::Flanneld => Dataplane::Flanneld,
    };
    let mut node_dataplanes = Vec::new();
    for &node in &args.flanneld_nodes {
        anyhow::ensure!(
            (1..=args.nodes).contains(&node),
            "--flanneld-nodes {node}: the lab has nodes 1..={}",
            args.nodes
        );
        anyhow::ensure!(
            dataplane != Dataplane::Floor,
            "--flanneld-nodes: a floor lab runs no agents"
        );
        node_dataplanes.resize(args.nodes, dataplane);
        node_dataplanes[node - 1] = Dataplane::Flanneld;
    }
    let mut spec = LabSpec::new(&args.name, args.nodes, args.pods_per_node);
    spec.backend = match args.backend {
        BackendArg::Vxlan => Backend::Vxlan,
        BackendArg::HostGw => Backend::HostGw,
    };
    spec.dataplane = dataplane;
    spec.node_dataplanes = node_dataplanes;
    if let Some(weft) = args.weft_bin {
        spec.weft_bin = weft;
    }
    if let Some(flanneld) = args.flanneld {
        spec.flanneld_bin = Some(flanneld);
    }
    spec.subnet_manager = args.subnet_manager.manager();
    spec.ip_masq = args.ip_masq;
    spec.prometheus = args.prometheus;
    spec.agent_args = args.agent_args;
    spec.dual_stack = args.dual_stack || args.ipv6_only;
    spec.ipv6_only = args.ipv6_only;
    Ok(spec)
}

fn demo(args: &DemoArgs) -> Result<()> {
    let name = args.name.as_str();
    let weft_runs = args.agent == AgentArg::Weft;
    let mut spec = LabSpec::new(name, 2, 2);
    spec.subnet_manager = args.subnet_manager.manager();
    spec.dual_stack = args.dual_stack;
    if !weft_runs {
        spec.dataplane = Dataplane::Flanneld;
    }
    // Prometheus scrapes weft's /metrics; flanneld has none.
    spec.prometheus = weft_runs;
    let host_before = HostSnapshot::take()?.of_lab(name);
    let (control_plane, agents) = match (spec.subnet_manager, weft_runs) {
        (SubnetManager::Etcd, true) => ("etcd", "weft agent (vxlan, ebpf)"),
        (SubnetManager::Etcd, false) => ("etcd", "stock flanneld (vxlan)"),
        (SubnetManager::Kube, true) => (
            "etcd and kube-apiserver",
            "weft agent --kube-subnet-mgr (vxlan, ebpf)",
        ),
        (SubnetManager::Kube, false) => (
            "etcd and kube-apiserver",
            "stock flanneld --kube-subnet-mgr (vxlan)",
        ),
    };
    println!(
        "== bringing up lab {name}: {control_plane}, 2 nodes x 2 pods{}, {agents} on each node{}",
        if spec.dual_stack { " (dual-stack)" } else { "" },
        if spec.prometheus { ", Prometheus" } else { "" }
    );
    let lab = Lab::up(&spec)?;
    print!("{}", lab::status(name)?);

    match spec.subnet_manager {
        SubnetManager::Etcd => print_leases(&lab)?,
        SubnetManager::Kube => print_nodes(&lab)?,
    }
    println!(
        "\n== {}: subnet.env and routes",
        lab.node(NodeId::new(1)).ns
    );
    print!(
        "{}",
        std::fs::read_to_string(&lab.node(NodeId::new(1)).subnet_file)?
    );
    print!(
        "{}",
        netns::run_host(&["ip", "-n", &lab.node(NodeId::new(1)).ns, "route", "show"])?
    );
    if spec.dual_stack {
        print!(
            "{}",
            netns::run_host(&[
                "ip",
                "-n",
                &lab.node(NodeId::new(1)).ns,
                "-6",
                "route",
                "show"
            ])?
        );
    }

    println!("\n== warm-up: each pod pings its gateway and every other pod once");
    if weft_runs {
        println!(
            "   (a flow's first packets take the kernel path, where netfilter decides; the fast path"
        );
        println!(
            "    then carries only what netfilter passed unchanged: see the *_no_verdict counters)"
        );
    }
    lab.warm_up()?;
    let flannel_before: Vec<(u64, u64)> = lab
        .state
        .nodes
        .iter()
        .map(|node| inspect::packet_counts(&node.ns, "flannel.1"))
        .collect::<Result<_>>()?;

    println!("\n== pod-to-pod traffic: 20 pings between every pair of pods (every address)");
    let pods: Vec<_> = lab.pods().cloned().collect();
    for from in &pods {
        for to in pods.iter().filter(|to| to.ns != from.ns) {
            for address in lab::pod_addresses(to) {
                let out = lab.ping(from, address, 20)?;
                let summary = out
                    .lines()
                    .find(|line| line.contains("packets transmitted"))
                    .unwrap_or_default();
                println!("  {:<16} -> {:<13} {summary}", from.ns, address);
            }
        }
    }
    let server = lab.node(NodeId::new(2)).pods[0].clone();
    let client = lab.node(NodeId::new(1)).pods[0].clone();
    println!(
        "\n== 64 MB of TCP {} -> {}, checked end to end",
        client.ns, server.ns
    );
    let started = std::time::Instant::now();
    let transfer =
        traffic::tcp_transfer(&server.ns, server.ip(), 5001, &client.ns, 64 * 1024 * 1024)?;
    anyhow::ensure!(
        transfer.sent == transfer.received,
        "the received bytes differ from the sent ones"
    );
    println!(
        "  {} bytes in {:.2?}, digests match",
        transfer.bytes,
        started.elapsed()
    );
    if spec.dual_stack {
        println!(
            "\n== 64 MB of TCP over IPv6 {} -> {} ({}), checked end to end",
            client.ns,
            server.ns,
            server.ip6()
        );
        let started = std::time::Instant::now();
        let transfer =
            traffic::tcp_transfer(&server.ns, server.ip6(), 5003, &client.ns, 64 * 1024 * 1024)?;
        anyhow::ensure!(
            transfer.sent == transfer.received,
            "the received bytes differ from the sent ones (IPv6)"
        );
        println!(
            "  {} bytes in {:.2?}, digests match",
            transfer.bytes,
            started.elapsed()
        );
    }

    let weft = spec.weft_bin.display().to_string();
    for (node, before) in lab.state.nodes.iter().zip(&flannel_before) {
        if weft_runs {
            let pin_dir = node.pin_dir.display().to_string();
            let subnet_file = node.subnet_file.display().to_string();
            println!("\n== {}: weft status", node.ns);
            print!(
                "{}",
                netns::run(
                    &node.ns,
                    &[
                        &weft,
                        "status",
                        "--bpf-pin-dir",
                        &pin_dir,
                        "--subnet-file",
                        &subnet_file
                    ]
                )?
            );
        } else {
            println!("\n== {}", node.ns);
        }
        let after = inspect::packet_counts(&node.ns, "flannel.1")?;
        println!(
            "  flannel.1 (the kernel path{}) since the warm-up: {} packets in, {} out",
            if weft_runs {
                ": each flow's set-up"
            } else {
                ": all of it"
            },
            after.0 - before.0,
            after.1 - before.1
        );
        if spec.dual_stack {
            let (packets_in, packets_out) = inspect::packet_counts(&node.ns, "flannel-v6.1")?;
            println!(
                "  flannel-v6.1 (the kernel path: {}) since the lab came up: {packets_in} packets in, {packets_out} out",
                if weft_runs {
                    "all IPv6 traffic, the fast path carries IPv4"
                } else {
                    "all of it"
                }
            );
        }
    }
    if weft_runs {
        print_prometheus_queries(&lab)?;
        print_maps(&lab, &weft)?;
    }

    println!("\n== tearing down lab {name}");
    drop(lab);
    let host_after = HostSnapshot::take()?.of_lab(name);
    anyhow::ensure!(
        host_after == host_before,
        "teardown left something behind: before {host_before:?}, after {host_after:?}"
    );
    println!(
        "done: namespaces, links and bpffs pins named after {name} are exactly as before the demo"
    );
    Ok(())
}

/// The leases the agents wrote to etcd.
fn print_leases(lab: &Lab) -> Result<()> {
    println!("\n== the leases the agents wrote to etcd (flanneld's keys and format)");
    for (key, value) in lab
        .etcd()
        .get_prefix(&format!("{}/subnets/", lab::ETCD_PREFIX))?
    {
        println!("  {key}\n    {value}");
    }
    Ok(())
}

/// The Nodes as an operator sees them with kubectl: the podCIDR each agent
/// took its subnet from, the annotations it wrote (flanneld's) and the
/// condition it set; and flannel's etcd prefix, which no agent used.
fn print_nodes(lab: &Lab) -> Result<()> {
    let api = lab.kube()?;
    let annotation = |key: &str| {
        format!(
            ".metadata.annotations.{}/{key}",
            FLANNEL_ANNOTATION_PREFIX.replace('.', "\\.")
        )
    };
    let columns = [
        ("NAME", ".metadata.name".to_owned()),
        ("POD-CIDR", ".spec.podCIDR".to_owned()),
        ("PUBLIC-IP", annotation("public-ip")),
        ("BACKEND", annotation("backend-type")),
        ("BACKEND-DATA", annotation("backend-data")),
        ("KUBE-SUBNET-MGR", annotation("kube-subnet-manager")),
        (
            "NETWORK-UNAVAILABLE",
            r#".status.conditions[?(@.type=="NetworkUnavailable")].reason"#.to_owned(),
        ),
    ];
    let columns: Vec<String> = columns
        .iter()
        .map(|(title, path)| format!("{title}:{path}"))
        .collect();
    let columns = format!("custom-columns={}", columns.join(","));
    println!(
        "\n== the Nodes in the API server: each agent's subnet is its podCIDR; it wrote flanneld's annotations and the condition"
    );
    println!(
        "   (nsenter --net=/run/netns/{} kubectl --kubeconfig {} get nodes -o '{columns}')",
        api.ns,
        api.admin_kubeconfig.display()
    );
    print!("{}", api.admin(&["get", "nodes", "-o", &columns])?);
    let keys = lab
        .etcd()
        .get_prefix(&format!("{}/", lab::ETCD_PREFIX))?
        .len();
    println!(
        "   flannel's etcd prefix {} holds {keys} keys: the agents used only the API server",
        lab::ETCD_PREFIX
    );
    Ok(())
}

/// Node 1's peers map, by weft and by bpftool.
fn print_maps(lab: &Lab, weft: &str) -> Result<()> {
    let pin_dir = lab.node(NodeId::new(1)).pin_dir.display().to_string();
    println!("\n== weft maps peers --bpf-pin-dir {pin_dir}");
    print!(
        "{}",
        netns::run_host(&[weft, "maps", "peers", "--bpf-pin-dir", &pin_dir])?
    );
    let peers = lab
        .node(NodeId::new(1))
        .pin_dir
        .join("PEERS")
        .display()
        .to_string();
    println!("\n== bpftool map dump pinned {peers}   (BTF: named fields)");
    print!(
        "{}",
        netns::run_host(&["bpftool", "map", "dump", "pinned", &peers]).context("bpftool")?
    );
    Ok(())
}

/// What an operator's dashboard would show, asked of the lab's real
/// Prometheus over its HTTP API.
fn print_prometheus_queries(lab: &Lab) -> Result<()> {
    println!(
        "\n== Prometheus at {} (inside the underlay namespace: `ip netns exec {} curl ...`) scrapes every agent's /metrics",
        lab::prometheus_url(),
        lab.state.underlay_ns
    );
    // Wait for a scrape after the traffic (Prometheus scrapes every second).
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (what, promql) in [
        (
            "packets the fast path carried, per node and program",
            "sum by (node, hook) (weft_fastpath_packets_total{reason=~\"decap|encap|host_gw|local_redirect\"})",
        ),
        (
            "packets handed to the kernel path in the last minute, by reason",
            "sum by (reason) (increase(weft_kernel_path_fallbacks_total[1m])) > 0",
        ),
        ("peers programmed, by mode", "sum by (mode) (weft_peers)"),
        (
            "leases rejected, by rule",
            "sum by (rule) (weft_leases_rejected_total)",
        ),
    ] {
        println!("  {what}:\n    {promql}");
        let samples = lab.query_prometheus(promql)?;
        if samples.is_empty() {
            println!("      (none)");
        }
        for sample in samples {
            let labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            println!("      {{{}}} {}", labels.join(","), sample.value);
        }
    }
    Ok(())
}
