//! The programs believe only what they can check, through
//! BPF_PROG_TEST_RUN: VXLAN whose inner source is not the sending peer's,
//! whose inner destination MAC is not this node's VTEP, or whose lengths
//! lie; a pod sending as someone else; XDP into a veth not ready for it.
//! Each goes to the kernel untouched, counted by cause. A pod's VXLAN and
//! its ARP claiming the gateway or a neighbour pod are dropped, counted.

use weft_common::ENDPOINT_XDP_READY;
use weft_common::{
    Hook::{TcPodEgress, XdpUplink},
    Reason,
};
use weft_tests::{
    packets::{ETH_P_ARP, ETH_P_IPV4, Ipv4Options, arp_request, eth, icmp_echo, ipv4},
    privileged,
    programs::*,
};

/// An inner frame for the local pod from `src`, to `dst_mac`.
fn inner_from(src: [u8; 4], dst_mac: [u8; 6]) -> Vec<u8> {
    eth(
        dst_mac,
        PEER_VTEP_MAC,
        ETH_P_IPV4,
        &ipv4(
            src,
            LOCAL_POD,
            IPPROTO_ICMP,
            &icmp_echo(56),
            Ipv4Options::default(),
        ),
    )
}

#[test]
fn vxlan_must_carry_the_senders_own_pods_to_our_vtep_with_honest_lengths() {
    let _guard =
        privileged!("vxlan_must_carry_the_senders_own_pods_to_our_vtep_with_honest_lengths");
    let mut programs = Programs::load(true);
    // The fixture's verdicts cover these flows, so only the checks below
    // can refuse them.
    for src in [[10, 244, 9, 9], [10, 96, 0, 10]] {
        programs.set_verdict(
            flow(src, LOCAL_POD, IPPROTO_ICMP, ECHO_ID, [0, 0]),
            GENERATION,
        );
    }
    let mut long = good_vxlan();
    long[17] += 1; // outer IPv4 total length one more than the frame
    let mut short = good_vxlan();
    short[17] -= 1;
    let mut udp_lies = good_vxlan();
    udp_lies[14 + 20 + 5] -= 8; // UDP length
    let cases = [
        (
            "inner source in the host-gw peer's subnet",
            vxlan_carrying(&inner_from(HOSTGW_POD, VTEP_MAC)),
            Reason::PassForeignInnerSource,
        ),
        (
            "inner source in no peer's subnet",
            vxlan_carrying(&inner_from([10, 244, 9, 9], VTEP_MAC)),
            Reason::PassForeignInnerSource,
        ),
        (
            "inner source a ClusterIP",
            vxlan_carrying(&inner_from([10, 96, 0, 10], VTEP_MAC)),
            Reason::PassForeignInnerSource,
        ),
        (
            "inner destination MAC not our VTEP",
            vxlan_carrying(&inner_from(REMOTE_POD, POD_MAC)),
            Reason::PassNotOurVtep,
        ),
        ("outer IPv4 length too long", long, Reason::PassBadLength),
        ("outer IPv4 length too short", short, Reason::PassBadLength),
        ("UDP length lies", udp_lies, Reason::PassBadLength),
    ];
    programs.assert_uplink_refuses(&cases);
    // And the honest frame still goes through: the checks could pass.
    let (verdict, _) = programs.xdp(&good_vxlan());
    assert_eq!(verdict, XDP_REDIRECT);
}

#[test]
fn a_pod_sends_only_as_itself() {
    let _guard = privileged!("a_pod_sends_only_as_itself");
    let mut programs = Programs::load(true);
    for src in [[10, 96, 0, 10], OTHER_LOCAL_POD] {
        programs.set_verdict(
            flow(src, REMOTE_POD, IPPROTO_ICMP, ECHO_ID, [0, 0]),
            GENERATION,
        );
    }
    let mut wrong_mac = pod_frame(LOCAL_POD, REMOTE_POD, Ipv4Options::default());
    wrong_mac[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xee, 0xee]);
    programs.assert_tc_passes(&[
        (
            "a ClusterIP as source",
            pod_frame([10, 96, 0, 10], REMOTE_POD, Ipv4Options::default()),
            TcPodEgress.counter(Reason::PassForeignSource),
        ),
        (
            "another local pod's address, from this veth",
            pod_frame(OTHER_LOCAL_POD, REMOTE_POD, Ipv4Options::default()),
            TcPodEgress.counter(Reason::PassForeignSource),
        ),
        (
            "its own address with another MAC",
            wrong_mac,
            TcPodEgress.counter(Reason::PassForeignSource),
        ),
        (
            "to a local pod as someone else",
            pod_frame([10, 96, 0, 10], OTHER_LOCAL_POD, Ipv4Options::default()),
            TcPodEgress.counter(Reason::PassForeignSource),
        ),
    ]);
    let (verdict, _) = programs.tc(&pod_frame(LOCAL_POD, REMOTE_POD, Ipv4Options::default()));
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the pod's own packet must still go"
    );
}

#[test]
fn a_pod_may_not_claim_the_gateway_or_a_neighbour_by_arp() {
    let _guard = privileged!("a_pod_may_not_claim_the_gateway_or_a_neighbour_by_arp");
    let programs = Programs::load(true);
    // cni0's address: the first host of the fixture node's 10.244.1.0/24.
    let gateway = [10, 244, 1, 1];
    let broadcast = [0xff; 6];
    let arp = |sender: [u8; 4], target: [u8; 4]| {
        eth(
            broadcast,
            POD_MAC,
            ETH_P_ARP,
            &arp_request(POD_MAC, sender, target),
        )
    };
    // Byte `at` of the ARP packet set to `value` (oper's low byte is 7).
    let with = |mut frame: Vec<u8>, at: usize, value: u8| {
        frame[14 + at] = value;
        frame
    };
    let claims = [
        ("a request claiming the gateway", arp(gateway, LOCAL_POD)),
        ("a gratuitous ARP for the gateway", arp(gateway, gateway)),
        (
            "a reply claiming the gateway",
            with(arp(gateway, LOCAL_POD), 7, 2),
        ),
        (
            "the gateway claimed with IEEE 802's hardware type",
            with(arp(gateway, LOCAL_POD), 1, 6),
        ),
        (
            "a request claiming a neighbour pod",
            arp(OTHER_LOCAL_POD, gateway),
        ),
    ]
    .map(|(what, frame)| (what, frame, TcPodEgress.counter(Reason::DropForgedArp)));
    programs.assert_tc_drops(&claims);
    let not_ipv4 = TcPodEgress.counter(Reason::PassNotIpv4);
    programs.assert_tc_passes(&[
        (
            "asking for the gateway as itself",
            arp(LOCAL_POD, gateway),
            not_ipv4,
        ),
        ("a probe from 0.0.0.0", arp([0; 4], LOCAL_POD), not_ipv4),
        (
            "claiming an address no pod here owns",
            arp([10, 96, 0, 10], gateway),
            not_ipv4,
        ),
        (
            "claiming the gateway with 16-byte addresses, which no IPv4 table takes",
            with(arp(gateway, LOCAL_POD), 5, 16),
            not_ipv4,
        ),
        (
            "cut short",
            arp(gateway, LOCAL_POD)[..14 + 20].to_vec(),
            TcPodEgress.counter(Reason::PassTruncated),
        ),
    ]);
}

#[test]
fn xdp_redirects_only_into_veths_ready_for_it() {
    let _guard = privileged!("xdp_redirects_only_into_veths_ready_for_it");
    let mut programs = Programs::load(true);
    programs.set_endpoint(LOCAL_POD, POD_IFINDEX, 0);
    programs.assert_xdp_passes(&[(
        "GRO not confirmed",
        good_vxlan(),
        XdpUplink.counter(Reason::PassPodNotReady),
    )]);
    // TC on the uplink needs no NAPI at the pod's end: it still delivers.
    let (verdict, _) = programs.uplink_tc(&good_vxlan());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    programs.set_endpoint(LOCAL_POD, POD_IFINDEX, ENDPOINT_XDP_READY);
    let (verdict, _) = programs.xdp(&good_vxlan());
    assert_eq!(verdict, XDP_REDIRECT);
}

#[test]
fn a_pod_may_not_speak_vxlan_to_a_node() {
    let _guard = privileged!("a_pod_may_not_speak_vxlan_to_a_node");
    let programs = Programs::load(true);
    let from_to = |src: [u8; 4], dst: [u8; 4], port: u16| {
        eth(
            GATEWAY_MAC,
            POD_MAC,
            ETH_P_IPV4,
            &ipv4(
                src,
                dst,
                IPPROTO_UDP,
                &weft_tests::packets::udp(40000, port, &[0u8; 16]),
                Ipv4Options::default(),
            ),
        )
    };
    let to = |dst: [u8; 4], port: u16| from_to(LOCAL_POD, dst, port);
    // Whatever the destination (any address may be some node's, or be
    // masqueraded into one), and whatever source the pod forged.
    let dropped = [
        ("to a peer's VXLAN port", to(PEER_IP, PORT)),
        ("to this node's VXLAN port", to(NODE_IP, PORT)),
        ("to a stranger's port 8472", to(STRANGER_IP, PORT)),
        ("to a remote pod's port 8472", to(REMOTE_POD, PORT)),
        ("to a local pod's port 8472", to(OTHER_LOCAL_POD, PORT)),
        (
            "from a forged source (a peer's address)",
            from_to(PEER_IP, NODE_IP, PORT),
        ),
    ]
    .map(|(what, frame)| (what, frame, TcPodEgress.counter(Reason::DropVxlanFromPod)));
    programs.assert_tc_drops(&dropped);
    // Another port of a node is the kernel's as before.
    programs.assert_tc_passes(&[(
        "to another port of a peer",
        to(PEER_IP, PORT + 1),
        TcPodEgress.counter(Reason::PassNoRoute),
    )]);
}

/// A second VXLAN peer node, one routed hop away like the first.
const SECOND_PEER_IP: [u8; 4] = [192, 168, 79, 4];
const SECOND_PEER_VTEP_MAC: [u8; 6] = [0x0e, 1, 192, 168, 79, 4];
/// Where the first peer's lease moves.
const MOVED_PEER_IP: [u8; 4] = [192, 168, 79, 9];
/// The second peer's subnet, and the one a node's second lease takes.
const SECOND_SUBNET: [u8; 4] = [10, 244, 4, 0];
const EXTRA_SUBNET: [u8; 4] = [10, 244, 6, 0];

/// ICMP echo from `src` to the local pod, carried by VXLAN from `outer`.
fn from_vtep(outer: [u8; 4], src: [u8; 4]) -> Vec<u8> {
    vxlan_from_carrying(outer, &inner_from(src, VTEP_MAC))
}

/// The fixture's verdicts for echo from each of `sources` to the local pod,
/// so that only the sender checks can refuse them.
fn allow_echo_from(programs: &mut Programs, sources: &[[u8; 4]]) {
    for src in sources {
        programs.set_verdict(
            flow(*src, LOCAL_POD, IPPROTO_ICMP, ECHO_ID, [0, 0]),
            GENERATION,
        );
    }
}

/// Both uplink programs deliver `frame` (XDP redirects it, `tc_uplink`
/// without XDP redirects it into the pod).
fn assert_delivered(programs: &Programs, what: &str, frame: &[u8]) {
    assert_eq!(programs.xdp(frame).0, XDP_REDIRECT, "XDP: {what}");
    assert_eq!(
        programs.uplink_tc(frame).0,
        TC_ACT_REDIRECT,
        "tc_uplink: {what}"
    );
}

#[test]
fn a_vtep_speaks_for_its_own_subnet_to_the_edge_and_no_further() {
    let _guard = privileged!("a_vtep_speaks_for_its_own_subnet_to_the_edge_and_no_further");
    let mut programs = Programs::load(true);
    programs.set_lease(SECOND_SUBNET, Some((SECOND_PEER_IP, SECOND_PEER_VTEP_MAC)));
    let (first, last) = ([10, 244, 2, 0], [10, 244, 2, 255]);
    let (below, above) = ([10, 244, 1, 255], [10, 244, 3, 0]);
    let second_pod = [10, 244, 4, 9];
    allow_echo_from(&mut programs, &[first, last, below, above, second_pod]);
    // Both ends of the peer's own /24 are its pods.
    assert_delivered(
        &programs,
        "the subnet's first address",
        &from_vtep(PEER_IP, first),
    );
    assert_delivered(
        &programs,
        "the subnet's last address",
        &from_vtep(PEER_IP, last),
    );
    assert_delivered(
        &programs,
        "the second peer, its own pod",
        &from_vtep(SECOND_PEER_IP, second_pod),
    );
    programs.assert_uplink_refuses(&[
        (
            "one below the subnet",
            from_vtep(PEER_IP, below),
            Reason::PassForeignInnerSource,
        ),
        (
            "one above the subnet",
            from_vtep(PEER_IP, above),
            Reason::PassForeignInnerSource,
        ),
        (
            "a known VTEP speaking for another VXLAN peer's pod",
            from_vtep(PEER_IP, second_pod),
            Reason::PassForeignInnerSource,
        ),
        (
            "the other VTEP speaking for the first peer's pod",
            from_vtep(SECOND_PEER_IP, REMOTE_POD),
            Reason::PassForeignInnerSource,
        ),
    ]);
}

#[test]
fn a_vtep_holding_two_leases_speaks_for_both_and_a_moved_lease_leaves_it() {
    let _guard =
        privileged!("a_vtep_holding_two_leases_speaks_for_both_and_a_moved_lease_leaves_it");
    let mut programs = Programs::load(true);
    let extra_pod = [10, 244, 6, 5];
    let second_pod = [10, 244, 4, 9];
    allow_echo_from(
        &mut programs,
        &[REMOTE_POD, extra_pod, second_pod, HOSTGW_POD],
    );
    // The peer node takes a second subnet while its first lease lives on:
    // it speaks for both (VTEPS defers to PEERS), and for no other.
    programs.set_lease(EXTRA_SUBNET, Some((PEER_IP, [0x0e, 1, 0, 0, 0, 6])));
    programs.set_lease(SECOND_SUBNET, Some((SECOND_PEER_IP, SECOND_PEER_VTEP_MAC)));
    assert_delivered(
        &programs,
        "its first subnet",
        &from_vtep(PEER_IP, REMOTE_POD),
    );
    assert_delivered(
        &programs,
        "its second subnet",
        &from_vtep(PEER_IP, extra_pod),
    );
    programs.assert_uplink_refuses(&[
        (
            "two leases, another VXLAN peer's pod",
            from_vtep(PEER_IP, second_pod),
            Reason::PassForeignInnerSource,
        ),
        (
            "two leases, the host-gw peer's pod",
            from_vtep(PEER_IP, HOSTGW_POD),
            Reason::PassForeignInnerSource,
        ),
    ]);

    // The first lease moves to a new PublicIP (the node got another
    // address): the old VTEP, still holding its other lease, no longer
    // speaks for it; the new one does.
    programs.set_lease([10, 244, 2, 0], Some((MOVED_PEER_IP, PEER_VTEP_MAC)));
    assert_delivered(
        &programs,
        "the moved subnet, from its new VTEP",
        &from_vtep(MOVED_PEER_IP, REMOTE_POD),
    );
    assert_delivered(
        &programs,
        "the old VTEP's remaining subnet",
        &from_vtep(PEER_IP, extra_pod),
    );
    programs.assert_uplink_refuses(&[(
        "the moved subnet, from its old VTEP",
        from_vtep(PEER_IP, REMOTE_POD),
        Reason::PassForeignInnerSource,
    )]);

    // Its other lease gone too, the old VTEP is no VTEP: dropped
    // (--strict-vteps) whatever it carries.
    programs.set_lease(EXTRA_SUBNET, None);
    for (what, src) in [
        ("the moved subnet", REMOTE_POD),
        ("its former subnet", extra_pod),
    ] {
        let frame = from_vtep(PEER_IP, src);
        let before = programs.counters();
        assert_eq!(programs.xdp(&frame).0, XDP_DROP, "{what}");
        assert_counted(
            &before,
            &programs.counters(),
            XdpUplink.counter(Reason::DropUnknownVtep),
        );
    }
    assert_delivered(
        &programs,
        "the moved subnet, from its new VTEP",
        &from_vtep(MOVED_PEER_IP, REMOTE_POD),
    );
}
