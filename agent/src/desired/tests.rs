use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::*;

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn facts(network: &str) -> NodeFacts {
    NodeFacts {
        network: NetworkConfig::parse(network).unwrap(),
        public_ip: Some(Ipv4Addr::new(192, 168, 77, 1)),
        uplink_index: 2,
        uplink_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
        uplink_mtu: 1500,
        vtep_mac: Some(MacAddr([0x0e, 1, 192, 168, 77, 1])),
        public_ipv6: None,
        vtep_v6_mac: None,
        vtep_v6_index: None,
        strict_vteps: true,
        bulk_tcp_via_gro: false,
        verdict_probes: true,
        uplink_xdp: true,
        own_tc_programs: BTreeSet::from([41, 42, 43]),
        accept_mark: 0x10_0000,
        verdict_ttl_ns: 5_000_000_000,
    }
}

const VXLAN_DIRECT: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// An accepted vxlan peer at `ip`, its VTEP MAC made from the address;
/// its subnet is the one [`keyed`] files it under.
fn vxlan_peer(ip: [u8; 4]) -> AcceptedPeer {
    AcceptedPeer {
        v4: Some(AcceptedPeerV4 {
            subnet: net("0.0.0.0/32"),
            public_ip: Ipv4Addr::from(ip),
            backend: PeerBackend::Vxlan {
                vtep_mac: MacAddr([0x0e, 1, ip[0], ip[1], ip[2], ip[3]]),
            },
        }),
        v6: None,
    }
}

/// The peer table's map of `entries`, each peer's IPv4 half given its
/// subnet.
fn keyed<const N: usize>(entries: [(Ipv4Net, AcceptedPeer); N]) -> BTreeMap<IpNet, AcceptedPeer> {
    entries
        .into_iter()
        .map(|(subnet, mut peer)| {
            if let Some(v4) = peer.v4.as_mut() {
                v4.subnet = subnet;
            }
            (IpNet::V4(subnet), peer)
        })
        .collect()
}

fn view() -> LocalView {
    LocalView {
        uplink_neighbours: BTreeMap::from([
            (Ipv4Addr::new(192, 168, 77, 2), MacAddr([0xaa; 6])),
            (Ipv4Addr::new(192, 168, 77, 254), MacAddr([0xee; 6])),
        ]),
        uplink_routes: BTreeMap::from([
            (net("192.168.77.0/24"), None),
            (net("0.0.0.0/0"), Some(Ipv4Addr::new(192, 168, 77, 254))),
        ]),
        gateway_mac: Some(MacAddr([0x02, 0, 0, 0, 0xcc, 1])),
        ..LocalView::default()
    }
}

fn compute_with(node: &NodeFacts, peers: &BTreeMap<IpNet, AcceptedPeer>, live: bool) -> Desired {
    compute_in(node, peers, &view(), live)
}

fn compute_in(
    node: &NodeFacts,
    peers: &BTreeMap<IpNet, AcceptedPeer>,
    view: &LocalView,
    live: bool,
) -> Desired {
    let pods = BTreeMap::from([(
        Ipv4Addr::new(10, 244, 1, 2),
        LocalPod {
            port: 9,
            mac: MacAddr([0x02, 0, 0, 0, 0xbb, 2]),
            xdp_ready: true,
        },
    )]);
    compute(&Inputs {
        node,
        subnet: Some(net("10.244.1.0/24")),
        subnet_v6: None,
        peers,
        view,
        pods: &pods,
        pods_v6: &BTreeMap::new(),
        ruleset_generation: 7,
        verdicts_suspended: false,
        listed: true,
        viewed: live,
    })
}

#[test]
fn on_link_peers_go_direct_with_direct_routing_and_the_rest_over_vxlan() {
    let node = facts(VXLAN_DIRECT);
    let peers = keyed([
        (net("10.244.2.0/24"), vxlan_peer([192, 168, 77, 2])),
        (net("10.244.3.0/24"), vxlan_peer([192, 168, 78, 3])),
    ]);
    let desired = compute_with(&node, &peers, true);
    assert_eq!(
        desired.routes[&net("10.244.2.0/24")],
        PeerRoute::Direct {
            subnet: net("10.244.2.0/24"),
            public_ip: Ipv4Addr::new(192, 168, 77, 2)
        }
    );
    assert!(matches!(
        desired.routes[&net("10.244.3.0/24")],
        PeerRoute::Vxlan { .. }
    ));
    // PEERS takes the same decision, with the next hop's MAC: on-link its
    // own, off-link the router's.
    let direct = desired.peers[&net("10.244.2.0/24")];
    assert_eq!(
        (direct.mode, direct.nexthop_mac, direct.vtep_mac),
        (PeerMode::HostGw as u8, [0xaa; 6], [0; 6])
    );
    let vxlan = desired.peers[&net("10.244.3.0/24")];
    assert_eq!(
        (vxlan.mode, vxlan.vni, vxlan.nexthop_mac),
        (PeerMode::Vxlan as u8, 1, [0xee; 6])
    );
    assert_eq!(vxlan.vtep_mac, [0x0e, 1, 192, 168, 78, 3]);
    // Only VXLAN peers are VTEPs, each with the subnet it speaks for.
    assert_eq!(
        desired
            .vteps
            .iter()
            .map(|(ip, vtep)| (*ip, *vtep))
            .collect::<Vec<_>>(),
        [(
            Ipv4Addr::new(192, 168, 78, 3),
            Vtep::new(1, ([10, 244, 3, 0], 24))
        )]
    );
}

#[test]
fn unresolved_next_hops_stay_zero() {
    let node = facts(VXLAN);
    let peers = keyed([(net("10.244.4.0/24"), vxlan_peer([192, 168, 77, 9]))]);
    let desired = compute_with(&node, &peers, true);
    assert_eq!(desired.peers[&net("10.244.4.0/24")].nexthop_mac, [0; 6]);
}

#[test]
fn peers_no_route_can_reach_are_unroutable_with_a_reason() {
    let off_link = keyed([(net("10.244.5.0/24"), vxlan_peer([10, 0, 0, 5]))]);
    let desired = compute_with(&facts(HOST_GW), &off_link, true);
    assert!(desired.routes.is_empty() && desired.peers.is_empty());
    assert!(desired.unroutable[&net("10.244.5.0/24")].contains("not on-link"));
}

#[test]
fn config_is_dormant_until_live_and_keeps_the_generation() {
    let node = facts(VXLAN);
    let dormant = compute_with(&node, &BTreeMap::new(), false);
    // Written out, not the implementation's own `dormant_config`: nothing
    // but the generation (no uplink, so the programs act on nothing).
    assert_eq!(
        dormant.config,
        NodeConfig {
            ruleset_generation: 7,
            ..NodeConfig::default()
        }
    );
    let live = compute_with(&node, &BTreeMap::new(), true).config;
    assert_eq!(live.uplink_ifindex, 2);
    assert_eq!(live.ruleset_generation, 7);
    assert_eq!(live.gateway_mac, [0x02, 0, 0, 0, 0xcc, 1]);
    // cni0's address, as flannel gives it: the subnet's first host.
    assert_eq!(live.gateway_ip, [10, 244, 1, 1]);
    assert_eq!((live.vni, u16::from_be(live.vxlan_port_be)), (1, 8472));
    assert_eq!(
        live.flags,
        CONFIG_STRICT_VTEPS | CONFIG_UPLINK_XDP | CONFIG_VERDICT_PROBES
    );
    assert_eq!(live.vtep_mac, [0x0e, 1, 192, 168, 77, 1]);
}

#[test]
fn the_local_pods_are_pinned_on_the_bridge_once_the_bridge_is_known() {
    let without_bridge = compute_with(&facts(VXLAN), &BTreeMap::new(), true);
    assert_eq!(
        without_bridge.pod_neighbours, None,
        "no bridge in the view: the bridge is left alone"
    );
    let view = LocalView {
        bridge_index: Some(4),
        ..view()
    };
    let desired = compute_in(&facts(VXLAN), &BTreeMap::new(), &view, false);
    assert_eq!(
        desired.pod_neighbours,
        Some(PodNeighbours {
            bridge: 4,
            subnet: Some(net("10.244.1.0/24")),
            subnet_v6: None,
            pinned: BTreeMap::from([(
                Ipv4Addr::new(10, 244, 1, 2).into(),
                MacAddr([0x02, 0, 0, 0, 0xbb, 2])
            )]),
        }),
        "pinned from the local pods, listing or not"
    );
}

#[test]
fn endpoints_come_from_the_local_pods() {
    let desired = compute_with(&facts(VXLAN), &BTreeMap::new(), true);
    let endpoint = desired.endpoints[&Ipv4Addr::new(10, 244, 1, 2)];
    assert_eq!(
        (endpoint.ifindex, endpoint.mac, endpoint.flags),
        (9, [0x02, 0, 0, 0, 0xbb, 2], ENDPOINT_XDP_READY)
    );
}

#[test]
fn the_overlay_mtu_leaves_room_for_vxlan_unless_configured() {
    assert_eq!(
        overlay_mtu(&NetworkConfig::parse(VXLAN).unwrap(), 1500),
        1450
    );
    assert_eq!(
        overlay_mtu(&NetworkConfig::parse(HOST_GW).unwrap(), 1500),
        1500
    );
    let fixed = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#;
    assert_eq!(
        overlay_mtu(&NetworkConfig::parse(fixed).unwrap(), 1500),
        1400
    );
}

#[test]
fn off_link_peers_are_reached_through_their_gateways_mac() {
    let view = view();
    assert_eq!(
        view.next_hop_mac(Ipv4Addr::new(192, 168, 77, 2)),
        Some(MacAddr([0xaa; 6])),
        "on-link: its own MAC"
    );
    assert_eq!(
        view.next_hop_mac(Ipv4Addr::new(192, 168, 78, 3)),
        Some(MacAddr([0xee; 6])),
        "off-link: the router's"
    );
    assert_eq!(
        view.next_hop_mac(Ipv4Addr::new(192, 168, 77, 9)),
        None,
        "unresolved"
    );
}

#[test]
fn vxlan_or_direct_follows_the_uplinks_live_routes() {
    let node = facts(VXLAN_DIRECT);
    let subnet = net("10.244.3.0/24");
    let peer_ip = Ipv4Addr::new(192, 168, 78, 3);
    let peers = keyed([(subnet, vxlan_peer([192, 168, 78, 3]))]);
    // Off-link (only the default route covers it): VXLAN via the router.
    let before = compute_in(&node, &peers, &view(), true);
    assert!(matches!(before.routes[&subnet], PeerRoute::Vxlan { .. }));
    assert_eq!(before.peers[&subnet].mode, PeerMode::Vxlan as u8);
    assert_eq!(before.peers[&subnet].nexthop_mac, [0xee; 6]);
    assert!(before.vteps.contains_key(&peer_ip));

    // An address in 192.168.78.0/24 added to the uplink: its connected
    // route makes the peer on-link, and both sinks' halves go direct.
    let mut joined = view();
    joined.uplink_routes.insert(net("192.168.78.0/24"), None);
    joined
        .uplink_neighbours
        .insert(peer_ip, MacAddr([0x02, 0, 0, 0, 0x78, 3]));
    let after = compute_in(&node, &peers, &joined, true);
    assert_eq!(
        after.routes[&subnet],
        PeerRoute::Direct {
            subnet,
            public_ip: peer_ip
        }
    );
    let entry = after.peers[&subnet];
    assert_eq!(
        (entry.mode, entry.nexthop_mac, entry.vtep_mac),
        (PeerMode::HostGw as u8, [0x02, 0, 0, 0, 0x78, 3], [0; 6])
    );
    assert!(after.vteps.is_empty(), "a direct peer is no VTEP");

    // The address removed again: back to VXLAN.
    assert_eq!(compute_in(&node, &peers, &view(), true), before);

    // host-gw: a peer that stops being on-link becomes unroutable (its
    // route and PEERS entry go), and comes back with the route.
    let node = facts(HOST_GW);
    let host_gw = compute_in(&node, &peers, &joined, true);
    assert!(matches!(host_gw.routes[&subnet], PeerRoute::Direct { .. }));
    let gone = compute_in(&node, &peers, &view(), true);
    assert!(!gone.routes.contains_key(&subnet) && !gone.peers.contains_key(&subnet));
    assert!(gone.unroutable[&subnet].contains("not on-link"));
}

#[test]
fn nothing_is_planned_before_the_first_local_view() {
    // Without a view every peer would look off-link: DirectRouting peers
    // planned over VXLAN, host-gw peers unroutable, then moved once the
    // view arrives. So nothing is planned until it has.
    let peers = keyed([(net("10.244.2.0/24"), vxlan_peer([192, 168, 77, 2]))]);
    for network in [VXLAN_DIRECT, HOST_GW] {
        let node = facts(network);
        let early = compute_in(&node, &peers, &LocalView::default(), false);
        assert!(!early.planned);
        assert!(early.routes.is_empty() && early.peers.is_empty() && early.unroutable.is_empty());
        assert_eq!(early.config, dormant_config(7));
        let viewed = compute_in(&node, &peers, &view(), true);
        assert!(viewed.planned);
        assert!(matches!(
            viewed.routes[&net("10.244.2.0/24")],
            PeerRoute::Direct { .. }
        ));
    }
}

/// The CNI bandwidth plugin's two limits on the pod's host veth (port 9):
/// a tbf as its root qdisc, an ingress u32 filter to an ifb.
fn bandwidth_limited(ingress_filters: usize, root_qdisc: Option<&str>) -> TcHooks {
    TcHooks {
        root_qdisc: root_qdisc.map(str::to_owned),
        ingress_filters,
        // weft's own programs on both hooks.
        tcx_ingress: vec![41],
        tcx_egress: vec![43],
        ..TcHooks::default()
    }
}

#[test]
fn tc_on_a_pods_veth_takes_its_traffic_off_the_fast_path_that_way_only() {
    let node = facts(VXLAN);
    let peers = BTreeMap::new();
    let pod_ip = Ipv4Addr::new(10, 244, 1, 2);
    let flags_with = |hooks: TcHooks| {
        let mut view = view();
        view.tc.ports.insert(9, hooks);
        compute_in(&node, &peers, &view, true).endpoints[&pod_ip].flags
    };
    assert_eq!(
        flags_with(bandwidth_limited(0, None)),
        ENDPOINT_XDP_READY,
        "weft's own programs are no tc configuration"
    );
    assert_eq!(
        flags_with(bandwidth_limited(3, None)),
        ENDPOINT_XDP_READY | ENDPOINT_TC_SENDS,
        "an egress limit (ingress filter) holds what the pod sends"
    );
    assert_eq!(
        flags_with(bandwidth_limited(0, Some("tbf"))),
        ENDPOINT_XDP_READY | ENDPOINT_TC_RECEIVES,
        "an ingress limit (root tbf) holds what the pod receives"
    );
    let mut another_program = bandwidth_limited(0, None);
    another_program.tcx_egress.push(77);
    assert_eq!(
        flags_with(another_program),
        ENDPOINT_XDP_READY | ENDPOINT_TC_RECEIVES,
        "another TCX program after weft's on the egress hook"
    );
    let mut clsact_egress = bandwidth_limited(0, None);
    clsact_egress.egress_filters = 1;
    assert_eq!(
        flags_with(clsact_egress),
        ENDPOINT_XDP_READY | ENDPOINT_TC_RECEIVES
    );
    // Limits removed: the fast path is back.
    assert_eq!(flags_with(TcHooks::default()), ENDPOINT_XDP_READY);
}

#[test]
fn tc_on_the_uplink_ingress_the_vtep_or_the_bridge_sets_configs_flags() {
    let node = facts(VXLAN);
    let peers = BTreeMap::new();
    let tc_flags_with = |tc: TcView| {
        let mut view = view();
        view.tc = tc;
        compute_in(&node, &peers, &view, true).config.flags
            & (CONFIG_TC_UPLINK | CONFIG_TC_VTEP | CONFIG_TC_BRIDGE)
    };
    assert_eq!(tc_flags_with(TcView::default()), 0);
    let own_only = TcHooks {
        tcx_ingress: vec![42],
        tcx_egress: vec![43],
        ..TcHooks::default()
    };
    let own_everywhere = TcView {
        uplink: own_only.clone(),
        vtep: own_only.clone(),
        bridge: own_only.clone(),
        ports: BTreeMap::new(),
        unreadable: false,
    };
    assert_eq!(tc_flags_with(own_everywhere.clone()), 0);
    // A redirect to the uplink's egress goes through its qdisc: no flag.
    let mut uplink_shaped = own_everywhere.clone();
    uplink_shaped.uplink.root_qdisc = Some("tbf".into());
    assert_eq!(tc_flags_with(uplink_shaped), 0);
    let mut uplink_filtered = own_everywhere.clone();
    uplink_filtered.uplink.ingress_filters = 2;
    assert_eq!(tc_flags_with(uplink_filtered), CONFIG_TC_UPLINK);
    let mut vtep_shaped = own_everywhere.clone();
    vtep_shaped.vtep.root_qdisc = Some("htb".into());
    assert_eq!(tc_flags_with(vtep_shaped), CONFIG_TC_VTEP);
    let mut bridge_program = own_everywhere;
    bridge_program.bridge.tcx_ingress.push(99);
    assert_eq!(tc_flags_with(bridge_program), CONFIG_TC_BRIDGE);
    // tc unreadable: what it does is unknown, so nothing bypasses it.
    assert_eq!(
        tc_flags_with(TcView {
            unreadable: true,
            ..TcView::default()
        }),
        CONFIG_TC_UPLINK | CONFIG_TC_VTEP | CONFIG_TC_BRIDGE
    );
}

/// The PEERS entry of a VXLAN (or, `direct`, host-gw) peer at `ip`.
fn peer_at(ip: [u8; 4], direct: bool) -> Peer {
    Peer {
        public_ip: ip,
        mode: if direct {
            PeerMode::HostGw as u8
        } else {
            PeerMode::Vxlan as u8
        },
        ..Peer::default()
    }
}

fn vteps_of(peers: &BTreeMap<Ipv4Net, Peer>) -> BTreeMap<Ipv4Addr, Vtep> {
    vteps(peers.iter().map(|(subnet, peer)| (*subnet, peer)))
}

#[test]
fn a_vtep_carries_its_one_subnet_or_says_it_has_several() {
    let a = [192, 168, 78, 3];
    let b = [192, 168, 78, 4];
    let mut peers = BTreeMap::from([
        (net("10.244.3.0/24"), peer_at(a, false)),
        (net("10.244.4.0/24"), peer_at(b, false)),
        (net("10.244.5.0/24"), peer_at([192, 168, 77, 5], true)),
    ]);
    assert_eq!(
        vteps_of(&peers),
        BTreeMap::from([
            (a.into(), Vtep::new(1, ([10, 244, 3, 0], 24))),
            (b.into(), Vtep::new(1, ([10, 244, 4, 0], 24))),
        ]),
        "a direct peer is no VTEP"
    );
    // A second lease with A's PublicIP (a node that took a new subnet
    // while its old lease lives on): A speaks for both, PEERS decides.
    peers.insert(net("10.244.6.0/24"), peer_at(a, false));
    let vtep = vteps_of(&peers)[&Ipv4Addr::from(a)];
    assert_eq!((vtep.subnets, vtep.holds([10, 244, 3, 1])), (2, None));
    // The old lease moves to B: A keeps only its new subnet, and B, now
    // with two, asks PEERS.
    peers.insert(net("10.244.3.0/24"), peer_at(b, false));
    let vteps = vteps_of(&peers);
    assert_eq!(
        vteps[&Ipv4Addr::from(a)],
        Vtep::new(1, ([10, 244, 6, 0], 24))
    );
    assert_eq!(
        vteps[&Ipv4Addr::from(a)].holds([10, 244, 3, 1]),
        Some(false)
    );
    assert_eq!(vteps[&Ipv4Addr::from(b)].subnets, 2);
}

mod vteps_agree_with_peers {
    //! VTEPS' check (its value, or PEERS where the value says several) is
    //! PEERS' longest-prefix check, for any accepted peer set: the peer
    //! table never accepts overlapping subnets, and the sets here do not
    //! overlap either.
    use proptest::prelude::*;

    use super::*;

    /// The programs' check, from VTEPS (and PEERS where it says so):
    /// `None` for an unknown VTEP, else whether the inner source passes.
    fn by_vteps(
        vteps: &BTreeMap<Ipv4Addr, Vtep>,
        peers: &BTreeMap<Ipv4Net, Peer>,
        outer: Ipv4Addr,
        inner: Ipv4Addr,
    ) -> Option<bool> {
        let vtep = vteps.get(&outer)?;
        Some(
            vtep.holds(inner.octets())
                .unwrap_or_else(|| by_peers(peers, outer, inner)),
        )
    }

    /// The check before VTEPS carried subnets: PEERS' longest match for
    /// the inner source names the outer source as its PublicIP.
    fn by_peers(peers: &BTreeMap<Ipv4Net, Peer>, outer: Ipv4Addr, inner: Ipv4Addr) -> bool {
        peers
            .iter()
            .filter(|(subnet, _)| subnet.contains(&inner))
            .max_by_key(|(subnet, _)| subnet.prefix_len())
            .is_some_and(|(_, peer)| peer.public_ip == outer.octets())
    }

    /// The old VTEPS: the VXLAN peers' PublicIPs.
    fn old_vteps(peers: &BTreeMap<Ipv4Net, Peer>) -> BTreeSet<Ipv4Addr> {
        peers
            .values()
            .filter(|peer| peer.mode == PeerMode::Vxlan as u8)
            .map(|peer| peer.public_ip.into())
            .collect()
    }

    /// Up to 12 peers in 10.244.0.0/16 with prefixes /22 to /32 (dropping
    /// any that overlap one already taken, as the peer table does), on
    /// four PublicIPs, each VXLAN or direct by its PublicIP (the route to
    /// a node decides, so one PublicIP is one mode).
    fn peer_set() -> impl Strategy<Value = BTreeMap<Ipv4Net, Peer>> {
        (
            prop::collection::vec((any::<u16>(), 22u8..=32, 0u8..4), 0..12),
            any::<[bool; 4]>(),
        )
            .prop_map(|(claims, direct)| {
                let mut peers: BTreeMap<Ipv4Net, Peer> = BTreeMap::new();
                for (low, prefix_len, node) in claims {
                    let [c, d] = low.to_be_bytes();
                    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, c, d), prefix_len)
                        .unwrap()
                        .trunc();
                    if peers
                        .keys()
                        .any(|taken| taken.contains(&subnet) || subnet.contains(taken))
                    {
                        continue;
                    }
                    let ip = [192, 168, 78, node];
                    peers.insert(subnet, peer_at(ip, direct[usize::from(node)]));
                }
                peers
            })
    }

    /// Addresses on and around the peers' subnet edges, and anywhere.
    fn probes(peers: &BTreeMap<Ipv4Net, Peer>) -> Vec<Ipv4Addr> {
        let mut probes = vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(0, 0, 0, 0)];
        for subnet in peers.keys() {
            let (first, last) = (u32::from(subnet.network()), u32::from(subnet.broadcast()));
            for addr in [
                first.wrapping_sub(1),
                first,
                first + 1,
                last - 1,
                last,
                last.wrapping_add(1),
            ] {
                probes.push(addr.into());
            }
        }
        probes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_same_frames_pass(peers in peer_set(), inner in any::<u32>()) {
            let vteps = vteps_of(&peers);
            // The same VTEPs as before the value carried subnets.
            prop_assert_eq!(vteps.keys().copied().collect::<BTreeSet<_>>(), old_vteps(&peers));
            let mut inners = probes(&peers);
            inners.push(inner.into());
            for node in 0..5 {
                let outer = Ipv4Addr::new(192, 168, 78, node);
                for inner in &inners {
                    let old = old_vteps(&peers)
                        .contains(&outer)
                        .then(|| by_peers(&peers, outer, *inner));
                    prop_assert_eq!(
                        by_vteps(&vteps, &peers, outer, *inner),
                        old,
                        "outer {} inner {} peers {:?}",
                        outer,
                        inner,
                        peers
                    );
                }
            }
        }

        /// While PEERS changes from `old` to `new`, VTEPS first holds what
        /// both share (`FastPathMaps::sync`): whatever PEERS holds
        /// meanwhile (the shared entries, any of the others), a frame from
        /// a VTEP with one subnet passes only if the old and the new peer
        /// set both pass it; one with several defers to PEERS as it is
        /// then, as the check always did. A VTEP before and after is never
        /// taken for an unknown one.
        #[test]
        fn a_change_never_passes_what_either_side_refuses(
            old in peer_set(),
            new in peer_set(),
            keep in any::<u64>(),
        ) {
            let shared: BTreeMap<Ipv4Net, Peer> = old
                .iter()
                .filter(|(subnet, peer)| new.get(*subnet) == Some(*peer))
                .map(|(subnet, peer)| (*subnet, *peer))
                .collect();
            let (before, after) = (old_vteps(&old), old_vteps(&new));
            let known: Vec<Ipv4Addr> = before.intersection(&after).copied().collect();
            let during = vteps_while_changing(shared.iter().map(|(s, p)| (*s, p)), known);
            // PEERS partway: the shared entries and some of the others
            // (old ones not yet removed, new ones already written), never
            // overlapping.
            let mut partway = shared.clone();
            for (index, (subnet, peer)) in old.iter().chain(new.iter()).enumerate() {
                if keep >> (index % 64) & 1 == 1
                    && !partway.keys().any(|taken| taken.contains(subnet) || subnet.contains(taken))
                {
                    partway.insert(*subnet, *peer);
                }
            }
            let mut inners = probes(&old);
            inners.extend(probes(&new));
            for node in 0..5 {
                let outer = Ipv4Addr::new(192, 168, 78, node);
                if before.contains(&outer) && after.contains(&outer) {
                    prop_assert!(during.contains_key(&outer), "{} taken for unknown", outer);
                }
                for inner in &inners {
                    if by_vteps(&during, &partway, outer, *inner) != Some(true) {
                        continue;
                    }
                    let both = by_peers(&old, outer, *inner) && by_peers(&new, outer, *inner);
                    let deferred = during[&outer].subnets > 1 && by_peers(&partway, outer, *inner);
                    prop_assert!(
                        both || deferred,
                        "outer {} inner {} passes partway, old {:?} new {:?}",
                        outer, inner, old, new
                    );
                }
            }
        }
    }
}
