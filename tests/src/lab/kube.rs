//! A lab with the kube subnet manager: the real kube-apiserver in the
//! underlay (see [`crate::kube`]), every node registered as a Node with its
//! podCIDR, and the agents pointed at it instead of etcd.

use anyhow::{Context as _, Result, anyhow};

use super::{Lab, LabSpec, NodeId, UNDERLAY_GATEWAY};
use crate::kube::{self, KubeState, NodeRegistration};

impl Lab {
    pub(super) fn start_kube_apiserver(&mut self, spec: &LabSpec, net_conf: &str) -> Result<()> {
        let bin_dir = spec
            .kubernetes_bin
            .as_ref()
            .ok_or_else(|| anyhow!("no Kubernetes binaries (set {})", kube::BINARY_ENV))?;
        let state = kube::start(
            &self.state.underlay_ns,
            UNDERLAY_GATEWAY,
            &self.state.etcd_endpoint,
            &self.state.run_dir,
            bin_dir,
            net_conf,
        )
        .context("cannot start the lab's kube-apiserver")?;
        self.state.kube = Some(state);
        self.save()
    }

    /// The lab's API server, if it runs one.
    pub fn kube(&self) -> Result<&KubeState> {
        self.state.kube.as_ref().ok_or_else(|| {
            anyhow!(
                "lab {} runs no kube-apiserver (bring it up with --subnet-manager kube)",
                self.state.name
            )
        })
    }

    /// The podCIDR the lab gives `node`: 10.244.N.0/24 for node N.
    pub fn pod_cidr(node: NodeId) -> String {
        format!("10.244.{}.0/24", node.number())
    }

    pub(super) fn register_node(&self, node: NodeId) -> Result<()> {
        let state = self.node(node);
        self.kube()?.register_node(&NodeRegistration {
            name: state.node_name(),
            internal_ip: &state.ip,
            pod_cidr: &Self::pod_cidr(node),
        })
    }
}
