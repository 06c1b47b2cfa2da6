//! The eBPF programs loaded unpinned for BPF_PROG_TEST_RUN, with maps
//! describing a small node, and the frames that exercise them: shared by the
//! program tests and the benchmark's per-packet cost.
//!
//! The maps are written by the agent's own code, as on a node: the fixture
//! node's accepted leases, local view, pods and facts go through
//! `desired::compute`, and `FastPathMaps::sync` (on second handles to the
//! loaded object's maps) writes PEERS, VTEPS, ENDPOINTS and CONFIG. Only
//! contents the agent would never write are written directly (FLOWS, which
//! `tc_verdict` fills, and [`Programs::update_config`]).

use std::{collections::BTreeMap, net::Ipv4Addr, os::fd::AsFd as _};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ipnet::Ipv4Net;
use weft_agent::{
    config::NetworkConfig,
    dataplane::maps::FastPathMaps,
    desired::{self, Inputs, LocalPod, NodeFacts},
    endpoints::LocalView,
    lease::{LeaseAttrs, MacAddr, VxlanBackendData},
};
use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP, COUNTERS, CounterId,
    ENDPOINT_XDP_READY, FlowKey, FlowVerdict,
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    NodeConfig, PacketCounter, Reason, map_names,
    program_names::{TC_POD_EGRESS, TC_UPLINK, TC_VERDICT, XDP_UPLINK},
};

use crate::packets::{ETH_P_IPV4, Ipv4Options, eth, icmp_echo, ipv4, udp, vxlan};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The fixture node is on 192.168.77.0/24 (its uplink's connected route),
/// with a default route via a router at 192.168.77.254; the network is
/// VXLAN with DirectRouting, so an on-link peer is reached directly
/// (host-gw mode) and one behind the router over VXLAN.
pub const NODE_IP: [u8; 4] = [192, 168, 77, 1];
/// The VXLAN peer node, on another segment one routed hop away.
pub const PEER_IP: [u8; 4] = [192, 168, 78, 2];
pub const STRANGER_IP: [u8; 4] = [192, 168, 77, 66];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The router's address and MAC: the underlay next hop toward `PEER_IP`.
pub const ROUTER_IP: [u8; 4] = [192, 168, 77, 254];
pub const NEXTHOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const VTEP_MAC: [u8; 6] = [0x0e, 1, 192, 168, 77, 1];
pub const PEER_VTEP_MAC: [u8; 6] = [0x0e, 1, 192, 168, 78, 2];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x01];
pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x02];
pub const LOCAL_POD: [u8; 4] = [10, 244, 1, 2];
pub const OTHER_LOCAL_POD: [u8; 4] = [10, 244, 1, 3];
pub const REMOTE_POD: [u8; 4] = [10, 244, 2, 7];
/// The local pod's host-side veth. BPF_PROG_TEST_RUN runs TC programs on
/// `lo` (ifindex 1), so the fixture's sending pod is plugged in there: its
/// packets pass the check that a pod sends from its own veth.
pub const POD_IFINDEX: u32 = 1;
/// A host-gw peer node (on-link, so DirectRouting reaches it directly):
/// its pods' subnet, address and uplink MAC.
pub const HOSTGW_POD: [u8; 4] = [10, 244, 3, 5];
pub const HOSTGW_NODE_IP: [u8; 4] = [192, 168, 77, 3];
pub const HOSTGW_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
pub const HOSTGW_VTEP_MAC: [u8; 6] = [0x0e, 1, 192, 168, 77, 3];
pub const UPLINK_IFINDEX: u32 = 2;
pub const VNI: u32 = 1;
pub const PORT: u16 = 8472;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// The accept mark the fixture's CONFIG names.
pub const ACCEPT_MARK: u32 = 0x0010_0000;
/// The fixture's ruleset generation.
pub const GENERATION: u32 = 7;
/// The ICMP echo identifier of `packets::icmp_echo`.
pub const ECHO_ID: [u8; 2] = [0x12, 0x34];

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
    peers: BTreeMap<Ipv4Net, LeaseAttrs>,
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
            uplink_xdp: false,
            accept_mark: ACCEPT_MARK,
            // Long enough that no test depends on the clock; the re-check
            // test shortens it.
            verdict_ttl_ns: 3_600 * 1_000_000_000,
        };
        let lease = |public_ip: [u8; 4], vtep_mac: [u8; 6]| LeaseAttrs {
            public_ip: public_ip.into(),
            public_ipv6: None,
            backend_type: "vxlan".to_owned(),
            backend_data: Some(VxlanBackendData {
                vni: VNI,
                vtep_mac: MacAddr(vtep_mac),
            }),
        };
        let peers = BTreeMap::from([
            (subnet([10, 244, 2, 0]), lease(PEER_IP, PEER_VTEP_MAC)),
            (
                subnet([10, 244, 3, 0]),
                lease(HOSTGW_NODE_IP, HOSTGW_VTEP_MAC),
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

/// A /24 starting at `network`.
fn subnet(network: [u8; 4]) -> Ipv4Net {
    Ipv4Net::new(network.into(), 24).unwrap()
}

/// A second handle on the loaded object's map `name` (same kernel map, own
/// fd), so the agent's writer and the tests' own reads and writes share it.
fn second_handle(ebpf: &Ebpf, name: &str) -> MapData {
    let data = match ebpf.map(name).unwrap() {
        Map::Array(data) | Map::HashMap(data) | Map::LpmTrie(data) => data,
        _ => panic!("{name} is not an array, hash or LPM trie"),
    };
    MapData::from_fd(data.fd().as_fd().try_clone_to_owned().unwrap()).unwrap()
}

impl Programs {
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
            peers: &self.node.peers,
            view: &self.node.view,
            pods: &self.node.pods,
            ruleset_generation: GENERATION,
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

    /// Records netfilter's verdict for every flow the fixture frames use
    /// (ICMP echo and port-0 TCP between the fixture's pods, each way), as
    /// `tc_verdict` would after netfilter passed them: the tests of
    /// forwarding and delivery start from flows netfilter accepted.
    pub fn accept_fixture_flows(&mut self) {
        let pods = [LOCAL_POD, OTHER_LOCAL_POD, REMOTE_POD, HOSTGW_POD];
        for src in pods {
            for dst in pods.into_iter().filter(|dst| *dst != src) {
                self.set_verdict(flow(src, dst, IPPROTO_ICMP, ECHO_ID, [0, 0]), GENERATION);
                self.set_verdict(flow(src, dst, IPPROTO_TCP, [0, 0], [0, 0]), GENERATION);
            }
        }
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

    /// Writes a verdict for `key` seen now under `generation`.
    pub fn set_verdict(&mut self, key: FlowKey, generation: u32) {
        let mut flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut("FLOWS").unwrap()).unwrap();
        let verdict = FlowVerdict {
            seen_ns: monotonic_ns(),
            generation,
            _pad: 0,
        };
        flows.insert(key, verdict, 0).unwrap();
    }

    /// The verdict recorded for `key`, if any.
    pub fn verdict(&self, key: &FlowKey) -> Option<FlowVerdict> {
        let flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map("FLOWS").unwrap()).unwrap();
        flows.get(key, 0).ok()
    }

    /// Forgets every recorded verdict.
    pub fn clear_verdicts(&mut self) {
        let mut flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut("FLOWS").unwrap()).unwrap();
        let keys: Vec<FlowKey> = flows.keys().map(Result::unwrap).collect();
        for key in keys {
            flows.remove(&key).unwrap();
        }
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

    /// Runs `tc_verdict` on `frame` carrying packet mark `mark`: (verdict,
    /// the frame it left, the mark it left).
    pub fn tc_verdict(&self, frame: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        let program: &SchedClassifier = self.ebpf.program(TC_VERDICT).unwrap().try_into().unwrap();
        // struct __sk_buff up to and including `mark` (offset 8); the
        // kernel requires the fields before it to be zero.
        let mut ctx_in = [0u8; 12];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        // The kernel writes back the whole struct (192 bytes on 6.x).
        let mut ctx_out = [0u8; 256];
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::new()
            })
            .unwrap();
        out.truncate(result.data_size_out as usize);
        let mark_out = u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap());
        (result.return_value, out, mark_out)
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

    /// The host-gw peer node's MAC as the uplink's neighbour table has it
    /// (`[0; 6]`: unresolved); the agent writes it into its PEERS entry.
    pub fn set_host_gw_peer(&mut self, nexthop_mac: [u8; 6]) {
        self.node.set_neighbour(HOSTGW_NODE_IP, nexthop_mac);
        self.sync();
    }

    /// The router's MAC (the VXLAN peer's underlay next hop) as the uplink's
    /// neighbour table has it (`[0; 6]`: unresolved); the agent writes it
    /// into the VXLAN peer's PEERS entry.
    pub fn set_peer(&mut self, nexthop_mac: [u8; 6]) {
        self.node.set_neighbour(ROUTER_IP, nexthop_mac);
        self.sync();
    }

    pub fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &Xdp = self.ebpf.program(XDP_UPLINK).unwrap().try_into().unwrap();
        run(program, frame)
    }

    pub fn tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_POD_EGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        run(program, frame)
    }

    /// TC ingress on the uplink (`tc_uplink`).
    pub fn uplink_tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self.ebpf.program(TC_UPLINK).unwrap().try_into().unwrap();
        run(program, frame)
    }

    /// Each (what, frame, counter): XDP hands the frame to the kernel
    /// untouched and counts it under `counter` alone.
    pub fn assert_xdp_passes(&self, cases: &[(&str, Vec<u8>, CounterId)]) {
        for (what, frame, counter) in cases {
            let before = self.counters();
            let (verdict, out) = self.xdp(frame);
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_eq!(&out, frame, "{what}: a passed frame must be untouched");
            assert_counted(&before, &self.counters(), *counter);
        }
    }

    /// Each (what, frame, counter): `tc_uplink` (with no XDP attached, so it
    /// counts what it refuses) hands the frame to the kernel untouched and
    /// counts it under `counter` alone.
    pub fn assert_uplink_tc_passes(&self, cases: &[(&str, Vec<u8>, CounterId)]) {
        for (what, frame, counter) in cases {
            let before = self.counters();
            let (verdict, out) = self.uplink_tc(frame);
            assert_eq!(verdict, TC_ACT_OK, "{what}");
            assert_eq!(&out, frame, "{what}: a passed frame must be untouched");
            assert_counted(&before, &self.counters(), *counter);
        }
    }

    /// Each (what, frame, counter): TC hands the packet to the kernel
    /// untouched and counts it under `counter` alone.
    pub fn assert_tc_passes(&self, cases: &[(&str, Vec<u8>, CounterId)]) {
        for (what, frame, counter) in cases {
            let before = self.counters();
            let (verdict, out) = self.tc(frame);
            assert_eq!(verdict, TC_ACT_OK, "{what}");
            assert_eq!(&out, frame, "{what}: a passed packet must be untouched");
            assert_counted(&before, &self.counters(), *counter);
        }
    }

    /// Packets per counter, summed over CPUs.
    pub fn counters(&self) -> Counts {
        let stats: PerCpuArray<_, PacketCounter> =
            PerCpuArray::try_from(self.ebpf.map("STATS").unwrap()).unwrap();
        COUNTERS
            .iter()
            .map(|(id, _)| {
                (
                    *id,
                    stats
                        .get(&id.slot(), 0)
                        .unwrap()
                        .iter()
                        .map(|slot| slot.packets)
                        .sum(),
                )
            })
            .collect()
    }
}

/// A flow direction as FLOWS keys it.
pub fn flow(src: [u8; 4], dst: [u8; 4], proto: u8, sport: [u8; 2], dport: [u8; 2]) -> FlowKey {
    FlowKey {
        saddr: src,
        daddr: dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Runs `program` once on `frame`: (return value, the frame it left).
pub fn run<P>(program: &P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    // Room for what encapsulation adds.
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .unwrap();
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// A pod's frame: ICMP echo from `src` to `dst`.
pub fn pod_frame(src: [u8; 4], dst: [u8; 4], opts: Ipv4Options) -> Vec<u8> {
    eth(
        GATEWAY_MAC,
        POD_MAC,
        ETH_P_IPV4,
        &ipv4(src, dst, IPPROTO_ICMP, &icmp_echo(56), opts),
    )
}

/// The inner frame a peer node's VTEP sends for `dst`.
pub fn inner_frame(dst: [u8; 4], opts: Ipv4Options) -> Vec<u8> {
    eth(
        VTEP_MAC,
        PEER_VTEP_MAC,
        ETH_P_IPV4,
        &ipv4(REMOTE_POD, dst, IPPROTO_ICMP, &icmp_echo(56), opts),
    )
}

/// A full VXLAN frame on the uplink.
pub fn vxlan_frame(
    outer_src: [u8; 4],
    outer_dst: [u8; 4],
    port: u16,
    vni: u32,
    inner: &[u8],
    outer: Ipv4Options,
) -> Vec<u8> {
    let datagram = udp(40000, port, &vxlan(vni, inner));
    eth(
        UPLINK_MAC,
        NEXTHOP_MAC,
        ETH_P_IPV4,
        &ipv4(outer_src, outer_dst, IPPROTO_UDP, &datagram, outer),
    )
}

/// The inner frame of a TCP segment of `ip_len` bytes (IPv4 length) from
/// a remote pod to `dst`; the programs read no further than the IPv4 header.
pub fn inner_tcp_frame(dst: [u8; 4], ip_len: usize, opts: Ipv4Options) -> Vec<u8> {
    let mut segment = vec![0u8; ip_len - 20];
    segment[12] = 5 << 4; // data offset: a bare 20-byte TCP header
    eth(
        VTEP_MAC,
        PEER_VTEP_MAC,
        ETH_P_IPV4,
        &ipv4(REMOTE_POD, dst, IPPROTO_TCP, &segment, opts),
    )
}

/// Valid VXLAN carrying `inner`, from the known peer.
pub fn vxlan_carrying(inner: &[u8]) -> Vec<u8> {
    vxlan_from_carrying(PEER_IP, inner)
}

/// Valid VXLAN for the local pod, from `outer_src`.
pub fn vxlan_from(outer_src: [u8; 4]) -> Vec<u8> {
    vxlan_from_carrying(outer_src, &inner_frame(LOCAL_POD, Ipv4Options::default()))
}

fn vxlan_from_carrying(outer_src: [u8; 4], inner: &[u8]) -> Vec<u8> {
    vxlan_frame(
        outer_src,
        NODE_IP,
        PORT,
        VNI,
        inner,
        Ipv4Options {
            frag: 0,
            ..Default::default()
        },
    )
}

/// Valid VXLAN for the local pod, from the known peer.
pub fn good_vxlan() -> Vec<u8> {
    vxlan_from(PEER_IP)
}

/// Packets per counter, as [`Programs::counters`] reads them.
pub type Counts = BTreeMap<CounterId, u64>;

/// Asserts that exactly the counters in `rose` rose, each by one.
pub fn assert_only(before: &Counts, after: &Counts, rose: &[CounterId]) {
    for (name, value) in after {
        let expected = before[name] + u64::from(rose.contains(name));
        assert_eq!(
            *value, expected,
            "counter {name} (expected only {rose:?} to rise)"
        );
    }
}

/// The counters of every frame a program sees.
const SEEN: [CounterId; 3] = [
    XdpUplink.counter(Reason::Seen),
    TcUplink.counter(Reason::Seen),
    TcPodEgress.counter(Reason::Seen),
];

/// Asserts that exactly `counter` rose by one (besides the `Seen` counters
/// `uplink_rx`, `tc_uplink_seen` and `pod_egress`, which count every frame
/// a program sees).
pub fn assert_counted(before: &Counts, after: &Counts, counter: CounterId) {
    for (name, value) in after {
        let expected = before[name] + u64::from(*name == counter || SEEN.contains(name));
        if SEEN.contains(name) {
            continue;
        }
        assert_eq!(
            *value, expected,
            "counter {name} (expected only {counter} to rise)"
        );
    }
}
