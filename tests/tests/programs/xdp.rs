//! The XDP uplink program on crafted VXLAN frames, through
//! BPF_PROG_TEST_RUN: the verdict, the exact bytes that come out, and the
//! counter that explains it.

use weft_common::{CounterId, Hook::XdpUplink, Reason};
use weft_tests::{
    packets::{Ipv4Options, ipv4_checksum_ok},
    privileged,
    programs::*,
};

#[test]
fn xdp_decapsulates_valid_vxlan_for_a_local_pod_into_the_exact_inner_frame() {
    let _guard =
        privileged!("xdp_decapsulates_valid_vxlan_for_a_local_pod_into_the_exact_inner_frame");
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
    let _guard = privileged!("xdp_passes_what_is_not_its_to_the_kernel_and_says_why");
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
    let _guard = privileged!("xdp_passes_every_truncation_untouched");
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
    let _guard =
        privileged!("xdp_drops_vxlan_from_unknown_sources_in_strict_mode_and_passes_it_otherwise");
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
