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

// kube-failures: the lab's API server stopped and started again, an agent
// started without waiting for it to be ready, a node registered again
// without a podCIDR (the helpers of tests/tests/kube_failures.rs).

impl Lab {
    /// Stops the lab's kube-apiserver; [`Lab::restart_kube_apiserver`]
    /// starts it again as it was.
    pub fn stop_kube_apiserver(&self) -> Result<kube::ApiserverCommand> {
        self.kube()?.stop_apiserver(&self.state.run_dir)
    }

    pub fn restart_kube_apiserver(&self, command: &kube::ApiserverCommand) -> Result<()> {
        self.kube()?.restart_apiserver(&self.state.run_dir, command)
    }

    /// Starts `node`'s agent and returns its pid without waiting for it to
    /// be ready (one that cannot be ready yet); [`Lab::wait_until_ready`]
    /// waits for it.
    pub fn launch_agent(&mut self, node: NodeId) -> Result<u32> {
        self.spawn_agent(node)
    }

    /// Waits until `node`'s running agent is ready (as [`Lab::start_agent`]
    /// does), then, with the eBPF dataplane, until it has every pod in its maps.
    pub fn wait_until_ready(&mut self, node: NodeId) -> Result<()> {
        self.wait_agent_ready(node)?;
        if self.node(node).dataplane == super::Dataplane::Ebpf {
            self.wait_pods_attached(node)?;
        }
        Ok(())
    }

    /// Stops `node`'s agent (SIGTERM) and registers its Node again without
    /// a podCIDR and without flannel's annotations, as after a reinstall
    /// before node IPAM has assigned one.
    pub fn reregister_without_pod_cidr(&self, node: NodeId) -> Result<()> {
        self.stop_agent(node, nix::sys::signal::Signal::SIGTERM)?;
        self.kube()?
            .reregister_node_without_pod_cidr(self.node(node).node_name())
    }
}
