//! The eBPF VXLAN fast path on the lab: pod traffic across nodes is
//! encapsulated by TC and decapsulated on the uplink, by TC alone or by XDP
//! with bulk TCP left to GRO and TC (the kernel's flannel.1 stays idle),
//! same-node traffic skips the bridge, big and fragmented packets get
//! through, and a stock kernel node interoperates both ways. Spoofed VXLAN
//! and a killed agent: fast_path_resilience.rs.

use weft_common::{
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    Reason,
};

use weft_tests::{
    Dataplane, Lab, LabSpec, NodeId, bandwidth, inspect,
    lab::{
        DECAP_COUNTERS, FLOW_SETUP_PACKETS, XDP_NATIVE, carried_nearly_all, counter_delta,
        counters_delta,
    },
    netns, privileged,
    traffic::tcp_transfer,
};

#[test]
fn the_fast_path_carries_cross_node_traffic_and_flannel_1_stays_idle() {
    let _guard = privileged!("the_fast_path_carries_cross_node_traffic_and_flannel_1_stays_idle");
    // The lab's uplinks are veths: TC alone decapsulates (`--xdp-mode auto`).
    let lab = Lab::up(&LabSpec::new("t-fp-vxlan", 3, 2)).unwrap();
    carries_cross_node_traffic(&lab, false);
    let counters = lab.counters(NodeId::new(3)).unwrap();
    assert_eq!(
        counters[&XdpUplink.counter(Reason::Decap)].0,
        0,
        "XDP decapsulated without XDP"
    );
}

#[test]
fn with_xdp_small_packets_take_xdp_and_bulk_tcp_takes_gro_then_tc() {
    let _guard = privileged!("with_xdp_small_packets_take_xdp_and_bulk_tcp_takes_gro_then_tc");
    let mut spec = LabSpec::new("t-fp-xdp", 3, 2);
    spec.agent_args.push(XDP_NATIVE.to_owned());
    let lab = Lab::up(&spec).unwrap();
    carries_cross_node_traffic(&lab, true);
}

/// What a user checks on a VXLAN fast-path lab: the maps and status, pings
/// and a 200 MB transfer carried by the programs and not by flannel.1, and
/// full-MTU and fragmented packets. `xdp`: XDP is on the uplinks.
fn carries_cross_node_traffic(lab: &Lab, xdp: bool) {
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);

    // What `weft maps` and `weft status` show a user on node 1.
    let weft = lab.state.weft_bin.display().to_string();
    let node = lab.node(NodeId::new(1));
    let pin_dir = node.pin_dir.display().to_string();
    let peers: serde_json::Value = serde_json::from_str(
        &netns::run_host(&[&weft, "maps", "peers", "--json", "--bpf-pin-dir", &pin_dir]).unwrap(),
    )
    .unwrap();
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 2, "{peers:?}");
    for peer in lab
        .state
        .nodes
        .iter()
        .filter(|peer| peer.id != NodeId::new(1))
    {
        let row = peers
            .iter()
            .find(|row| row["subnet"] == peer.subnet.as_str())
            .unwrap_or_else(|| panic!("{} missing: {peers:?}", peer.subnet));
        assert_eq!(row["mode"], "vxlan");
        assert_eq!(row["public_ip"], peer.ip.as_str());
        assert!(
            row["nexthop_mac"].is_string(),
            "next hop unresolved after warm-up: {row}"
        );
    }
    let status: serde_json::Value = serde_json::from_str(
        &netns::run(
            &node.ns,
            &[
                &weft,
                "status",
                "--json",
                "--bpf-pin-dir",
                &pin_dir,
                "--subnet-file",
                &node.subnet_file.display().to_string(),
            ],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(status["xdp_attached"], xdp, "{status}");
    assert_eq!(status["uplink_tc_attached"], true, "{status}");
    assert_eq!(status["config"]["bulk_tcp_via_gro"], true, "{status}");
    let subnet: ipnet::Ipv4Net = node.subnet.parse().unwrap();
    assert_eq!(
        status["subnet"],
        format!("{}/{}", subnet.hosts().next().unwrap(), subnet.prefix_len()).as_str()
    );
    let veths = status["pod_veths"].as_array().unwrap();
    assert_eq!(veths.len(), 2);
    assert!(
        veths.iter().all(|veth| veth["tc_attached"] == true),
        "{status}"
    );
    assert_eq!(
        status["endpoints"].as_array().unwrap().len(),
        2,
        "both local pods learned: {status}"
    );

    // 50 pings n1-p1 -> n2-p1: once netfilter has passed the flow both
    // ways, every request is encapsulated by TC on n1 and decapsulated on
    // n2's uplink (by XDP if attached: pings are small), every reply the
    // other way round. The flow's first packets take the kernel path.
    let (from, to) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(2)).pods[0].clone(),
    );
    let before = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
    ];
    let flannel_before = [
        inspect::packet_counts(&lab.node(NodeId::new(1)).ns, "flannel.1").unwrap(),
        inspect::packet_counts(&lab.node(NodeId::new(2)).ns, "flannel.1").unwrap(),
    ];
    assert!(
        lab.ping(&from, to.ip(), 50)
            .unwrap()
            .contains("50 received")
    );
    let after = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
    ];
    for node in 0..2 {
        let decap = if xdp {
            XdpUplink.counter(Reason::Decap)
        } else {
            TcUplink.counter(Reason::Decap)
        };
        for counter in [TcPodEgress.counter(Reason::Encap), decap] {
            let (packets, _) = counter_delta(&before[node], &after[node], counter);
            assert!(
                packets >= 50 - FLOW_SETUP_PACKETS,
                "node {} {counter} rose by {packets} of the 50 packets sent",
                node + 1
            );
        }
    }
    let flannel_after = [
        inspect::packet_counts(&lab.node(NodeId::new(1)).ns, "flannel.1").unwrap(),
        inspect::packet_counts(&lab.node(NodeId::new(2)).ns, "flannel.1").unwrap(),
    ];
    assert_kernel_path_only_set_up(flannel_before, flannel_after, "the pings");

    // 200 MB of TCP n1-p1 -> n3-p2, checked end to end.
    let server = lab.node(NodeId::new(3)).pods[1].clone();
    let before = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(3)).unwrap(),
    ];
    let flannel_before = [
        inspect::packet_counts(&lab.node(NodeId::new(1)).ns, "flannel.1").unwrap(),
        inspect::packet_counts(&lab.node(NodeId::new(3)).ns, "flannel.1").unwrap(),
    ];
    let transfer =
        tcp_transfer(&server.ns, server.ip(), 5001, &from.ns, 200 * 1024 * 1024).unwrap();
    assert_eq!(
        transfer.sent, transfer.received,
        "the received bytes differ from the sent ones"
    );
    let after = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(3)).unwrap(),
    ];
    let (_, encap_bytes) = counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::Encap));
    let (_, decap_bytes) = counters_delta(&before[1], &after[1], &DECAP_COUNTERS);
    assert!(
        carried_nearly_all(encap_bytes, transfer.bytes),
        "TC encapsulated {encap_bytes} bytes of a {} byte transfer",
        transfer.bytes
    );
    assert!(
        carried_nearly_all(decap_bytes, transfer.bytes),
        "the fast path decapsulated {decap_bytes} bytes of a {} byte transfer",
        transfer.bytes
    );
    if xdp {
        // Full-size segments were left to GRO, and TC delivered them
        // coalesced: fewer packets than XDP passed it.
        let (passed, _) = counter_delta(
            &before[1],
            &after[1],
            XdpUplink.counter(Reason::PassBulkTcp),
        );
        let (coalesced, _) = counter_delta(&before[1], &after[1], TcUplink.counter(Reason::Decap));
        assert!(
            passed > 0 && coalesced > 0 && coalesced < passed,
            "XDP left {passed} segments to GRO, TC delivered {coalesced} packets"
        );
    }
    let flannel_after = [
        inspect::packet_counts(&lab.node(NodeId::new(1)).ns, "flannel.1").unwrap(),
        inspect::packet_counts(&lab.node(NodeId::new(3)).ns, "flannel.1").unwrap(),
    ];
    // The kernel path carried the connection's set-up and close, and one
    // packet each way per re-check interval (netfilter's periodic look).
    let fast_packets = counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::Encap)).0
        + counters_delta(&before[1], &after[1], &DECAP_COUNTERS).0;
    for (node, (before, after)) in flannel_before.iter().zip(flannel_after).enumerate() {
        let kernel_packets = (after.0 - before.0) + (after.1 - before.1);
        assert!(
            kernel_packets * 100 < fast_packets,
            "flannel.1 on node {} carried {kernel_packets} packets of the transfer, the fast path {fast_packets}",
            node + 1
        );
    }

    // Full-MTU packets (1450 = 1422 + 28) go through with DF; one byte more
    // with DF is refused by the pod itself (its MTU is the overlay's), and
    // without DF it is fragmented and still arrives.
    let before = lab.counters(NodeId::new(1)).unwrap();
    let full = lab.ping_sized(&from, to.ip(), 6, 1422, true).unwrap();
    assert!(full.contains("6 received"), "{full}");
    assert!(
        counter_delta(
            &before,
            &lab.counters(NodeId::new(1)).unwrap(),
            TcPodEgress.counter(Reason::Encap)
        )
        .0 >= 6 - FLOW_SETUP_PACKETS
    );
    // Refused at the pod's own interface, before any path: ping says
    // "local error: message too long, mtu=1450" (a lost packet would fail
    // too, but for the wrong reason).
    let over = netns::command(&from.ns, "ping")
        .unwrap()
        .args([
            "-n",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1423",
            to.ip(),
        ])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&over.stdout),
        String::from_utf8_lossy(&over.stderr)
    );
    assert!(
        !over.status.success() && said.contains("message too long, mtu=1450"),
        "a 1451-byte DF packet from a 1450-MTU pod was not refused as too long: {said}"
    );
    let fragmented = lab.ping_sized(&from, to.ip(), 3, 1423, false).unwrap();
    assert!(fragmented.contains("3 received"), "{fragmented}");
}

/// flannel.1 (the kernel path) carried at most the flows' set-up packets
/// on each node, each way: the fast path carried the rest.
fn assert_kernel_path_only_set_up(before: [(u64, u64); 2], after: [(u64, u64); 2], what: &str) {
    for (node, (before, after)) in before.iter().zip(after).enumerate() {
        let (rx, tx) = (after.0 - before.0, after.1 - before.1);
        assert!(
            rx <= FLOW_SETUP_PACKETS && tx <= FLOW_SETUP_PACKETS,
            "flannel.1 on node {} carried {rx} received and {tx} sent packets of {what}; only a flow's set-up belongs there",
            node + 1
        );
    }
}

#[test]
fn same_node_pods_talk_without_the_bridge() {
    let _guard = privileged!("same_node_pods_talk_without_the_bridge");
    let lab = Lab::up(&LabSpec::new("t-fp-local", 1, 2)).unwrap();
    lab.warm_up().unwrap();
    let node = lab.node(NodeId::new(1));
    let (a, b) = (node.pods[0].clone(), node.pods[1].clone());
    let before = lab.counters(NodeId::new(1)).unwrap();
    let veths = [
        inspect::packet_counts(&node.ns, &a.network.host_veth).unwrap(),
        inspect::packet_counts(&node.ns, &b.network.host_veth).unwrap(),
    ];
    assert!(lab.ping(&a, b.ip(), 50).unwrap().contains("50 received"));
    let (redirected, _) = counter_delta(
        &before,
        &lab.counters(NodeId::new(1)).unwrap(),
        TcPodEgress.counter(Reason::LocalRedirect),
    );
    assert!(
        redirected >= 100 - FLOW_SETUP_PACKETS,
        "only {redirected} of 100 packets were redirected pod to pod"
    );
    // Through the bridge each of the 50 requests and 50 replies would leave
    // by the other pod's host veth (its tx counter); redirected to the peer
    // they never do. Only ARP (not IPv4, so the bridge's) and the flow's
    // set-up (netfilter's to see) may pass there.
    let veths_after = [
        inspect::packet_counts(&node.ns, &a.network.host_veth).unwrap(),
        inspect::packet_counts(&node.ns, &b.network.host_veth).unwrap(),
    ];
    for (veth, (before, after)) in [
        (&a.network.host_veth, (veths[0], veths_after[0])),
        (&b.network.host_veth, (veths[1], veths_after[1])),
    ] {
        let sent = after.1 - before.1;
        assert!(
            sent < 10 + FLOW_SETUP_PACKETS,
            "{veth} transmitted {sent} packets: pod traffic went through the bridge"
        );
    }
}

#[test]
fn a_stock_kernel_node_and_fast_path_nodes_reach_each_other_both_ways() {
    let _guard = privileged!("a_stock_kernel_node_and_fast_path_nodes_reach_each_other_both_ways");
    let mut spec = LabSpec::new("t-fp-mixed", 3, 2);
    spec.node_dataplanes = vec![Dataplane::Kernel, Dataplane::Ebpf, Dataplane::Ebpf];
    let lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);
    // Then the stock node's pod and one of weft's alone, 20 pings each way,
    // so the counters below hold only that pair's traffic: the stock node's
    // flannel.1 decapsulated what weft encapsulated and encapsulated what
    // weft decapsulated.
    let stock_pod = lab.node(NodeId::new(1)).pods[0].clone();
    let fast_pod = lab.node(NodeId::new(2)).pods[0].clone();
    let stock_before = inspect::packet_counts(&lab.node(NodeId::new(1)).ns, "flannel.1").unwrap();
    let fast_before = lab.counters(NodeId::new(2)).unwrap();
    for (from, to) in [(&stock_pod, &fast_pod), (&fast_pod, &stock_pod)] {
        let out = lab.ping(from, to.ip(), 20).unwrap();
        assert!(
            out.contains("20 received"),
            "{} -> {}: {out}",
            from.ip(),
            to.ip()
        );
    }
    let stock_after = inspect::packet_counts(&lab.node(NodeId::new(1)).ns, "flannel.1").unwrap();
    let fast_after = lab.counters(NodeId::new(2)).unwrap();
    // 40 echo packets each way between the two nodes.
    let (received, sent) = (
        stock_after.0 - stock_before.0,
        stock_after.1 - stock_before.1,
    );
    assert!(
        received >= 40 && sent >= 40,
        "the stock node's flannel.1 received {received} and sent {sent} of the pair's 40 each way"
    );
    let encap = counter_delta(
        &fast_before,
        &fast_after,
        TcPodEgress.counter(Reason::Encap),
    )
    .0;
    let decap = counters_delta(&fast_before, &fast_after, &DECAP_COUNTERS).0;
    assert!(
        encap >= 40 - 2 * FLOW_SETUP_PACKETS && decap >= 40 - 2 * FLOW_SETUP_PACKETS,
        "weft's node carried {encap} of 40 packets to the stock node and {decap} of 40 from it"
    );
}

/// tc stays an authority (issue 20): pods limited by the real CNI
/// `bandwidth` plugin get no more than their limit over VXLAN, each way,
/// same node and across nodes, on either dataplane, with node 1's fast path
/// carrying none of it; without limits it carries their traffic again; a
/// second TCX program after weft's still sees a pod's packets.
#[test]
fn the_cni_bandwidth_plugins_limits_hold_over_vxlan() {
    let _guard = privileged!("the_cni_bandwidth_plugins_limits_hold_over_vxlan");
    let mut spec = LabSpec::new("t-tc-vxlan", 3, 2);
    spec.node_dataplanes = vec![Dataplane::Ebpf, Dataplane::Ebpf, Dataplane::Kernel];
    let lab = Lab::up(&spec).unwrap();
    bandwidth::limits_hold_on_every_path(&lab, false);
    bandwidth::a_second_program_after_wefts_sees_the_packets(&lab);
}
