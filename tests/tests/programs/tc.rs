//! The TC programs on crafted frames, through BPF_PROG_TEST_RUN: a pod's
//! egress encapsulated or redirected, and `tc_uplink` delivering what XDP
//! would; the verdict, the exact bytes that come out, and the counter that
//! explains it.

use weft_common::{CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP};
use weft_common::{
    CounterId,
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    Reason,
};
use weft_tests::{
    packets::{ETH_P_IPV4, Ipv4Options, checksum, eth, icmp_echo, ipv4, ipv4_checksum_ok},
    privileged,
    programs::*,
};

#[test]
fn tc_encapsulates_for_a_vxlan_peer_with_exact_outer_headers() {
    let _guard = privileged!("tc_encapsulates_for_a_vxlan_peer_with_exact_outer_headers");
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
    let _guard = privileged!("tc_redirects_to_local_pods_and_leaves_misses_to_the_kernel");
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
    assert_eq!(programs.tc(&frame), (TCX_NEXT, frame));
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::PassNoNeighbour),
    );
}

#[test]
fn tc_on_the_uplink_delivers_the_exact_frame_xdp_would() {
    let _guard = privileged!("tc_on_the_uplink_delivers_the_exact_frame_xdp_would");
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
            assert_eq!(verdict, TCX_NEXT, "{what}");
            assert_eq!(out, frame, "{what}: a passed frame must be untouched");
            let rose = if xdp_attached { vec![] } else { with(counter) };
            assert_only(&before, &programs.counters(), &rose);
        }
    }
}

/// tc is an authority too: where the agent's local view finds tc acting on
/// a path (the CNI bandwidth plugin's ingress filter or root tbf on a pod's
/// veth, configuration on flannel.1, the bridge or the uplink's ingress),
/// every program leaves that traffic to the kernel path untouched, with
/// `TCX_NEXT` (`XDP_PASS`), counted by cause; the rest stays fast.
#[test]
fn where_tc_acts_the_programs_hand_the_packet_on_counted_by_cause() {
    let _guard = privileged!("where_tc_acts_the_programs_hand_the_packet_on_counted_by_cause");
    use weft_agent::tc::TcHooks;
    let mut programs = Programs::load(true);
    let to_remote = pod_frame(LOCAL_POD, REMOTE_POD, Ipv4Options::default());
    let to_neighbour = pod_frame(LOCAL_POD, OTHER_LOCAL_POD, Ipv4Options::default());
    let filtered = TcHooks {
        ingress_filters: 2,
        ..TcHooks::default()
    };
    let shaped = TcHooks {
        root_qdisc: Some("tbf".into()),
        ..TcHooks::default()
    };
    // The sending pod's egress limit (an ingress filter on its veth).
    programs.set_tc(|tc| {
        tc.ports.insert(POD_IFINDEX, filtered.clone());
    });
    programs.assert_tc_passes(&[
        (
            "to a remote pod",
            to_remote.clone(),
            TcPodEgress.counter(Reason::PassTcSender),
        ),
        (
            "to a local pod",
            to_neighbour.clone(),
            TcPodEgress.counter(Reason::PassTcSender),
        ),
    ]);
    // The receiving pod's ingress limit (a root tbf on its veth): nothing
    // is redirected into it, from another pod or from the uplink.
    programs.set_tc(|tc| {
        tc.ports.clear();
        tc.ports.insert(POD_IFINDEX + 1, shaped.clone());
        tc.ports.insert(POD_IFINDEX, shaped.clone());
    });
    programs.assert_tc_passes(&[(
        "to a shaped local pod",
        to_neighbour.clone(),
        TcPodEgress.counter(Reason::PassTcReceiver),
    )]);
    assert_eq!(
        programs.tc(&to_remote).0,
        TC_ACT_REDIRECT,
        "sending stays fast"
    );
    programs.assert_xdp_passes(&[(
        "VXLAN for a shaped pod",
        good_vxlan(),
        XdpUplink.counter(Reason::PassTcReceiver),
    )]);
    programs.assert_uplink_tc_passes(&[(
        "VXLAN for a shaped pod",
        good_vxlan(),
        TcUplink.counter(Reason::PassTcReceiver),
    )]);
    // flannel.1 shaped: no encapsulation, no decapsulation.
    programs.set_tc(|tc| {
        tc.ports.clear();
        tc.vtep = shaped.clone();
    });
    programs.assert_tc_passes(&[(
        "to a VXLAN peer",
        to_remote.clone(),
        TcPodEgress.counter(Reason::PassTcVtep),
    )]);
    programs.assert_uplink_tc_passes(&[(
        "VXLAN",
        good_vxlan(),
        TcUplink.counter(Reason::PassTcVtep),
    )]);
    assert_eq!(programs.tc(&to_neighbour).0, TC_ACT_REDIRECT);
    // Another TCX program on the uplink's ingress, after weft's.
    programs.set_tc(|tc| {
        tc.vtep = TcHooks::default();
        tc.uplink.tcx_ingress = vec![4242];
    });
    programs.assert_xdp_passes(&[(
        "VXLAN",
        good_vxlan(),
        XdpUplink.counter(Reason::PassTcUplink),
    )]);
    programs.assert_uplink_tc_passes(&[(
        "VXLAN",
        good_vxlan(),
        TcUplink.counter(Reason::PassTcUplink),
    )]);
    // The bridge filtered: pods' traffic takes it on the kernel path.
    programs.set_tc(|tc| {
        tc.uplink = TcHooks::default();
        tc.bridge = filtered.clone();
    });
    programs.assert_tc_passes(&[(
        "to a remote pod",
        to_remote.clone(),
        TcPodEgress.counter(Reason::PassTcBridge),
    )]);
    programs.assert_uplink_tc_passes(&[(
        "VXLAN",
        good_vxlan(),
        TcUplink.counter(Reason::PassTcBridge),
    )]);
    // Limits removed: the fast path is back.
    programs.set_tc(|tc| *tc = Default::default());
    assert_eq!(programs.tc(&to_remote).0, TC_ACT_REDIRECT);
    assert_eq!(programs.tc(&to_neighbour).0, TC_ACT_REDIRECT);
    assert_eq!(programs.uplink_tc(&good_vxlan()).0, TC_ACT_REDIRECT);
}
