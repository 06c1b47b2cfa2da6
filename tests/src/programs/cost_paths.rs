//! The frames the benchmark's program cost times (bench/src/program_cost.rs):
//! for each path through a production program (XDP and TC decap, TC encap),
//! frames that leave it at successive points, each the one step further
//! than the one before. Every step but the last passes (or drops) its frame
//! unchanged, so one BPF_PROG_TEST_RUN call may repeat it many thousands of
//! times, warm; the difference between two successive steps is what the
//! program does between their exits (a map lookup, a helper). The last step
//! is the whole path (a decap or an encap), which changes its frame and so
//! runs once per call.
//!
//! A step is defined by the counter its frame leaves under, never by a line
//! of code: if a change to the program removes what lay between two exits,
//! the two steps simply cost the same; if a frame no longer leaves where its
//! step says, `assert_exits` (and the bench) fail instead of timing the wrong
//! path. The program tests (`cost_paths.rs` there) run every step once.

use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP, CounterId, Hook, Reason,
};

use crate::packets::{ETH_P_ARP, ETH_P_IPV4, ETH_P_LLDP, Ipv4Options, checksum, eth, ipv4};

use super::*;

/// One exit point of a path.
pub struct CostStep {
    /// The counter the frame leaves under: the step is where the program
    /// returns with this reason.
    pub exit: CounterId,
    /// What the program does to reach this exit beyond the previous step's
    /// (in the programs as of this writing; see docs/performance/README.md).
    pub adds: &'static str,
    pub frame: Vec<u8>,
    /// The program's return value for this frame.
    pub action: u32,
    /// The program leaves the frame unchanged, so repetitions in one call
    /// all run this step.
    pub repeatable: bool,
}

/// A path through one program, its steps in the order the program reaches
/// their exits.
pub struct CostPath {
    /// `program path`, e.g. `xdp_uplink decap`.
    pub name: &'static str,
    pub hook: Hook,
    /// CONFIG flags the path is timed under (`CONFIG_*`).
    pub flags: u32,
    pub steps: Vec<CostStep>,
}

/// The flags the agent sets on a node that runs XDP on its uplink and
/// leaves bulk TCP to GRO (its defaults where XDP attaches natively).
const WITH_XDP: u32 = CONFIG_STRICT_VTEPS | CONFIG_BULK_TCP_VIA_GRO | CONFIG_UPLINK_XDP;
/// Without XDP on the uplink (the lab's veths): `tc_uplink` decapsulates
/// everything, and counts every frame it passes (with XDP it leaves that
/// count to XDP), so each step's exit can be checked.
const WITHOUT_XDP: u32 = CONFIG_STRICT_VTEPS | CONFIG_BULK_TCP_VIA_GRO;

/// ICMP echo identifiers of the flows the verdict steps use: one with no
/// verdict, one recorded under an older ruleset, one pending. The full
/// path uses `ECHO_ID`, whose verdict the fixture records confirmed.
const NO_VERDICT_ID: [u8; 2] = [0, 1];
const OLD_RULESET_ID: [u8; 2] = [0, 2];
const PENDING_ID: [u8; 2] = [0, 3];

/// A local address no pod has (ENDPOINTS misses), inside this node's subnet.
const NO_POD: [u8; 4] = [10, 244, 1, 99];
/// An address outside the cluster network: no pod, no peer.
const OUTSIDE: [u8; 4] = [10, 99, 0, 1];

impl Programs {
    /// Records the verdicts the cost paths' verdict steps rely on (the
    /// confirmed verdicts of the full paths come with the fixture).
    pub fn record_cost_verdicts(&mut self) {
        for (src, dst) in [(REMOTE_POD, LOCAL_POD), (LOCAL_POD, REMOTE_POD)] {
            let key = |id| flow(src, dst, IPPROTO_ICMP, id, [0, 0]);
            self.set_verdict(key(OLD_RULESET_ID), GENERATION - 1);
            self.set_pending_verdict(key(PENDING_ID), GENERATION);
        }
    }

    /// Runs `hook`'s program once on `frame`: (return value, the frame it left).
    pub fn run_hook(&self, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>) {
        match hook {
            Hook::XdpUplink => self.xdp(frame),
            Hook::TcUplink => self.uplink_tc(frame),
            Hook::TcPodEgress => self.tc(frame),
            Hook::TcVerdict => panic!("tc_verdict has no cost path"),
        }
    }
}

/// Every path the bench times. Before timing (or testing) them, set each
/// path's flags and call [`Programs::record_cost_verdicts`].
pub fn cost_paths() -> Vec<CostPath> {
    vec![
        decap_path("xdp_uplink decap", Hook::XdpUplink, WITH_XDP),
        xdp_bulk_tcp_path(),
        decap_path("tc_uplink decap", Hook::TcUplink, WITHOUT_XDP),
        encap_path(),
    ]
}

/// An ICMP echo request from `src` to `dst` with identifier `id`.
fn echo(src: [u8; 4], dst: [u8; 4], id: [u8; 2], opts: Ipv4Options) -> Vec<u8> {
    let mut message = crate::packets::icmp_echo(56);
    message[4..6].copy_from_slice(&id);
    message[2..4].fill(0);
    let check = checksum(&message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    ipv4(src, dst, IPPROTO_ICMP, &message, opts)
}

/// What the VXLAN peer's VTEP sends: an echo from `src` to `dst`, inner
/// Ethernet to `vtep_mac`.
fn inner(vtep_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], id: [u8; 2], ttl: u8) -> Vec<u8> {
    let opts = Ipv4Options {
        ttl,
        ..Default::default()
    };
    eth(
        vtep_mac,
        PEER_VTEP_MAC,
        ETH_P_IPV4,
        &echo(src, dst, id, opts),
    )
}

/// The peer's echo to the local pod (identifier `id`).
fn to_local_pod(id: [u8; 2]) -> Vec<u8> {
    vxlan_carrying(&inner(VTEP_MAC, REMOTE_POD, LOCAL_POD, id, 64))
}

/// VXLAN on the uplink from `outer_src` with `vni`.
fn vxlan_on_uplink(outer_src: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    let outer = Ipv4Options {
        frag: 0,
        ..Default::default()
    };
    vxlan_frame(outer_src, NODE_IP, PORT, vni, inner, outer)
}

/// The program's return values: (passed, dropped, delivered).
fn actions(hook: Hook) -> (u32, u32, u32) {
    match hook {
        Hook::XdpUplink => (XDP_PASS, XDP_DROP, XDP_REDIRECT),
        _ => (TCX_NEXT, TC_ACT_SHOT, TC_ACT_REDIRECT),
    }
}

/// The receive path of a VXLAN frame for a local pod, in `classify`'s
/// order (ebpf/src/lib/uplink.rs), then `netfilter_passed` (lib/flow.rs),
/// then the delivery.
fn decap_path(name: &'static str, hook: Hook, flags: u32) -> CostPath {
    let (pass, drop, deliver) = actions(hook);
    let step = |reason, adds, frame, action| CostStep {
        exit: hook.counter(reason),
        adds,
        frame,
        action,
        repeatable: true,
    };
    let ours = inner(VTEP_MAC, REMOTE_POD, LOCAL_POD, ECHO_ID, 64);
    let mut not_ipv4 = to_local_pod(ECHO_ID);
    not_ipv4[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    CostPath {
        name,
        hook,
        flags,
        steps: vec![
            step(
                Reason::PassNotIpv4,
                "pass-through calibration: entry, CONFIG, two STATS counts, Ethernet type",
                not_ipv4,
                pass,
            ),
            step(
                Reason::PassWrongVni,
                "outer IPv4, UDP, lengths and VXLAN header checks",
                vxlan_on_uplink(PEER_IP, VNI + 1, &ours),
                pass,
            ),
            step(
                Reason::DropUnknownVtep,
                "VTEPS lookup of the outer source (a miss; dropped under --strict-vteps)",
                vxlan_on_uplink(STRANGER_IP, VNI, &ours),
                drop,
            ),
            step(
                Reason::PassNotOurVtep,
                "VTEPS lookup (a hit, instead of a miss), inner Ethernet checks",
                vxlan_carrying(&inner(PEER_VTEP_MAC, REMOTE_POD, LOCAL_POD, ECHO_ID, 64)),
                pass,
            ),
            step(
                Reason::PassForeignInnerSource,
                "inner-source check (PEERS LPM lookup of the inner source)",
                vxlan_carrying(&inner(VTEP_MAC, HOSTGW_POD, LOCAL_POD, ECHO_ID, 64)),
                pass,
            ),
            step(
                Reason::PassNoEndpoint,
                "ENDPOINTS lookup of the inner destination (a miss)",
                vxlan_carrying(&inner(VTEP_MAC, REMOTE_POD, NO_POD, ECHO_ID, 64)),
                pass,
            ),
            step(
                Reason::PassTtlExpired,
                "ENDPOINTS lookup (a hit, instead of a miss), inner TTL check",
                vxlan_carrying(&inner(VTEP_MAC, REMOTE_POD, LOCAL_POD, ECHO_ID, 1)),
                pass,
            ),
            step(
                Reason::PassNoVerdict,
                "flow key, FLOWS lookup (a miss)",
                to_local_pod(NO_VERDICT_ID),
                pass,
            ),
            step(
                Reason::PassRulesetChanged,
                "FLOWS lookup (a hit, instead of a miss), ruleset generation",
                to_local_pod(OLD_RULESET_ID),
                pass,
            ),
            step(
                Reason::PassVerdictPending,
                "verdict clock read and age, verdict state",
                to_local_pod(PENDING_ID),
                pass,
            ),
            CostStep {
                repeatable: false,
                ..step(
                    Reason::Decap,
                    "tc checks, inner MAC and TTL rewrite, removing the VXLAN headers, redirect",
                    to_local_pod(ECHO_ID),
                    deliver,
                )
            },
        ],
    }
}

/// A full-size TCP segment for a local pod, which XDP checks and leaves to
/// GRO (`tc_uplink` delivers the coalesced packet): passed unchanged, so
/// the whole path repeats.
fn xdp_bulk_tcp_path() -> CostPath {
    let mut not_ipv4 = to_local_pod(ECHO_ID);
    not_ipv4[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let bulk = vxlan_carrying(&inner_tcp_frame(LOCAL_POD, 1400, Ipv4Options::default()));
    let step = |reason, adds, frame| CostStep {
        exit: Hook::XdpUplink.counter(reason),
        adds,
        frame,
        action: XDP_PASS,
        repeatable: true,
    };
    CostPath {
        name: "xdp_uplink bulk TCP to GRO",
        hook: Hook::XdpUplink,
        flags: WITH_XDP,
        steps: vec![
            step(Reason::PassNotIpv4, "pass-through calibration", not_ipv4),
            step(
                Reason::PassBulkTcp,
                "the receive checks and lookups up to ENDPOINTS, tc checks (no verdict: tc_uplink checks it after GRO)",
                bulk,
            ),
        ],
    }
}

/// A pod's packet to a pod on the VXLAN peer, in `tc_pod_egress`'s order
/// (ebpf/src/programs/tc_pod_egress.rs, lib/encap.rs).
fn encap_path() -> CostPath {
    let hook = Hook::TcPodEgress;
    let step = |reason, adds, frame| CostStep {
        exit: hook.counter(reason),
        adds,
        frame,
        action: TCX_NEXT,
        repeatable: true,
    };
    let pod = |src, dst, id, ttl| {
        let opts = Ipv4Options {
            ttl,
            ..Default::default()
        };
        eth(GATEWAY_MAC, POD_MAC, ETH_P_IPV4, &echo(src, dst, id, opts))
    };
    CostPath {
        name: "tc_pod_egress encap",
        hook,
        flags: WITH_XDP,
        steps: vec![
            step(
                Reason::PassNotIpv4,
                "pass-through calibration: entry, CONFIG, two STATS counts, pulling the headers, Ethernet type",
                // Not ARP, which tc_pod_egress judges (who it claims to be).
                eth(GATEWAY_MAC, POD_MAC, ETH_P_LLDP, &[0; 28]),
            ),
            step(
                Reason::PassForeignSource,
                "VXLAN-from-a-pod check, ENDPOINTS lookup of the sender (a hit on another veth)",
                pod(OTHER_LOCAL_POD, REMOTE_POD, ECHO_ID, 64),
            ),
            step(
                Reason::PassNoRoute,
                "the sender matches; ENDPOINTS lookup of the destination (a miss), PEERS LPM lookup (a miss)",
                pod(LOCAL_POD, OUTSIDE, ECHO_ID, 64),
            ),
            step(
                Reason::PassTtlExpired,
                "PEERS lookup (a hit, instead of a miss), next hop and TTL checks",
                pod(LOCAL_POD, REMOTE_POD, ECHO_ID, 1),
            ),
            step(
                Reason::PassNoVerdict,
                "flow key, FLOWS lookup (a miss)",
                pod(LOCAL_POD, REMOTE_POD, NO_VERDICT_ID, 64),
            ),
            step(
                Reason::PassRulesetChanged,
                "FLOWS lookup (a hit, instead of a miss), ruleset generation",
                pod(LOCAL_POD, REMOTE_POD, OLD_RULESET_ID, 64),
            ),
            step(
                Reason::PassVerdictPending,
                "verdict clock read and age, verdict state",
                pod(LOCAL_POD, REMOTE_POD, PENDING_ID, 64),
            ),
            CostStep {
                action: TC_ACT_REDIRECT,
                repeatable: false,
                ..step(
                    Reason::Encap,
                    "tc and MTU checks, bpf_skb_adjust_room (a head reallocation in a test run), outer headers, hash, random id, redirect",
                    pod(LOCAL_POD, REMOTE_POD, ECHO_ID, 64),
                )
            },
        ],
    }
}

impl CostStep {
    /// Runs the step once on `programs` (with its path's flags set) and
    /// checks that it leaves where it claims: its return value, its exit
    /// counter alone (besides the `Seen` counters), and an unchanged frame
    /// if it is repeatable.
    pub fn assert_exits(&self, programs: &Programs, hook: Hook) {
        let before = programs.counters();
        let (action, out) = programs.run_hook(hook, &self.frame);
        assert_eq!(action, self.action, "{}: return value", self.exit);
        if self.repeatable {
            assert_eq!(
                out, self.frame,
                "{}: a repeatable step must leave its frame unchanged",
                self.exit
            );
        }
        assert_counted(&before, &programs.counters(), self.exit);
    }
}
