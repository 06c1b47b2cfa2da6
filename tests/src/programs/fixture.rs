//! The fixture node: the programs loaded unpinned, and their maps written
//! by the agent's own code from the node's inputs.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData},
    programs::{SchedClassifier, Xdp},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_agent::{
    config::NetworkConfig,
    dataplane::maps::FastPathMaps,
    desired::{self, Inputs, LocalPod, NodeFacts},
    endpoints::LocalView,
    lease::{
        LeaseAttrs, MacAddr, VxlanBackendData,
        validate::{AcceptedPeer, LeasePolicy, OwnSubnets},
    },
    tc::TcView,
};
use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP, ENDPOINT_XDP_READY,
    NodeConfig, map_names,
    program_names::{TC_POD_EGRESS, TC_UPLINK, TC_VERDICT, XDP_UPLINK},
};

use super::*;

pub struct Programs {
    pub ebpf: Ebpf,
    /// The agent's map writer, on the same maps as `ebpf`.
    maps: FastPathMaps,
    /// The fixture node's inputs of the agent's desired state.
    node: FixtureNode,
}

/// What the agent knows about the fixture node: the inputs of
/// `desired::compute`.
struct FixtureNode {
    facts: NodeFacts,
    peers: BTreeMap<IpNet, AcceptedPeer>,
    view: LocalView,
    pods: BTreeMap<Ipv4Addr, LocalPod>,
    /// Dual-stack only: this node's IPv6 subnet and its pods' IPv6
    /// addresses (none, and empty, on the IPv4-only node).
    subnet_v6: Option<Ipv6Net>,
    pods_v6: BTreeMap<Ipv6Addr, LocalPod>,
}

impl FixtureNode {
    fn new(strict: bool) -> Self {
        let network = format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"vxlan","VNI":{VNI},"Port":{PORT},"DirectRouting":true}}}}"#
        );
        let facts = NodeFacts {
            network: NetworkConfig::parse(&network).unwrap(),
            public_ip: Some(NODE_IP.into()),
            uplink_index: UPLINK_IFINDEX,
            uplink_mac: MacAddr(UPLINK_MAC),
            uplink_mtu: 1500,
            vtep_mac: Some(MacAddr(VTEP_MAC)),
            public_ipv6: None,
            vtep_v6_mac: None,
            vtep_v6_index: None,
            strict_vteps: strict,
            bulk_tcp_via_gro: false,
            verdict_probes: true,
            uplink_xdp: false,
            own_tc_programs: Default::default(),
            accept_mark: ACCEPT_MARK,
            // Long enough that no test depends on the clock; the re-check
            // test shortens it.
            verdict_ttl_ns: 3_600 * 1_000_000_000,
        };
        let peers = BTreeMap::from([
            accepted_lease(&facts, subnet([10, 244, 2, 0]), PEER_IP, PEER_VTEP_MAC),
            accepted_lease(
                &facts,
                subnet([10, 244, 3, 0]),
                HOSTGW_NODE_IP,
                HOSTGW_VTEP_MAC,
            ),
        ]);
        let view = LocalView {
            uplink_routes: BTreeMap::from([
                (subnet([192, 168, 77, 0]), None),
                (
                    Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap(),
                    Some(ROUTER_IP.into()),
                ),
            ]),
            uplink_neighbours: BTreeMap::from([
                (ROUTER_IP.into(), MacAddr(NEXTHOP_MAC)),
                (HOSTGW_NODE_IP.into(), MacAddr(HOSTGW_NODE_MAC)),
            ]),
            gateway_mac: Some(MacAddr(GATEWAY_MAC)),
            ..LocalView::default()
        };
        let pod = |port| LocalPod {
            port,
            mac: MacAddr(POD_MAC),
            xdp_ready: true,
        };
        let pods = BTreeMap::from([
            (LOCAL_POD.into(), pod(POD_IFINDEX)),
            (OTHER_LOCAL_POD.into(), pod(POD_IFINDEX + 1)),
        ]);
        Self {
            facts,
            peers,
            view,
            pods,
            subnet_v6: None,
            pods_v6: BTreeMap::new(),
        }
    }

    /// The same node in a dual-stack network (`EnableIPv6`, IPv6Network
    /// fd00:244::/48, /64 subnets): its PublicIPv6 and `flannel-v6` MAC,
    /// its IPv6 subnet, both peers with IPv6 halves (the host-gw peer's
    /// PublicIPv6 on-link and resolved, the VXLAN peer's behind the
    /// router), and the local pods' IPv6 addresses on their IPv4 veths.
    fn dual_stack(strict: bool) -> Self {
        let mut node = Self::new(strict);
        let network = format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:244::/48","IPv6SubnetLen":64,"Backend":{{"Type":"vxlan","VNI":{VNI},"Port":{PORT},"DirectRouting":true}}}}"#
        );
        let facts = &mut node.facts;
        facts.network = NetworkConfig::parse(&network).unwrap();
        facts.public_ipv6 = Some(NODE_IP6);
        facts.vtep_v6_mac = Some(MacAddr(VTEP_V6_MAC));
        facts.vtep_v6_index = Some(VTEP6_IFINDEX);
        let own = OwnSubnets {
            v4: Some(subnet([10, 244, 1, 0])),
            v6: Some(subnet6(1)),
        };
        node.peers = BTreeMap::from([
            accepted_claim(
                facts,
                own,
                subnet([10, 244, 2, 0]),
                (PEER_IP, PEER_VTEP_MAC),
                (subnet6(2), PEER_IP6, PEER_VTEP_V6_MAC),
            ),
            accepted_claim(
                facts,
                own,
                subnet([10, 244, 3, 0]),
                (HOSTGW_NODE_IP, HOSTGW_VTEP_MAC),
                (subnet6(3), HOSTGW_NODE_IP6, HOSTGW_VTEP_V6_MAC),
            ),
        ]);
        node.view.uplink_routes_v6 = BTreeMap::from([
            ("fd00:77::/64".parse().unwrap(), None),
            ("fe80::/64".parse().unwrap(), None),
            ("::/0".parse().unwrap(), Some(ROUTER_IP6)),
        ]);
        node.view.uplink_neighbours_v6 = BTreeMap::from([
            (ROUTER_IP6, MacAddr(NEXTHOP_MAC)),
            (HOSTGW_NODE_IP6, MacAddr(HOSTGW_NODE_MAC)),
        ]);
        node.subnet_v6 = own.v6;
        node.pods_v6 = BTreeMap::from([
            (LOCAL_POD6, node.pods[&LOCAL_POD.into()]),
            (OTHER_LOCAL_POD6, node.pods[&OTHER_LOCAL_POD.into()]),
        ]);
        node
    }

    /// A resolved underlay neighbour, or (`[0; 6]`) none.
    fn set_neighbour(&mut self, ip: [u8; 4], mac: [u8; 6]) {
        if mac == [0; 6] {
            self.view.uplink_neighbours.remove(&ip.into());
        } else {
            self.view.uplink_neighbours.insert(ip.into(), MacAddr(mac));
        }
    }

    /// [`Self::set_neighbour`] in the uplink's IPv6 neighbour table.
    fn set_neighbour6(&mut self, ip: Ipv6Addr, mac: [u8; 6]) {
        if mac == [0; 6] {
            self.view.uplink_neighbours_v6.remove(&ip);
        } else {
            self.view.uplink_neighbours_v6.insert(ip, MacAddr(mac));
        }
    }
}

/// A vxlan lease for `subnet` from the node at `public_ip`, passed through
/// the agent's own rules, as in the agent.
fn accepted_lease(
    facts: &NodeFacts,
    subnet: Ipv4Net,
    public_ip: [u8; 4],
    vtep_mac: [u8; 6],
) -> (IpNet, AcceptedPeer) {
    let policy = LeasePolicy::new(&facts.network, facts.public_ip, facts.vtep_mac);
    let lease = LeaseAttrs {
        public_ip: public_ip.into(),
        public_ipv6: None,
        backend_type: "vxlan".to_owned(),
        backend_data: Some(VxlanBackendData {
            vni: VNI,
            vtep_mac: MacAddr(vtep_mac),
        }),
        backend_v6_data: None,
    };
    policy
        .check_claim(Some(subnet), None, &lease, OwnSubnets::default())
        .expect("the fixture's leases pass the agent's rules")
}

/// A dual-stack vxlan claim for `subnet` from the node at `public_ip`
/// with VTEP MAC `vtep_mac`, and its IPv6 half (subnet, PublicIPv6,
/// `flannel-v6` MAC), passed through the agent's own rules for a
/// claim (both halves) against this node's `own` subnets, as in the agent.
fn accepted_claim(
    facts: &NodeFacts,
    own: OwnSubnets,
    subnet: Ipv4Net,
    (public_ip, vtep_mac): ([u8; 4], [u8; 6]),
    (subnet_v6, public_ipv6, vtep_v6_mac): (Ipv6Net, Ipv6Addr, [u8; 6]),
) -> (IpNet, AcceptedPeer) {
    let policy = LeasePolicy::new(&facts.network, facts.public_ip, facts.vtep_mac)
        .with_own_ipv6(facts.public_ipv6, facts.vtep_v6_mac);
    let lease = LeaseAttrs {
        public_ip: public_ip.into(),
        public_ipv6: Some(public_ipv6),
        backend_type: "vxlan".to_owned(),
        backend_data: Some(VxlanBackendData {
            vni: VNI,
            vtep_mac: MacAddr(vtep_mac),
        }),
        backend_v6_data: Some(VxlanBackendData {
            vni: VNI,
            vtep_mac: MacAddr(vtep_v6_mac),
        }),
    };
    let (key, accepted) = policy
        .check_claim(Some(subnet), Some(subnet_v6), &lease, own)
        .expect("the fixture's claims pass the agent's rules");
    assert_eq!(
        accepted.v6.map(|half| half.subnet),
        Some(subnet_v6),
        "the fixture's IPv6 halves are accepted"
    );
    (key, accepted)
}

/// fd00:244:0:`n`::/64, the dual-stack fixture's `n`th IPv6 subnet.
fn subnet6(n: u16) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x244, 0, n, 0, 0, 0, 0), 64).unwrap()
}

/// A /24 starting at `network`.
fn subnet(network: [u8; 4]) -> Ipv4Net {
    Ipv4Net::new(network.into(), 24).unwrap()
}

/// A second handle on the loaded object's map `name` (same kernel map, own
/// fd), so the agent's writer and the tests' own reads and writes share it.
fn second_handle(ebpf: &Ebpf, name: &str) -> MapData {
    let data = match ebpf.map(name).unwrap() {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LpmTrie(data)
        | Map::LruHashMap(data)
        | Map::RingBuf(data) => data,
        _ => panic!("{name} is not an array, hash, LPM trie or ring buffer"),
    };
    MapData::from_fd(data.fd().as_fd().try_clone_to_owned().unwrap()).unwrap()
}

impl Programs {
    /// A second handle on the loaded object's map `name`.
    pub fn second_map_handle(&self, name: &str) -> MapData {
        second_handle(&self.ebpf, name)
    }

    pub fn load(strict: bool) -> Self {
        Self::load_node(FixtureNode::new(strict))
    }

    /// [`Self::load`] on the dual-stack fixture node: the same IPv4 maps,
    /// and PEERS6 and ENDPOINTS6 written by the agent from the node's IPv6
    /// halves; the fixture's IPv6 flows accepted in FLOWS6 as well.
    pub fn load_dual_stack(strict: bool) -> Self {
        let mut programs = Self::load_node(FixtureNode::dual_stack(strict));
        programs.accept_fixture_flows6();
        programs
    }

    fn load_node(node: FixtureNode) -> Self {
        let mut ebpf = EbpfLoader::new()
            .load(weft_agent::dataplane::ebpf::OBJECT)
            .unwrap();
        let xdp: &mut Xdp = ebpf.program_mut(XDP_UPLINK).unwrap().try_into().unwrap();
        xdp.load().unwrap();
        for name in [TC_POD_EGRESS, TC_UPLINK, TC_VERDICT] {
            let tc: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            tc.load().unwrap();
        }
        let maps = FastPathMaps::new(
            LpmTrie::try_from(Map::LpmTrie(second_handle(&ebpf, map_names::PEERS))).unwrap(),
            LpmTrie::try_from(Map::LpmTrie(second_handle(&ebpf, map_names::PEERS6))).unwrap(),
            HashMap::try_from(Map::HashMap(second_handle(&ebpf, map_names::ENDPOINTS))).unwrap(),
            HashMap::try_from(Map::HashMap(second_handle(&ebpf, map_names::ENDPOINTS6))).unwrap(),
            HashMap::try_from(Map::HashMap(second_handle(&ebpf, map_names::VTEPS))).unwrap(),
            Array::try_from(Map::Array(second_handle(&ebpf, map_names::CONFIG))).unwrap(),
        )
        .unwrap();
        let mut programs = Self { ebpf, maps, node };
        programs.sync();
        programs.accept_fixture_flows();
        programs
    }

    /// Writes the maps as the agent does: the fixture node's inputs through
    /// `desired::compute`, then `FastPathMaps::sync`. The maps are read
    /// back first (as the agent's map audit does), so whatever a test wrote
    /// directly is repaired where the inputs say otherwise.
    fn sync(&mut self) {
        let desired = desired::compute(&Inputs {
            node: &self.node.facts,
            subnet: Some(subnet([10, 244, 1, 0])),
            subnet_v6: self.node.subnet_v6,
            peers: &self.node.peers,
            view: &self.node.view,
            pods: &self.node.pods,
            pods_v6: &self.node.pods_v6,
            ruleset_generation: GENERATION,
            verdicts_suspended: false,
            listed: true,
            viewed: true,
        });
        assert!(
            desired.unroutable.is_empty() && desired.unroutable_v6.is_empty(),
            "fixture leases unroutable: {:?} {:?}",
            desired.unroutable,
            desired.unroutable_v6
        );
        self.maps.reload().unwrap();
        let report = self.maps.sync(&desired);
        assert!(
            report.failed.is_empty() && report.vteps_complete,
            "the agent could not write the fixture's maps: {report:?}"
        );
    }

    /// A local pod behind host-side veth `ifindex`, ready for XDP or not
    /// (`flags`: `ENDPOINT_XDP_READY` or 0), as the agent writes it.
    pub fn set_endpoint(&mut self, ip: [u8; 4], ifindex: u32, flags: u8) {
        assert_eq!(
            flags & !ENDPOINT_XDP_READY,
            0,
            "the agent sets no endpoint flag but ENDPOINT_XDP_READY"
        );
        let pod = LocalPod {
            port: ifindex,
            mac: MacAddr(POD_MAC),
            xdp_ready: flags & ENDPOINT_XDP_READY != 0,
        };
        self.node.pods.insert(ip.into(), pod);
        self.sync();
    }

    /// [`Self::set_endpoint`] for a local pod's IPv6 address (dual-stack
    /// fixture).
    pub fn set_endpoint6(&mut self, ip: Ipv6Addr, ifindex: u32, flags: u8) {
        assert!(self.node.subnet_v6.is_some(), "not the dual-stack fixture");
        assert_eq!(
            flags & !ENDPOINT_XDP_READY,
            0,
            "the agent sets no endpoint flag but ENDPOINT_XDP_READY"
        );
        let pod = LocalPod {
            port: ifindex,
            mac: MacAddr(POD_MAC),
            xdp_ready: flags & ENDPOINT_XDP_READY != 0,
        };
        self.node.pods_v6.insert(ip, pod);
        self.sync();
    }

    /// Changes CONFIG with `change`, directly: for contents the agent would
    /// not write from the fixture's inputs (a ruleset generation ahead of
    /// the recorded verdicts, a verdict TTL shorter than a test's sleep).
    /// The next agent sync (`set_flags`, `set_peer`, ...) puts the agent's
    /// CONFIG back.
    pub fn update_config(&mut self, change: impl FnOnce(&mut NodeConfig)) {
        let mut config_map: Array<_, NodeConfig> =
            Array::try_from(self.ebpf.map_mut("CONFIG").unwrap()).unwrap();
        let mut config = config_map.get(&0, 0).unwrap();
        change(&mut config);
        config_map.set(0, config, 0).unwrap();
    }

    /// Sets CONFIG's flags (`CONFIG_*`) the way the agent does: from the
    /// node's `--strict-vteps`, `--bulk-tcp-via-gro` and whether XDP is
    /// attached to the uplink.
    pub fn set_flags(&mut self, flags: u32) {
        let known = CONFIG_STRICT_VTEPS | CONFIG_BULK_TCP_VIA_GRO | CONFIG_UPLINK_XDP;
        assert_eq!(flags & !known, 0, "flags {flags:#x}: unknown to the agent");
        let facts = &mut self.node.facts;
        facts.strict_vteps = flags & CONFIG_STRICT_VTEPS != 0;
        facts.bulk_tcp_via_gro = flags & CONFIG_BULK_TCP_VIA_GRO != 0;
        facts.uplink_xdp = flags & CONFIG_UPLINK_XDP != 0;
        self.sync();
    }

    /// tc on the node's interfaces as the agent's local view would read it
    /// (`weft_agent::tc`), turned into ENDPOINTS and CONFIG flags by the
    /// agent's own `desired::compute`. The fixture's own TC programs are
    /// not listed, so any TCX id in `change` is "another program".
    pub fn set_tc(&mut self, change: impl FnOnce(&mut TcView)) {
        change(&mut self.node.view.tc);
        self.sync();
    }

    /// The host-gw peer node's MAC as the uplink's neighbour table has it
    /// (`[0; 6]`: unresolved); the agent writes it into its PEERS entry.
    pub fn set_host_gw_peer(&mut self, nexthop_mac: [u8; 6]) {
        self.node.set_neighbour(HOSTGW_NODE_IP, nexthop_mac);
        self.sync();
    }

    /// The host-gw peer node's MAC as the uplink's IPv6 neighbour table
    /// has it (`[0; 6]`: unresolved); the agent writes it into its PEERS6
    /// entry (dual-stack fixture).
    pub fn set_host_gw_peer6(&mut self, nexthop_mac: [u8; 6]) {
        assert!(self.node.subnet_v6.is_some(), "not the dual-stack fixture");
        self.node.set_neighbour6(HOSTGW_NODE_IP6, nexthop_mac);
        self.sync();
    }

    /// The accepted vxlan lease of the /24 at `network`: held by the node
    /// at `public_ip` with VTEP MAC `vtep_mac`, or (`None`) gone. The agent
    /// writes PEERS and VTEPS from the new peer set, as on a lease event.
    pub fn set_lease(&mut self, network: [u8; 4], holder: Option<([u8; 4], [u8; 6])>) {
        let subnet = subnet(network);
        match holder {
            Some((public_ip, vtep_mac)) => {
                let (subnet, peer) = accepted_lease(&self.node.facts, subnet, public_ip, vtep_mac);
                self.node.peers.insert(subnet, peer);
            }
            None => {
                self.node.peers.remove(&IpNet::V4(subnet));
            }
        }
        self.sync();
    }

    /// The router's MAC (the VXLAN peer's underlay next hop) as the uplink's
    /// neighbour table has it (`[0; 6]`: unresolved); the agent writes it
    /// into the VXLAN peer's PEERS entry.
    pub fn set_peer(&mut self, nexthop_mac: [u8; 6]) {
        self.node.set_neighbour(ROUTER_IP, nexthop_mac);
        self.sync();
    }
}
