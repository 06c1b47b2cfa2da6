//! The lab's wiring: the underlay namespace and bridges, the node
//! namespaces, pods via the real CNI plugins, and the floor's plain routes.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use weft_agent::subnet_env;

use super::{Dataplane, Lab, NodeId, NodeState, PodState};
use crate::{cni, etcd, host::BPFFS, netns, process};

pub const UNDERLAY_BRIDGE: &str = "ul0";
/// The second underlay segment's bridge (labs with `second_segment_from`),
/// at 192.168.78.254/24; the underlay namespace routes between the two.
pub const SECOND_BRIDGE: &str = "ul1";
pub const SECOND_GATEWAY: &str = "192.168.78.254";
pub const UNDERLAY_GATEWAY: &str = "192.168.77.254";
pub const UNDERLAY_PREFIX: u8 = 24;
pub const POD_NETWORK: &str = "10.244.0.0/16";
/// Dual-stack labs: the underlay's IPv6 segments (unique local addresses
/// that read like the IPv4 ones: node 3 is 192.168.77.3 and
/// fd00:192:168:77::3) and gateways, and the IPv6 pod network.
pub const UNDERLAY_GATEWAY_V6: &str = "fd00:192:168:77::254";
pub const SECOND_GATEWAY_V6: &str = "fd00:192:168:78::254";
pub const UNDERLAY_PREFIX_V6: u8 = 64;
pub const POD_NETWORK_V6: &str = "fd00:10:244::/56";
pub const UPLINK: &str = "eth0";
pub const ETCD_PREFIX: &str = "/coreos.com/network";

impl Lab {
    /// The floor: node N owns 10.244.N.0/24 and every node routes the others'
    /// subnets via their addresses, with no agent and no encapsulation.
    /// Dual-stack: node N also owns fd00:10:244:N::/64 (N in hex, inside the
    /// /56) and routes the others' via their IPv6 underlay addresses.
    pub(super) fn route_without_overlay(&mut self) -> Result<()> {
        let dual_stack = self.state.dual_stack;
        for node in &mut self.state.nodes {
            let ipv6 = if dual_stack {
                Some(subnet_env::Ipv6SubnetEnv {
                    network: POD_NETWORK_V6.parse()?,
                    subnet: format!("fd00:10:244:{:x}::1/64", node.id.number()).parse()?,
                })
            } else {
                None
            };
            let ipv4 = subnet_env::Ipv4SubnetEnv {
                network: POD_NETWORK.parse()?,
                subnet: format!("10.244.{}.1/24", node.id.number()).parse()?,
            };
            let env = subnet_env::SubnetEnv {
                ipv4: Some(ipv4),
                ipv6,
                mtu: 1500,
                ipmasq: false,
            };
            subnet_env::write_atomic(&node.subnet_file, &env)?;
            node.subnet = ipv4.subnet.trunc().to_string();
            node.subnet6 = env.ipv6.map(|ipv6| ipv6.subnet.trunc().to_string());
        }
        for node in &self.state.nodes {
            for peer in self.state.nodes.iter().filter(|peer| peer.id != node.id) {
                let mut routes = vec![(peer.subnet.as_str(), peer.ip.as_str())];
                if let (Some(subnet6), Some(ip6)) = (&peer.subnet6, &peer.ip6) {
                    routes.push((subnet6, ip6));
                }
                for (subnet, via) in routes {
                    netns::run_host(&[
                        "ip", "-n", &node.ns, "route", "replace", subnet, "via", via, "dev", UPLINK,
                    ])?;
                }
            }
        }
        Ok(())
    }

    /// A client for the lab's etcd.
    pub fn etcd(&self) -> etcd::LabEtcd {
        etcd::LabEtcd {
            ns: self.state.underlay_ns.clone(),
            endpoint: self.state.etcd_endpoint.clone(),
            credentials: None,
        }
    }

    /// Starts (or restarts, keeping its data) the lab's etcd.
    pub fn start_etcd(&self) -> Result<()> {
        etcd::start(
            &self.state.underlay_ns,
            UNDERLAY_GATEWAY,
            &self.state.run_dir,
        )
        .map(drop)
    }

    /// Stops the lab's etcd (SIGTERM); its data stays for `start_etcd`.
    pub fn stop_etcd(&self) -> Result<()> {
        process::stop(
            &self.state.run_dir.join("etcd.pid"),
            Duration::from_secs(10),
        )
    }

    pub(super) fn build_underlay(&self) -> Result<()> {
        let ul = &self.state.underlay_ns;
        netns::add(ul)?;
        netns::run_host(&[
            "ip",
            "-n",
            ul,
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "type",
            "bridge",
        ])?;
        netns::run_host(&[
            "ip",
            "-n",
            ul,
            "addr",
            "add",
            &format!("{UNDERLAY_GATEWAY}/{UNDERLAY_PREFIX}"),
            "dev",
            UNDERLAY_BRIDGE,
        ])?;
        netns::run_host(&["ip", "-n", ul, "link", "set", UNDERLAY_BRIDGE, "up"])?;
        if self.state.dual_stack {
            add_address_v6(ul, UNDERLAY_BRIDGE, UNDERLAY_GATEWAY_V6)?;
        }
        // The underlay bridges stand for the switches between nodes, which
        // run no netfilter: without this, br_netfilter (built in here) runs
        // every bridged frame through the underlay namespace's hooks, which
        // costs VXLAN (one frame per segment, not merged by GRO before the
        // bridge) far more than plain TCP (docs/performance/profile.md).
        for family in ["iptables", "ip6tables", "arptables"] {
            netns::sysctl(ul, &format!("net/bridge/bridge-nf-call-{family}"), "0")?;
        }
        if self.state.second_segment_from.is_some() {
            netns::run_host(&[
                "ip",
                "-n",
                ul,
                "link",
                "add",
                SECOND_BRIDGE,
                "type",
                "bridge",
            ])?;
            netns::run_host(&[
                "ip",
                "-n",
                ul,
                "addr",
                "add",
                &format!("{SECOND_GATEWAY}/{UNDERLAY_PREFIX}"),
                "dev",
                SECOND_BRIDGE,
            ])?;
            netns::run_host(&["ip", "-n", ul, "link", "set", SECOND_BRIDGE, "up"])?;
            // The underlay namespace is the router between the segments.
            netns::sysctl(ul, "net/ipv4/ip_forward", "1")?;
            if self.state.dual_stack {
                add_address_v6(ul, SECOND_BRIDGE, SECOND_GATEWAY_V6)?;
                netns::sysctl(ul, "net/ipv6/conf/all/forwarding", "1")?;
            }
        }
        Ok(())
    }

    pub(super) fn build_node(&self, id: NodeId, dataplane: Dataplane) -> Result<NodeState> {
        let ns = format!("{}-{id}", self.state.name);
        let ul = &self.state.underlay_ns;
        let ul_port = id.to_string();
        let second = self
            .state
            .second_segment_from
            .is_some_and(|first| id >= first);
        let (bridge, gateway, ip) = if second {
            (
                SECOND_BRIDGE,
                SECOND_GATEWAY,
                format!("192.168.78.{}", id.number()),
            )
        } else {
            (
                UNDERLAY_BRIDGE,
                UNDERLAY_GATEWAY,
                format!("192.168.77.{}", id.number()),
            )
        };
        let (gateway6, ip6) = if second {
            (
                SECOND_GATEWAY_V6,
                format!("fd00:192:168:78::{}", id.number()),
            )
        } else {
            (
                UNDERLAY_GATEWAY_V6,
                format!("fd00:192:168:77::{}", id.number()),
            )
        };
        netns::add(&ns)?;
        if self.state.dual_stack {
            // Every address this node gets from now on (cni0's gateway, pod
            // veths moved in) is usable at once: duplicate address
            // detection would hold each back for a second or more.
            no_dad(&ns)?;
        }
        // Both ends are created directly in their namespaces: nothing ever
        // appears in the host namespace, so labs cannot collide there.
        netns::run_host(&[
            "ip", "link", "add", "name", UPLINK, "netns", &ns, "type", "veth", "peer", "name",
            &ul_port, "netns", ul,
        ])?;
        netns::run_host(&[
            "ip", "-n", ul, "link", "set", &ul_port, "master", bridge, "up",
        ])?;
        netns::run_host(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/{UNDERLAY_PREFIX}"),
            "dev",
            UPLINK,
        ])?;
        netns::run_host(&["ip", "-n", &ns, "link", "set", UPLINK, "up"])?;
        // Everything off the segment (etcd on the other one, for a start)
        // goes through the segment's gateway.
        netns::run_host(&[
            "ip", "-n", &ns, "route", "add", "default", "via", gateway, "dev", UPLINK,
        ])?;
        if self.state.dual_stack {
            add_address_v6(&ns, UPLINK, &ip6)?;
            netns::run_host(&[
                "ip", "-n", &ns, "-6", "route", "add", "default", "via", gateway6, "dev", UPLINK,
            ])?;
        }
        // A wire carries MTU-sized frames: no veth super-frames; GRO on, as a
        // NIC driver does.
        netns::run(
            &ns,
            &[
                "ethtool", "-K", UPLINK, "tso", "off", "gso", "off", "gro", "on", "tx", "off",
            ],
        )?;
        netns::run(
            ul,
            &[
                "ethtool", "-K", &ul_port, "tso", "off", "gso", "off", "gro", "on", "tx", "off",
            ],
        )?;
        netns::sysctl(&ns, "net/ipv4/ip_forward", "1")?;
        // As Kubernetes requires: bridged (same-node) pod traffic goes
        // through netfilter, which is how weft learns its verdicts.
        netns::sysctl(&ns, "net/bridge/bridge-nf-call-iptables", "1").context(
            "br_netfilter is not loaded (`modprobe br_netfilter`, or `cargo xtask setup`)",
        )?;
        if self.state.dual_stack {
            netns::sysctl(&ns, "net/ipv6/conf/all/forwarding", "1")?;
            netns::sysctl(&ns, "net/bridge/bridge-nf-call-ip6tables", "1")?;
        }

        let node_dir = self.state.run_dir.join(&ns);
        fs::create_dir_all(&node_dir)?;
        Ok(NodeState {
            id,
            ns: ns.clone(),
            ip,
            ip6: self.state.dual_stack.then_some(ip6),
            dataplane,
            subnet: String::new(),
            subnet6: None,
            subnet_file: node_dir.join("subnet.env"),
            pin_dir: Path::new(BPFFS).join(&ns),
            agent_log: None,
            pods: Vec::new(),
        })
    }

    pub(super) fn add_pod(&mut self, node: NodeId, pod: usize) -> Result<()> {
        let state = self.node(node);
        let pod_ns = format!("{}-p{pod}", state.ns);
        netns::add(&pod_ns)?;
        if self.state.dual_stack {
            no_dad(&pod_ns)?;
        }
        let env = subnet_env::read_if_present(&state.subnet_file)?
            .ok_or_else(|| anyhow!("{} has no subnet.env", state.ns))?;
        let config =
            cni::flannel_bridge_config(&env, &self.state.run_dir.join(&state.ns).join("ipam"));
        let network = cni::add_pod(&state.ns, &pod_ns, &config)?;
        if env.ipv6.is_some() {
            anyhow::ensure!(
                network.address6.is_some(),
                "CNI gave {pod_ns} no IPv6 address from a dual-stack subnet.env"
            );
            // Whatever the plugins left tentative must be usable before a
            // test sends its first packet.
            wait_no_tentative(&pod_ns)?;
            wait_no_tentative(&state.ns)?;
        }
        self.node_mut(node).pods.push(PodState {
            ns: pod_ns,
            network,
        });
        self.save()
    }
}

/// Adds IPv6 `address`/64 to `dev` in `ns`, usable at once (`nodad`: the lab
/// hands out every address itself, so none can be a duplicate).
fn add_address_v6(ns: &str, dev: &str, address: &str) -> Result<()> {
    netns::run_host(&[
        "ip",
        "-n",
        ns,
        "-6",
        "addr",
        "add",
        &format!("{address}/{UNDERLAY_PREFIX_V6}"),
        "dev",
        dev,
        "nodad",
    ])
    .map(drop)
}

/// Turns duplicate address detection off for every interface `ns` gets
/// from now on (and the ones it has).
fn no_dad(ns: &str) -> Result<()> {
    for conf in ["default", "all"] {
        netns::sysctl(ns, &format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
    }
    Ok(())
}

/// Waits until no IPv6 address in `ns` is tentative (duplicate address
/// detection done, or off).
fn wait_no_tentative(ns: &str) -> Result<()> {
    super::wait_for(
        &format!("the IPv6 addresses in {ns} to leave the tentative state"),
        Duration::from_secs(10),
        || Ok(netns::run_host(&["ip", "-n", ns, "-6", "addr", "show", "tentative"])?.is_empty()),
    )
}
