//! The cluster lab, as docs/architecture.md (The lab) describes it:
//!
//! - underlay namespace `L-ul` with bridge `ul0` at 192.168.77.254/24 and the
//!   real etcd server (client URL http://192.168.77.254:2379);
//! - node namespaces `L-n1`, `L-n2`, ... whose `eth0` is a veth into `ul0`
//!   (192.168.77.N/24), behaving like a wire: TSO/GSO off, GRO on;
//! - pod namespaces `L-nN-pM` wired by the real CNI bridge + host-local
//!   plugins from the node's flannel-style `subnet.env`;
//! - one agent per node with its own pin dir `/sys/fs/bpf/L-nN`;
//! - dual-stack labs (`LabSpec::dual_stack`) add IPv6 to all of it:
//!   `fd00:192:168:77::254/64` on `ul0`, `fd00:192:168:77::N/64` on each
//!   node's `eth0`, the network config's `IPv6Network` `fd00:10:244::/56`,
//!   and an IPv6 address on every pod from the node's `FLANNEL_IPV6_SUBNET`.
//!
//! The lab writes the network config to etcd; each node's agent leases a
//! subnet, programs its datapath and writes the `subnet.env` the node's pods
//! are then wired from.
//!
//! Everything a lab creates is named after it, so `down(name)` can remove it
//! all (also from another process, after a crash, or on Ctrl-C).

mod agents;
mod counters;
mod kube;
mod monitoring;
mod node_id;
mod probes;
mod spec;
mod state;
mod teardown;
mod topology;

use std::{
    fs,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use weft_agent::subnet_env;

pub use agents::*;
pub use counters::*;
pub use monitoring::prometheus_url;
pub use node_id::NodeId;
pub use probes::{ping_counts, pod_addresses};
pub use spec::*;
pub use state::*;
pub use teardown::*;
pub use topology::*;

use crate::{etcd, netns};
use spec::validate;
use teardown::{install_interrupt_teardown, register, unregister};

/// A running lab. Dropping it tears everything down unless [`Lab::keep`] was
/// called (the CLI's `lab up` leaves the lab for `lab down`).
pub struct Lab {
    pub state: LabState,
    keep: bool,
}

impl Lab {
    /// Brings a lab up; on any error everything created so far is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        validate(spec)?;
        install_interrupt_teardown();
        let run_dir = run_dir(&spec.name);
        if run_dir.exists() || netns::list()?.contains(&format!("{}-ul", spec.name)) {
            bail!(
                "a lab named {} already exists; remove it with `cargo xtask lab down --name {}`",
                spec.name,
                spec.name
            );
        }
        register(&spec.name);
        let mut lab = Lab {
            state: LabState {
                name: spec.name.clone(),
                backend: spec.backend,
                dataplane: spec.dataplane,
                weft_bin: spec.weft_bin.clone(),
                flanneld_bin: spec.flanneld_bin.clone(),
                run_dir: run_dir.clone(),
                underlay_ns: format!("{}-ul", spec.name),
                etcd_endpoint: format!("http://{UNDERLAY_GATEWAY}:{}", etcd::CLIENT_PORT),
                ip_masq: spec.ip_masq,
                agent_args: spec.agent_args.clone(),
                agent_capabilities: spec.agent_capabilities.clone(),
                second_segment_from: spec.second_segment_from,
                prometheus: None,
                subnet_manager: spec.subnet_manager,
                kube: None,
                dual_stack: spec.dual_stack,
                ipv6_only: spec.ipv6_only,
                nodes: Vec::new(),
            },
            keep: false,
        };
        // On error `lab` is dropped here, which tears down what exists.
        lab.build(spec)
            .with_context(|| format!("cannot bring lab {} up", spec.name))?;
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        fs::create_dir_all(&self.state.run_dir)?;
        self.save()?;
        self.build_underlay()?;
        self.start_etcd()?;
        ensure!(
            !spec.ipv6_only || (spec.dual_stack && spec.subnet_manager == SubnetManager::Kube),
            "an IPv6-only lab runs on the dual-stack underlay with the kube subnet manager (flannel runs IPv6-only with it only)"
        );
        let config = spec.network_config.clone().unwrap_or_else(|| {
            if spec.ipv6_only {
                spec.backend.ipv6_only_network_config()
            } else if spec.dual_stack {
                spec.backend.dual_stack_network_config()
            } else {
                spec.backend.network_config()
            }
        });
        match spec.subnet_manager {
            SubnetManager::Etcd => self.etcd().put(&format!("{ETCD_PREFIX}/config"), &config)?,
            // The config lives in net-conf.json, as kube-flannel-cfg mounts it.
            SubnetManager::Kube => self.start_kube_apiserver(spec, &config)?,
        }
        for id in NodeId::all(spec.nodes) {
            let node = self.build_node(id, spec.dataplane_of(id))?;
            self.state.nodes.push(node);
            self.save()?;
            if spec.subnet_manager == SubnetManager::Kube {
                self.register_node(id)?;
            }
        }
        if let Some(subnet) = &spec.preset_subnet_env {
            for node in &self.state.nodes {
                let env = subnet_env::SubnetEnv {
                    ipv4: Some(subnet_env::Ipv4SubnetEnv {
                        network: POD_NETWORK.parse()?,
                        subnet: subnet.parse()?,
                    }),
                    ipv6: None,
                    mtu: 1450,
                    ipmasq: false,
                };
                subnet_env::write_atomic(&node.subnet_file, &env)?;
            }
        }
        if spec.dataplane == Dataplane::Floor {
            ensure!(
                spec.node_dataplanes.is_empty(),
                "a floor lab runs no agent on any node"
            );
            self.route_without_overlay()?;
        } else if spec.runs_flanneld() {
            // One after another, then every flanneld but the last started
            // once more: stock flanneld v0.20.2 can miss a lease written
            // soon after its own start (its etcd watch reads only the first
            // event of each response), and a flanneld started after every
            // lease exists lists them all.
            for node in self.node_ids() {
                self.start_agent(node)?;
            }
            let last = self.node_ids().last();
            for node in self.node_ids() {
                if Some(node) != last && self.node(node).dataplane == Dataplane::Flanneld {
                    self.replace_agent(node, Dataplane::Flanneld)?;
                }
            }
        } else {
            // Agents first, all at once: each leases a subnet and writes the
            // subnet.env the CNI config is derived from.
            for node in self.node_ids() {
                self.spawn_agent(node)?;
            }
            for node in self.node_ids() {
                self.wait_agent_ready(node)?;
            }
        }
        for node in self.node_ids() {
            for pod in 1..=spec.pods_per_node {
                self.add_pod(node, pod)?;
            }
        }
        for node in self.node_ids() {
            if self.node(node).dataplane == Dataplane::Ebpf {
                self.wait_pods_attached(node)?;
            }
        }
        if spec.prometheus {
            self.start_prometheus()?;
        }
        self.save()
    }

    pub fn node(&self, node: NodeId) -> &NodeState {
        &self.state.nodes[node.position()]
    }

    pub(crate) fn node_mut(&mut self, node: NodeId) -> &mut NodeState {
        &mut self.state.nodes[node.position()]
    }

    /// Every node of the lab, in order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + use<> {
        NodeId::all(self.state.nodes.len())
    }

    /// Every pod, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &PodState> {
        self.state.nodes.iter().flat_map(|node| node.pods.iter())
    }

    /// Leaves the lab running when this handle is dropped.
    pub fn keep(mut self) -> LabState {
        self.keep = true;
        unregister(&self.state.name);
        self.state.clone()
    }

    fn save(&self) -> Result<()> {
        let path = self.state.run_dir.join("state.json");
        fs::write(&path, serde_json::to_string_pretty(&self.state)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep
            && let Err(error) = down(&self.state.name)
        {
            eprintln!("lab {}: teardown incomplete: {error:#}", self.state.name);
        }
    }
}

/// Polls `check` until it is true; errors (naming `what`) on timeout or when
/// `check` fails.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50));
    }
}
