//! The eBPF programs loaded unpinned for BPF_PROG_TEST_RUN, with maps
//! describing a small node, and the frames that exercise them: shared by the
//! program tests and the benchmark's per-packet cost.
//!
//! The maps are written by the agent's own code, as on a node: the fixture
//! node's accepted leases, local view, pods and facts go through
//! `desired::compute`, and `FastPathMaps::sync` (on second handles to the
//! loaded object's maps) writes PEERS, VTEPS, ENDPOINTS and CONFIG (and,
//! on the dual-stack node, PEERS6 and ENDPOINTS6). Only contents the agent
//! would never write are written directly (FLOWS and FLOWS6, which
//! `tc_verdict` fills, and [`Programs::update_config`]).

//!
//! By concern: [`fixture`] loads the programs and writes the fixture node's
//! maps through the agent's sync; [`verdicts`] records and reads FLOWS;
//! [`run`] runs the programs with BPF_PROG_TEST_RUN; [`counters`] reads
//! and checks STATS; [`frames`] builds the frames the tests send;
//! [`probes`] what the probe tests share;
//! [`cost_paths`] the frames the benchmark's program cost times.

pub mod cost_paths;
pub mod counters;
pub mod fixture;
pub mod frames;
pub mod probes;
pub mod run;
pub mod verdicts;

use std::net::Ipv6Addr;

pub use cost_paths::{CostPath, CostStep, cost_paths};
pub use counters::{Counts, assert_counted, assert_only};
pub use fixture::Programs;
pub use frames::{
    addressed_to_pod, good_vxlan, host_gw_frame, host_gw_frame_delivered, host_gw_frame6,
    host_gw_frame6_delivered, inner_frame, inner_tcp_frame, pod_frame, pod_frame6, vxlan_carrying,
    vxlan_frame, vxlan_from, vxlan_from_carrying,
};
pub use probes::{PROBE_TTL_NS, TestNetns, in_probe_netns};
pub use run::run;
pub use verdicts::{
    ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, LiberalRequest,
    echo_flow, echo_flow6, flow, flow6, monotonic_ns,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// `TCX_NEXT` (-1) as BPF_PROG_TEST_RUN reports it: what a TC program
/// answers when it takes no action, so the next TCX program and the classic
/// filters still run (`TC_ACT_OK` would end the chain).
pub const TCX_NEXT: u32 = u32::MAX;
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
/// `flannel-v6.<VNI>`'s ifindex on the dual-stack fixture node.
pub const VTEP6_IFINDEX: u32 = 9;
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

// The dual-stack fixture node ([`Programs::load_dual_stack`]): the same
// node, peers and pods with IPv6 halves. IPv6Network fd00:244::/48 with
// /64 subnets; the uplink is on fd00:77::/64, with a default route via a
// router at fd00:77::fe.

/// This node's PublicIPv6.
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
/// The VXLAN peer's PublicIPv6, one routed hop away: its IPv6 pods take
/// `flannel-v6.<VNI>`.
pub const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 2);
/// The host-gw peer's PublicIPv6, on-link: its IPv6 pods are routed
/// directly, to `HOSTGW_NODE_MAC` (the same NIC as its IPv4 address).
pub const HOSTGW_NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 3);
pub const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0xfe);
/// `flannel-v6.<VNI>` MACs: this node's and the peers'.
pub const VTEP_V6_MAC: [u8; 6] = [0x1e, 1, 192, 168, 77, 1];
pub const PEER_VTEP_V6_MAC: [u8; 6] = [0x1e, 1, 192, 168, 78, 2];
pub const HOSTGW_VTEP_V6_MAC: [u8; 6] = [0x1e, 1, 192, 168, 77, 3];
/// The local pods' IPv6 addresses (their IPv4 ones' veths and MAC), in
/// this node's fd00:244:0:1::/64.
pub const LOCAL_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 1, 0, 0, 0, 2);
pub const OTHER_LOCAL_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 1, 0, 0, 0, 3);
/// A pod of the VXLAN peer (fd00:244:0:2::/64).
pub const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 2, 0, 0, 0, 7);
/// A pod of the host-gw peer (fd00:244:0:3::/64).
pub const HOSTGW_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 3, 0, 0, 0, 5);
pub const IPPROTO_ICMPV6: u8 = 58;
