//! The fixture node: the programs loaded unpinned, and their maps written
//! by the agent's own code from the node's inputs.

use std::{collections::BTreeMap, net::Ipv4Addr, os::fd::AsFd as _};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData},
    programs::{SchedClassifier, Xdp},
};
use ipnet::Ipv4Net;
use weft_agent::{
    config::NetworkConfig,
    dataplane::maps::FastPathMaps,
    desired::{self, Inputs, LocalPod, NodeFacts},
    endpoints::LocalView,
    lease::{
        LeaseAttrs, MacAddr, VxlanBackendData,
        validate::{AcceptedPeer, LeasePolicy},
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
    peers: BTreeMap<Ipv4Net, AcceptedPeer>,
    view: LocalView,
    pods: BTreeMap<Ipv4Addr, LocalPod>,
}

impl FixtureNode {
    fn new(strict: bool) -> Self {
        let network = format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"vxlan","VNI":{VNI},"Port":{PORT},"DirectRouting":true}}}}"#
        );
        let facts = NodeFacts {
            network: NetworkConfig::parse(&network).unwrap(),
            public_ip: NODE_IP.into(),
            uplink_index: UPLINK_IFINDEX,
            uplink_mac: MacAddr(UPLINK_MAC),
            uplink_mtu: 1500,
            vtep_mac: Some(MacAddr(VTEP_MAC)),
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
        }
    }

    /// A resolved underlay neighbour, or (`[0; 6]`) none.
    fn set_neighbour(&mut self, ip: [u8; 4], mac: [u8; 6]) {
        if mac == [0; 6] {
            self.view.uplink_neighbours.remove(&ip.into());
        } else {
            self.view.uplink_neighbours.insert(ip.into(), MacAddr(mac));
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
) -> (Ipv4Net, AcceptedPeer) {
    let policy = LeasePolicy::new(&facts.network, facts.public_ip, facts.vtep_mac);
    let lease = LeaseAttrs {
        public_ip: public_ip.into(),
        public_ipv6: None,
        backend_type: "vxlan".to_owned(),
        backend_data: Some(VxlanBackendData {
            vni: VNI,
            vtep_mac: MacAddr(vtep_mac),
        }),
    };
    let accepted = policy
        .check(subnet, &lease, None)
        .expect("the fixture's leases pass the agent's rules");
    (subnet, accepted)
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
            HashMap::try_from(Map::HashMap(second_handle(&ebpf, map_names::ENDPOINTS))).unwrap(),
            HashMap::try_from(Map::HashMap(second_handle(&ebpf, map_names::VTEPS))).unwrap(),
            Array::try_from(Map::Array(second_handle(&ebpf, map_names::CONFIG))).unwrap(),
        )
        .unwrap();
        let mut programs = Self {
            ebpf,
            maps,
            node: FixtureNode::new(strict),
        };
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
            subnet: subnet([10, 244, 1, 0]),
            peers: &self.node.peers,
            view: &self.node.view,
            pods: &self.node.pods,
            ruleset_generation: GENERATION,
            verdicts_suspended: false,
            listed: true,
            viewed: true,
        });
        assert!(
            desired.unroutable.is_empty(),
            "fixture leases unroutable: {:?}",
            desired.unroutable
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
                self.node.peers.remove(&subnet);
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
