//! The eBPF programs on crafted frames, through BPF_PROG_TEST_RUN: the
//! verdict, the exact bytes that come out, and the counter that explains it.

// Each integration test is its own crate and sees every dependency of the
// package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use weft_common::{CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP};
use weft_common::{
    CounterId,
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    Reason,
};
use weft_tests::{
    packets::{ETH_P_IPV4, Ipv4Options, checksum, eth, icmp_echo, ipv4, ipv4_checksum_ok},
    privileged_test,
    programs::*,
};

#[test]
fn xdp_decapsulates_valid_vxlan_for_a_local_pod_into_the_exact_inner_frame() {
    let Some(_guard) =
        privileged_test("xdp_decapsulates_valid_vxlan_for_a_local_pod_into_the_exact_inner_frame")
    else {
        return;
    };
    let programs = Programs::load(true);
    let before = programs.counters();
    let frame = good_vxlan();
    let (verdict, out) = programs.xdp(&frame);
    assert_eq!(verdict, XDP_REDIRECT);
    // The exact inner frame, rewritten for the pod: its MAC, from the
    // gateway, TTL one lower and the header checksum patched to match.
    let mut expected = inner_frame(
        LOCAL_POD,
        Ipv4Options {
            ttl: 63,
            ..Default::default()
        },
    );
    addressed_to_pod(&mut expected);
    assert_eq!(out, expected);
    assert!(ipv4_checksum_ok(&out, 14));
    assert_counted(
        &before,
        &programs.counters(),
        XdpUplink.counter(Reason::Decap),
    );

    // An inner fragment has no ports to look a verdict up by (netfilter
    // sees the reassembled datagram): the kernel path takes it.
    let fragment = inner_frame(
        LOCAL_POD,
        Ipv4Options {
            frag: 0x2000,
            ..Default::default()
        },
    );
    let frame = vxlan_frame(
        PEER_IP,
        NODE_IP,
        PORT,
        VNI,
        &fragment,
        Ipv4Options {
            frag: 0,
            ..Default::default()
        },
    );
    programs.assert_xdp_passes(&[(
        "an inner fragment",
        frame,
        XdpUplink.counter(Reason::PassNotAFlow),
    )]);
}

#[test]
fn xdp_passes_what_is_not_its_to_the_kernel_and_says_why() {
    let Some(_guard) = privileged_test("xdp_passes_what_is_not_its_to_the_kernel_and_says_why")
    else {
        return;
    };
    let programs = Programs::load(true);
    let inner = inner_frame(LOCAL_POD, Ipv4Options::default());
    let plain = Ipv4Options {
        frag: 0,
        ..Default::default()
    };
    let mut vlan = good_vxlan();
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    let mut arp = good_vxlan();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, CounterId)> = vec![
        (
            "wrong VNI",
            vxlan_frame(PEER_IP, NODE_IP, PORT, 7, &inner, plain),
            XdpUplink.counter(Reason::PassWrongVni),
        ),
        (
            "wrong port",
            vxlan_frame(PEER_IP, NODE_IP, 4789, VNI, &inner, plain),
            XdpUplink.counter(Reason::PassNotVxlan),
        ),
        (
            "not for our address",
            vxlan_frame(PEER_IP, [192, 168, 77, 9], PORT, VNI, &inner, plain),
            XdpUplink.counter(Reason::PassNotForNode),
        ),
        (
            "IPv4 options",
            vxlan_frame(
                PEER_IP,
                NODE_IP,
                PORT,
                VNI,
                &inner,
                Ipv4Options {
                    frag: 0,
                    options: &[1, 1, 1, 0],
                    ..Default::default()
                },
            ),
            XdpUplink.counter(Reason::PassIpOptions),
        ),
        (
            "outer fragment (MF)",
            vxlan_frame(
                PEER_IP,
                NODE_IP,
                PORT,
                VNI,
                &inner,
                Ipv4Options {
                    frag: 0x2000,
                    ..Default::default()
                },
            ),
            XdpUplink.counter(Reason::PassFragment),
        ),
        (
            "outer fragment (offset)",
            vxlan_frame(
                PEER_IP,
                NODE_IP,
                PORT,
                VNI,
                &inner,
                Ipv4Options {
                    frag: 0x0010,
                    ..Default::default()
                },
            ),
            XdpUplink.counter(Reason::PassFragment),
        ),
        ("non-IPv4", arp, XdpUplink.counter(Reason::PassNotIpv4)),
        ("VLAN-tagged", vlan, XdpUplink.counter(Reason::PassVlan)),
        (
            "inner destination not a local pod",
            vxlan_frame(
                PEER_IP,
                NODE_IP,
                PORT,
                VNI,
                &inner_frame([10, 244, 1, 99], Ipv4Options::default()),
                plain,
            ),
            XdpUplink.counter(Reason::PassNoEndpoint),
        ),
        (
            "inner TTL 1",
            vxlan_frame(
                PEER_IP,
                NODE_IP,
                PORT,
                VNI,
                &inner_frame(
                    LOCAL_POD,
                    Ipv4Options {
                        ttl: 1,
                        ..Default::default()
                    },
                ),
                plain,
            ),
            XdpUplink.counter(Reason::PassTtlExpired),
        ),
    ];
    programs.assert_xdp_passes(&cases);
}

#[test]
fn xdp_passes_every_truncation_untouched() {
    let Some(_guard) = privileged_test("xdp_passes_every_truncation_untouched") else {
        return;
    };
    let programs = Programs::load(true);
    let frame = good_vxlan();
    // Cut at every header boundary and one byte short of each. (A frame
    // shorter than an Ethernet header never reaches XDP: drivers drop runts,
    // and BPF_PROG_TEST_RUN refuses them.)
    for cut in [14, 33, 34, 41, 42, 49, 50, 63, 64, 83] {
        let short = &frame[..cut];
        let before = programs.counters();
        let (verdict, out) = programs.xdp(short);
        assert_eq!(verdict, XDP_PASS, "cut at {cut}");
        assert_eq!(out, short, "cut at {cut}");
        let after = programs.counters();
        assert_eq!(
            after[&XdpUplink.counter(Reason::Decap)],
            before[&XdpUplink.counter(Reason::Decap)],
            "cut at {cut} was decapsulated"
        );
    }
}

#[test]
fn xdp_drops_vxlan_from_unknown_sources_in_strict_mode_and_passes_it_otherwise() {
    let Some(_guard) = privileged_test(
        "xdp_drops_vxlan_from_unknown_sources_in_strict_mode_and_passes_it_otherwise",
    ) else {
        return;
    };
    let spoofed = vxlan_from(STRANGER_IP);
    let strict = Programs::load(true);
    let before = strict.counters();
    assert_eq!(strict.xdp(&spoofed).0, XDP_DROP);
    assert_counted(
        &before,
        &strict.counters(),
        XdpUplink.counter(Reason::DropUnknownVtep),
    );
    let lenient = Programs::load(false);
    let before = lenient.counters();
    let (verdict, out) = lenient.xdp(&spoofed);
    assert_eq!((verdict, out), (XDP_PASS, spoofed));
    assert_counted(
        &before,
        &lenient.counters(),
        XdpUplink.counter(Reason::PassUnknownVtep),
    );
}

#[test]
fn tc_encapsulates_for_a_vxlan_peer_with_exact_outer_headers() {
    let Some(_guard) = privileged_test("tc_encapsulates_for_a_vxlan_peer_with_exact_outer_headers")
    else {
        return;
    };
    let programs = Programs::load(true);
    let before = programs.counters();
    let frame = pod_frame(LOCAL_POD, REMOTE_POD, Ipv4Options::default());
    let (verdict, out) = programs.tc(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::Encap),
    );
    let inner_ip_len = frame.len() - 14;
    assert_eq!(out.len(), frame.len() + 50);
    // Outer Ethernet: to the underlay next hop, from the uplink.
    assert_eq!(&out[0..6], &NEXTHOP_MAC);
    assert_eq!(&out[6..12], &UPLINK_MAC);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    // Outer IPv4: 20 bytes, ECN of the inner TOS, length, DF clear, TTL 64,
    // UDP, node -> peer, a checksum that verifies.
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[1], 0);
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        20 + 8 + 8 + 14 + inner_ip_len
    );
    assert_eq!(&ip[6..8], &[0, 0], "flags/fragment offset");
    assert_eq!((ip[8], ip[9]), (64, IPPROTO_UDP));
    assert_eq!(&ip[12..16], &NODE_IP);
    assert_eq!(&ip[16..20], &PEER_IP);
    assert!(ipv4_checksum_ok(&out, 14), "outer IPv4 checksum");
    // UDP: a source port in the kernel's ephemeral range, 8472, length, no checksum.
    let udp = &out[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!((32768..=60999).contains(&sport), "source port {sport}");
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), PORT);
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        8 + 8 + 14 + inner_ip_len
    );
    assert_eq!(&udp[6..8], &[0, 0]);
    // VXLAN: I flag, VNI 1.
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
    // Inner Ethernet: peer VTEP <- our VTEP; then the pod's packet, TTL one lower.
    assert_eq!(&out[50..56], &PEER_VTEP_MAC);
    assert_eq!(&out[56..62], &VTEP_MAC);
    assert_eq!(&out[62..64], &[0x08, 0x00]);
    let expected_inner = ipv4(
        LOCAL_POD,
        REMOTE_POD,
        IPPROTO_ICMP,
        &icmp_echo(56),
        Ipv4Options {
            ttl: 63,
            ..Default::default()
        },
    );
    assert_eq!(&out[64..], &expected_inner[..]);
    assert!(
        ipv4_checksum_ok(&out, 64),
        "inner IPv4 checksum after the TTL change"
    );
    // The same flow always gets the same source port.
    let (_, again) = programs.tc(&frame);
    assert_eq!(&again[34..36], &udp[0..2]);
}

#[test]
fn tc_redirects_to_local_pods_and_leaves_misses_to_the_kernel() {
    let Some(_guard) =
        privileged_test("tc_redirects_to_local_pods_and_leaves_misses_to_the_kernel")
    else {
        return;
    };
    let mut programs = Programs::load(true);
    // Same node: straight into the other pod, rewritten for it.
    let before = programs.counters();
    let frame = pod_frame(LOCAL_POD, OTHER_LOCAL_POD, Ipv4Options::default());
    let (verdict, out) = programs.tc(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut expected = pod_frame(
        LOCAL_POD,
        OTHER_LOCAL_POD,
        Ipv4Options {
            ttl: 63,
            ..Default::default()
        },
    );
    addressed_to_pod(&mut expected);
    assert_eq!(out, expected);
    assert!(ipv4_checksum_ok(&out, 14));
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::LocalRedirect),
    );
    // Sent straight to the pod's MAC (same subnet), the bridge would switch
    // it untouched: so does the redirect.
    let mut switched = pod_frame(LOCAL_POD, OTHER_LOCAL_POD, Ipv4Options::default());
    switched[0..6].copy_from_slice(&POD_MAC);
    let (verdict, out) = programs.tc(&switched);
    assert_eq!((verdict, out), (TC_ACT_REDIRECT, switched));

    let outside = pod_frame(LOCAL_POD, [8, 8, 8, 8], Ipv4Options::default());
    // One byte over the 1450 bytes an inner packet may have on a 1500 uplink.
    let payload = icmp_echo(1500 - 50 - 20 - 8 + 1);
    let too_big = eth(
        GATEWAY_MAC,
        POD_MAC,
        ETH_P_IPV4,
        &ipv4(
            LOCAL_POD,
            REMOTE_POD,
            IPPROTO_ICMP,
            &payload,
            Ipv4Options::default(),
        ),
    );
    let ttl_one = pod_frame(
        LOCAL_POD,
        REMOTE_POD,
        Ipv4Options {
            ttl: 1,
            ..Default::default()
        },
    );
    let arp = eth(GATEWAY_MAC, POD_MAC, 0x0806, &[0; 28]);
    programs.assert_tc_passes(&[
        (
            "no route",
            outside,
            TcPodEgress.counter(Reason::PassNoRoute),
        ),
        (
            "too big after encapsulation",
            too_big,
            TcPodEgress.counter(Reason::PassTooBig),
        ),
        (
            "TTL 1",
            ttl_one,
            TcPodEgress.counter(Reason::PassTtlExpired),
        ),
        ("non-IPv4", arp, TcPodEgress.counter(Reason::PassNotIpv4)),
    ]);
    // An unresolved underlay neighbour: the kernel path resolves it.
    programs.set_peer([0; 6]);
    let before = programs.counters();
    let frame = pod_frame(LOCAL_POD, REMOTE_POD, Ipv4Options::default());
    assert_eq!(programs.tc(&frame), (TC_ACT_OK, frame));
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::PassNoNeighbour),
    );
}

/// A plain frame from the host-gw peer node's uplink, for `dst`.
fn host_gw_frame(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], opts: Ipv4Options) -> Vec<u8> {
    eth(
        UPLINK_MAC,
        src_mac,
        ETH_P_IPV4,
        &ipv4(src, dst, IPPROTO_ICMP, &icmp_echo(56), opts),
    )
}

#[test]
fn xdp_delivers_host_gw_packets_from_the_owning_peer_only() {
    let Some(_guard) = privileged_test("xdp_delivers_host_gw_packets_from_the_owning_peer_only")
    else {
        return;
    };
    let programs = Programs::load(true);
    let before = programs.counters();
    let frame = host_gw_frame(
        HOSTGW_NODE_MAC,
        HOSTGW_POD,
        LOCAL_POD,
        Ipv4Options::default(),
    );
    let (verdict, out) = programs.xdp(&frame);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(out, host_gw_frame_delivered());
    assert!(ipv4_checksum_ok(&out, 14));
    assert_counted(
        &before,
        &programs.counters(),
        XdpUplink.counter(Reason::HostGw),
    );

    let cases: Vec<(&str, Vec<u8>, CounterId)> = vec![
        (
            "TTL 1",
            host_gw_frame(
                HOSTGW_NODE_MAC,
                HOSTGW_POD,
                LOCAL_POD,
                Ipv4Options {
                    ttl: 1,
                    ..Default::default()
                },
            ),
            XdpUplink.counter(Reason::PassTtlExpired),
        ),
        (
            "TTL 0",
            host_gw_frame(
                HOSTGW_NODE_MAC,
                HOSTGW_POD,
                LOCAL_POD,
                Ipv4Options {
                    ttl: 0,
                    ..Default::default()
                },
            ),
            XdpUplink.counter(Reason::PassTtlExpired),
        ),
        (
            "IPv4 options",
            host_gw_frame(
                HOSTGW_NODE_MAC,
                HOSTGW_POD,
                LOCAL_POD,
                Ipv4Options {
                    options: &[1, 1, 1, 0],
                    ..Default::default()
                },
            ),
            XdpUplink.counter(Reason::PassIpOptions),
        ),
        (
            "fragment",
            host_gw_frame(
                HOSTGW_NODE_MAC,
                HOSTGW_POD,
                LOCAL_POD,
                Ipv4Options {
                    frag: 0x2000,
                    ..Default::default()
                },
            ),
            XdpUplink.counter(Reason::PassFragment),
        ),
        (
            "from another MAC",
            host_gw_frame(
                [0x02, 0, 0, 0, 0, 0x66],
                HOSTGW_POD,
                LOCAL_POD,
                Ipv4Options::default(),
            ),
            XdpUplink.counter(Reason::PassUnknownSource),
        ),
        (
            "from outside every peer subnet",
            host_gw_frame(
                HOSTGW_NODE_MAC,
                [10, 9, 9, 9],
                LOCAL_POD,
                Ipv4Options::default(),
            ),
            XdpUplink.counter(Reason::PassUnknownSource),
        ),
        (
            "claiming a VXLAN peer's pod",
            host_gw_frame(NEXTHOP_MAC, REMOTE_POD, LOCAL_POD, Ipv4Options::default()),
            XdpUplink.counter(Reason::PassUnknownSource),
        ),
        (
            "not for a local pod",
            host_gw_frame(
                HOSTGW_NODE_MAC,
                HOSTGW_POD,
                [10, 244, 1, 99],
                Ipv4Options::default(),
            ),
            XdpUplink.counter(Reason::PassNotForNode),
        ),
    ];
    programs.assert_xdp_passes(&cases);
}

#[test]
fn the_ttl_decrement_keeps_the_header_checksum_valid_for_every_header() {
    let Some(_guard) =
        privileged_test("the_ttl_decrement_keeps_the_header_checksum_valid_for_every_header")
    else {
        return;
    };
    let programs = Programs::load(true);
    // Every TTL, with ids chosen to walk the checksum through its carries
    // (including the 0xffff/0x0000 corner).
    for ttl in 2..=255u8 {
        for id in [
            0u16,
            1,
            0x00ff,
            0x7fff,
            0xfeff,
            0xffff,
            u16::from(ttl) * 257,
        ] {
            let frame = host_gw_frame(
                HOSTGW_NODE_MAC,
                HOSTGW_POD,
                LOCAL_POD,
                Ipv4Options {
                    ttl,
                    id,
                    ..Default::default()
                },
            );
            let (verdict, out) = programs.xdp(&frame);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out[22], ttl - 1);
            assert!(
                ipv4_checksum_ok(&out, 14),
                "bad checksum after TTL {ttl} -> {}, id {id:#x}",
                ttl - 1
            );
        }
    }
}

#[test]
fn tc_forwards_to_host_gw_peers_by_their_node_mac() {
    let Some(_guard) = privileged_test("tc_forwards_to_host_gw_peers_by_their_node_mac") else {
        return;
    };
    let mut programs = Programs::load(true);
    programs.set_verdict(
        flow(LOCAL_POD, [10, 244, 3, 9], IPPROTO_ICMP, ECHO_ID, [0, 0]),
        GENERATION,
    );
    let before = programs.counters();
    let frame = pod_frame(LOCAL_POD, [10, 244, 3, 9], Ipv4Options::default());
    let (verdict, out) = programs.tc(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut expected = pod_frame(
        LOCAL_POD,
        [10, 244, 3, 9],
        Ipv4Options {
            ttl: 63,
            ..Default::default()
        },
    );
    expected[0..6].copy_from_slice(&HOSTGW_NODE_MAC);
    expected[6..12].copy_from_slice(&UPLINK_MAC);
    assert_eq!(out, expected);
    assert!(ipv4_checksum_ok(&out, 14));
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::HostGw),
    );
    // Unknown neighbour: the kernel resolves it, the agent fills it in later.
    programs.set_host_gw_peer([0; 6]);
    let before = programs.counters();
    assert_eq!(programs.tc(&frame), (TC_ACT_OK, frame));
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::PassNoNeighbour),
    );
}

/// What a frame looks like once delivered to the local pod: to its MAC,
/// from the gateway's.
fn addressed_to_pod(frame: &mut [u8]) {
    frame[0..6].copy_from_slice(&POD_MAC);
    frame[6..12].copy_from_slice(&GATEWAY_MAC);
}

#[test]
fn xdp_leaves_full_size_tcp_for_local_pods_to_gro_when_configured() {
    let Some(_guard) =
        privileged_test("xdp_leaves_full_size_tcp_for_local_pods_to_gro_when_configured")
    else {
        return;
    };
    let mut programs = Programs::load(true);
    programs.set_flags(CONFIG_STRICT_VTEPS | CONFIG_BULK_TCP_VIA_GRO);
    let bulk = vxlan_carrying(&inner_tcp_frame(LOCAL_POD, 1400, Ipv4Options::default()));
    let bulk_host_gw = host_gw_tcp_frame(1400);
    programs.assert_xdp_passes(&[
        (
            "full-size TCP over VXLAN",
            bulk.clone(),
            XdpUplink.counter(Reason::PassBulkTcp),
        ),
        (
            "full-size TCP over host-gw",
            bulk_host_gw.clone(),
            XdpUplink.counter(Reason::PassBulkTcp),
        ),
    ]);
    // Below the bulk size (ACKs, request/response), and not TCP: XDP delivers.
    for (what, frame, counter) in [
        (
            "a 1023-byte TCP segment",
            vxlan_carrying(&inner_tcp_frame(LOCAL_POD, 1023, Ipv4Options::default())),
            XdpUplink.counter(Reason::Decap),
        ),
        (
            "a bare ACK",
            vxlan_carrying(&inner_tcp_frame(LOCAL_POD, 40, Ipv4Options::default())),
            XdpUplink.counter(Reason::Decap),
        ),
        (
            "a small host-gw segment",
            host_gw_tcp_frame(60),
            XdpUplink.counter(Reason::HostGw),
        ),
    ] {
        let before = programs.counters();
        assert_eq!(programs.xdp(&frame).0, XDP_REDIRECT, "{what}");
        assert_counted(&before, &programs.counters(), counter);
    }
    // Whatever GRO could coalesce is still checked first: a spoofed
    // full-size segment is dropped, one for no local pod is the kernel's.
    let mut spoofed = bulk.clone();
    spoofed[26..30].copy_from_slice(&STRANGER_IP);
    fix_outer_checksum(&mut spoofed);
    let before = programs.counters();
    assert_eq!(programs.xdp(&spoofed).0, XDP_DROP);
    assert_counted(
        &before,
        &programs.counters(),
        XdpUplink.counter(Reason::DropUnknownVtep),
    );
    programs.assert_xdp_passes(&[(
        "full-size TCP for no local pod",
        vxlan_carrying(&inner_tcp_frame(
            [10, 244, 1, 99],
            1400,
            Ipv4Options::default(),
        )),
        XdpUplink.counter(Reason::PassNoEndpoint),
    )]);

    // Off: XDP delivers everything itself.
    programs.set_flags(CONFIG_STRICT_VTEPS);
    for (frame, counter) in [
        (bulk, XdpUplink.counter(Reason::Decap)),
        (bulk_host_gw, XdpUplink.counter(Reason::HostGw)),
    ] {
        let before = programs.counters();
        assert_eq!(programs.xdp(&frame).0, XDP_REDIRECT);
        assert_counted(&before, &programs.counters(), counter);
    }
}

#[test]
fn tc_on_the_uplink_delivers_the_exact_frame_xdp_would() {
    let Some(_guard) = privileged_test("tc_on_the_uplink_delivers_the_exact_frame_xdp_would")
    else {
        return;
    };
    let mut programs = Programs::load(true);
    for xdp_attached in [true, false] {
        let flags = CONFIG_STRICT_VTEPS | if xdp_attached { CONFIG_UPLINK_XDP } else { 0 };
        programs.set_flags(flags);
        // Without XDP, TC counts every frame it sees, under its own hook.
        let also = if xdp_attached {
            vec![]
        } else {
            vec![TcUplink.counter(Reason::Seen)]
        };
        let with = |counter: CounterId| [also.clone(), vec![counter]].concat();

        for (what, inner) in [
            ("ICMP", inner_frame(LOCAL_POD, Ipv4Options::default())),
            (
                "full-size TCP",
                inner_tcp_frame(LOCAL_POD, 1400, Ipv4Options::default()),
            ),
        ] {
            let before = programs.counters();
            let (verdict, out) = programs.uplink_tc(&vxlan_carrying(&inner));
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
            // The inner frame for the pod: its MAC, from the gateway, TTL
            // one lower with the checksum patched; same bytes as XDP's.
            let mut expected = inner.clone();
            expected[22] -= 1;
            expected[24..26].copy_from_slice(&[0, 0]);
            let checksum = checksum(&expected[14..34]).to_be_bytes();
            expected[24..26].copy_from_slice(&checksum);
            addressed_to_pod(&mut expected);
            assert_eq!(out, expected, "{what}");
            assert_eq!(
                programs.xdp(&vxlan_carrying(&inner)).1,
                expected,
                "{what}: XDP differs"
            );
            let after = programs.counters();
            let mut tc_only = after.clone();
            // The XDP run above counted too; compare TC's counting alone.
            for name in [
                XdpUplink.counter(Reason::Seen),
                XdpUplink.counter(Reason::Decap),
                XdpUplink.counter(Reason::PassBulkTcp),
            ] {
                tc_only.insert(name, before[&name]);
            }
            assert_only(&before, &tc_only, &with(TcUplink.counter(Reason::Decap)));
        }

        let frame = host_gw_frame(
            HOSTGW_NODE_MAC,
            HOSTGW_POD,
            LOCAL_POD,
            Ipv4Options::default(),
        );
        let before = programs.counters();
        let (verdict, out) = programs.uplink_tc(&frame);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, host_gw_frame_delivered());
        assert_only(
            &before,
            &programs.counters(),
            &with(TcUplink.counter(Reason::HostGw)),
        );

        // Refused as XDP refuses: spoofed VXLAN is dropped (counted, since
        // it is a drop), the rest is the kernel's, untouched, and counted
        // only when no XDP counted it already.
        let before = programs.counters();
        let spoofed = vxlan_from(STRANGER_IP);
        assert_eq!(programs.uplink_tc(&spoofed).0, TC_ACT_SHOT);
        assert_only(
            &before,
            &programs.counters(),
            &with(TcUplink.counter(Reason::DropUnknownVtep)),
        );
        for (what, frame, counter) in [
            (
                "wrong VNI",
                vxlan_frame(
                    PEER_IP,
                    NODE_IP,
                    PORT,
                    2,
                    &inner_frame(LOCAL_POD, Ipv4Options::default()),
                    Ipv4Options {
                        frag: 0,
                        ..Default::default()
                    },
                ),
                TcUplink.counter(Reason::PassWrongVni),
            ),
            (
                "no local pod",
                vxlan_carrying(&inner_frame([10, 244, 1, 99], Ipv4Options::default())),
                TcUplink.counter(Reason::PassNoEndpoint),
            ),
            (
                "TTL 1",
                vxlan_carrying(&inner_frame(
                    LOCAL_POD,
                    Ipv4Options {
                        ttl: 1,
                        ..Default::default()
                    },
                )),
                TcUplink.counter(Reason::PassTtlExpired),
            ),
            (
                "host-gw from the wrong MAC",
                host_gw_frame(NEXTHOP_MAC, HOSTGW_POD, LOCAL_POD, Ipv4Options::default()),
                TcUplink.counter(Reason::PassUnknownSource),
            ),
        ] {
            let before = programs.counters();
            let (verdict, out) = programs.uplink_tc(&frame);
            assert_eq!(verdict, TC_ACT_OK, "{what}");
            assert_eq!(out, frame, "{what}: a passed frame must be untouched");
            let rose = if xdp_attached { vec![] } else { with(counter) };
            assert_only(&before, &programs.counters(), &rose);
        }
    }
}

/// What `host_gw_frame` from the owning peer looks like delivered into the
/// local pod: TTL one lower, to the pod's MAC from the gateway's.
fn host_gw_frame_delivered() -> Vec<u8> {
    let mut expected = host_gw_frame(
        HOSTGW_NODE_MAC,
        HOSTGW_POD,
        LOCAL_POD,
        Ipv4Options {
            ttl: 63,
            ..Default::default()
        },
    );
    addressed_to_pod(&mut expected);
    expected
}

/// A host-gw TCP segment of `ip_len` bytes from the host-gw peer's pod.
fn host_gw_tcp_frame(ip_len: usize) -> Vec<u8> {
    let mut frame = inner_tcp_frame(LOCAL_POD, ip_len, Ipv4Options::default());
    frame[0..6].copy_from_slice(&UPLINK_MAC);
    frame[6..12].copy_from_slice(&HOSTGW_NODE_MAC);
    frame[26..30].copy_from_slice(&HOSTGW_POD);
    fix_checksum_at(&mut frame, 14);
    frame
}

fn fix_outer_checksum(frame: &mut [u8]) {
    fix_checksum_at(frame, 14);
}

fn fix_checksum_at(frame: &mut [u8], at: usize) {
    frame[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let checksum = checksum(&frame[at..at + 20]).to_be_bytes();
    frame[at + 10..at + 12].copy_from_slice(&checksum);
}
