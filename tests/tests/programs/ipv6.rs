//! IPv6 on the fast path, on the dual-stack fixture node, through
//! BPF_PROG_TEST_RUN: a pod's IPv6 packets into another local pod or
//! routed to a host-gw peer's MAC, and left to `flannel-v6` for a VXLAN
//! peer; host-gw IPv6 from the owning peer delivered by `xdp_uplink` and
//! `tc_uplink`; the same checks as IPv4 (the sender, the owning peer,
//! FLOWS6 verdicts) and `tc_verdict` learning IPv6 verdicts. Each case
//! asserts the verdict, the exact bytes that come out and the counter
//! that explains it.

use std::net::Ipv6Addr;

use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP, ENDPOINT_XDP_READY,
    FLOW_CONFIRMED, FLOW_PENDING, Hook,
    Hook::{TcPodEgress, TcUplink, TcVerdict, XdpUplink},
    Reason,
};
use weft_tests::{
    packets::{
        ETH_P_IPV6, eth, icmpv6_echo, icmpv6_neighbour_solicitation, ipv6, ipv6_udp, udp, vxlan,
    },
    privileged,
    programs::*,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers: hop-by-hop options and a fragment header.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_FRAGMENT: u8 = 44;

/// A pod's address in no subnet of this network (a ClusterIP-like one).
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
/// Outside the cluster.
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The local pod's link-local address (neighbour discovery's source).
const LINK_LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

/// A bare TCP header with `flags`, ports 0 (the fixture's accepted flow).
fn tcp_segment(flags: u8) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[12] = 5 << 4;
    segment[13] = flags;
    segment
}

/// An IPv6 packet from `src` to `dst` as a pod sends it (to the gateway,
/// hop limit 64), carrying `payload` of type `next_header`.
fn pod_packet6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    eth(
        GATEWAY_MAC,
        POD_MAC,
        ETH_P_IPV6,
        &ipv6(src, dst, next_header, payload, 64),
    )
}

/// A TCP packet from the local pod to `dst`, as the pod sends it.
fn pod_tcp6(dst: Ipv6Addr, flags: u8) -> Vec<u8> {
    pod_packet6(LOCAL_POD6, dst, IPPROTO_TCP, &tcp_segment(flags))
}

/// A host-gw TCP packet from the host-gw peer's pod to the local pod, on
/// the uplink from the peer node's MAC.
fn host_gw_tcp6(flags: u8) -> Vec<u8> {
    eth(
        UPLINK_MAC,
        HOSTGW_NODE_MAC,
        ETH_P_IPV6,
        &ipv6(
            HOSTGW_POD6,
            LOCAL_POD6,
            IPPROTO_TCP,
            &tcp_segment(flags),
            64,
        ),
    )
}

/// A host-gw TCP packet of `ip_len` bytes (IPv6 header included) from
/// the host-gw peer's pod to the local pod, from the peer node's MAC.
fn host_gw_tcp6_of(ip_len: usize) -> Vec<u8> {
    let mut segment = tcp_segment(TCP_ACK);
    segment.resize(ip_len - 40, 0);
    eth(
        UPLINK_MAC,
        HOSTGW_NODE_MAC,
        ETH_P_IPV6,
        &ipv6(HOSTGW_POD6, LOCAL_POD6, IPPROTO_TCP, &segment, 64),
    )
}

/// A packet on its way into the local pod after the kernel path routed it
/// (what `tc_verdict` sees on the pod veth's egress).
fn delivered6(src: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
    eth(
        POD_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &ipv6(src, LOCAL_POD6, next_header, l4, 63),
    )
}

/// A hop-by-hop options header (a 4-byte PadN, 8 bytes in all) in front
/// of an ICMPv6 echo request.
fn hop_by_hop_echo() -> Vec<u8> {
    let mut payload = vec![IPPROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&icmpv6_echo(56));
    payload
}

/// A fragment header (the first fragment, more to come) in front of an
/// ICMPv6 echo request.
fn first_fragment_echo() -> Vec<u8> {
    let mut payload = vec![IPPROTO_ICMPV6, 0, 0, 1, 0, 0, 0x12, 0x34];
    payload.extend_from_slice(&icmpv6_echo(56));
    payload
}

/// An ICMPv6 "destination unreachable" quoting a (zeroed) packet: RELATED
/// to another flow, never a flow of its own.
fn destination_unreachable6() -> Vec<u8> {
    let mut message = vec![1, 3, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&[0u8; 48]);
    message
}

/// `frame` routed one hop: hop limit one lower, from `src_mac` to
/// `dst_mac`.
fn routed(frame: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut routed = frame.to_vec();
    routed[0..6].copy_from_slice(&dst_mac);
    routed[6..12].copy_from_slice(&src_mac);
    routed[14 + 7] -= 1;
    routed
}

#[test]
fn tc_carries_ipv6_between_local_pods_routed_or_switched() {
    let _guard = privileged!("tc_carries_ipv6_between_local_pods_routed_or_switched");
    let programs = Programs::load_dual_stack(true);
    // Sent to the gateway: routed, as the kernel would (hop limit - 1,
    // to the pod's MAC from the gateway's).
    let before = programs.counters();
    let frame = pod_frame6(LOCAL_POD6, OTHER_LOCAL_POD6, 64);
    let (verdict, out) = programs.tc(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut expected = pod_frame6(LOCAL_POD6, OTHER_LOCAL_POD6, 63);
    addressed_to_pod(&mut expected);
    assert_eq!(out, expected);
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::LocalRedirectIpv6),
    );
    // Sent straight to the pod's MAC (same subnet), the bridge would switch
    // it untouched: so does the redirect, whatever its hop limit.
    for hop_limit in [64, 1] {
        let mut switched = pod_frame6(LOCAL_POD6, OTHER_LOCAL_POD6, hop_limit);
        switched[0..6].copy_from_slice(&POD_MAC);
        let before = programs.counters();
        let (verdict, out) = programs.tc(&switched);
        assert_eq!((verdict, out), (TC_ACT_REDIRECT, switched), "{hop_limit}");
        assert_counted(
            &before,
            &programs.counters(),
            TcPodEgress.counter(Reason::LocalRedirectIpv6),
        );
    }
    // Routed with nothing left of its hop limit: the kernel answers.
    programs.assert_tc_passes(&[
        (
            "hop limit 1 to the gateway",
            pod_frame6(LOCAL_POD6, OTHER_LOCAL_POD6, 1),
            TcPodEgress.counter(Reason::PassTtlExpired),
        ),
        (
            "hop limit 0 to the gateway",
            pod_frame6(LOCAL_POD6, OTHER_LOCAL_POD6, 0),
            TcPodEgress.counter(Reason::PassTtlExpired),
        ),
    ]);
}

#[test]
fn tc_routes_ipv6_to_host_gw_peers_by_their_node_mac() {
    let _guard = privileged!("tc_routes_ipv6_to_host_gw_peers_by_their_node_mac");
    let mut programs = Programs::load_dual_stack(true);
    let frame = pod_frame6(LOCAL_POD6, HOSTGW_POD6, 64);
    let forwarded = routed(&frame, HOSTGW_NODE_MAC, UPLINK_MAC);
    let before = programs.counters();
    let (verdict, out) = programs.tc(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, forwarded);
    assert_eq!(out[14 + 7], 63);
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::HostGwIpv6),
    );
    programs.assert_tc_passes(&[
        (
            "hop limit 1",
            pod_frame6(LOCAL_POD6, HOSTGW_POD6, 1),
            TcPodEgress.counter(Reason::PassTtlExpired),
        ),
        (
            "hop limit 0",
            pod_frame6(LOCAL_POD6, HOSTGW_POD6, 0),
            TcPodEgress.counter(Reason::PassTtlExpired),
        ),
    ]);
    // The peer's IPv4 neighbour is not its IPv6 one: IPv6 still goes.
    programs.set_host_gw_peer([0; 6]);
    let (verdict, out) = programs.tc(&frame);
    assert_eq!((verdict, &out), (TC_ACT_REDIRECT, &forwarded));
    programs.set_host_gw_peer(HOSTGW_NODE_MAC);
    // An unresolved IPv6 neighbour: the kernel path resolves it by NDP,
    // the agent fills it in later.
    programs.set_host_gw_peer6([0; 6]);
    programs.assert_tc_passes(&[(
        "unresolved neighbour",
        frame.clone(),
        TcPodEgress.counter(Reason::PassNoNeighbour),
    )]);
    programs.set_host_gw_peer6(HOSTGW_NODE_MAC);
    assert_eq!(programs.tc(&frame), (TC_ACT_REDIRECT, forwarded));

    // Routed as is: it must fit the uplink's 1500 bytes.
    let of_len = |ip_len: usize| {
        let payload = icmpv6_echo(ip_len - 40 - 8);
        pod_packet6(LOCAL_POD6, HOSTGW_POD6, IPPROTO_ICMPV6, &payload)
    };
    let full = of_len(1500);
    let before = programs.counters();
    let (verdict, out) = programs.tc(&full);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, routed(&full, HOSTGW_NODE_MAC, UPLINK_MAC));
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::HostGwIpv6),
    );
    programs.assert_tc_passes(&[(
        "one byte over the uplink MTU",
        of_len(1501),
        TcPodEgress.counter(Reason::PassTooBig),
    )]);
}

#[test]
fn ipv6_to_a_vxlan_peer_or_outside_the_cluster_is_the_kernels() {
    let _guard = privileged!("ipv6_to_a_vxlan_peer_or_outside_the_cluster_is_the_kernels");
    let mut programs = Programs::load_dual_stack(true);
    // A node whose CONFIG names no flannel-v6 (see vxlan_ipv6.rs for one
    // that does).
    programs.update_config(|config| config.vtep6_ifindex = 0);
    programs.assert_tc_passes(&[
        (
            "to a VXLAN peer's pod (flannel-v6)",
            pod_frame6(LOCAL_POD6, REMOTE_POD6, 64),
            TcPodEgress.counter(Reason::PassIpv6Vxlan),
        ),
        (
            "TCP to a VXLAN peer's pod",
            pod_tcp6(REMOTE_POD6, TCP_ACK),
            TcPodEgress.counter(Reason::PassIpv6Vxlan),
        ),
        (
            "outside the cluster",
            pod_frame6(LOCAL_POD6, OUTSIDE6, 64),
            TcPodEgress.counter(Reason::PassNoRoute),
        ),
    ]);
}

#[test]
fn without_a_current_confirmed_ipv6_verdict_every_program_leaves_the_packet_to_the_kernel() {
    let _guard = privileged!(
        "without_a_current_confirmed_ipv6_verdict_every_program_leaves_the_packet_to_the_kernel"
    );
    let mut programs = Programs::load_dual_stack(true);
    let to_local = pod_frame6(LOCAL_POD6, OTHER_LOCAL_POD6, 64);
    let to_host_gw = pod_frame6(LOCAL_POD6, HOSTGW_POD6, 64);
    let from_host_gw = host_gw_frame6(HOSTGW_NODE_MAC, HOSTGW_POD6, LOCAL_POD6, 64);
    // FLOWS6 empty (FLOWS still holds the IPv4 flows: another family's).
    programs.clear_verdicts6();
    let no_verdict = |hook: Hook, what: &'static str, frame: &Vec<u8>| {
        (what, frame.clone(), hook.counter(Reason::PassNoVerdict))
    };
    programs.assert_tc_passes(&[
        no_verdict(TcPodEgress, "to a pod on this node", &to_local),
        no_verdict(TcPodEgress, "to a host-gw peer's pod", &to_host_gw),
    ]);
    programs.assert_xdp_passes(&[no_verdict(XdpUplink, "from a host-gw peer", &from_host_gw)]);
    programs.assert_uplink_tc_passes(&[no_verdict(TcUplink, "from a host-gw peer", &from_host_gw)]);

    // Pending: the agent has not made the conntrack entry liberal yet.
    for (src, dst) in [
        (LOCAL_POD6, OTHER_LOCAL_POD6),
        (LOCAL_POD6, HOSTGW_POD6),
        (HOSTGW_POD6, LOCAL_POD6),
    ] {
        programs.set_pending_verdict6(flow6(src, dst, IPPROTO_ICMPV6, ECHO_ID, [0, 0]), GENERATION);
    }
    let pending = |hook: Hook, what: &'static str, frame: &Vec<u8>| {
        (
            what,
            frame.clone(),
            hook.counter(Reason::PassVerdictPending),
        )
    };
    programs.assert_tc_passes(&[
        pending(TcPodEgress, "to a pod on this node", &to_local),
        pending(TcPodEgress, "to a host-gw peer's pod", &to_host_gw),
    ]);
    programs.assert_xdp_passes(&[pending(XdpUplink, "from a host-gw peer", &from_host_gw)]);
    programs.assert_uplink_tc_passes(&[pending(TcUplink, "from a host-gw peer", &from_host_gw)]);

    // Confirmed under another ruleset generation.
    programs.accept_fixture_flows6();
    programs.update_config(|config| config.ruleset_generation = GENERATION + 1);
    let changed = |hook: Hook, what: &'static str, frame: &Vec<u8>| {
        (
            what,
            frame.clone(),
            hook.counter(Reason::PassRulesetChanged),
        )
    };
    programs.assert_tc_passes(&[
        changed(TcPodEgress, "to a pod on this node", &to_local),
        changed(TcPodEgress, "to a host-gw peer's pod", &to_host_gw),
    ]);
    programs.assert_xdp_passes(&[changed(XdpUplink, "from a host-gw peer", &from_host_gw)]);
    programs.assert_uplink_tc_passes(&[changed(TcUplink, "from a host-gw peer", &from_host_gw)]);

    // Current again: carried.
    programs.update_config(|config| config.ruleset_generation = GENERATION);
    assert_eq!(programs.tc(&to_local).0, TC_ACT_REDIRECT);
    assert_eq!(programs.tc(&to_host_gw).0, TC_ACT_REDIRECT);
    assert_eq!(programs.xdp(&from_host_gw).0, XDP_REDIRECT);
}

#[test]
fn an_ipv6_echo_verdict_covers_its_own_type_only() {
    let _guard = privileged!("an_ipv6_echo_verdict_covers_its_own_type_only");
    let mut programs = Programs::load_dual_stack(true);
    // The fixture accepted echo requests each way; a reply the same way
    // is another conntrack flow.
    let mut reply = icmpv6_echo(56);
    reply[0] = ICMPV6_ECHO_REPLY;
    let frame = pod_packet6(LOCAL_POD6, OTHER_LOCAL_POD6, IPPROTO_ICMPV6, &reply);
    programs.assert_tc_passes(&[(
        "an echo reply with the request's verdict only",
        frame.clone(),
        TcPodEgress.counter(Reason::PassNoVerdict),
    )]);
    programs.set_verdict6(
        echo_flow6(LOCAL_POD6, OTHER_LOCAL_POD6, ICMPV6_ECHO_REPLY, ECHO_ID),
        GENERATION,
    );
    let before = programs.counters();
    let (verdict, out) = programs.tc(&frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut expected = routed(&frame, POD_MAC, GATEWAY_MAC);
    addressed_to_pod(&mut expected);
    assert_eq!(out, expected);
    assert_counted(
        &before,
        &programs.counters(),
        TcPodEgress.counter(Reason::LocalRedirectIpv6),
    );
}

#[test]
fn ipv6_syn_fin_and_rst_go_to_conntrack_and_end_the_verdict() {
    let _guard = privileged!("ipv6_syn_fin_and_rst_go_to_conntrack_and_end_the_verdict");
    let mut programs = Programs::load_dual_stack(true);
    let outgoing = flow6(LOCAL_POD6, HOSTGW_POD6, IPPROTO_TCP, [0, 0], [0, 0]);
    let incoming = flow6(HOSTGW_POD6, LOCAL_POD6, IPPROTO_TCP, [0, 0], [0, 0]);

    // Plain ACK segments of an accepted flow ride the fast path.
    let (verdict, _) = programs.tc(&pod_tcp6(HOSTGW_POD6, TCP_ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let (verdict, _) = programs.tc(&pod_tcp6(OTHER_LOCAL_POD6, TCP_ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let (verdict, _) = programs.xdp(&host_gw_tcp6(TCP_ACK));
    assert_eq!(verdict, XDP_REDIRECT);

    for flags in [TCP_SYN, TCP_FIN | TCP_ACK, TCP_RST] {
        programs.accept_fixture_flows6();
        programs.assert_tc_passes(&[(
            "a control segment out",
            pod_tcp6(HOSTGW_POD6, flags),
            TcPodEgress.counter(Reason::PassTcpControl),
        )]);
        programs.assert_xdp_passes(&[(
            "a control segment in",
            host_gw_tcp6(flags),
            XdpUplink.counter(Reason::PassTcpControl),
        )]);
        assert_eq!(
            programs.verdict6(&outgoing),
            None,
            "flags {flags:#x}: outgoing verdict kept"
        );
        assert_eq!(
            programs.verdict6(&incoming),
            None,
            "flags {flags:#x}: incoming verdict kept"
        );
        // The next plain segment is netfilter's again.
        programs.assert_tc_passes(&[(
            "after the control segment",
            pod_tcp6(HOSTGW_POD6, TCP_ACK),
            TcPodEgress.counter(Reason::PassNoVerdict),
        )]);
    }
}

#[test]
fn what_is_not_an_ipv6_flow_is_the_kernels() {
    let _guard = privileged!("what_is_not_an_ipv6_flow_is_the_kernels");
    let programs = Programs::load_dual_stack(true);
    let from_pod =
        |dst, next_header, payload: &[u8]| pod_packet6(LOCAL_POD6, dst, next_header, payload);
    // Neighbour discovery, as a pod sends it (hop limit 255): from its
    // link-local address (the kernel's, not the pod's own), to the
    // solicited-node group (no route), or from its own address straight to
    // a neighbour (no flow: ICMPv6 but not echo).
    let solicitation = |src, dst| {
        eth(
            GATEWAY_MAC,
            POD_MAC,
            ETH_P_IPV6,
            &ipv6(
                src,
                dst,
                IPPROTO_ICMPV6,
                &icmpv6_neighbour_solicitation(OTHER_LOCAL_POD6),
                255,
            ),
        )
    };
    let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 3);
    programs.assert_tc_passes(&[
        (
            "hop-by-hop options to a local pod",
            from_pod(OTHER_LOCAL_POD6, IPPROTO_HOPOPTS, &hop_by_hop_echo()),
            TcPodEgress.counter(Reason::PassNotAFlow),
        ),
        (
            "hop-by-hop options to a host-gw peer's pod",
            from_pod(HOSTGW_POD6, IPPROTO_HOPOPTS, &hop_by_hop_echo()),
            TcPodEgress.counter(Reason::PassNotAFlow),
        ),
        (
            "a fragment to a local pod",
            from_pod(OTHER_LOCAL_POD6, IPPROTO_FRAGMENT, &first_fragment_echo()),
            TcPodEgress.counter(Reason::PassNotAFlow),
        ),
        (
            "a fragment to a host-gw peer's pod",
            from_pod(HOSTGW_POD6, IPPROTO_FRAGMENT, &first_fragment_echo()),
            TcPodEgress.counter(Reason::PassNotAFlow),
        ),
        (
            "GRE",
            from_pod(HOSTGW_POD6, 47, &[0u8; 16]),
            TcPodEgress.counter(Reason::PassNotAFlow),
        ),
        (
            "an ICMPv6 error (RELATED, NAT rewrites it)",
            from_pod(HOSTGW_POD6, IPPROTO_ICMPV6, &destination_unreachable6()),
            TcPodEgress.counter(Reason::PassNotAFlow),
        ),
        (
            "a neighbour solicitation from the link-local address",
            solicitation(LINK_LOCAL6, solicited_node),
            TcPodEgress.counter(Reason::PassForeignSource),
        ),
        (
            "a neighbour solicitation to the solicited-node group",
            solicitation(LOCAL_POD6, solicited_node),
            TcPodEgress.counter(Reason::PassNoRoute),
        ),
        (
            "a unicast neighbour solicitation to a local pod",
            solicitation(LOCAL_POD6, OTHER_LOCAL_POD6),
            TcPodEgress.counter(Reason::PassNotAFlow),
        ),
    ]);
    // The same on the uplink, from the owning peer.
    let from_peer = |next_header, payload: &[u8]| {
        eth(
            UPLINK_MAC,
            HOSTGW_NODE_MAC,
            ETH_P_IPV6,
            &ipv6(HOSTGW_POD6, LOCAL_POD6, next_header, payload, 64),
        )
    };
    let cases = [
        (
            "hop-by-hop options",
            from_peer(IPPROTO_HOPOPTS, &hop_by_hop_echo()),
        ),
        (
            "a fragment",
            from_peer(IPPROTO_FRAGMENT, &first_fragment_echo()),
        ),
        (
            "an ICMPv6 error",
            from_peer(IPPROTO_ICMPV6, &destination_unreachable6()),
        ),
    ];
    let not_flows: Vec<_> = cases
        .iter()
        .map(|(what, frame)| (*what, frame.clone(), Reason::PassNotAFlow))
        .collect();
    programs.assert_uplink_refuses(&not_flows);
}

#[test]
fn an_ipv6_pod_sends_only_as_itself() {
    let _guard = privileged!("an_ipv6_pod_sends_only_as_itself");
    let mut programs = Programs::load_dual_stack(true);
    // Verdicts for every flow below, so only the sender check can refuse.
    for src in [STRANGER6, LINK_LOCAL6] {
        for dst in [HOSTGW_POD6, OTHER_LOCAL_POD6] {
            programs.set_verdict6(flow6(src, dst, IPPROTO_ICMPV6, ECHO_ID, [0, 0]), GENERATION);
        }
    }
    let mut wrong_mac = pod_frame6(LOCAL_POD6, HOSTGW_POD6, 64);
    wrong_mac[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xee, 0xee]);
    let foreign = |what, frame| (what, frame, TcPodEgress.counter(Reason::PassForeignSource));
    programs.assert_tc_passes(&[
        foreign(
            "another local pod's address, from this veth",
            pod_frame6(OTHER_LOCAL_POD6, HOSTGW_POD6, 64),
        ),
        foreign(
            "an address of no pod",
            pod_frame6(STRANGER6, HOSTGW_POD6, 64),
        ),
        foreign(
            "its link-local address",
            pod_frame6(LINK_LOCAL6, HOSTGW_POD6, 64),
        ),
        foreign("its own address with another MAC", wrong_mac),
        foreign(
            "to a local pod as someone else",
            pod_frame6(STRANGER6, OTHER_LOCAL_POD6, 64),
        ),
        // Its IPv4 address's endpoint is no IPv6 one.
        foreign(
            "an IPv4-mapped address of its own",
            pod_frame6(
                std::net::Ipv4Addr::from(LOCAL_POD).to_ipv6_mapped(),
                HOSTGW_POD6,
                64,
            ),
        ),
    ]);
    // Its own address from another veth: the agent moved it there.
    let own = pod_frame6(LOCAL_POD6, HOSTGW_POD6, 64);
    programs.set_endpoint6(LOCAL_POD6, POD_IFINDEX + 5, ENDPOINT_XDP_READY);
    programs.assert_tc_passes(&[foreign("its own address, from another veth", own.clone())]);
    programs.set_endpoint6(LOCAL_POD6, POD_IFINDEX, ENDPOINT_XDP_READY);
    let (verdict, _) = programs.tc(&own);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the pod's own packet must still go"
    );
}

#[test]
fn an_ipv6_pod_may_not_speak_vxlan_to_a_node() {
    let _guard = privileged!("an_ipv6_pod_may_not_speak_vxlan_to_a_node");
    let programs = Programs::load_dual_stack(true);
    let from_to = |src, dst, port| {
        eth(
            GATEWAY_MAC,
            POD_MAC,
            ETH_P_IPV6,
            &ipv6_udp(src, dst, 40000, port, &[0u8; 16]),
        )
    };
    let to = |dst, port| from_to(LOCAL_POD6, dst, port);
    // Whatever the destination, and whatever source the pod forged.
    let dropped = [
        ("to a peer's VXLAN port", to(PEER_IP6, PORT)),
        (
            "to the host-gw peer's VXLAN port",
            to(HOSTGW_NODE_IP6, PORT),
        ),
        ("to this node's VXLAN port", to(NODE_IP6, PORT)),
        ("to a stranger's port 8472", to(OUTSIDE6, PORT)),
        ("to a remote pod's port 8472", to(REMOTE_POD6, PORT)),
        ("to a host-gw pod's port 8472", to(HOSTGW_POD6, PORT)),
        ("to a local pod's port 8472", to(OTHER_LOCAL_POD6, PORT)),
        (
            "from a forged source (a peer's address)",
            from_to(PEER_IP6, NODE_IP6, PORT),
        ),
        (
            "from its link-local address",
            from_to(LINK_LOCAL6, NODE_IP6, PORT),
        ),
    ]
    .map(|(what, frame)| (what, frame, TcPodEgress.counter(Reason::DropVxlanFromPod)));
    programs.assert_tc_drops(&dropped);
    // Another port of a node is the kernel's as before.
    programs.assert_tc_passes(&[(
        "to another port of a peer",
        to(PEER_IP6, PORT + 1),
        TcPodEgress.counter(Reason::PassNoRoute),
    )]);
}

#[test]
fn the_uplink_delivers_host_gw_ipv6_from_the_owning_peer_only() {
    let _guard = privileged!("the_uplink_delivers_host_gw_ipv6_from_the_owning_peer_only");
    let mut programs = Programs::load_dual_stack(true);
    let frame = host_gw_frame6(HOSTGW_NODE_MAC, HOSTGW_POD6, LOCAL_POD6, 64);

    let before = programs.counters();
    let (verdict, out) = programs.xdp(&frame);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(out, host_gw_frame6_delivered());
    assert_counted(
        &before,
        &programs.counters(),
        XdpUplink.counter(Reason::HostGwIpv6),
    );
    // tc_uplink delivers the same bytes, with XDP attached or not.
    for xdp_attached in [false, true] {
        let flags = CONFIG_STRICT_VTEPS | if xdp_attached { CONFIG_UPLINK_XDP } else { 0 };
        programs.set_flags(flags);
        let before = programs.counters();
        let (verdict, out) = programs.uplink_tc(&frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "XDP attached: {xdp_attached}");
        assert_eq!(out, host_gw_frame6_delivered());
        assert_counted(
            &before,
            &programs.counters(),
            TcUplink.counter(Reason::HostGwIpv6),
        );
    }
    programs.set_flags(CONFIG_STRICT_VTEPS);

    // Verdicts for the spoofed sources below, so only the source checks
    // can refuse them.
    let outside_subnets = Ipv6Addr::new(0xfd00, 0x244, 0, 9, 0, 0, 0, 9);
    for src in [outside_subnets, STRANGER6] {
        programs.set_verdict6(
            flow6(src, LOCAL_POD6, IPPROTO_ICMPV6, ECHO_ID, [0, 0]),
            GENERATION,
        );
    }
    let inner = eth(
        VTEP_V6_MAC,
        PEER_VTEP_V6_MAC,
        ETH_P_IPV6,
        &ipv6(
            REMOTE_POD6,
            LOCAL_POD6,
            IPPROTO_ICMPV6,
            &icmpv6_echo(56),
            64,
        ),
    );
    let vxlan_over_ipv6 = eth(
        UPLINK_MAC,
        NEXTHOP_MAC,
        ETH_P_IPV6,
        &ipv6_udp(PEER_IP6, HOSTGW_NODE_IP6, 40000, PORT, &vxlan(VNI, &inner)),
    );
    // Cut inside the ICMPv6 header: no transport header, no flow.
    let mut no_transport = frame.clone();
    no_transport.truncate(14 + 40 + 4);
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "from another MAC",
            host_gw_frame6([0x02, 0, 0, 0, 0, 0x66], HOSTGW_POD6, LOCAL_POD6, 64),
            Reason::PassUnknownSource,
        ),
        (
            "from outside every peer subnet",
            host_gw_frame6(HOSTGW_NODE_MAC, outside_subnets, LOCAL_POD6, 64),
            Reason::PassUnknownSource,
        ),
        (
            "from outside the network",
            host_gw_frame6(HOSTGW_NODE_MAC, STRANGER6, LOCAL_POD6, 64),
            Reason::PassUnknownSource,
        ),
        (
            "claiming a VXLAN peer's pod, from the router",
            host_gw_frame6(NEXTHOP_MAC, REMOTE_POD6, LOCAL_POD6, 64),
            Reason::PassUnknownSource,
        ),
        (
            "claiming a VXLAN peer's pod, from the host-gw peer",
            host_gw_frame6(HOSTGW_NODE_MAC, REMOTE_POD6, LOCAL_POD6, 64),
            Reason::PassUnknownSource,
        ),
        (
            "not for a local pod",
            host_gw_frame6(
                HOSTGW_NODE_MAC,
                HOSTGW_POD6,
                Ipv6Addr::new(0xfd00, 0x244, 0, 1, 0, 0, 0, 0x99),
                64,
            ),
            Reason::PassNotForNode,
        ),
        (
            "for this node itself",
            host_gw_frame6(HOSTGW_NODE_MAC, HOSTGW_NODE_IP6, NODE_IP6, 64),
            Reason::PassNotForNode,
        ),
        (
            "VXLAN over IPv6 to another address than this node's",
            vxlan_over_ipv6,
            Reason::PassIpv6Vxlan,
        ),
        (
            "hop limit 1",
            host_gw_frame6(HOSTGW_NODE_MAC, HOSTGW_POD6, LOCAL_POD6, 1),
            Reason::PassTtlExpired,
        ),
        (
            "hop limit 0",
            host_gw_frame6(HOSTGW_NODE_MAC, HOSTGW_POD6, LOCAL_POD6, 0),
            Reason::PassTtlExpired,
        ),
        (
            "a truncated ICMPv6 header",
            no_transport,
            Reason::PassNotAFlow,
        ),
    ];
    programs.assert_uplink_refuses(&cases);
    // A frame cut inside its IPv6 header: XDP only, since BPF_PROG_TEST_RUN
    // refuses TC input of an IPv6 frame shorter than Ethernet plus the
    // IPv6 header (EINVAL, as measured on this kernel).
    for cut in [14, 14 + 20, 14 + 39] {
        programs.assert_xdp_passes(&[(
            "a truncated IPv6 header",
            frame[..cut].to_vec(),
            XdpUplink.counter(Reason::PassTruncated),
        )]);
    }
    // And the honest frame still goes through: the checks could pass.
    assert_eq!(programs.xdp(&frame).0, XDP_REDIRECT);
}

#[test]
fn xdp_leaves_full_size_ipv6_tcp_to_gro_when_configured() {
    let _guard = privileged!("xdp_leaves_full_size_ipv6_tcp_to_gro_when_configured");
    let mut programs = Programs::load_dual_stack(true);
    programs.set_flags(CONFIG_STRICT_VTEPS | CONFIG_BULK_TCP_VIA_GRO);
    let bulk = host_gw_tcp6_of(1024);
    programs.assert_xdp_passes(&[(
        "full-size TCP over host-gw",
        bulk.clone(),
        XdpUplink.counter(Reason::PassBulkTcp),
    )]);
    // Below the bulk size: XDP delivers.
    let before = programs.counters();
    assert_eq!(programs.xdp(&host_gw_tcp6_of(1023)).0, XDP_REDIRECT);
    assert_counted(
        &before,
        &programs.counters(),
        XdpUplink.counter(Reason::HostGwIpv6),
    );
    // Left to GRO without its verdict looked at: tc_uplink checks it, once
    // per coalesced packet.
    programs.clear_verdicts6();
    programs.assert_xdp_passes(&[(
        "full-size TCP without a verdict",
        bulk.clone(),
        XdpUplink.counter(Reason::PassBulkTcp),
    )]);
    programs.assert_uplink_tc_passes(&[(
        "full-size TCP without a verdict, after GRO",
        bulk.clone(),
        TcUplink.counter(Reason::PassNoVerdict),
    )]);
    programs.accept_fixture_flows6();
    let before = programs.counters();
    let (verdict, out) = programs.uplink_tc(&bulk);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut expected = routed(&bulk, POD_MAC, GATEWAY_MAC);
    addressed_to_pod(&mut expected);
    assert_eq!(out, expected);
    assert_counted(
        &before,
        &programs.counters(),
        TcUplink.counter(Reason::HostGwIpv6),
    );
    // Off: XDP delivers everything itself.
    programs.set_flags(CONFIG_STRICT_VTEPS);
    let before = programs.counters();
    assert_eq!(programs.xdp(&bulk).0, XDP_REDIRECT);
    assert_counted(
        &before,
        &programs.counters(),
        XdpUplink.counter(Reason::HostGwIpv6),
    );
}

#[test]
fn tc_verdict_records_marked_ipv6_packets_in_flows6_and_clears_the_mark() {
    let _guard =
        privileged!("tc_verdict_records_marked_ipv6_packets_in_flows6_and_clears_the_mark");
    let mut programs = Programs::load_dual_stack(true);
    programs.clear_verdicts6();
    assert_eq!(programs.liberal_records(), vec![]);
    let packet = delivered6(HOSTGW_POD6, IPPROTO_TCP, &tcp_segment(TCP_ACK));
    let key = flow6(HOSTGW_POD6, LOCAL_POD6, IPPROTO_TCP, [0, 0], [0, 0]);

    // No mark: netfilter did not say this flow is unchanged.
    let before = programs.counters();
    let (verdict, out, mark) = programs.tc_verdict(&packet, 0x4000);
    assert_eq!((verdict, &out, mark), (TCX_NEXT, &packet, 0x4000));
    assert_eq!(programs.verdict6(&key), None);
    assert_only(&before, &programs.counters(), &[]);

    // Marked TCP: recorded in FLOWS6 under the current generation,
    // pending, and its flow put on CT_LIBERAL as a 40-byte record; the
    // mark bit cleared and every other bit kept, the packet untouched.
    let before = programs.counters();
    let started = monotonic_ns();
    let (verdict, out, mark) = programs.tc_verdict(&packet, ACCEPT_MARK | 0x4000);
    assert_eq!((verdict, &out, mark), (TCX_NEXT, &packet, 0x4000));
    let recorded = programs.verdict6(&key).expect("verdict recorded");
    assert_eq!(recorded.generation, GENERATION);
    assert_eq!(recorded.state, FLOW_PENDING);
    assert!(recorded.seen_ns >= started && recorded.seen_ns <= monotonic_ns());
    assert_only(
        &before,
        &programs.counters(),
        &[TcVerdict.counter(Reason::LearnedPending)],
    );
    assert_eq!(programs.liberal_records(), vec![LiberalRequest::V6(key)]);

    // Marked again while pending: the agent was asked already.
    let before = programs.counters();
    let (_, _, mark) = programs.tc_verdict(&packet, ACCEPT_MARK);
    assert_eq!(mark, 0);
    assert_only(
        &before,
        &programs.counters(),
        &[TcVerdict.counter(Reason::AwaitingLiberal)],
    );
    assert_eq!(programs.liberal_records(), vec![]);

    // Once confirmed (as the agent does), the fast path takes that
    // direction, and only that one.
    programs.set_verdict6(key, GENERATION);
    let (verdict, _) = programs.xdp(&host_gw_tcp6(TCP_ACK));
    assert_eq!(verdict, XDP_REDIRECT);
    programs.assert_tc_passes(&[(
        "the other direction",
        pod_tcp6(HOSTGW_POD6, TCP_ACK),
        TcPodEgress.counter(Reason::PassNoVerdict),
    )]);

    // Marked, but from a VXLAN peer's pod on a node that does not
    // decapsulate VXLAN over IPv6 (no PublicIPv6 in CONFIG): the fast path
    // never carries the flow, so nothing is recorded and conntrack is not
    // asked to make it liberal; the mark bit is cleared all the same.
    // (Where the node decapsulates it, the verdict is recorded:
    // vxlan_ipv6.rs.)
    programs.update_config(|config| config.node_ip6 = [0; 16]);
    let vxlan_peers = delivered6(REMOTE_POD6, IPPROTO_TCP, &tcp_segment(TCP_ACK));
    let before = programs.counters();
    let (verdict, out, mark) = programs.tc_verdict(&vxlan_peers, ACCEPT_MARK);
    assert_eq!((verdict, &out, mark), (TCX_NEXT, &vxlan_peers, 0));
    let vxlan_key = flow6(REMOTE_POD6, LOCAL_POD6, IPPROTO_TCP, [0, 0], [0, 0]);
    assert_eq!(programs.verdict6(&vxlan_key), None);
    assert_only(
        &before,
        &programs.counters(),
        &[TcVerdict.counter(Reason::PassIpv6Vxlan)],
    );
    assert_eq!(programs.liberal_records(), vec![]);
    programs.update_config(|config| config.node_ip6 = NODE_IP6.octets());

    // Marked UDP: confirmed at once, nothing asked of the agent.
    let datagram = delivered6(HOSTGW_POD6, IPPROTO_UDP, &udp(5353, 53, &[0u8; 8]));
    let udp_key = flow6(
        HOSTGW_POD6,
        LOCAL_POD6,
        IPPROTO_UDP,
        5353u16.to_be_bytes(),
        53u16.to_be_bytes(),
    );
    let before = programs.counters();
    let (verdict, out, mark) = programs.tc_verdict(&datagram, ACCEPT_MARK);
    assert_eq!((verdict, &out, mark), (TCX_NEXT, &datagram, 0));
    let recorded = programs.verdict6(&udp_key).expect("UDP verdict recorded");
    assert_eq!(
        (recorded.generation, recorded.state),
        (GENERATION, FLOW_CONFIRMED)
    );
    assert_only(
        &before,
        &programs.counters(),
        &[TcVerdict.counter(Reason::Learned)],
    );
    assert_eq!(programs.liberal_records(), vec![]);

    // A marked FIN ends the verdict; a marked ICMPv6 echo is a flow;
    // neighbour discovery and extension headers are not.
    let before = programs.counters();
    let fin = delivered6(HOSTGW_POD6, IPPROTO_TCP, &tcp_segment(TCP_FIN | TCP_ACK));
    let (_, _, mark) = programs.tc_verdict(&fin, ACCEPT_MARK);
    assert_eq!(mark, 0);
    assert_eq!(programs.verdict6(&key), None, "FIN must end the verdict");
    assert_only(
        &before,
        &programs.counters(),
        &[TcVerdict.counter(Reason::TcpControl)],
    );

    let echo = delivered6(HOSTGW_POD6, IPPROTO_ICMPV6, &icmpv6_echo(8));
    let before = programs.counters();
    programs.tc_verdict(&echo, ACCEPT_MARK);
    let echo_key = flow6(HOSTGW_POD6, LOCAL_POD6, IPPROTO_ICMPV6, ECHO_ID, [0, 0]);
    assert_eq!(
        programs.verdict6(&echo_key).map(|verdict| verdict.state),
        Some(FLOW_CONFIRMED)
    );
    assert_only(
        &before,
        &programs.counters(),
        &[TcVerdict.counter(Reason::Learned)],
    );

    for (what, packet) in [
        (
            "a neighbour solicitation",
            delivered6(
                HOSTGW_POD6,
                IPPROTO_ICMPV6,
                &icmpv6_neighbour_solicitation(LOCAL_POD6),
            ),
        ),
        (
            "hop-by-hop options",
            delivered6(HOSTGW_POD6, IPPROTO_HOPOPTS, &hop_by_hop_echo()),
        ),
    ] {
        let before = programs.counters();
        let (verdict, out, mark) = programs.tc_verdict(&packet, ACCEPT_MARK);
        assert_eq!((verdict, &out, mark), (TCX_NEXT, &packet, 0), "{what}");
        assert_only(
            &before,
            &programs.counters(),
            &[TcVerdict.counter(Reason::Unparsed)],
        );
    }
    assert_eq!(programs.liberal_records(), vec![]);
}
