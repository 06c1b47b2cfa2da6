//! What the datapath should hold, computed from the inputs and nothing else:
//! no netlink, no maps, no etcd. Every sink consumes the same [`Desired`]:
//! the kernel writer (`dataplane/kernel.rs`) takes `routes`, the overlay
//! guard (`dataplane/guard.rs`) `members`, the map writer
//! (`dataplane/maps.rs`) `peers`, `vteps`, `endpoints` and `config`, and
//! the fast path (`dataplane/fastpath.rs`) pins `pod_neighbours` on the
//! bridge (`dataplane/pod_neighbours.rs`). So the VXLAN-or-direct decision,
//! the next-hop MAC, CONFIG, the pods' pinned MACs and the overlay MTU each
//! come from exactly one place: here.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Result, anyhow, bail};
use ipnet::Ipv4Net;
use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_TC_BRIDGE, CONFIG_TC_UPLINK,
    CONFIG_TC_VTEP, CONFIG_UPLINK_XDP, CONFIG_VERDICT_PROBES, ENDPOINT_TC_RECEIVES,
    ENDPOINT_TC_SENDS, ENDPOINT_XDP_READY, Endpoint, NodeConfig, Peer, PeerMode, Vtep,
};

use crate::{
    config::{BackendConfig, NetworkConfig},
    endpoints::LocalView,
    lease::{
        MacAddr,
        validate::{AcceptedPeer, PeerBackend},
    },
    tc::{TcHooks, TcView},
};

/// VXLAN's encapsulation overhead (outer Ethernet, IPv4, UDP, VXLAN).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The pods' MTU (and `flannel.<VNI>`'s): the configured VXLAN MTU, else the
/// uplink's less the encapsulation; the uplink's own for host-gw.
pub fn overlay_mtu(config: &NetworkConfig, uplink_mtu: u32) -> u32 {
    match &config.backend {
        BackendConfig::Vxlan { mtu, .. } => mtu.unwrap_or(uplink_mtu - VXLAN_OVERHEAD),
        BackendConfig::HostGw => uplink_mtu,
    }
}

/// How one remote subnet is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRoute {
    /// Through flannel.<VNI>: neighbour + fdb + onlink route.
    Vxlan {
        subnet: Ipv4Net,
        vtep_mac: MacAddr,
        public_ip: Ipv4Addr,
    },
    /// Plain route via the peer's node address on the uplink.
    Direct {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
    },
}

impl PeerRoute {
    pub fn subnet(&self) -> Ipv4Net {
        match self {
            PeerRoute::Vxlan { subnet, .. } | PeerRoute::Direct { subnet, .. } => *subnet,
        }
    }

    pub fn public_ip(&self) -> Ipv4Addr {
        match self {
            PeerRoute::Vxlan { public_ip, .. } | PeerRoute::Direct { public_ip, .. } => *public_ip,
        }
    }
}

/// What this node is, fixed once the programs are attached: everything
/// CONFIG holds apart from what the local view and the ruleset change.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub network: NetworkConfig,
    pub public_ip: Ipv4Addr,
    pub uplink_index: u32,
    pub uplink_mac: MacAddr,
    pub uplink_mtu: u32,
    /// `flannel.<VNI>`'s MAC (VXLAN only).
    pub vtep_mac: Option<MacAddr>,
    /// `--strict-vteps`, `--bulk-tcp-via-gro`, XDP attached to the uplink.
    pub strict_vteps: bool,
    pub bulk_tcp_via_gro: bool,
    pub uplink_xdp: bool,
    /// `--verdict-probes`.
    pub verdict_probes: bool,
    /// The ids of weft's own TC programs: any other program on a hook is
    /// tc configuration the fast path must not bypass.
    pub own_tc_programs: BTreeSet<u32>,
    pub accept_mark: u32,
    pub verdict_ttl_ns: u64,
}

/// A local pod as the fast path delivers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// The host-side veth (a port of the bridge).
    pub port: u32,
    pub mac: MacAddr,
    /// GRO is confirmed on at the pod's end: XDP may redirect into it.
    pub xdp_ready: bool,
}

/// Everything the desired state depends on.
pub struct Inputs<'a> {
    pub node: &'a NodeFacts,
    /// This node's subnet (`Agent::subnet`): the permanent neighbour entries
    /// inside it on the bridge are weft's.
    pub subnet: Ipv4Net,
    /// The accepted peers (`PeerTable::peers`).
    pub peers: &'a BTreeMap<Ipv4Net, AcceptedPeer>,
    /// The latest local view: the uplink's routes (which peers are on-link,
    /// so VXLAN or direct) and neighbours (next-hop MACs), the gateway MAC.
    pub view: &'a LocalView,
    /// The local pods read from their own side, inside [`Self::subnet`]
    /// (`LocalPods::endpoints`).
    pub pods: &'a BTreeMap<Ipv4Addr, LocalPod>,
    /// The nftables ruleset generation (never goes back).
    pub ruleset_generation: u32,
    /// Another rule in the ruleset uses the accept bit (`mark_conflicts`):
    /// CONFIG names no accept bit, so no verdict is recorded or honoured.
    pub verdicts_suspended: bool,
    /// A lease listing has been applied: until then the peer set is not
    /// known, and the sinks leave routes, PEERS and VTEPS alone.
    pub listed: bool,
    /// A local view has arrived: until then the uplink's routes are not
    /// known, so no route is planned either (an empty view would put every
    /// on-link peer over VXLAN, or make host-gw peers unroutable). With a
    /// listing, CONFIG goes live (written after the other maps in the same
    /// sync).
    pub viewed: bool,
}

/// The datapath as it should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// The peer set and the uplink's routes are known ([`Inputs::listed`]
    /// and [`Inputs::viewed`]): `routes`, `peers` and `vteps` are planned.
    /// Until then they are empty and the sinks leave routes, PEERS and
    /// VTEPS as they are.
    pub planned: bool,
    /// Kernel routes (with neighbour and fdb entries for VXLAN), by subnet.
    pub routes: BTreeMap<Ipv4Net, PeerRoute>,
    /// Accepted leases no route can be planned for, with why.
    pub unroutable: BTreeMap<Ipv4Net, String>,
    /// PEERS: one entry per route, same decision, plus the next-hop MAC.
    pub peers: BTreeMap<Ipv4Net, Peer>,
    /// VTEPS: the VXLAN peers' node addresses, each with the subnet its
    /// frames may carry as inner source ([`vteps`]).
    pub vteps: BTreeMap<Ipv4Addr, Vtep>,
    /// The overlay guard's set: every accepted peer's PublicIP, the only
    /// senders the VXLAN port takes (whatever route reaches the peer).
    pub members: BTreeSet<Ipv4Addr>,
    /// ENDPOINTS: local pods by address.
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// CONFIG[0]: live, or dormant (no uplink) with the ruleset generation.
    pub config: NodeConfig,
    /// The local pods' permanent neighbour entries on the bridge. None
    /// while no bridge is known (no local view yet, or no bridge): the
    /// bridge is left as it is.
    pub pod_neighbours: Option<PodNeighbours>,
}

/// Each local pod's address pinned to its own MAC on the CNI bridge, as a
/// permanent neighbour entry that received ARP cannot change
/// (`dataplane/pod_neighbours.rs` says why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNeighbours {
    /// The bridge's ifindex.
    pub bridge: u32,
    /// This node's subnet: the permanent entries inside it on the bridge
    /// are weft's, and any not in `pinned` go.
    pub subnet: Ipv4Net,
    /// Local pod address -> the MAC of the pod's end of its veth.
    pub pinned: BTreeMap<Ipv4Addr, MacAddr>,
}

/// Computes the desired state; costs memory work only, so it can run on
/// every input (a 20,000-lease listing takes milliseconds).
pub fn compute(inputs: &Inputs) -> Desired {
    let planned = inputs.listed && inputs.viewed;
    let mut desired = Desired {
        planned,
        ..Desired::default()
    };
    if planned {
        desired.members = inputs.peers.values().map(|peer| peer.public_ip).collect();
        for (subnet, peer) in inputs.peers {
            match plan_route(inputs.node, inputs.view, *subnet, peer) {
                Ok(route) => {
                    desired.routes.insert(*subnet, route);
                }
                Err(error) => {
                    desired.unroutable.insert(*subnet, format!("{error:#}"));
                }
            }
        }
    }
    let vni = inputs.node.network.backend.vni().unwrap_or(0);
    for (subnet, route) in &desired.routes {
        desired
            .peers
            .insert(*subnet, peer_entry(route, vni, inputs.view));
    }
    desired.vteps = vteps(desired.peers.iter().map(|(subnet, peer)| (*subnet, peer)));
    let own = &inputs.node.own_tc_programs;
    let tc = &inputs.view.tc;
    desired.endpoints = inputs
        .pods
        .iter()
        .map(|(ip, pod)| {
            let mut entry = endpoint(pod);
            entry.flags |= port_tc_flags(tc.ports.get(&pod.port), own);
            (*ip, entry)
        })
        .collect();
    desired.pod_neighbours = inputs.view.bridge_index.map(|bridge| PodNeighbours {
        bridge,
        subnet: inputs.subnet,
        pinned: inputs.pods.iter().map(|(ip, pod)| (*ip, pod.mac)).collect(),
    });
    desired.config = if planned {
        let mut config = node_config(
            inputs.node,
            inputs.view.gateway_mac,
            inputs.ruleset_generation,
        );
        if inputs.verdicts_suspended {
            config.accept_mark = 0;
        }
        config.flags |= node_tc_flags(tc, own);
        config
    } else {
        dormant_config(inputs.ruleset_generation)
    };
    desired
}

/// How a peer is reached, or why it cannot be. On-link (direct for host-gw
/// and DirectRouting) is read from the live uplink routes in `view`, the
/// same routes PEERS' next hops come from, so both sinks follow an address
/// or route change on the uplink together. The peer's backend and VNI are
/// the network's (the peer table accepted it so): only reachability is
/// decided here.
pub fn plan_route(
    node: &NodeFacts,
    view: &LocalView,
    subnet: Ipv4Net,
    peer: &AcceptedPeer,
) -> Result<PeerRoute> {
    let public_ip = peer.public_ip;
    let on_link = view.on_link(public_ip);
    let direct_allowed = match &node.network.backend {
        BackendConfig::HostGw => {
            if !on_link {
                bail!("host-gw peer {public_ip} for {subnet} is not on-link on the uplink");
            }
            true
        }
        BackendConfig::Vxlan { direct_routing, .. } => *direct_routing,
    };
    match peer.backend {
        _ if direct_allowed && on_link => Ok(PeerRoute::Direct { subnet, public_ip }),
        PeerBackend::Vxlan { vtep_mac } => Ok(PeerRoute::Vxlan {
            subnet,
            vtep_mac,
            public_ip,
        }),
        // The policy gives a vxlan network's peers a VTEP MAC.
        PeerBackend::HostGw => Err(anyhow!("peer {subnet} has no VTEP MAC in a vxlan network")),
    }
}

/// The PEERS entry for a planned route: the same decision (VXLAN or direct)
/// the kernel path takes, plus the underlay next hop's MAC (zero while
/// unresolved: the programs leave those packets to the kernel).
pub fn peer_entry(route: &PeerRoute, vni: u32, view: &LocalView) -> Peer {
    let (vtep_mac, mode) = match route {
        PeerRoute::Vxlan { vtep_mac, .. } => (vtep_mac.0, PeerMode::Vxlan),
        PeerRoute::Direct { .. } => ([0; 6], PeerMode::HostGw),
    };
    let public_ip = route.public_ip();
    Peer {
        public_ip: public_ip.octets(),
        vni,
        vtep_mac,
        nexthop_mac: view
            .next_hop_mac(public_ip)
            .map(|mac| mac.0)
            .unwrap_or_default(),
        mode: mode as u8,
        _pad: [0; 3],
    }
}

/// VTEPS from PEERS: every VXLAN peer's PublicIP, with what the programs
/// check a frame from it against. They accept an inner source when PEERS'
/// longest match for it is a peer with the frame's outer source as its
/// PublicIP; accepted subnets never overlap, so that is: the source lies in
/// one of the subnets whose PEERS entry names this PublicIP. One such
/// subnet (the usual case) goes into the value, and the check is
/// arithmetic; several, and the value says so and the programs ask PEERS.
/// Derived from PEERS itself, never from the leases apart from it, so the
/// two cannot disagree: a lease moved to another PublicIP leaves the old
/// one's value at once, and a PublicIP two leases claim takes both (or,
/// once one of them loses or goes, the other alone).
pub fn vteps<'a>(peers: impl IntoIterator<Item = (Ipv4Net, &'a Peer)>) -> BTreeMap<Ipv4Addr, Vtep> {
    let mut by_source: BTreeMap<Ipv4Addr, (usize, Ipv4Net)> = BTreeMap::new();
    let mut vxlan = BTreeSet::new();
    for (subnet, peer) in peers {
        let source = Ipv4Addr::from(peer.public_ip);
        if peer.mode == PeerMode::Vxlan as u8 {
            vxlan.insert(source);
        }
        by_source
            .entry(source)
            .and_modify(|(count, _)| *count += 1)
            .or_insert((1, subnet));
    }
    by_source
        .into_iter()
        .filter(|(source, _)| vxlan.contains(source))
        .map(|(source, (count, first))| {
            let first = (first.network().octets(), first.prefix_len());
            (source, Vtep::new(count, first))
        })
        .collect()
}

/// VTEPS while PEERS changes (`FastPathMaps::sync` writes it before
/// PEERS): [`vteps`] of the entries the old and the new PEERS share, so a
/// frame passes only if both the old and the new peer set pass it (or, for
/// a VTEP with several subnets, PEERS at that moment does). The VTEPs
/// `known` before and after but sharing no entry stay, speaking for no
/// subnet (`Vtep::default()`): their frames are refused as a foreign inner
/// source, not dropped as from an unknown VTEP.
pub fn vteps_while_changing<'a>(
    shared: impl IntoIterator<Item = (Ipv4Net, &'a Peer)>,
    known: impl IntoIterator<Item = Ipv4Addr>,
) -> BTreeMap<Ipv4Addr, Vtep> {
    let mut during = vteps(shared);
    for source in known {
        during.entry(source).or_default();
    }
    during
}

/// The ENDPOINTS value for a local pod.
pub fn endpoint(pod: &LocalPod) -> Endpoint {
    Endpoint {
        ifindex: pod.port,
        mac: pod.mac.0,
        flags: if pod.xdp_ready { ENDPOINT_XDP_READY } else { 0 },
        _pad: 0,
    }
}

/// tc is an authority too: where it acts on a pod's host veth, the
/// programs leave that pod's traffic to the kernel path, which applies it.
/// Ingress on the host veth is what the pod sends (`tc_pod_egress` runs
/// there, first, and hands such packets on); its root qdisc and egress
/// are what it receives (every redirect into the pod skips them).
pub fn port_tc_flags(port: Option<&TcHooks>, own: &BTreeSet<u32>) -> u8 {
    let Some(port) = port else {
        return 0;
    };
    let flag = |on: bool, flag: u8| if on { flag } else { 0 };
    flag(port.acts_on_ingress(own), ENDPOINT_TC_SENDS)
        | flag(port.acts_on_egress(own), ENDPOINT_TC_RECEIVES)
}

/// The node's interfaces the fast path bypasses: the uplink's ingress
/// (a delivery from XDP or `tc_uplink` skips what follows them; its egress
/// needs nothing, a redirect to it goes through its qdisc and egress
/// hooks), flannel.<VNI> and the bridge, either way. tc unreadable: all
/// three, so nothing bypasses what it may do.
pub fn node_tc_flags(tc: &TcView, own: &BTreeSet<u32>) -> u32 {
    if tc.unreadable {
        return CONFIG_TC_UPLINK | CONFIG_TC_VTEP | CONFIG_TC_BRIDGE;
    }
    let flag = |on: bool, flag: u32| if on { flag } else { 0 };
    flag(tc.uplink.acts_on_ingress(own), CONFIG_TC_UPLINK)
        | flag(tc.vtep.acts(own), CONFIG_TC_VTEP)
        | flag(tc.bridge.acts(own), CONFIG_TC_BRIDGE)
}

/// CONFIG[0] once live: the one place it is built.
pub fn node_config(
    node: &NodeFacts,
    gateway_mac: Option<MacAddr>,
    ruleset_generation: u32,
) -> NodeConfig {
    let vni = node.network.backend.vni().unwrap_or(0);
    let port = match node.network.backend {
        BackendConfig::Vxlan { port, .. } => port,
        BackendConfig::HostGw => 0,
    };
    let flag = |on: bool, flag: u32| if on { flag } else { 0 };
    NodeConfig {
        node_ip: node.public_ip.octets(),
        uplink_ifindex: node.uplink_index,
        vni,
        vxlan_port_be: port.to_be(),
        uplink_mac: node.uplink_mac.0,
        vtep_mac: node.vtep_mac.map(|mac| mac.0).unwrap_or_default(),
        gateway_mac: gateway_mac.map(|mac| mac.0).unwrap_or_default(),
        uplink_mtu: node.uplink_mtu,
        flags: flag(node.strict_vteps, CONFIG_STRICT_VTEPS)
            | flag(node.bulk_tcp_via_gro, CONFIG_BULK_TCP_VIA_GRO)
            | flag(node.uplink_xdp, CONFIG_UPLINK_XDP)
            | flag(node.verdict_probes, CONFIG_VERDICT_PROBES),
        accept_mark: node.accept_mark,
        ruleset_generation,
        verdict_ttl_ns: node.verdict_ttl_ns,
    }
}

/// CONFIG[0] while dormant: no uplink, so the programs act on nothing (a
/// previous run's pinned entries may be stale), but the ruleset generation,
/// which must never go back.
pub fn dormant_config(ruleset_generation: u32) -> NodeConfig {
    NodeConfig {
        ruleset_generation,
        ..NodeConfig::default()
    }
}

#[cfg(test)]
mod tests;
