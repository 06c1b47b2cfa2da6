//! What the datapath should hold, computed from the inputs and nothing else:
//! no netlink, no maps, no etcd. Every sink consumes the same [`Desired`]:
//! the kernel writer (`dataplane/kernel.rs`) takes `routes`, the overlay
//! guard (`dataplane/guard.rs`) `members`, the map writer
//! (`dataplane/maps.rs`) `peers`, `vteps`, `endpoints`, their IPv6 halves
//! `peers6` and `endpoints6`, and `config`, and
//! the fast path (`dataplane/fastpath.rs`) pins `pod_neighbours` on the
//! bridge (`dataplane/pod_neighbours.rs`). So the VXLAN-or-direct decision,
//! the next-hop MAC, CONFIG, the pods' pinned MACs and the overlay MTU each
//! come from exactly one place: here.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Result, anyhow, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_TC_BRIDGE, CONFIG_TC_UPLINK,
    CONFIG_TC_VTEP, CONFIG_UPLINK_XDP, CONFIG_VERDICT_PROBES, ENDPOINT_TC_RECEIVES,
    ENDPOINT_TC_SENDS, ENDPOINT_XDP_READY, Endpoint, NodeConfig, Peer, Peer6, PeerMode, Vtep,
};

use crate::{
    config::{BackendConfig, NetworkConfig},
    endpoints::LocalView,
    lease::{
        MacAddr,
        validate::{AcceptedPeer, AcceptedPeerV4, AcceptedPeerV6, PeerBackend},
    },
    tc::{TcHooks, TcView},
};

/// VXLAN's encapsulation overhead (outer Ethernet, IPv4, UDP, VXLAN).
pub const VXLAN_OVERHEAD: u32 = 50;
/// VXLAN over an IPv6 underlay: outer Ethernet 14, IPv6 40, UDP 8, VXLAN 8.
/// flanneld takes 50 for both devices, so its full-size IPv6 pod packets
/// exceed the underlay by 20 bytes; weft takes 70 (docs/datapath.md).
pub const VXLAN_V6_OVERHEAD: u32 = 70;

/// The encapsulation the overlay MTU must leave room for: a dual-stack
/// network's pods have one MTU for both families, and their IPv6 packets
/// travel in `flannel-v6.<VNI>`'s larger outer header.
pub fn vxlan_overhead(config: &NetworkConfig) -> u32 {
    if config.ipv6.is_some() {
        VXLAN_V6_OVERHEAD
    } else {
        VXLAN_OVERHEAD
    }
}

/// The pods' MTU (and `flannel.<VNI>`'s and `flannel-v6.<VNI>`'s): the
/// configured VXLAN MTU, else the uplink's less the encapsulation (IPv6's
/// in a dual-stack network); the uplink's own for host-gw.
pub fn overlay_mtu(config: &NetworkConfig, uplink_mtu: u32) -> u32 {
    match &config.backend {
        BackendConfig::Vxlan { mtu, .. } => {
            mtu.unwrap_or(uplink_mtu.saturating_sub(vxlan_overhead(config)))
        }
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

/// How one remote IPv6 subnet (a dual-stack peer's IPv6 half) is reached,
/// as flanneld's vxlan and host-gw backends program it: the same choices as
/// [`PeerRoute`], over `flannel-v6.<VNI>` and the IPv6 underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRouteV6 {
    /// Through flannel-v6.<VNI>: neighbour (subnet's network address ->
    /// VTEP MAC), fdb (VTEP MAC -> PublicIPv6), onlink route.
    Vxlan {
        subnet: Ipv6Net,
        vtep_mac: MacAddr,
        public_ip: Ipv6Addr,
    },
    /// Plain route via the peer's PublicIPv6 on the uplink.
    Direct {
        subnet: Ipv6Net,
        public_ip: Ipv6Addr,
    },
}

impl PeerRouteV6 {
    pub fn subnet(&self) -> Ipv6Net {
        match self {
            PeerRouteV6::Vxlan { subnet, .. } | PeerRouteV6::Direct { subnet, .. } => *subnet,
        }
    }

    pub fn public_ip(&self) -> Ipv6Addr {
        match self {
            PeerRouteV6::Vxlan { public_ip, .. } | PeerRouteV6::Direct { public_ip, .. } => {
                *public_ip
            }
        }
    }
}

/// What this node is, fixed once the programs are attached: everything
/// CONFIG holds apart from what the local view and the ruleset change.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub network: NetworkConfig,
    /// None in an IPv6-only network.
    pub public_ip: Option<Ipv4Addr>,
    pub uplink_index: u32,
    pub uplink_mac: MacAddr,
    pub uplink_mtu: u32,
    /// `flannel.<VNI>`'s MAC (VXLAN only).
    pub vtep_mac: Option<MacAddr>,
    /// The uplink's IPv6 address this node announces as `PublicIPv6`
    /// (dual-stack only, issue #23).
    pub public_ipv6: Option<Ipv6Addr>,
    /// `flannel-v6.<VNI>`'s MAC and ifindex (dual-stack VXLAN only).
    pub vtep_v6_mac: Option<MacAddr>,
    pub vtep_v6_index: Option<u32>,
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
    /// inside it on the bridge are weft's. None in an IPv6-only network.
    pub subnet: Option<Ipv4Net>,
    /// This node's IPv6 subnet (in a network with IPv6, issue #23).
    pub subnet_v6: Option<Ipv6Net>,
    /// The accepted peers (`PeerTable::peers`).
    pub peers: &'a BTreeMap<IpNet, AcceptedPeer>,
    /// The latest local view: the uplink's routes (which peers are on-link,
    /// so VXLAN or direct) and neighbours (next-hop MACs), the gateway MAC.
    pub view: &'a LocalView,
    /// The local pods read from their own side, inside [`Self::subnet`]
    /// (`LocalPods::endpoints`).
    pub pods: &'a BTreeMap<Ipv4Addr, LocalPod>,
    /// Their IPv6 addresses inside [`Self::subnet_v6`]
    /// (`LocalPods::endpoints6`; empty without one).
    pub pods_v6: &'a BTreeMap<Ipv6Addr, LocalPod>,
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
    /// Dual-stack: the kernel's IPv6 routes (with neighbour and fdb entries
    /// on flannel-v6.<VNI> for VXLAN), by IPv6 subnet. The fast path
    /// carries IPv6 between nodes only where these are direct (PEERS6);
    /// VXLAN over IPv6 is the kernel path's, so there is no IPv6 VTEPS.
    pub routes_v6: BTreeMap<Ipv6Net, PeerRouteV6>,
    /// PEERS6: one entry per IPv6 route, same decision, plus the next-hop
    /// MAC for a direct one. Only with an IPv6 subnet of this node's own
    /// (without one, no local pod has an IPv6 address to send from).
    pub peers6: BTreeMap<Ipv6Net, Peer6>,
    /// Dual-stack peers whose IPv6 half no route can be planned for.
    pub unroutable_v6: BTreeMap<Ipv6Net, String>,
    /// The overlay guard's IPv6 set: every accepted dual-stack peer's
    /// PublicIPv6, the only IPv6 senders the VXLAN port takes.
    pub members_v6: BTreeSet<Ipv6Addr>,
    /// ENDPOINTS: local pods by address.
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// ENDPOINTS6: local pods by IPv6 address, the same values.
    pub endpoints6: BTreeMap<Ipv6Addr, Endpoint>,
    /// CONFIG[0]: live, or dormant (no uplink) with the ruleset generation.
    pub config: NodeConfig,
    /// The local pods' permanent neighbour entries on the bridge. None
    /// while no bridge is known (no local view yet, or no bridge): the
    /// bridge is left as it is.
    pub pod_neighbours: Option<PodNeighbours>,
}

/// Each local pod's addresses (IPv4, and IPv6 in a dual-stack network)
/// pinned to its own MAC on the CNI bridge, as permanent neighbour entries
/// that received ARP or NDP cannot change (`dataplane/pod_neighbours.rs`
/// says why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNeighbours {
    /// The bridge's ifindex.
    pub bridge: u32,
    /// This node's subnet: the permanent entries inside it on the bridge
    /// are weft's, and any not in `pinned` go. None in an IPv6-only
    /// network: no IPv4 entry is weft's then.
    pub subnet: Option<Ipv4Net>,
    /// This node's IPv6 subnet, the same way, in a network with IPv6 only
    /// (as for ENDPOINTS6); without one no IPv6 entry is weft's.
    pub subnet_v6: Option<Ipv6Net>,
    /// Local pod address (either family) -> the MAC of the pod's end of
    /// its veth.
    pub pinned: BTreeMap<IpAddr, MacAddr>,
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
        // IPv4 halves: none in an IPv6-only network.
        for v4 in inputs.peers.values().filter_map(|peer| peer.v4.as_ref()) {
            desired.members.insert(v4.public_ip);
            match plan_route(inputs.node, inputs.view, v4) {
                Ok(route) => {
                    desired.routes.insert(v4.subnet, route);
                }
                Err(error) => {
                    desired.unroutable.insert(v4.subnet, format!("{error:#}"));
                }
            }
        }
        // IPv6 halves count only in a network with IPv6 (the peer table
        // gives none otherwise, and without flannel-v6 none could be used).
        if inputs.node.network.ipv6.is_some() {
            for v6 in inputs.peers.values().filter_map(|peer| peer.v6.as_ref()) {
                desired.members_v6.insert(v6.public_ip);
                match plan_route_v6(inputs.node, inputs.view, v6) {
                    Ok(route) => {
                        desired.routes_v6.insert(v6.subnet, route);
                    }
                    Err(error) => {
                        desired
                            .unroutable_v6
                            .insert(v6.subnet, format!("{error:#}"));
                    }
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
    // routes_v6 is empty outside a dual-stack network.
    if inputs.subnet_v6.is_some() {
        for (subnet, route) in &desired.routes_v6 {
            desired
                .peers6
                .insert(*subnet, peer6_entry(route, vni, inputs.view));
        }
    }
    let own = &inputs.node.own_tc_programs;
    let tc = &inputs.view.tc;
    let endpoint_of = |pod: &LocalPod| {
        let mut entry = endpoint(pod);
        entry.flags |= port_tc_flags(tc.ports.get(&pod.port), own);
        entry
    };
    desired.endpoints = inputs
        .pods
        .iter()
        .map(|(ip, pod)| (*ip, endpoint_of(pod)))
        .collect();
    if inputs.node.network.ipv6.is_some() && inputs.subnet_v6.is_some() {
        desired.endpoints6 = inputs
            .pods_v6
            .iter()
            .map(|(ip, pod)| (*ip, endpoint_of(pod)))
            .collect();
    }
    // The IPv6 addresses pinned are ENDPOINTS6's: a dual-stack network
    // with an IPv6 subnet of our own.
    let subnet_v6 = inputs
        .subnet_v6
        .filter(|_| inputs.node.network.ipv6.is_some());
    desired.pod_neighbours = inputs.view.bridge_index.map(|bridge| {
        let mut pinned: BTreeMap<IpAddr, MacAddr> = inputs
            .pods
            .iter()
            .map(|(ip, pod)| (IpAddr::V4(*ip), pod.mac))
            .collect();
        if subnet_v6.is_some() {
            pinned.extend(
                inputs
                    .pods_v6
                    .iter()
                    .map(|(ip, pod)| (IpAddr::V6(*ip), pod.mac)),
            );
        }
        PodNeighbours {
            bridge,
            subnet: inputs.subnet,
            subnet_v6,
            pinned,
        }
    });
    desired.config = if planned {
        let mut config = node_config(
            inputs.node,
            inputs.subnet,
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
pub fn plan_route(node: &NodeFacts, view: &LocalView, peer: &AcceptedPeerV4) -> Result<PeerRoute> {
    let (subnet, public_ip) = (peer.subnet, peer.public_ip);
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

/// How a peer's IPv6 half is reached: [`plan_route`]'s rules
/// over the IPv6 underlay (flanneld's `vxlan_network.go` v6 branch and
/// host-gw's v6 routes): host-gw needs PublicIPv6 on-link, DirectRouting
/// takes it when it is, else flannel-v6.<VNI> with the v6 VTEP MAC.
pub fn plan_route_v6(
    node: &NodeFacts,
    view: &LocalView,
    peer: &AcceptedPeerV6,
) -> Result<PeerRouteV6> {
    let (subnet, public_ip) = (peer.subnet, peer.public_ip);
    let on_link = view.on_link_v6(public_ip);
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
        _ if direct_allowed && on_link => Ok(PeerRouteV6::Direct { subnet, public_ip }),
        PeerBackend::Vxlan { vtep_mac } => {
            if node.vtep_v6_mac.is_none() {
                bail!("no flannel-v6 device for {subnet}");
            }
            Ok(PeerRouteV6::Vxlan {
                subnet,
                vtep_mac,
                public_ip,
            })
        }
        PeerBackend::HostGw => Err(anyhow!(
            "peer {subnet} has no IPv6 VTEP MAC in a vxlan network"
        )),
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

/// The PEERS6 entry for a planned IPv6 route: the kernel path's decision
/// again. Direct (host-gw, DirectRouting) is the programs' to route, to
/// the peer's MAC as the uplink's IPv6 neighbour table resolved it by NDP
/// (zero while unresolved: the kernel path carries those packets and
/// resolves it meanwhile); a direct route is only ever planned to an
/// on-link PublicIPv6, so that is the neighbour. A VXLAN entry tells the
/// programs to leave the packet to `flannel-v6.<VNI>`: no next hop.
pub fn peer6_entry(route: &PeerRouteV6, vni: u32, view: &LocalView) -> Peer6 {
    let public_ip = route.public_ip();
    let (vtep_mac, nexthop_mac, mode) = match route {
        PeerRouteV6::Vxlan { vtep_mac, .. } => (vtep_mac.0, [0; 6], PeerMode::Vxlan),
        PeerRouteV6::Direct { .. } => (
            [0; 6],
            view.uplink_neighbours_v6
                .get(&public_ip)
                .map(|mac| mac.0)
                .unwrap_or_default(),
            PeerMode::HostGw,
        ),
    };
    Peer6 {
        public_ip: public_ip.octets(),
        vni,
        vtep_mac,
        nexthop_mac,
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

/// CONFIG[0] once live: the one place it is built. The gateway's address
/// comes from this node's IPv4 `subnet` (`subnet_env::gateway_of`).
pub fn node_config(
    node: &NodeFacts,
    subnet: Option<Ipv4Net>,
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
        // Zero in an IPv6-only network: no IPv4 packet is ours then.
        node_ip: node.public_ip.map_or([0; 4], |ip| ip.octets()),
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
        // VXLAN over IPv6 is decapsulated only where this node runs it:
        // flannel-v6.<VNI> exists (its MAC is known) and a PublicIPv6.
        node_ip6: match (node.public_ipv6, node.vtep_v6_mac) {
            (Some(address), Some(_)) => address.octets(),
            _ => [0; 16],
        },
        vtep6_mac: node.vtep_v6_mac.map(|mac| mac.0).unwrap_or_default(),
        _pad6: [0; 2],
        vtep6_ifindex: node.vtep_v6_index.unwrap_or(0),
        gateway_ip: subnet
            .and_then(crate::subnet_env::gateway_of)
            .map_or([0; 4], |gateway| gateway.octets()),
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

#[cfg(test)]
mod tests_v6;
