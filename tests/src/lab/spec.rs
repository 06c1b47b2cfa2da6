//! What a lab is made of: its name, nodes, pods, backend and dataplanes.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, ensure};
use serde::{Deserialize, Serialize};

use super::{NodeId, POD_NETWORK, POD_NETWORK_V6};

const MAX_NODES: usize = 200;
const MAX_NAME_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Vxlan,
    HostGw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataplane {
    /// `weft agent --dataplane ebpf`: the kernel path plus the eBPF programs.
    Ebpf,
    /// `weft agent --dataplane kernel`: exactly what flanneld programs.
    Kernel,
    /// No overlay and no agent: the lab writes each node's subnet.env (node N
    /// owns 10.244.N.0/24) and plain routes between nodes. The benchmark's
    /// floor.
    Floor,
    /// Stock flanneld itself (the reference build, `$WEFT_FLANNELD`) with the
    /// same etcd, `--iface` and `--subnet-file` weft gets.
    Flanneld,
}

impl Dataplane {
    pub fn flag(self) -> &'static str {
        match self {
            Dataplane::Ebpf => "ebpf",
            Dataplane::Floor => "floor",
            Dataplane::Kernel => "kernel",
            Dataplane::Flanneld => "flanneld",
        }
    }

    /// Whether weft runs on the node (and so has pins, maps and counters).
    pub fn is_weft(self) -> bool {
        matches!(self, Dataplane::Ebpf | Dataplane::Kernel)
    }
}

/// Where agents get their subnets and peers, as flanneld's two modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubnetManager {
    /// Leases in the lab's etcd (`--etcd-endpoints`).
    #[default]
    Etcd,
    /// Node objects in a real kube-apiserver (`--kube-subnet-mgr`): the lab
    /// runs one in the underlay and registers every node with its podCIDR.
    Kube,
}

impl SubnetManager {
    pub fn flag(self) -> &'static str {
        match self {
            SubnetManager::Etcd => "etcd",
            SubnetManager::Kube => "kube",
        }
    }
}

impl Backend {
    /// The network config the lab writes to `<prefix>/config`.
    pub fn network_config(self) -> String {
        format!(
            r#"{{"Network":"{POD_NETWORK}","Backend":{{"Type":"{}"}}}}"#,
            self.flag()
        )
    }

    /// The dual-stack network config: the IPv4 one plus `EnableIPv6` and
    /// `IPv6Network` (a /56, so flannel's default `IPv6SubnetLen` gives each
    /// node a /64).
    pub fn dual_stack_network_config(self) -> String {
        format!(
            r#"{{"Network":"{POD_NETWORK}","EnableIPv6":true,"IPv6Network":"{POD_NETWORK_V6}","Backend":{{"Type":"{}"}}}}"#,
            self.flag()
        )
    }

    /// The IPv6-only network config (`EnableIPv4` false): `IPv6Network`
    /// alone, as an IPv6-only flannel cluster's net-conf.json has it.
    pub fn ipv6_only_network_config(self) -> String {
        format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{POD_NETWORK_V6}","Backend":{{"Type":"{}"}}}}"#,
            self.flag()
        )
    }

    /// flannel's `Backend.Type` for this backend.
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LabSpec {
    pub name: String,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub backend: Backend,
    /// Every node's dataplane, unless `node_dataplanes` says otherwise.
    pub dataplane: Dataplane,
    /// Per-node overrides for mixed labs, in node order: the first is
    /// [`NodeId::FIRST`]'s; nodes past the list's end run `dataplane`.
    pub node_dataplanes: Vec<Dataplane>,
    /// The `weft` binary the nodes run.
    pub weft_bin: PathBuf,
    /// The flanneld binary [`Dataplane::Flanneld`] nodes run.
    pub flanneld_bin: Option<PathBuf>,
    /// Run a real Prometheus in the underlay that scrapes every weft agent.
    pub prometheus: bool,
    /// A `FLANNEL_SUBNET` to leave in every node's subnet.env before its
    /// agent first starts, as an earlier run would have.
    pub preset_subnet_env: Option<String>,
    /// Run the agents with `--ip-masq`.
    pub ip_masq: bool,
    /// More flags for every agent.
    pub agent_args: Vec<String>,
    /// Bound every weft agent to these capabilities (numbers, as in
    /// linux/capability.h) with no new privileges, as systemd's
    /// `CapabilityBoundingSet=` and `NoNewPrivileges=yes` do for a root
    /// service; `None`: every capability, as the lab's root has.
    pub agent_capabilities: Option<Vec<u32>>,
    /// A network config to write instead of the backend's default one.
    pub network_config: Option<String>,
    /// Nodes from this one on sit on a second underlay segment,
    /// 192.168.78.0/24, one routed hop away from the first.
    pub second_segment_from: Option<NodeId>,
    /// Where the agents get subnets and peers: etcd, or a real kube-apiserver.
    pub subnet_manager: SubnetManager,
    /// kube-apiserver and kubectl, for [`SubnetManager::Kube`].
    pub kubernetes_bin: Option<PathBuf>,
    /// Dual-stack: every node's `eth0` gets an IPv6 address too
    /// (`fd00:192:168:77::N/64`, `fd00:192:168:78::N/64` on the second
    /// segment), the network config enables IPv6 (`IPv6Network`
    /// `fd00:10:244::/56`) and every pod gets an address of each family.
    pub dual_stack: bool,
    /// IPv6-only (with `dual_stack`, whose underlay it runs on, and the
    /// kube subnet manager, as flannel runs IPv6-only): the network config
    /// has `EnableIPv4` false, every Node one IPv6 podCIDR, every pod an
    /// IPv6 address alone.
    pub ipv6_only: bool,
}

impl LabSpec {
    pub fn dataplane_of(&self, node: NodeId) -> Dataplane {
        self.node_dataplanes
            .get(node.position())
            .copied()
            .unwrap_or(self.dataplane)
    }

    pub fn new(name: &str, nodes: usize, pods_per_node: usize) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            pods_per_node,
            backend: Backend::Vxlan,
            dataplane: Dataplane::Ebpf,
            node_dataplanes: Vec::new(),
            weft_bin: default_weft_bin(),
            flanneld_bin: reference_flanneld(),
            prometheus: false,
            preset_subnet_env: None,
            ip_masq: false,
            agent_args: Vec::new(),
            agent_capabilities: None,
            network_config: None,
            second_segment_from: None,
            subnet_manager: SubnetManager::Etcd,
            kubernetes_bin: crate::kube::binaries(),
            dual_stack: false,
            ipv6_only: false,
        }
    }
}

/// `$WEFT_BIN`, else the workspace's debug build.
pub fn default_weft_bin() -> PathBuf {
    std::env::var_os("WEFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/weft"))
}

/// The reference flanneld `cargo xtask` built or was given (`$WEFT_FLANNELD`).
pub fn reference_flanneld() -> Option<PathBuf> {
    std::env::var_os(FLANNELD_ENV).map(PathBuf::from)
}

pub const FLANNELD_ENV: &str = "WEFT_FLANNELD";

impl LabSpec {
    /// Whether any node runs stock flanneld.
    pub fn runs_flanneld(&self) -> bool {
        NodeId::all(self.nodes).any(|node| self.dataplane_of(node) == Dataplane::Flanneld)
    }
}

pub(super) fn validate(spec: &LabSpec) -> Result<()> {
    let name = &spec.name;
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_lowercase()),
        "lab name {name:?}: use 1-{MAX_NAME_LEN} characters a-z, 0-9 and '-', starting with a letter"
    );
    ensure!(
        (1..=MAX_NODES).contains(&spec.nodes),
        "--nodes {}: must be 1..={MAX_NODES}",
        spec.nodes
    );
    if spec.runs_flanneld() {
        let flanneld = spec.flanneld_bin.as_ref().ok_or_else(|| {
            anyhow!(
                "a flanneld node needs the reference flanneld: set {FLANNELD_ENV}, or let \
                 `cargo xtask setup` build it (WEFT_FLANNEL_SOURCE)"
            )
        })?;
        ensure!(
            flanneld.is_file(),
            "flanneld {} does not exist",
            flanneld.display()
        );
    }
    if spec.subnet_manager == SubnetManager::Kube {
        let bin_dir = spec.kubernetes_bin.as_ref().ok_or_else(|| {
            anyhow!(
                "--subnet-manager kube needs kube-apiserver and kubectl: set {}, or let \
                 `cargo xtask setup` build them (WEFT_KUBERNETES_SOURCE)",
                crate::kube::BINARY_ENV
            )
        })?;
        for binary in ["kube-apiserver", "kubectl"] {
            ensure!(
                bin_dir.join(binary).is_file(),
                "{} does not exist",
                bin_dir.join(binary).display()
            );
        }
    }
    ensure!(
        spec.pods_per_node <= 250,
        "--pods-per-node {}: must be at most 250",
        spec.pods_per_node
    );
    Ok(())
}

/// Three nodes with two pods each on `backend`, on the kernel path (no
/// eBPF): the control plane tests' cluster.
pub fn three_nodes(name: &str, backend: Backend) -> LabSpec {
    let mut spec = LabSpec::new(name, 3, 2);
    spec.backend = backend;
    spec.dataplane = Dataplane::Kernel;
    spec
}
