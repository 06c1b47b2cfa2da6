//! Command-line interface. Flags keep flanneld's names where they mean the
//! same thing; each can also come from a `WEFT_*` environment variable, or
//! from flanneld's `FLANNELD_*` name so an existing node config carries over.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "flannel-compatible overlay agent with an eBPF fast path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: lease a subnet, program the datapath, follow peers.
    Agent(Box<AgentArgs>),
    /// Print the pinned maps of a running (or stopped) agent.
    Maps(MapsArgs),
    /// Lease, peers, endpoints, attached programs and counters of this node.
    Status(StatusArgs),
    /// Remove every trace a stopped agent left on this node (table
    /// `inet weft`, the pinned maps, the pods' pinned neighbour entries),
    /// for uninstall or a rollback to flanneld; `subnet.env` (flanneld reads
    /// it too) bounds the entries removed. Refuses while an agent runs.
    Cleanup(NodeFiles),
}

/// Where a node's agent keeps its state: the files `weft status` reads and
/// `weft cleanup` removes.
#[derive(Debug, Args)]
pub struct NodeFiles {
    /// bpffs directory where the agent pinned its maps.
    #[arg(long, env = "WEFT_BPF_PIN_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpf_pin_dir: PathBuf,
    /// flannel's subnet.env the agent wrote.
    #[arg(
        long,
        env = "WEFT_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// The CNI bridge.
    #[arg(long, env = "WEFT_BRIDGE", default_value = "cni0")]
    pub bridge: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeFiles,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of the network config and leases.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = "/coreos.com/network")]
    pub etcd_prefix: String,
    /// TLS client key for etcd.
    #[arg(long, env = "WEFT_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// TLS client certificate for etcd.
    #[arg(long, env = "WEFT_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// CA bundle that signs etcd's certificate.
    #[arg(long, env = "WEFT_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    #[arg(long, env = "WEFT_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(long, env = "WEFT_ETCD_PASSWORD")]
    pub etcd_password: Option<String>,

    /// Take the subnet from this node's Node object (`spec.podCIDR`) and the
    /// peers from the other Nodes' annotations, through the Kubernetes API,
    /// instead of etcd (flanneld's `--kube-subnet-mgr`).
    #[arg(long, env = "WEFT_KUBE_SUBNET_MGR", default_value_t = false)]
    pub kube_subnet_mgr: bool,
    /// The API server's URL; overrides the kubeconfig's. With neither this
    /// nor --kubeconfig-file: the in-cluster config (service-account token,
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`).
    #[arg(long, env = "WEFT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// kubeconfig file to reach the API server with.
    #[arg(long, env = "WEFT_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,
    /// Prefix of the Node annotations weft reads and writes, as flanneld's.
    #[arg(
        long,
        env = "WEFT_KUBE_ANNOTATION_PREFIX",
        default_value = "flannel.alpha.coreos.com"
    )]
    pub kube_annotation_prefix: String,
    /// The network config with --kube-subnet-mgr (kube-flannel-cfg's
    /// `net-conf.json`).
    #[arg(
        long,
        env = "WEFT_NET_CONFIG_PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,
    /// Set the Node's `NetworkUnavailable` condition to False once the
    /// datapath is programmed (--kube-subnet-mgr).
    #[arg(long, env = "WEFT_SET_NODE_NETWORK_UNAVAILABLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub set_node_network_unavailable: bool,

    /// Uplink interface (repeatable: the first that exists is used). Default:
    /// the interface of the default route.
    #[arg(long, env = "WEFT_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regex; the first interface whose name matches is the uplink.
    #[arg(long, env = "WEFT_IFACE_REGEX")]
    pub iface_regex: Option<String>,
    /// Address other nodes reach this node at. Default: the uplink's first IPv4 address.
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address other nodes reach this node at (dual-stack networks). Default: the uplink's first global unicast IPv6 address.
    #[arg(long, env = "WEFT_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,

    /// flannel's subnet.env for this node (read at start, written once the lease is held).
    #[arg(
        long,
        env = "WEFT_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, env = "WEFT_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    pub subnet_lease_renew_margin: u64,
    /// Masquerade traffic from pods to outside the pod network.
    #[arg(long, env = "WEFT_IP_MASQ", default_value_t = false)]
    pub ip_masq: bool,

    /// Address of /healthz, /readyz and /metrics. Loopback unless told
    /// otherwise (flanneld listens on 0.0.0.0): set the node's address for a
    /// Prometheus elsewhere.
    #[arg(long, env = "WEFT_HEALTHZ_IP", default_value = "127.0.0.1")]
    pub healthz_ip: Ipv4Addr,
    /// Port of /healthz, /readyz and /metrics; 0 turns the endpoint off.
    #[arg(long, env = "WEFT_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,

    /// `kernel`: program only what flanneld programs. `ebpf`: that, plus the
    /// eBPF fast path (an error if it cannot start). `auto`: `ebpf` where
    /// the kernel supports it, else `kernel` with a warning.
    #[arg(long, env = "WEFT_DATAPLANE", value_enum, default_value_t = DataplaneArg::Auto)]
    pub dataplane: DataplaneArg,
    /// bpffs directory where the agent pins its maps.
    #[arg(long, env = "WEFT_BPF_PIN_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpf_pin_dir: PathBuf,
    /// Drop VXLAN from underlay addresses that hold no lease (else hand it to
    /// the kernel path). Counted either way.
    #[arg(long, env = "WEFT_STRICT_VTEPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_vteps: bool,
    /// Leave full-size TCP segments for local pods to the uplink's GRO and
    /// deliver the coalesced packets from TC ingress (one trip per ~64 KB);
    /// `false` delivers every frame from XDP.
    #[arg(long, env = "WEFT_BULK_TCP_VIA_GRO", default_value_t = true, action = clap::ArgAction::Set)]
    pub bulk_tcp_via_gro: bool,
    /// The bridge the CNI bridge plugin plugs pod veths into.
    #[arg(long, env = "WEFT_BRIDGE", default_value = "cni0")]
    pub bridge: String,
    /// How to attach XDP to the uplink: `native` (driver), `generic` (skb),
    /// `off` (TC ingress alone delivers, after GRO), or `auto`: `off` on a
    /// veth uplink (veth's native XDP copies nearly every frame, so TC alone
    /// is faster there), else native where the driver has it, else generic.
    #[arg(long, env = "WEFT_XDP_MODE", value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// The packet mark bit weft's nftables rule (table `inet weft`) sets on
    /// forwarded packets of established flows without NAT; the fast path
    /// takes only flows netfilter marked. One bit, weft's alone: while any
    /// other rule uses it, the fast path records no verdict.
    #[arg(long, env = "WEFT_ACCEPT_MARK", default_value = "0x1000", value_parser = parse_mark)]
    pub accept_mark: u32,
    /// A mark bit for the operator's own rules: traffic whose packet mark or
    /// connection mark (ct mark) has it set stays on the kernel path, where
    /// every rule sees every packet.
    #[arg(long, env = "WEFT_KERNEL_PATH_MARK", default_value = "0x2", value_parser = parse_mark)]
    pub kernel_path_mark: u32,
    /// Milliseconds a flow rides the fast path before its next packet goes
    /// through netfilter again (which refreshes conntrack and re-checks
    /// rules that no change notification announces, e.g. iptables-legacy).
    #[arg(long, env = "WEFT_VERDICT_TTL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub verdict_ttl_ms: u64,
    /// Renew a live TCP verdict before it expires with a probe: a clone of
    /// one of the flow's packets sent through netfilter and dropped at
    /// egress, while the packet itself stays on the fast path (no
    /// reordering at each re-check). `false`: the verdict lapses at its
    /// TTL and the flow's next packets re-learn it on the kernel path.
    #[arg(long, env = "WEFT_VERDICT_PROBES", default_value_t = true, action = clap::ArgAction::Set)]
    pub verdict_probes: bool,
}

/// A mark in hex (`0x1000`) or decimal.
fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    let mark = parsed.map_err(|_| format!("{text:?} is not a number (e.g. 0x1000)"))?;
    crate::verdicts::check_mark(mark).map_err(|error| format!("{error:#}"))?;
    Ok(mark)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataplaneArg {
    Auto,
    Kernel,
    Ebpf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
    Off,
}

#[derive(Debug, Args)]
pub struct MapsArgs {
    #[command(subcommand)]
    pub map: MapName,

    /// bpffs directory where the agent pinned its maps.
    #[arg(
        long,
        env = "WEFT_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/weft",
        global = true
    )]
    pub bpf_pin_dir: PathBuf,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, Subcommand)]
pub enum MapName {
    /// Fast-path counters, summed over CPUs.
    Stats {
        /// Refresh every SECONDS, showing per-second rates, in place on a
        /// terminal (one block per refresh otherwise), until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1", value_parser = parse_interval)]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Remote pod subnets: mode, node address, VTEP and next-hop MACs.
    Peers,
    /// Remote pods' IPv6 subnets (dual stack), as `peers`.
    Peers6,
    /// Local pods: veth and MAC.
    Endpoints,
    /// Local pods' IPv6 addresses (dual stack), as `endpoints`.
    Endpoints6,
    /// Underlay addresses VXLAN is accepted from.
    Vteps,
    /// This node's fast-path settings.
    Config,
    /// Flow directions netfilter passed unchanged (what the fast path may take).
    Flows,
    /// IPv6 flow directions netfilter passed unchanged, as `flows`.
    Flows6,
}

/// A `--watch` interval: a positive number of seconds, at least 10 ms.
fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.01 => Ok(seconds),
        _ => Err(format!(
            "{text:?}: expected a number of seconds of at least 0.01"
        )),
    }
}

/// flanneld's environment names for the flags both share.
pub const FLANNELD_ALIASES: &[&str] = &[
    "ETCD_ENDPOINTS",
    "ETCD_PREFIX",
    "ETCD_KEYFILE",
    "ETCD_CERTFILE",
    "ETCD_CAFILE",
    "ETCD_USERNAME",
    "ETCD_PASSWORD",
    "IFACE",
    "IFACE_REGEX",
    "PUBLIC_IP",
    "PUBLIC_IPV6",
    "SUBNET_FILE",
    "SUBNET_LEASE_RENEW_MARGIN",
    "IP_MASQ",
    "HEALTHZ_IP",
    "HEALTHZ_PORT",
    "KUBE_SUBNET_MGR",
    "KUBE_API_URL",
    "KUBECONFIG_FILE",
    "KUBE_ANNOTATION_PREFIX",
    "NET_CONFIG_PATH",
    "SET_NODE_NETWORK_UNAVAILABLE",
];

/// For each flag flanneld also has, a `FLANNELD_X` variable stands in for an
/// unset `WEFT_X`. Call before parsing, while the process is single-threaded.
pub fn apply_flanneld_env_aliases() {
    for name in FLANNELD_ALIASES {
        let weft = format!("WEFT_{name}");
        if std::env::var_os(&weft).is_none()
            && let Some(value) = std::env::var_os(format!("FLANNELD_{name}"))
        {
            // SAFETY: called at the top of main, before any thread exists.
            unsafe { std::env::set_var(&weft, value) };
        }
    }
}
