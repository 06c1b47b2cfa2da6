//! The programs on crafted host-gw frames and bulk TCP, through
//! BPF_PROG_TEST_RUN: delivery from the owning peer only, forwarding by the
//! peer's MAC, the TTL decrement's checksum, and full-size TCP left to GRO.

use weft_common::{CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS};
use weft_common::{
    CounterId,
    Hook::{TcPodEgress, XdpUplink},
    Reason,
};
use weft_tests::{
    packets::{Ipv4Options, checksum, ipv4_checksum_ok},
    privileged,
    programs::*,
};

#[test]
fn xdp_delivers_host_gw_packets_from_the_owning_peer_only() {
    let _guard = privileged!("xdp_delivers_host_gw_packets_from_the_owning_peer_only");
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
    let _guard = privileged!("the_ttl_decrement_keeps_the_header_checksum_valid_for_every_header");
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
    let _guard = privileged!("tc_forwards_to_host_gw_peers_by_their_node_mac");
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
    assert_eq!(programs.tc(&frame), (TCX_NEXT, frame));
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::PassNoNeighbour),
    );
}

#[test]
fn xdp_leaves_full_size_tcp_for_local_pods_to_gro_when_configured() {
    let _guard = privileged!("xdp_leaves_full_size_tcp_for_local_pods_to_gro_when_configured");
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
