//! The IPv6 halves of dual-stack peers (issue #23), with `NetworkConfig`
//! and `AcceptedPeer` values built by hand.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use super::*;
use crate::config::Ipv6Network;

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const VXLAN_DIRECT: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const VXLAN_MTU: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#;
const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

fn v4(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn v6(text: &str) -> Ipv6Net {
    text.parse().unwrap()
}

fn ip6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

/// `config` made dual-stack with `fd00:10:244::/56`, /64 subnets.
fn dual_stack(config: &str) -> NetworkConfig {
    let mut network = NetworkConfig::parse(config).unwrap();
    network.ipv6 = Some(Ipv6Network {
        network: v6("fd00:10:244::/56"),
        subnet_len: 64,
        subnet_min: ip6("fd00:10:244:1::"),
        subnet_max: ip6("fd00:10:244:ff::"),
    });
    network
}

fn facts(network: NetworkConfig) -> NodeFacts {
    let dual = network.ipv6.is_some();
    NodeFacts {
        network,
        public_ip: Some(Ipv4Addr::new(192, 168, 77, 1)),
        uplink_index: 2,
        uplink_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
        uplink_mtu: 1500,
        vtep_mac: Some(MacAddr([0x0e, 1, 192, 168, 77, 1])),
        public_ipv6: dual.then(|| ip6("fd00:77::1")),
        vtep_v6_mac: dual.then_some(MacAddr([0x1e, 1, 192, 168, 77, 1])),
        vtep_v6_index: dual.then_some(6),
        strict_vteps: true,
        bulk_tcp_via_gro: false,
        verdict_probes: true,
        uplink_xdp: false,
        own_tc_programs: BTreeSet::new(),
        accept_mark: 0x10_0000,
        verdict_ttl_ns: 5_000_000_000,
    }
}

/// A dual-stack vxlan peer: node `n` at 192.168.<site>.n and
/// fd00:<site>::n, subnets 10.244.n.0/24 and fd00:10:244:n::/64.
fn peer(site: u8, n: u8, with_v6: bool) -> (IpNet, AcceptedPeer) {
    let subnet = v4(&format!("10.244.{n}.0/24"));
    let peer = AcceptedPeer {
        v4: Some(AcceptedPeerV4 {
            subnet,
            public_ip: Ipv4Addr::new(192, 168, site, n),
            backend: PeerBackend::Vxlan {
                vtep_mac: MacAddr([0x0e, 1, 192, 168, site, n]),
            },
        }),
        v6: with_v6.then(|| AcceptedPeerV6 {
            subnet: v6(&format!("fd00:10:244:{n}::/64")),
            public_ip: ip6(&format!("fd00:{site}::{n}")),
            backend: PeerBackend::Vxlan {
                vtep_mac: MacAddr([0x1e, 1, 192, 168, site, n]),
            },
        }),
    };
    (IpNet::V4(subnet), peer)
}

/// The uplink: 192.168.77.0/24 and fd00:77::/64 on-link, the rest via a
/// router.
fn view() -> LocalView {
    LocalView {
        uplink_routes: BTreeMap::from([
            (v4("192.168.77.0/24"), None),
            (v4("0.0.0.0/0"), Some(Ipv4Addr::new(192, 168, 77, 254))),
        ]),
        uplink_routes_v6: BTreeMap::from([
            (v6("fd00:77::/64"), None),
            (v6("fe80::/64"), None),
            (v6("::/0"), Some(ip6("fd00:77::fe"))),
        ]),
        ..LocalView::default()
    }
}

fn compute_for(node: &NodeFacts, peers: &BTreeMap<IpNet, AcceptedPeer>) -> Desired {
    compute_in(node, peers, &view())
}

fn compute_in(
    node: &NodeFacts,
    peers: &BTreeMap<IpNet, AcceptedPeer>,
    view: &LocalView,
) -> Desired {
    compute(&Inputs {
        node,
        subnet: Some(v4("10.244.1.0/24")),
        subnet_v6: node.network.ipv6.as_ref().map(|_| v6("fd00:10:244:1::/64")),
        peers,
        view,
        pods: &BTreeMap::new(),
        pods_v6: &BTreeMap::new(),
        ruleset_generation: 1,
        verdicts_suspended: false,
        listed: true,
        viewed: true,
    })
}

#[test]
fn vxlan_ipv6_halves_go_over_flannel_v6_to_their_public_ipv6() {
    let node = facts(dual_stack(VXLAN));
    let peers = BTreeMap::from([peer(77, 2, true), peer(78, 3, true), peer(77, 4, false)]);
    let desired = compute_for(&node, &peers);
    assert_eq!(
        desired.routes_v6,
        BTreeMap::from([
            (
                v6("fd00:10:244:2::/64"),
                PeerRouteV6::Vxlan {
                    subnet: v6("fd00:10:244:2::/64"),
                    vtep_mac: MacAddr([0x1e, 1, 192, 168, 77, 2]),
                    public_ip: ip6("fd00:77::2"),
                }
            ),
            (
                v6("fd00:10:244:3::/64"),
                PeerRouteV6::Vxlan {
                    subnet: v6("fd00:10:244:3::/64"),
                    vtep_mac: MacAddr([0x1e, 1, 192, 168, 78, 3]),
                    public_ip: ip6("fd00:78::3"),
                }
            ),
        ]),
        "an IPv4-only peer has no IPv6 route"
    );
    assert!(desired.unroutable_v6.is_empty());
    assert_eq!(
        desired.members_v6,
        BTreeSet::from([ip6("fd00:77::2"), ip6("fd00:78::3")])
    );
    // The IPv4 halves are planned as before, all three.
    assert_eq!(desired.routes.len(), 3);
    assert_eq!(desired.members.len(), 3);
}

#[test]
fn direct_routing_takes_an_on_link_public_ipv6_and_vxlan_the_rest() {
    let node = facts(dual_stack(VXLAN_DIRECT));
    let peers = BTreeMap::from([peer(77, 2, true), peer(78, 3, true)]);
    let desired = compute_for(&node, &peers);
    assert_eq!(
        desired.routes_v6[&v6("fd00:10:244:2::/64")],
        PeerRouteV6::Direct {
            subnet: v6("fd00:10:244:2::/64"),
            public_ip: ip6("fd00:77::2"),
        }
    );
    assert!(matches!(
        desired.routes_v6[&v6("fd00:10:244:3::/64")],
        PeerRouteV6::Vxlan { .. }
    ));
}

#[test]
fn host_gw_routes_ipv6_via_an_on_link_public_ipv6_and_refuses_the_rest() {
    let node = facts(dual_stack(HOST_GW));
    let host_gw = |site, n| {
        let (subnet, mut peer) = peer(site, n, true);
        peer.v4.as_mut().unwrap().backend = PeerBackend::HostGw;
        peer.v6.as_mut().unwrap().backend = PeerBackend::HostGw;
        (subnet, peer)
    };
    let peers = BTreeMap::from([host_gw(77, 2), host_gw(78, 3)]);
    let desired = compute_for(&node, &peers);
    assert_eq!(
        desired.routes_v6,
        BTreeMap::from([(
            v6("fd00:10:244:2::/64"),
            PeerRouteV6::Direct {
                subnet: v6("fd00:10:244:2::/64"),
                public_ip: ip6("fd00:77::2"),
            }
        )])
    );
    let why = &desired.unroutable_v6[&v6("fd00:10:244:3::/64")];
    assert!(why.contains("not on-link"), "{why}");
}

#[test]
fn an_ipv4_only_network_plans_no_ipv6_even_for_peers_with_v6_halves() {
    let node = facts(NetworkConfig::parse(VXLAN).unwrap());
    let peers = BTreeMap::from([peer(77, 2, true)]);
    let desired = compute_for(&node, &peers);
    assert!(desired.routes_v6.is_empty());
    assert!(desired.members_v6.is_empty());
    assert_eq!(desired.routes.len(), 1);
}

#[test]
fn a_peer_that_loses_its_ipv6_half_loses_its_ipv6_route_and_membership() {
    let node = facts(dual_stack(VXLAN));
    let before = compute_for(&node, &BTreeMap::from([peer(78, 3, true)]));
    assert_eq!(before.routes_v6.len(), 1);
    let after = compute_for(&node, &BTreeMap::from([peer(78, 3, false)]));
    assert!(after.routes_v6.is_empty());
    assert!(after.members_v6.is_empty());
    assert_eq!(before.routes, after.routes, "the IPv4 half is untouched");
}

#[test]
fn nothing_is_planned_before_the_listing_and_the_view() {
    let node = facts(dual_stack(VXLAN));
    let peers = BTreeMap::from([peer(78, 3, true)]);
    let desired = compute(&Inputs {
        node: &node,
        subnet: Some(v4("10.244.1.0/24")),
        subnet_v6: Some(v6("fd00:10:244:1::/64")),
        peers: &peers,
        view: &view(),
        pods: &BTreeMap::new(),
        pods_v6: &BTreeMap::new(),
        ruleset_generation: 1,
        verdicts_suspended: false,
        listed: true,
        viewed: false,
    });
    assert!(desired.routes_v6.is_empty() && desired.members_v6.is_empty());
}

#[test]
fn the_dual_stack_overlay_mtu_leaves_room_for_an_ipv6_outer_header() {
    // 1500 - (14 Ethernet + 40 IPv6 + 8 UDP + 8 VXLAN): a full-size IPv6
    // pod packet fits the underlay (flanneld's 1450 would not).
    assert_eq!(overlay_mtu(&dual_stack(VXLAN), 1500), 1430);
    assert_eq!(
        overlay_mtu(&NetworkConfig::parse(VXLAN).unwrap(), 1500),
        1450
    );
    // A configured MTU is the operator's; host-gw has no encapsulation.
    assert_eq!(overlay_mtu(&dual_stack(VXLAN_MTU), 1500), 1400);
    assert_eq!(overlay_mtu(&dual_stack(HOST_GW), 1500), 1500);
}

/// [`view`] with fd00:77::2 resolved by NDP (and fd00:77::4 not).
fn view_with_neighbours() -> LocalView {
    LocalView {
        uplink_neighbours_v6: BTreeMap::from([
            (ip6("fd00:77::2"), MacAddr([0xaa; 6])),
            (ip6("fd00:77::fe"), MacAddr([0xee; 6])),
        ]),
        ..view()
    }
}

/// [`peer`] made host-gw in both halves.
fn host_gw_peer(site: u8, n: u8) -> (IpNet, AcceptedPeer) {
    let (subnet, mut peer) = peer(site, n, true);
    peer.v4.as_mut().unwrap().backend = PeerBackend::HostGw;
    peer.v6.as_mut().unwrap().backend = PeerBackend::HostGw;
    (subnet, peer)
}

#[test]
fn peers6_routes_host_gw_ipv6_to_the_peers_ndp_resolved_mac() {
    let node = facts(dual_stack(HOST_GW));
    let peers = BTreeMap::from([
        host_gw_peer(77, 2),
        host_gw_peer(77, 4),
        host_gw_peer(78, 3),
    ]);
    let desired = compute_in(&node, &peers, &view_with_neighbours());
    assert_eq!(
        desired.peers6,
        BTreeMap::from([
            (
                v6("fd00:10:244:2::/64"),
                Peer6 {
                    public_ip: ip6("fd00:77::2").octets(),
                    vni: 0,
                    vtep_mac: [0; 6],
                    nexthop_mac: [0xaa; 6],
                    mode: PeerMode::HostGw as u8,
                    _pad: [0; 3],
                }
            ),
            (
                v6("fd00:10:244:4::/64"),
                Peer6 {
                    public_ip: ip6("fd00:77::4").octets(),
                    vni: 0,
                    vtep_mac: [0; 6],
                    nexthop_mac: [0; 6],
                    mode: PeerMode::HostGw as u8,
                    _pad: [0; 3],
                }
            ),
        ]),
        "unresolved: zero (the kernel path meanwhile); not on-link: no route, no entry"
    );
    // One PEERS6 entry per IPv6 route, never one the kernel path lacks.
    assert!(desired.peers6.keys().eq(desired.routes_v6.keys()));
}

#[test]
fn peers6_takes_the_kernel_paths_vxlan_or_direct_decision() {
    let node = facts(dual_stack(VXLAN_DIRECT));
    let peers = BTreeMap::from([peer(77, 2, true), peer(78, 3, true), peer(77, 5, false)]);
    let desired = compute_in(&node, &peers, &view_with_neighbours());
    let direct = desired.peers6[&v6("fd00:10:244:2::/64")];
    assert_eq!(direct.mode, PeerMode::HostGw as u8);
    assert_eq!(direct.nexthop_mac, [0xaa; 6]);
    assert_eq!(direct.vni, 1, "the network's VNI");
    assert_eq!(
        desired.peers6[&v6("fd00:10:244:3::/64")],
        Peer6 {
            public_ip: ip6("fd00:78::3").octets(),
            vni: 1,
            vtep_mac: [0x1e, 1, 192, 168, 78, 3],
            // flannel-v6.<VNI> (the kernel) carries it: no next hop here,
            // even though the router's (fd00:77::fe) is resolved.
            nexthop_mac: [0; 6],
            mode: PeerMode::Vxlan as u8,
            _pad: [0; 3],
        }
    );
    assert_eq!(desired.peers6.len(), 2, "an IPv4-only peer has no entry");
    // Plain VXLAN: every IPv6 half is a VXLAN entry.
    let node = facts(dual_stack(VXLAN));
    let desired = compute_in(&node, &peers, &view_with_neighbours());
    assert!(
        desired
            .peers6
            .values()
            .all(|peer| peer.mode == PeerMode::Vxlan as u8)
    );
}

#[test]
fn no_ipv6_map_entries_without_a_dual_stack_network_and_an_ipv6_subnet_of_our_own() {
    let pod = LocalPod {
        port: 9,
        mac: MacAddr([0x02, 0, 0, 0, 0xbb, 2]),
        xdp_ready: true,
    };
    let pods_v6 = BTreeMap::from([(ip6("fd00:10:244:1::2"), pod)]);
    let peers = BTreeMap::from([host_gw_peer(77, 2)]);
    let view = view_with_neighbours();
    let with = |node: &NodeFacts, subnet_v6: Option<Ipv6Net>| {
        compute(&Inputs {
            node,
            subnet: Some(v4("10.244.1.0/24")),
            subnet_v6,
            peers: &peers,
            view: &view,
            pods: &BTreeMap::new(),
            pods_v6: &pods_v6,
            ruleset_generation: 1,
            verdicts_suspended: false,
            listed: true,
            viewed: true,
        })
    };
    let dual = facts(dual_stack(HOST_GW));
    let desired = with(&dual, Some(v6("fd00:10:244:1::/64")));
    assert_eq!(desired.peers6.len(), 1);
    assert_eq!(desired.endpoints6.len(), 1);
    let desired = with(&dual, None);
    assert!(desired.peers6.is_empty() && desired.endpoints6.is_empty());
    assert_eq!(desired.routes_v6.len(), 1, "the kernel path still routes");
    let v4_only = facts(NetworkConfig::parse(HOST_GW).unwrap());
    let desired = with(&v4_only, Some(v6("fd00:10:244:1::/64")));
    assert!(desired.peers6.is_empty() && desired.endpoints6.is_empty());
}

#[test]
fn endpoints6_take_the_same_values_as_the_pods_ipv4_endpoints() {
    let mut node = facts(dual_stack(VXLAN));
    node.own_tc_programs = BTreeSet::from([41]);
    let pod = |port, xdp_ready| LocalPod {
        port,
        mac: MacAddr([0x02, 0, 0, 0, 0xbb, port as u8]),
        xdp_ready,
    };
    let pods = BTreeMap::from([
        (Ipv4Addr::new(10, 244, 1, 2), pod(9, true)),
        (Ipv4Addr::new(10, 244, 1, 3), pod(10, false)),
    ]);
    let pods_v6 = BTreeMap::from([
        (ip6("fd00:10:244:1::2"), pod(9, true)),
        (ip6("fd00:10:244:1::3"), pod(10, false)),
    ]);
    let mut view = view();
    // A bandwidth limit on what pod 9 sends: both its addresses say so.
    view.tc.ports.insert(
        9,
        crate::tc::TcHooks {
            ingress_filters: 1,
            tcx_ingress: vec![41],
            ..crate::tc::TcHooks::default()
        },
    );
    let desired = compute(&Inputs {
        node: &node,
        subnet: Some(v4("10.244.1.0/24")),
        subnet_v6: Some(v6("fd00:10:244:1::/64")),
        peers: &BTreeMap::new(),
        view: &view,
        pods: &pods,
        pods_v6: &pods_v6,
        ruleset_generation: 1,
        verdicts_suspended: false,
        listed: true,
        viewed: true,
    });
    assert_eq!(
        desired.endpoints6[&ip6("fd00:10:244:1::2")],
        desired.endpoints[&Ipv4Addr::new(10, 244, 1, 2)]
    );
    assert_eq!(
        desired.endpoints6[&ip6("fd00:10:244:1::2")],
        Endpoint {
            ifindex: 9,
            mac: [0x02, 0, 0, 0, 0xbb, 9],
            flags: ENDPOINT_XDP_READY | ENDPOINT_TC_SENDS,
            _pad: 0,
        }
    );
    assert_eq!(
        desired.endpoints6[&ip6("fd00:10:244:1::3")],
        desired.endpoints[&Ipv4Addr::new(10, 244, 1, 3)]
    );
    assert_eq!(desired.endpoints6[&ip6("fd00:10:244:1::3")].flags, 0);
}

#[test]
fn the_pods_ipv6_addresses_are_pinned_on_the_bridge_in_a_dual_stack_network_only() {
    let pod = |port| LocalPod {
        port,
        mac: MacAddr([0x02, 0, 0, 0, 0xbb, port as u8]),
        xdp_ready: true,
    };
    let pods = BTreeMap::from([(Ipv4Addr::new(10, 244, 1, 2), pod(9))]);
    let pods_v6 = BTreeMap::from([(ip6("fd00:10:244:1::2"), pod(9))]);
    let view = LocalView {
        bridge_index: Some(4),
        ..view()
    };
    let with = |node: &NodeFacts, subnet_v6: Option<Ipv6Net>| {
        compute(&Inputs {
            node,
            subnet: Some(v4("10.244.1.0/24")),
            subnet_v6,
            peers: &BTreeMap::new(),
            view: &view,
            pods: &pods,
            pods_v6: &pods_v6,
            ruleset_generation: 1,
            verdicts_suspended: false,
            // Pinned from the local pods, listing or not.
            listed: false,
            viewed: true,
        })
        .pod_neighbours
        .unwrap()
    };
    let dual = facts(dual_stack(VXLAN));
    assert_eq!(
        with(&dual, Some(v6("fd00:10:244:1::/64"))),
        PodNeighbours {
            bridge: 4,
            subnet: Some(v4("10.244.1.0/24")),
            subnet_v6: Some(v6("fd00:10:244:1::/64")),
            pinned: BTreeMap::from([
                (
                    Ipv4Addr::new(10, 244, 1, 2).into(),
                    MacAddr([0x02, 0, 0, 0, 0xbb, 9])
                ),
                (
                    ip6("fd00:10:244:1::2").into(),
                    MacAddr([0x02, 0, 0, 0, 0xbb, 9])
                ),
            ]),
        },
        "both of the pod's addresses, to the same MAC"
    );
    let only_v4 = |pinned: PodNeighbours| {
        assert_eq!(pinned.subnet_v6, None, "no IPv6 entry is weft's");
        assert_eq!(
            pinned.pinned.keys().copied().collect::<Vec<_>>(),
            [std::net::IpAddr::from(Ipv4Addr::new(10, 244, 1, 2))]
        );
    };
    // No IPv6 subnet of our own yet: IPv4 only, as ENDPOINTS6 is empty.
    only_v4(with(&dual, None));
    // An IPv4-only network: nothing IPv6 on the bridge is touched.
    let v4_only = facts(NetworkConfig::parse(VXLAN).unwrap());
    only_v4(with(&v4_only, Some(v6("fd00:10:244:1::/64"))));
}

#[test]
fn config_names_the_public_ipv6_and_flannel_v6_mac_only_where_vxlan_runs_over_ipv6() {
    let dual = compute_for(&facts(dual_stack(VXLAN)), &BTreeMap::new()).config;
    assert_eq!(dual.node_ip6, ip6("fd00:77::1").octets());
    assert_eq!(dual.vtep6_mac, [0x1e, 1, 192, 168, 77, 1]);
    assert_eq!(dual.vtep6_ifindex, 6);
    // IPv4 only: nothing to decapsulate over IPv6.
    let ipv4_only = compute_for(
        &facts(NetworkConfig::parse(VXLAN).unwrap()),
        &BTreeMap::new(),
    )
    .config;
    assert_eq!(
        (
            ipv4_only.node_ip6,
            ipv4_only.vtep6_mac,
            ipv4_only.vtep6_ifindex
        ),
        ([0; 16], [0; 6], 0)
    );
    // host-gw has no flannel-v6 device: its IPv6 is routed, never VXLAN.
    let mut host_gw = facts(dual_stack(HOST_GW));
    host_gw.vtep_v6_mac = None;
    host_gw.vtep_v6_index = None;
    let host_gw = compute_for(&host_gw, &BTreeMap::new()).config;
    assert_eq!(host_gw.node_ip6, [0; 16]);
}

/// An IPv6-only node and its peers (`EnableIPv4` false): the peers have
/// an IPv6 half alone, keyed by it; the node has no IPv4 address, no
/// flannel.<VNI> and no IPv4 subnet.
#[test]
fn an_ipv6_only_network_plans_ipv6_alone() {
    let mut network = dual_stack(VXLAN);
    network.ipv4 = None;
    let node = NodeFacts {
        public_ip: None,
        vtep_mac: None,
        ..facts(network)
    };
    let peers: BTreeMap<IpNet, AcceptedPeer> = [peer(77, 2, true), peer(78, 3, true)]
        .into_iter()
        .map(|(_, mut peer)| {
            peer.v4 = None;
            let v6 = peer.v6.expect("an IPv6 half");
            (IpNet::V6(v6.subnet), peer)
        })
        .collect();
    let pod = LocalPod {
        port: 9,
        mac: MacAddr([0x02, 0, 0, 0, 0xbb, 2]),
        xdp_ready: true,
    };
    let pods_v6 = BTreeMap::from([(ip6("fd00:10:244:1::2"), pod)]);
    let view = LocalView {
        bridge_index: Some(4),
        ..view()
    };
    let desired = compute(&Inputs {
        node: &node,
        subnet: None,
        subnet_v6: Some(v6("fd00:10:244:1::/64")),
        peers: &peers,
        view: &view,
        pods: &BTreeMap::new(),
        pods_v6: &pods_v6,
        ruleset_generation: 1,
        verdicts_suspended: false,
        listed: true,
        viewed: true,
    });
    assert_eq!(
        desired.routes_v6.keys().copied().collect::<Vec<_>>(),
        [v6("fd00:10:244:2::/64"), v6("fd00:10:244:3::/64")]
    );
    assert_eq!(desired.peers6.len(), 2);
    assert!(desired.unroutable_v6.is_empty());
    assert!(
        desired.routes.is_empty()
            && desired.peers.is_empty()
            && desired.vteps.is_empty()
            && desired.members.is_empty(),
        "IPv4 planned in an IPv6-only network: {desired:?}"
    );
    assert_eq!(desired.endpoints6.len(), 1);
    assert!(desired.endpoints.is_empty());
    let neighbours = desired.pod_neighbours.unwrap();
    assert_eq!(
        (neighbours.subnet, neighbours.subnet_v6),
        (None, Some(v6("fd00:10:244:1::/64")))
    );
    // CONFIG: no IPv4 address to take VXLAN for, the IPv6 one and
    // flannel-v6's MAC.
    assert_eq!(desired.config.node_ip, [0; 4]);
    assert_eq!(desired.config.vtep_mac, [0; 6]);
    assert_eq!(desired.config.node_ip6, ip6("fd00:77::1").octets());
}
