//! VXLAN over IPv6 (`flannel-v6.<VNI>`'s frames) on the fast path, on the
//! dual-stack fixture node, through BPF_PROG_TEST_RUN: decapsulated from
//! the peer whose PublicIPv6 owns the inner source into a local pod, with
//! the outer UDP checksum the device would verify checked from the
//! headers; and a pod's IPv6 to a VXLAN peer handed straight to
//! flannel-v6, routed one hop. Each case asserts the verdict, the bytes
//! that come out and the counter that explains it.

use std::net::Ipv6Addr;

use weft_common::{
    CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP,
    Hook::{TcPodEgress, TcUplink, TcVerdict, XdpUplink},
    Reason,
};
use weft_tests::{
    packets::{ETH_P_IPV6, eth, ipv6, ipv6_udp, pseudo_header_checksum, vxlan},
    privileged,
    programs::*,
};

const TCP_ACK: u8 = 0x10;

/// An ICMPv6 echo request from `src` to `dst` with its checksum filled.
fn echo6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut message = vec![128, 0, 0, 0, ECHO_ID[0], ECHO_ID[1], 0, 1];
    message.extend((0..56).map(|i| i as u8));
    let check = pseudo_header_checksum(src, dst, IPPROTO_ICMPV6, &message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    message
}

/// A TCP segment (ports 0, ACK, `len` bytes of payload) from `src` to
/// `dst` with its checksum filled.
fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[12] = 5 << 4;
    segment[13] = TCP_ACK;
    segment.extend((0..len).map(|i| (i * 7) as u8));
    let check = pseudo_header_checksum(src, dst, IPPROTO_TCP, &segment);
    segment[16..18].copy_from_slice(&check.to_be_bytes());
    segment
}

/// The inner frame a peer's flannel-v6 sends: from its VTEP MAC to
/// `vtep_mac`, an IPv6 packet from `src` to `dst`.
fn inner6(
    vtep_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    l4: &[u8],
    hop_limit: u8,
) -> Vec<u8> {
    eth(
        vtep_mac,
        PEER_VTEP_V6_MAC,
        ETH_P_IPV6,
        &ipv6(src, dst, next_header, l4, hop_limit),
    )
}

/// `inner` in VXLAN (`vni`) over IPv6 from `from` to `to`, through the
/// router, with its UDP checksum filled over the whole datagram.
fn over_ipv6(from: Ipv6Addr, to: Ipv6Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    eth(
        UPLINK_MAC,
        NEXTHOP_MAC,
        ETH_P_IPV6,
        &ipv6_udp(from, to, 40000, PORT, &vxlan(vni, inner)),
    )
}

/// The outer addresses and VNI of the honest frames: the VXLAN peer to
/// this node.
const FROM_THE_PEER: (Ipv6Addr, Ipv6Addr, u32) = (PEER_IP6, NODE_IP6, VNI);

/// An echo request from `src` to `dst` (hop limit `hop_limit`) for
/// `vtep_mac`, in VXLAN over IPv6 as `outer` (from, to, VNI) says, every
/// checksum filled.
fn vxlan_echo(
    outer: (Ipv6Addr, Ipv6Addr, u32),
    vtep_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
) -> Vec<u8> {
    let (from, to, vni) = outer;
    let inner = inner6(
        vtep_mac,
        src,
        dst,
        IPPROTO_ICMPV6,
        &echo6(src, dst),
        hop_limit,
    );
    over_ipv6(from, to, vni, &inner)
}

/// The honest frame: the VXLAN peer's pod pings the local pod.
fn honest_echo() -> Vec<u8> {
    vxlan_echo(FROM_THE_PEER, VTEP_V6_MAC, REMOTE_POD6, LOCAL_POD6, 64)
}

/// `frame` (outer Ethernet + IPv6 + UDP + VXLAN = 70 bytes of headers) as
/// the pod gets it: the inner frame, hop limit one lower, to the pod's
/// MAC from the gateway's.
fn delivered(frame: &[u8]) -> Vec<u8> {
    let mut inner = frame[70..].to_vec();
    inner[0..6].copy_from_slice(&POD_MAC);
    inner[6..12].copy_from_slice(&GATEWAY_MAC);
    inner[14 + 7] -= 1;
    inner
}

/// Offset of the outer UDP checksum in a frame.
const OUTER_UDP_CHECK: usize = 14 + 40 + 6;

/// Netfilter passed echo requests from `src` to `dst` (confirmed, current).
fn echo_verdict(programs: &mut Programs, src: Ipv6Addr, dst: Ipv6Addr) {
    programs.set_verdict6(flow6(src, dst, IPPROTO_ICMPV6, ECHO_ID, [0, 0]), GENERATION);
}

/// The verdicts the honest frames travel on: echo and TCP (ports 0) from
/// the VXLAN peer's pod to the local pod.
fn echo_verdicts(programs: &mut Programs) {
    echo_verdict(programs, REMOTE_POD6, LOCAL_POD6);
    programs.set_verdict6(
        flow6(REMOTE_POD6, LOCAL_POD6, IPPROTO_TCP, [0, 0], [0, 0]),
        GENERATION,
    );
}

#[test]
fn the_uplink_decapsulates_vxlan_over_ipv6_from_the_owning_peer_into_the_pod() {
    let _guard =
        privileged!("the_uplink_decapsulates_vxlan_over_ipv6_from_the_owning_peer_into_the_pod");
    let mut programs = Programs::load_dual_stack(true);
    echo_verdicts(&mut programs);
    let echo = honest_echo();
    let small_tcp = over_ipv6(
        PEER_IP6,
        NODE_IP6,
        VNI,
        &inner6(
            VTEP_V6_MAC,
            REMOTE_POD6,
            LOCAL_POD6,
            IPPROTO_TCP,
            &tcp6(REMOTE_POD6, LOCAL_POD6, 100),
            64,
        ),
    );
    // The sender's stack filled the outer checksum before the inner one
    // (local checksum offload): the inner TCP checksum field still holds
    // the pseudo-header sum, the outer checksum is that of the final frame.
    let mut offloaded = small_tcp.clone();
    let inner_check = 70 + 14 + 40 + 16;
    let pseudo = {
        let mut sum: u32 = 0;
        for address in [REMOTE_POD6, LOCAL_POD6] {
            for word in address.segments() {
                sum += u32::from(word);
            }
        }
        sum += 120 + u32::from(IPPROTO_TCP);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    };
    offloaded[inner_check..inner_check + 2].copy_from_slice(&pseudo.to_be_bytes());
    for (what, frame) in [
        ("an echo request", &echo),
        ("a small TCP segment", &small_tcp),
        (
            "a TCP segment whose checksum is left to offload",
            &offloaded,
        ),
    ] {
        let before = programs.counters();
        let (verdict, out) = programs.xdp(frame);
        assert_eq!(verdict, XDP_REDIRECT, "{what}");
        assert_eq!(out, delivered(frame), "{what}");
        assert_counted(
            &before,
            &programs.counters(),
            XdpUplink.counter(Reason::DecapIpv6),
        );
        // tc_uplink delivers the same bytes, with XDP attached or not.
        for xdp_attached in [false, true] {
            let flags = CONFIG_STRICT_VTEPS | if xdp_attached { CONFIG_UPLINK_XDP } else { 0 };
            programs.set_flags(flags);
            let before = programs.counters();
            let (verdict, out) = programs.uplink_tc(frame);
            assert_eq!(
                verdict, TC_ACT_REDIRECT,
                "{what}, XDP attached: {xdp_attached}"
            );
            assert_eq!(out, delivered(frame), "{what}");
            assert_counted(
                &before,
                &programs.counters(),
                TcUplink.counter(Reason::DecapIpv6),
            );
        }
        programs.set_flags(CONFIG_STRICT_VTEPS);
    }
}

#[test]
fn vxlan_over_ipv6_that_flannel_v6_or_the_checks_would_refuse_is_the_kernels() {
    let _guard =
        privileged!("vxlan_over_ipv6_that_flannel_v6_or_the_checks_would_refuse_is_the_kernels");
    let mut programs = Programs::load_dual_stack(true);
    echo_verdicts(&mut programs);
    let echo = echo6(REMOTE_POD6, LOCAL_POD6);
    let with_inner = |vtep_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8| {
        vxlan_echo(FROM_THE_PEER, vtep_mac, src, dst, hop_limit)
    };
    let with_outer = |outer: (Ipv6Addr, Ipv6Addr, u32)| {
        vxlan_echo(outer, VTEP_V6_MAC, REMOTE_POD6, LOCAL_POD6, 64)
    };
    let honest = honest_echo();
    let mut zero_checksum = honest.clone();
    zero_checksum[OUTER_UDP_CHECK..OUTER_UDP_CHECK + 2].copy_from_slice(&[0, 0]);
    let mut wrong_checksum = honest.clone();
    wrong_checksum[OUTER_UDP_CHECK] ^= 0x40;
    // A byte the inner checksum does not cover (the inner hop limit)
    // changed on the way: only the outer checksum tells.
    let mut corrupted = honest.clone();
    corrupted[70 + 14 + 7] = 200;
    let mut udp_length_lies = honest.clone();
    udp_length_lies[14 + 40 + 5] -= 2;
    // The inner echo's own checksum left zero, the outer one filled over
    // the frame as it is: the outer checksum only adds up with an inner
    // checksum that holds, so it is refused here (the kernel path drops
    // it too).
    let mut unchecked_echo = echo.clone();
    unchecked_echo[2..4].copy_from_slice(&[0, 0]);
    let inner_unchecked = over_ipv6(
        PEER_IP6,
        NODE_IP6,
        VNI,
        &inner6(
            VTEP_V6_MAC,
            REMOTE_POD6,
            LOCAL_POD6,
            IPPROTO_ICMPV6,
            &unchecked_echo,
            64,
        ),
    );
    let inner_ipv4 = over_ipv6(
        PEER_IP6,
        NODE_IP6,
        VNI,
        &eth(
            VTEP_V6_MAC,
            PEER_VTEP_V6_MAC,
            weft_tests::packets::ETH_P_IPV4,
            &weft_tests::packets::ipv4(
                REMOTE_POD,
                LOCAL_POD,
                1,
                &weft_tests::packets::icmp_echo(56),
                Default::default(),
            ),
        ),
    );
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "to another address than this node's PublicIPv6",
            with_outer((PEER_IP6, HOSTGW_NODE_IP6, VNI)),
            Reason::PassIpv6Vxlan,
        ),
        (
            "another VNI",
            with_outer((PEER_IP6, NODE_IP6, VNI + 1)),
            Reason::PassWrongVni,
        ),
        (
            "the UDP checksum zero",
            zero_checksum,
            Reason::PassUdpChecksum,
        ),
        (
            "the UDP checksum wrong",
            wrong_checksum,
            Reason::PassUdpChecksum,
        ),
        (
            "a header byte changed on the way",
            corrupted,
            Reason::PassUdpChecksum,
        ),
        (
            "an inner checksum that does not hold",
            inner_unchecked,
            Reason::PassUdpChecksum,
        ),
        (
            "a UDP length that lies",
            udp_length_lies,
            Reason::PassBadLength,
        ),
        (
            "for flannel.1's MAC, not flannel-v6's",
            with_inner(VTEP_MAC, REMOTE_POD6, LOCAL_POD6, 64),
            Reason::PassNotOurVtep,
        ),
        ("IPv4 inside", inner_ipv4, Reason::PassInnerNotIpv4),
        (
            "from a pod of another peer (host-gw)",
            with_inner(VTEP_V6_MAC, HOSTGW_POD6, LOCAL_POD6, 64),
            Reason::PassForeignInnerSource,
        ),
        (
            "from outside every peer subnet",
            with_inner(
                VTEP_V6_MAC,
                Ipv6Addr::new(0xfd00, 0x244, 0, 9, 0, 0, 0, 9),
                LOCAL_POD6,
                64,
            ),
            Reason::PassForeignInnerSource,
        ),
        (
            "the peer's pod, sent by another node",
            with_outer((HOSTGW_NODE_IP6, NODE_IP6, VNI)),
            Reason::PassForeignInnerSource,
        ),
        (
            "for no local pod",
            with_inner(
                VTEP_V6_MAC,
                REMOTE_POD6,
                Ipv6Addr::new(0xfd00, 0x244, 0, 1, 0, 0, 0, 0x99),
                64,
            ),
            Reason::PassNoEndpoint,
        ),
        (
            "hop limit 1",
            with_inner(VTEP_V6_MAC, REMOTE_POD6, LOCAL_POD6, 1),
            Reason::PassTtlExpired,
        ),
    ];
    programs.assert_uplink_refuses(&cases);
    // Cut inside the inner IPv6 header: XDP only (BPF_PROG_TEST_RUN takes
    // TC input of any length past the outer IPv6 header, but the UDP
    // length then lies, which is checked first).
    programs.assert_xdp_passes(&[(
        "cut inside the inner IPv6 header",
        honest[..70 + 14 + 20].to_vec(),
        XdpUplink.counter(Reason::PassBadLength),
    )]);

    // A GSO packet (GRO coalesced it, having verified every segment's
    // checksum) keeps a pseudo-header sum in the field: not checked again,
    // but a zero (no checksum, which GRO keeps) is refused all the same.
    programs.set_flags(CONFIG_STRICT_VTEPS);
    let mut gso_zero = honest.clone();
    gso_zero[OUTER_UDP_CHECK..OUTER_UDP_CHECK + 2].copy_from_slice(&[0, 0]);
    let mut gso_seeded = honest.clone();
    gso_seeded[OUTER_UDP_CHECK] ^= 0x40;
    for (what, frame, counter) in [
        (
            "a GSO packet without a checksum",
            gso_zero,
            Reason::PassUdpChecksum,
        ),
        // Past the checksum, the test run's GSO packet has no GSO type,
        // which bpf_skb_adjust_room refuses to decapsulate.
        ("a GSO packet", gso_seeded, Reason::PassDecapFailed),
    ] {
        let before = programs.counters();
        assert_eq!(programs.uplink_tc_gso(&frame, 2, 1000), TCX_NEXT, "{what}");
        assert_counted(&before, &programs.counters(), TcUplink.counter(counter));
    }

    // Without a verdict, netfilter decides on the kernel path.
    programs.clear_verdicts6();
    programs.assert_xdp_passes(&[(
        "without a verdict",
        honest.clone(),
        XdpUplink.counter(Reason::PassNoVerdict),
    )]);
    // And the honest frame goes through once the verdict is back: the
    // checks above could pass.
    echo_verdicts(&mut programs);
    assert_eq!(programs.xdp(&honest).0, XDP_REDIRECT);

    // A node that runs no VXLAN over IPv6 (CONFIG without a PublicIPv6)
    // decapsulates none: flannel-v6 does, if it exists.
    programs.update_config(|config| config.node_ip6 = [0; 16]);
    programs.assert_xdp_passes(&[(
        "on a node without VXLAN over IPv6",
        honest,
        XdpUplink.counter(Reason::PassIpv6Vxlan),
    )]);
}

#[test]
fn tc_verdict_records_ipv6_verdicts_of_vxlan_peers_pods_where_the_node_decapsulates_them() {
    let _guard = privileged!(
        "tc_verdict_records_ipv6_verdicts_of_vxlan_peers_pods_where_the_node_decapsulates_them"
    );
    let mut programs = Programs::load_dual_stack(true);
    programs.clear_verdicts6();
    let key = flow6(REMOTE_POD6, LOCAL_POD6, IPPROTO_ICMPV6, ECHO_ID, [0, 0]);
    // What the kernel path hands the pod: routed once, marked by the
    // agent's nftables rule.
    let into_pod = eth(
        POD_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &ipv6(
            REMOTE_POD6,
            LOCAL_POD6,
            IPPROTO_ICMPV6,
            &echo6(REMOTE_POD6, LOCAL_POD6),
            63,
        ),
    );
    let before = programs.counters();
    let (verdict, out, mark) = programs.tc_verdict(&into_pod, ACCEPT_MARK);
    assert_eq!((verdict, &out, mark), (TCX_NEXT, &into_pod, 0));
    assert!(programs.verdict6(&key).is_some(), "no verdict recorded");
    assert_counted(
        &before,
        &programs.counters(),
        TcVerdict.counter(Reason::Learned),
    );
    // Without VXLAN over IPv6 on this node, nothing would read it.
    programs.clear_verdicts6();
    programs.update_config(|config| config.node_ip6 = [0; 16]);
    let before = programs.counters();
    programs.tc_verdict(&into_pod, ACCEPT_MARK);
    assert_eq!(programs.verdict6(&key), None);
    assert_counted(
        &before,
        &programs.counters(),
        TcVerdict.counter(Reason::PassIpv6Vxlan),
    );
}

/// An ICMPv6 echo request of `len` IPv6 bytes from the local pod to the
/// VXLAN peer's pod, as the pod sends it (to the gateway).
fn echo_to_vxlan_peer(len: usize, hop_limit: u8) -> Vec<u8> {
    eth(
        GATEWAY_MAC,
        POD_MAC,
        ETH_P_IPV6,
        &ipv6(
            LOCAL_POD6,
            REMOTE_POD6,
            IPPROTO_ICMPV6,
            &weft_tests::packets::icmpv6_echo(len - 40 - 8),
            hop_limit,
        ),
    )
}

#[test]
fn a_pods_ipv6_to_a_vxlan_peer_goes_straight_to_flannel_v6_routed_one_hop() {
    let _guard =
        privileged!("a_pods_ipv6_to_a_vxlan_peer_goes_straight_to_flannel_v6_routed_one_hop");
    let mut programs = Programs::load_dual_stack(true);
    echo_verdict(&mut programs, LOCAL_POD6, REMOTE_POD6);
    // The largest packet that fits the uplink once flannel-v6 adds its 70
    // bytes, and the smallest.
    for len in [1500 - 70, 40 + 8] {
        let frame = echo_to_vxlan_peer(len, 64);
        let before = programs.counters();
        let (verdict, out) = programs.tc(&frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{len} bytes");
        // Routed one hop, as the kernel routes it to flannel-v6: hop limit
        // - 1, to the peer's IPv6 VTEP MAC (flannel-v6's fdb sends that to
        // the peer's PublicIPv6) from flannel-v6's MAC.
        let mut expected = echo_to_vxlan_peer(len, 63);
        expected[0..6].copy_from_slice(&PEER_VTEP_V6_MAC);
        expected[6..12].copy_from_slice(&VTEP_V6_MAC);
        assert_eq!(out, expected, "{len} bytes");
        assert_counted(
            &before,
            &programs.counters(),
            TcPodEgress.counter(Reason::EncapIpv6),
        );
    }
    programs.assert_tc_passes(&[
        (
            "one byte too big for the uplink once encapsulated",
            echo_to_vxlan_peer(1500 - 70 + 1, 64),
            TcPodEgress.counter(Reason::PassTooBig),
        ),
        (
            "hop limit 1",
            echo_to_vxlan_peer(100, 1),
            TcPodEgress.counter(Reason::PassTtlExpired),
        ),
    ]);
    // tc on a VXLAN device (as the agent reads flannel.1 and flannel-v6.1
    // together): the kernel path passes through it, both ways.
    programs.set_tc(|tc| {
        tc.vtep = weft_agent::tc::TcHooks {
            root_qdisc: Some("tbf".into()),
            ..Default::default()
        }
    });
    programs.assert_tc_passes(&[(
        "tc on a VXLAN device",
        echo_to_vxlan_peer(100, 64),
        TcPodEgress.counter(Reason::PassTcVtep),
    )]);
    programs.assert_xdp_passes(&[(
        "tc on a VXLAN device",
        honest_echo(),
        XdpUplink.counter(Reason::PassTcVtep),
    )]);
    programs.set_tc(|tc| tc.vtep = Default::default());
    // No verdict: netfilter decides on the kernel path.
    programs.clear_verdicts6();
    programs.assert_tc_passes(&[(
        "without a verdict",
        echo_to_vxlan_peer(100, 64),
        TcPodEgress.counter(Reason::PassNoVerdict),
    )]);
    // No flannel-v6 named in CONFIG: the kernel path's.
    echo_verdict(&mut programs, LOCAL_POD6, REMOTE_POD6);
    programs.update_config(|config| config.vtep6_ifindex = 0);
    programs.assert_tc_passes(&[(
        "on a node without flannel-v6",
        echo_to_vxlan_peer(100, 64),
        TcPodEgress.counter(Reason::PassIpv6Vxlan),
    )]);
}
