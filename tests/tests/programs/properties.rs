//! Property tests of the eBPF programs under BPF_PROG_TEST_RUN: random
//! frames, made from valid VXLAN, host-gw and pod frames with random
//! addresses and then cut, extended or with bytes flipped, through
//! `xdp_uplink`, `tc_uplink` and `tc_pod_egress` on the fixture node.
//!
//! Before each frame runs, netfilter's verdict for its flow is recorded
//! (as `tc_verdict` would), so the sender checks, not a missing verdict,
//! are what stands between a forged frame and the fast path. Invariants:
//! - the uplink programs redirect only to a local pod, and only a frame
//!   whose (inner) source lies in a peer's subnet and that peer sent it
//!   (VXLAN: from the peer's PublicIP, whether its VTEP holds one subnet
//!   or several; host-gw: from its MAC);
//! - `tc_pod_egress` fast-paths only the sending pod's own address from its
//!   own veth and MAC;
//! - every run answers an action the hook knows, and counts the frame
//!   once under `Seen` and once under exactly one reason of its own hook.
//!
//! The expected owner of an address is this file's own model of the
//! fixture's leases, not read back from the maps under test.

use std::cell::RefCell;

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use weft_common::{Hook, Reason};
use weft_tests::{
    packets::{ETH_P_IPV4, Ipv4Options, eth, icmp_echo, ipv4},
    privileged,
    programs::*,
};

/// Frames per program: a few seconds under BPF_PROG_TEST_RUN.
const CASES: u32 = 1500;

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A second VXLAN peer node, whose VTEP holds one subnet (VTEPS' value
/// answers for it); the first peer takes a second subnet too (VTEPS defers
/// to PEERS for it). [`with_more_leases`] adds both to the fixture.
const SECOND_PEER_IP: [u8; 4] = [192, 168, 79, 4];
const SECOND_SUBNET: [u8; 4] = [10, 244, 4, 0];
const EXTRA_SUBNET: [u8; 4] = [10, 244, 6, 0];

fn with_more_leases(programs: &mut Programs) {
    programs.set_lease(SECOND_SUBNET, Some((SECOND_PEER_IP, [0x0e, 1, 0, 0, 0, 4])));
    programs.set_lease(EXTRA_SUBNET, Some((PEER_IP, [0x0e, 1, 0, 0, 0, 6])));
}

/// The uplink properties' peers as their leases say: subnet (a /24's first
/// three octets) -> (PublicIP, host-gw MAC if the peer is reached by
/// host-gw).
fn owner(address: [u8; 4]) -> Option<([u8; 4], Option<[u8; 6]>)> {
    match address {
        [10, 244, 2 | 6, _] => Some((PEER_IP, None)),
        [10, 244, 3, _] => Some((HOSTGW_NODE_IP, Some(HOSTGW_NODE_MAC))),
        [10, 244, 4, _] => Some((SECOND_PEER_IP, None)),
        _ => None,
    }
}

fn is_local_pod(address: [u8; 4]) -> bool {
    address == LOCAL_POD || address == OTHER_LOCAL_POD
}

fn address() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![
        Just(LOCAL_POD),
        Just(OTHER_LOCAL_POD),
        Just(REMOTE_POD),
        Just(HOSTGW_POD),
        Just(PEER_IP),
        Just(SECOND_PEER_IP),
        Just(HOSTGW_NODE_IP),
        Just(STRANGER_IP),
        Just(NODE_IP),
        (0u8..8, any::<u8>()).prop_map(|(c, d)| [10, 244, c, d]),
        any::<[u8; 4]>(),
    ]
}

fn mac() -> impl Strategy<Value = [u8; 6]> {
    prop_oneof![
        Just(HOSTGW_NODE_MAC),
        Just(NEXTHOP_MAC),
        Just(POD_MAC),
        Just(PEER_VTEP_MAC),
        any::<[u8; 6]>(),
    ]
}

/// BPF_PROG_TEST_RUN refuses (EINVAL) XDP input shorter than an Ethernet
/// header, and (as measured on this kernel) TC input of an IPv4 frame
/// shorter than Ethernet plus an IPv4 header: the shortest frames each
/// hook's programs are tried on.
const XDP_SHORTEST: usize = 14;
const TC_SHORTEST: usize = 14 + 20;

/// How a valid frame is damaged before it is sent.
#[derive(Clone, Debug)]
enum Damage {
    None,
    /// (position, new byte) pairs; positions wrap around the frame.
    Flip(Vec<(prop::sample::Index, u8)>),
    /// Cut to a length, at least the program's shortest test input (see
    /// [`XDP_SHORTEST`], [`TC_SHORTEST`]).
    Cut(prop::sample::Index),
    Extend(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => Just(Damage::None),
        4 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
            .prop_map(Damage::Flip),
        2 => any::<prop::sample::Index>().prop_map(Damage::Cut),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Extend),
    ]
}

impl Damage {
    fn apply(&self, frame: &mut Vec<u8>, shortest: usize) {
        match self {
            Damage::None => {}
            Damage::Flip(flips) => {
                for (at, byte) in flips {
                    let at = at.index(frame.len());
                    frame[at] = *byte;
                }
            }
            Damage::Cut(at) => frame.truncate(shortest + at.index(frame.len() + 1 - shortest)),
            Damage::Extend(bytes) => frame.extend_from_slice(bytes),
        }
    }
}

/// An uplink frame before damage: its flow's addresses and the frame.
#[derive(Clone, Debug)]
struct UplinkFrame {
    src: [u8; 4],
    dst: [u8; 4],
    frame: Vec<u8>,
}

/// A destination: mostly a local pod, so valid frames get delivered.
fn destination() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![3 => Just(LOCAL_POD), 1 => Just(OTHER_LOCAL_POD), 2 => address()]
}

/// A VXLAN sender and inner source: half the time a peer and one of its
/// own pods, else any pair.
fn vxlan_sender() -> impl Strategy<Value = ([u8; 4], [u8; 4])> {
    prop_oneof![
        2 => any::<u8>().prop_map(|d| (PEER_IP, [10, 244, 2, d])),
        1 => any::<u8>().prop_map(|d| (PEER_IP, [10, 244, 6, d])),
        1 => any::<u8>().prop_map(|d| (SECOND_PEER_IP, [10, 244, 4, d])),
        4 => (address(), address()),
    ]
}

/// A host-gw sender's MAC and source: half the time the host-gw peer and
/// one of its own pods, else any pair.
fn host_gw_sender() -> impl Strategy<Value = ([u8; 6], [u8; 4])> {
    prop_oneof![
        any::<u8>().prop_map(|d| (HOSTGW_NODE_MAC, [10, 244, 3, d])),
        (mac(), address()),
    ]
}

fn uplink_frame() -> impl Strategy<Value = UplinkFrame> {
    let vxlan = (vxlan_sender(), destination(), prop::bool::weighted(0.9)).prop_map(
        |((outer_src, src), dst, known_vni)| {
            let inner = eth(
                VTEP_MAC,
                PEER_VTEP_MAC,
                ETH_P_IPV4,
                &ipv4(
                    src,
                    dst,
                    IPPROTO_ICMP,
                    &icmp_echo(56),
                    Ipv4Options::default(),
                ),
            );
            let vni = if known_vni { VNI } else { VNI + 1 };
            let outer = Ipv4Options {
                frag: 0,
                ..Default::default()
            };
            let frame = vxlan_frame(outer_src, NODE_IP, PORT, vni, &inner, outer);
            UplinkFrame { src, dst, frame }
        },
    );
    let host_gw = (host_gw_sender(), destination()).prop_map(|((src_mac, src), dst)| UplinkFrame {
        src,
        dst,
        frame: host_gw_frame(src_mac, src, dst, Ipv4Options::default()),
    });
    prop_oneof![vxlan, host_gw]
}

/// The IPv4 header of `frame` at `at`: (source, destination, protocol,
/// header length), if it is there whole.
fn ipv4_at(frame: &[u8], at: usize) -> Option<([u8; 4], [u8; 4], u8, usize)> {
    let header = frame.get(at..at + 20)?;
    let len = usize::from(header[0] & 0x0f) * 4;
    Some((
        header[12..16].try_into().unwrap(),
        header[16..20].try_into().unwrap(),
        header[9],
        len,
    ))
}

/// Why an uplink redirect of `frame` breaks the rule, if it does: the
/// delivered packet's source must be in a peer's subnet, sent by that peer,
/// and its destination a local pod.
fn foreign_redirect(frame: &[u8]) -> Option<String> {
    if frame.get(12..14) != Some(&ETH_P_IPV4.to_be_bytes()[..]) {
        return Some("redirected a frame that is not IPv4".to_owned());
    }
    let Some((outer_src, outer_dst, proto, len)) = ipv4_at(frame, 14) else {
        return Some("redirected a frame without a whole IPv4 header".to_owned());
    };
    let vxlan_inner = 14 + len + 8 + 8 + 14;
    let is_vxlan = proto == IPPROTO_UDP
        && frame.get(14 + len + 2..14 + len + 4) == Some(&PORT.to_be_bytes()[..]);
    let (src, dst, sender_ok) = if is_vxlan {
        let Some((src, dst, _, _)) = ipv4_at(frame, vxlan_inner) else {
            return Some("redirected VXLAN without a whole inner header".to_owned());
        };
        let ok = owner(src).is_some_and(|(public_ip, _)| public_ip == outer_src);
        (src, dst, ok)
    } else {
        let ok = owner(outer_src)
            .and_then(|(_, mac)| mac)
            .is_some_and(|mac| frame[6..12] == mac);
        (outer_src, outer_dst, ok)
    };
    if !sender_ok {
        return Some(format!("redirected source {src:?}, not its owner's"));
    }
    if !is_local_pod(dst) {
        return Some(format!("redirected to {dst:?}, not a local pod"));
    }
    None
}

/// Every run counts the frame under `hook`'s `Seen` and under exactly one
/// other reason of `hook`, and nothing else.
fn counted_once(before: &Counts, after: &Counts, hook: Hook) -> Result<(), String> {
    let rose: Vec<_> = after
        .iter()
        .filter(|(id, value)| **value != before[id])
        .map(|(id, value)| (*id, value - before[id]))
        .collect();
    let seen = rose
        .iter()
        .filter(|(id, _)| *id == hook.counter(Reason::Seen));
    let reasons: Vec<_> = rose
        .iter()
        .filter(|(id, _)| *id != hook.counter(Reason::Seen))
        .collect();
    if seen.map(|(_, by)| *by).collect::<Vec<_>>() != [1]
        || reasons.len() != 1
        || reasons[0].0.hook != hook
        || reasons[0].1 != 1
    {
        return Err(format!(
            "expected {hook:?} Seen and one reason to rise by one: {rose:?}"
        ));
    }
    Ok(())
}

/// Runs random uplink frames through one uplink program (`run`), whose
/// redirect action is `redirect` and whose known actions are `actions`.
fn uplink_property(
    name: &str,
    shortest: usize,
    hook: Hook,
    redirect: u32,
    actions: &[u32],
    run: impl Fn(&Programs, &[u8]) -> (u32, Vec<u8>),
) {
    let _guard = privileged!(name);
    let mut loaded = Programs::load(true);
    with_more_leases(&mut loaded);
    let programs = RefCell::new(loaded);
    let redirected = RefCell::new(0u32);
    let result = runner().run(&(uplink_frame(), damage()), |(case, damage)| {
        let mut programs = programs.borrow_mut();
        let key = flow(case.src, case.dst, IPPROTO_ICMP, ECHO_ID, [0, 0]);
        programs.set_verdict(key, GENERATION);
        let mut frame = case.frame.clone();
        damage.apply(&mut frame, shortest);
        let before = programs.counters();
        let (action, _) = run(&programs, &frame);
        prop_assert!(actions.contains(&action), "unknown action {action}");
        if action == redirect {
            *redirected.borrow_mut() += 1;
            if let Some(why) = foreign_redirect(&frame) {
                prop_assert!(false, "{why}: {frame:02x?}");
            }
        }
        let counted = counted_once(&before, &programs.counters(), hook);
        prop_assert!(counted.is_ok(), "{}", counted.unwrap_err());
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The property means something only if valid frames got through.
    let redirected = redirected.into_inner();
    assert!(
        redirected > CASES / 50,
        "only {redirected} of {CASES} frames were redirected"
    );
}

#[test]
fn xdp_redirects_only_a_peers_own_sources_to_local_pods_and_counts_every_frame_once() {
    uplink_property(
        "xdp_redirects_only_a_peers_own_sources_to_local_pods_and_counts_every_frame_once",
        XDP_SHORTEST,
        Hook::XdpUplink,
        XDP_REDIRECT,
        &[XDP_PASS, XDP_DROP, XDP_REDIRECT],
        Programs::xdp,
    );
}

#[test]
fn tc_uplink_redirects_only_a_peers_own_sources_to_local_pods_and_counts_every_frame_once() {
    uplink_property(
        "tc_uplink_redirects_only_a_peers_own_sources_to_local_pods_and_counts_every_frame_once",
        TC_SHORTEST,
        Hook::TcUplink,
        TC_ACT_REDIRECT,
        &[TCX_NEXT, TC_ACT_SHOT, TC_ACT_REDIRECT],
        Programs::uplink_tc,
    );
}

/// A pod's frame before damage: its flow's addresses and the frame.
fn pod_frame_case() -> impl Strategy<Value = ([u8; 4], [u8; 4], Vec<u8>)> {
    let sender = prop_oneof![Just((POD_MAC, LOCAL_POD)), (mac(), address()),];
    let destination = prop_oneof![
        2 => Just(REMOTE_POD),
        1 => Just(HOSTGW_POD),
        1 => Just(OTHER_LOCAL_POD),
        2 => address(),
    ];
    (sender, destination).prop_map(|((src_mac, src), dst)| {
        let frame = eth(
            GATEWAY_MAC,
            src_mac,
            ETH_P_IPV4,
            &ipv4(
                src,
                dst,
                IPPROTO_ICMP,
                &icmp_echo(56),
                Ipv4Options::default(),
            ),
        );
        (src, dst, frame)
    })
}

#[test]
fn tc_pod_egress_fast_paths_only_the_pods_own_address_and_counts_every_packet_once() {
    let _guard = privileged!(
        "tc_pod_egress_fast_paths_only_the_pods_own_address_and_counts_every_packet_once"
    );
    let programs = RefCell::new(Programs::load(true));
    let redirected = RefCell::new(0u32);
    let result = runner().run(
        &(pod_frame_case(), damage()),
        |((src, dst, frame), damage)| {
            let mut programs = programs.borrow_mut();
            programs.set_verdict(flow(src, dst, IPPROTO_ICMP, ECHO_ID, [0, 0]), GENERATION);
            let mut frame = frame.clone();
            damage.apply(&mut frame, TC_SHORTEST);
            let before = programs.counters();
            let (action, _) = programs.tc(&frame);
            prop_assert!(
                [TCX_NEXT, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&action),
                "unknown action {action}"
            );
            if action == TC_ACT_REDIRECT {
                *redirected.borrow_mut() += 1;
                // The fixture's sending pod is LOCAL_POD behind POD_IFINDEX,
                // where BPF_PROG_TEST_RUN runs TC programs.
                let sender = ipv4_at(&frame, 14).map(|(src, ..)| src);
                prop_assert_eq!(sender, Some(LOCAL_POD), "fast-pathed a foreign source");
                prop_assert_eq!(&frame[6..12], &POD_MAC[..], "fast-pathed a foreign MAC");
            }
            let counted = counted_once(&before, &programs.counters(), Hook::TcPodEgress);
            prop_assert!(counted.is_ok(), "{}", counted.unwrap_err());
            Ok(())
        },
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let redirected = redirected.into_inner();
    assert!(
        redirected > CASES / 50,
        "only {redirected} of {CASES} packets were fast-pathed"
    );
}
