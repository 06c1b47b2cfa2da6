//! What a running lab records in its run directory (`state.json`), so
//! `status` and `down` work from any process.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Backend, Dataplane, NodeId, SubnetManager};
use crate::{cni::PodNetwork, kube::KubeState};

pub const RUN_ROOT: &str = "/run/weft-lab";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub backend: Backend,
    pub dataplane: Dataplane,
    pub weft_bin: PathBuf,
    #[serde(default)]
    pub flanneld_bin: Option<PathBuf>,
    pub run_dir: PathBuf,
    pub underlay_ns: String,
    pub etcd_endpoint: String,
    pub ip_masq: bool,
    pub agent_args: Vec<String>,
    /// The capabilities each weft agent is bounded to
    /// (`LabSpec::agent_capabilities`).
    #[serde(default)]
    pub agent_capabilities: Option<Vec<u32>>,
    pub second_segment_from: Option<NodeId>,
    /// The URL of the lab's Prometheus (inside the underlay), if it runs one.
    #[serde(default)]
    pub prometheus: Option<String>,
    #[serde(default)]
    pub subnet_manager: SubnetManager,
    /// The lab's kube-apiserver, with [`SubnetManager::Kube`].
    #[serde(default)]
    pub kube: Option<KubeState>,
    /// Whether the lab is dual-stack (`LabSpec::dual_stack`).
    #[serde(default)]
    pub dual_stack: bool,
    /// Whether the network is IPv6-only (`LabSpec::ipv6_only`).
    #[serde(default)]
    pub ipv6_only: bool,
    pub nodes: Vec<NodeState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub id: NodeId,
    pub ns: String,
    pub ip: String,
    /// The node's IPv6 underlay address on `eth0` (dual-stack labs).
    #[serde(default)]
    pub ip6: Option<String>,
    pub dataplane: Dataplane,
    /// The node's pod subnet, from the subnet.env its agent wrote (empty on
    /// an IPv6-only node).
    pub subnet: String,
    /// The node's IPv6 pod subnet, from the same subnet.env (dual-stack).
    #[serde(default)]
    pub subnet6: Option<String>,
    pub subnet_file: PathBuf,
    pub pin_dir: PathBuf,
    pub agent_log: Option<PathBuf>,
    pub pods: Vec<PodState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    pub ns: String,
    pub network: PodNetwork,
}

impl PodState {
    pub fn ip(&self) -> &str {
        self.network.ip()
    }

    /// The pod's IPv6 address (dual-stack labs); panics naming the pod in
    /// any other lab, where a test asking for it is wrong.
    pub fn ip6(&self) -> &str {
        self.network
            .ip6()
            .unwrap_or_else(|| panic!("pod {} has no IPv6 address", self.ns))
    }
}

impl NodeState {
    /// The node's name as a Kubernetes Node: its namespace's name.
    pub fn node_name(&self) -> &str {
        &self.ns
    }

    /// `<lab>-nN.agent.pid`: weft's or flanneld's, whichever runs.
    pub fn agent_pid_file(&self, run_dir: &Path) -> PathBuf {
        run_dir.join(format!("{}.agent.pid", self.ns))
    }
}

pub fn run_dir(name: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(name)
}

/// Reads a running lab's recorded state.
pub fn load(name: &str) -> Result<LabState> {
    let path = run_dir(name).join("state.json");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("no lab named {name} (no {})", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a lab state file", path.display()))
}
