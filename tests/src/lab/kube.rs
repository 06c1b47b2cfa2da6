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
            spec.dual_stack,
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

    /// The IPv6 podCIDR a dual-stack lab gives `node`: the /64 numbered N
    /// in `IPv6Network` fd00:10:244::/56 (`fd00:10:244:N::/64`), as
    /// flannel's default `IPv6SubnetLen` cuts it.
    pub fn pod_cidr_v6(node: NodeId) -> String {
        format!("fd00:10:244:{:x}::/64", node.number())
    }

    pub(super) fn register_node(&self, node: NodeId) -> Result<()> {
        let state = self.node(node);
        let kube = self.kube()?;
        if self.state.ipv6_only {
            // One IPv6 podCIDR, as node IPAM gives an IPv6-only cluster's
            // Nodes, and the node's IPv6 address.
            let pod_cidr = Self::pod_cidr_v6(node);
            let internal_ip = state
                .ip6
                .as_deref()
                .ok_or_else(|| anyhow!("{} has no IPv6 address in an IPv6-only lab", state.ns))?;
            return kube.register_node(&NodeRegistration {
                name: state.node_name(),
                internal_ip,
                pod_cidr: &pod_cidr,
            });
        }
        let pod_cidr = Self::pod_cidr(node);
        let registration = NodeRegistration {
            name: state.node_name(),
            internal_ip: &state.ip,
            pod_cidr: &pod_cidr,
        };
        if self.state.dual_stack {
            kube.register_dual_stack_node(&registration, &Self::pod_cidr_v6(node))
        } else {
            kube.register_node(&registration)
        }
    }
}

// kube-tests-a: what a kube-mode lab's nodes publish and hold, as the kube
// subnet manager's end-to-end tests check it.

impl Lab {
    /// The flannel annotations flanneld v0.20.2 publishes on `node`'s Node
    /// for this lab's backend, keyed without the prefix; the VTEP MAC is
    /// flannel.1's as the node's kernel has it. A dual-stack lab adds
    /// `public-ipv6` (the node's IPv6 address) and `backend-v6-data`
    /// (flannel-v6.1's MAC for vxlan, `null` for host-gw), as
    /// subnet/kube/kube.go's `AcquireLease` writes them.
    pub fn flanneld_annotations(
        &self,
        node: NodeId,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let state = self.node(node);
        let vtep = |mac: String| format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#);
        let (backend_type, backend_data) = match self.state.backend {
            super::Backend::Vxlan => ("vxlan", vtep(crate::flannel::vtep_mac(state)?)),
            super::Backend::HostGw => ("host-gw", "null".to_owned()),
        };
        let mut annotations = vec![
            ("backend-data", backend_data),
            ("backend-type", backend_type.to_owned()),
            ("kube-subnet-manager", "true".to_owned()),
            ("public-ip", state.ip.clone()),
        ];
        if self.state.dual_stack {
            let ip6 = state
                .ip6
                .clone()
                .ok_or_else(|| anyhow!("{} has no IPv6 address in a dual-stack lab", state.ns))?;
            let backend_v6_data = match self.state.backend {
                super::Backend::Vxlan => vtep(crate::flannel_dual_stack::vtep_v6_mac(state)?),
                super::Backend::HostGw => "null".to_owned(),
            };
            annotations.push(("backend-v6-data", backend_v6_data));
            annotations.push(("public-ipv6", ip6));
        }
        Ok(annotations
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect())
    }

    /// `subnet.env` as flanneld writes it for `node`: the Network of the
    /// lab's net-conf.json, the first address of the node's podCIDR, the
    /// backend's MTU (the uplink's 1500, less 50 for VXLAN) and, in a
    /// dual-stack lab, `IPv6Network` and the first address after the IPv6
    /// podCIDR's own, between the IPv4 pair and the MTU, with `mtu` (the MTU
    /// is the one line where weft and flanneld differ there: see
    /// docs/kernel-path.md's dual-stack MTU).
    pub fn flanneld_subnet_env(&self, node: NodeId) -> Result<String> {
        let mtu = match self.state.backend {
            super::Backend::Vxlan => 1450,
            super::Backend::HostGw => 1500,
        };
        self.subnet_env_with_mtu(node, mtu)
    }

    /// [`Lab::flanneld_subnet_env`] with `mtu` as FLANNEL_MTU.
    pub fn subnet_env_with_mtu(&self, node: NodeId, mtu: u64) -> Result<String> {
        let net_conf = std::fs::read_to_string(&self.kube()?.net_conf)?;
        let net_conf: serde_json::Value = serde_json::from_str(&net_conf)?;
        let field = |name: &str| {
            net_conf[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("net-conf.json has no {name}: {net_conf}"))
        };
        let network = field("Network")?;
        let pod_cidr: ipnet::Ipv4Net = Self::pod_cidr(node).parse()?;
        let gateway = pod_cidr
            .hosts()
            .next()
            .ok_or_else(|| anyhow!("podCIDR {pod_cidr} has no host address"))?;
        let ipv6 = if self.state.dual_stack {
            let pod_cidr_v6: ipnet::Ipv6Net = Self::pod_cidr_v6(node).parse()?;
            format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}/{}\n",
                field("IPv6Network")?,
                std::net::Ipv6Addr::from(u128::from(pod_cidr_v6.network()) + 1),
                pod_cidr_v6.prefix_len()
            )
        } else {
            String::new()
        };
        Ok(format!(
            "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={gateway}/{}\n{ipv6}FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={}\n",
            pod_cidr.prefix_len(),
            self.state.ip_masq
        ))
    }

    /// Checks that `node`'s Node and subnet.env hold exactly what flanneld
    /// v0.20.2 writes: the podCIDR the lab registered, the four flannel
    /// annotations and no other, `NetworkUnavailable=False` with flanneld's
    /// reason and message, and subnet.env byte for byte. A dual-stack lab's
    /// Node also holds both podCIDRs and the two IPv6 annotations, and its
    /// subnet.env the IPv6 pair (FLANNEL_MTU is left to the caller). The
    /// error names the first difference.
    pub fn check_published_as_flanneld(&self, node: NodeId) -> Result<()> {
        let name = self.node(node).node_name();
        let object = self.kube()?.node(name)?;
        let pod_cidr = Self::pod_cidr(node);
        anyhow::ensure!(
            object["spec"]["podCIDR"] == pod_cidr.as_str(),
            "Node {name}: podCIDR {} instead of {pod_cidr}",
            object["spec"]["podCIDR"]
        );
        if self.state.dual_stack {
            let pod_cidrs = serde_json::json!([pod_cidr, Self::pod_cidr_v6(node)]);
            anyhow::ensure!(
                object["spec"]["podCIDRs"] == pod_cidrs,
                "Node {name}: podCIDRs {} instead of {pod_cidrs}",
                object["spec"]["podCIDRs"]
            );
        }
        let found = kube::flannel_annotations(&object)?;
        let expected = self.flanneld_annotations(node)?;
        anyhow::ensure!(
            found == expected,
            "Node {name}: flannel annotations\n  found    {found:?}\n  expected {expected:?}"
        );
        let unavailable = kube::condition(&object, "NetworkUnavailable")
            .ok_or_else(|| anyhow!("Node {name}: no NetworkUnavailable condition: {object}"))?;
        anyhow::ensure!(
            unavailable["status"] == "False"
                && unavailable["reason"] == "FlannelIsUp"
                && unavailable["message"] == kube::FLANNEL_IS_UP_MESSAGE,
            "Node {name}: NetworkUnavailable is not flanneld's: {unavailable}"
        );
        let subnet_file = &self.node(node).subnet_file;
        let env = std::fs::read_to_string(subnet_file)
            .with_context(|| format!("reading {}", subnet_file.display()))?;
        // A dual-stack node's FLANNEL_MTU is weft's own (the caller checks
        // it); every other line is flanneld's.
        let expected_env = if self.state.dual_stack {
            self.subnet_env_with_mtu(node, subnet_env_mtu(&env)?)?
        } else {
            self.flanneld_subnet_env(node)?
        };
        anyhow::ensure!(
            env == expected_env,
            "{}:\n{env}expected\n{expected_env}",
            subnet_file.display()
        );
        Ok(())
    }

    /// What `node` holds for `peer` (by the subnet in the peer's subnet.env,
    /// its podCIDR in kube mode, and its underlay address): routes,
    /// flannel.1's neighbour and FDB entries and, on an eBPF node, PEERS and
    /// VTEPS entries.
    pub fn peer_traces(&self, node: NodeId, peer: NodeId) -> Result<kube::PeerTraces> {
        let ns = &self.node(node).ns;
        let peer_ip = self.node(peer).ip.as_str();
        let pod_cidr = self.node(peer).subnet.clone();
        let vtep_address = pod_cidr.parse::<ipnet::Ipv4Net>()?.network().to_string();
        let vxlan = crate::inspect::link(ns, "flannel.1")?.is_some();
        let list = |value: serde_json::Value| value.as_array().cloned().unwrap_or_default();
        let mut traces = kube::PeerTraces {
            routes: crate::inspect::routes_to(ns, &pod_cidr)?,
            neighbours: Vec::new(),
            fdb: Vec::new(),
            peers: Vec::new(),
            vteps: Vec::new(),
        };
        if vxlan {
            traces.neighbours = crate::inspect::neighbours(ns, "flannel.1")?
                .into_iter()
                .filter(|entry| entry["dst"] == vtep_address.as_str())
                .collect();
            traces.fdb = crate::inspect::fdb(ns, "flannel.1")?
                .into_iter()
                .filter(|entry| entry["dst"] == peer_ip)
                .collect();
        }
        if self.node(node).dataplane == super::Dataplane::Ebpf {
            traces.peers = list(self.maps_json(node, "peers")?)
                .into_iter()
                .filter(|row| row["subnet"] == pod_cidr.as_str())
                .collect();
            traces.vteps = list(self.maps_json(node, "vteps")?)
                .into_iter()
                .filter(|row| row["source"] == peer_ip)
                .collect();
        }
        Ok(traces)
    }
}

/// FLANNEL_MTU of a subnet.env's text.
fn subnet_env_mtu(env: &str) -> Result<u64> {
    env.lines()
        .find_map(|line| line.strip_prefix("FLANNEL_MTU="))
        .ok_or_else(|| anyhow!("subnet.env has no FLANNEL_MTU:\n{env}"))?
        .parse()
        .context("FLANNEL_MTU is not a number")
}

// kube-failures: the lab's API server stopped and started again, an agent
// started without waiting for it to be ready, a node registered again
// without a podCIDR (the helpers of tests/tests/lab/kube_failures.rs).

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
