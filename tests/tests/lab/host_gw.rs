//! The eBPF fast path with host-gw and DirectRouting: plain packets between
//! nodes on one segment skip the routing table on both ends, a stock kernel
//! node interoperates, and DirectRouting picks host-gw or VXLAN per peer.

use std::time::Instant;

use weft_common::{
    Hook::{TcPodEgress, TcUplink, TcVerdict, XdpUplink},
    Reason,
};
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, bandwidth, inspect,
    lab::{
        DECAP_COUNTERS, FLOW_SETUP_PACKETS, HOST_GW_DELIVERY_COUNTERS, XDP_NATIVE,
        carried_nearly_all, counter_delta, counters_delta,
    },
    netns, privileged,
    traffic::tcp_transfer,
};

fn host_gw(name: &str) -> LabSpec {
    let mut spec = LabSpec::new(name, 3, 2);
    spec.backend = Backend::HostGw;
    spec
}

#[test]
fn host_gw_traffic_skips_the_routing_table_on_both_nodes() {
    let _guard = privileged!("host_gw_traffic_skips_the_routing_table_on_both_nodes");
    // The lab's uplinks are veths: TC alone delivers (`--xdp-mode auto`).
    let lab = Lab::up(&host_gw("t-hg-fast")).unwrap();
    skips_the_routing_table(&lab);
    let counters = lab.counters(NodeId::new(3)).unwrap();
    assert_eq!(
        counters[&XdpUplink.counter(Reason::HostGw)].0,
        0,
        "XDP delivered without XDP"
    );
}

#[test]
fn host_gw_with_xdp_delivers_small_packets_from_xdp_and_bulk_tcp_after_gro() {
    let _guard =
        privileged!("host_gw_with_xdp_delivers_small_packets_from_xdp_and_bulk_tcp_after_gro");
    let mut spec = host_gw("t-hg-xdp");
    spec.agent_args.push(XDP_NATIVE.to_owned());
    let lab = Lab::up(&spec).unwrap();
    let before = lab.counters(NodeId::new(3)).unwrap();
    skips_the_routing_table(&lab);
    let after = lab.counters(NodeId::new(3)).unwrap();
    // Pings are small: XDP; the transfer's full-size segments: GRO, then TC.
    for counter in [
        XdpUplink.counter(Reason::HostGw),
        XdpUplink.counter(Reason::PassBulkTcp),
        TcUplink.counter(Reason::HostGw),
    ] {
        assert!(
            counter_delta(&before, &after, counter).0 > 0,
            "{counter} did not rise"
        );
    }
}

/// Pings every pair, then moves 200 MB n1-p1 -> n3-p2 and checks that the
/// fast path carried all of it and the routing tables none of it.
fn skips_the_routing_table(lab: &Lab) {
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);
    let (client, server) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(3)).pods[1].clone(),
    );
    let before_all = lab.all_counters();
    let before = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(3)).unwrap(),
    ];
    let forwarded = [
        inspect::forwarded_datagrams(&lab.node(NodeId::new(1)).ns).unwrap(),
        inspect::forwarded_datagrams(&lab.node(NodeId::new(3)).ns).unwrap(),
    ];
    let started = Instant::now();
    let transfer =
        tcp_transfer(&server.ns, server.ip(), 5003, &client.ns, 200 * 1024 * 1024).unwrap();
    assert_eq!(
        transfer.sent, transfer.received,
        "the received bytes differ from the sent ones"
    );
    let after = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(3)).unwrap(),
    ];
    let (_, sent) = counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::HostGw));
    let (_, delivered) = counters_delta(&before[1], &after[1], &HOST_GW_DELIVERY_COUNTERS);
    assert!(
        carried_nearly_all(sent, transfer.bytes),
        "TC forwarded {sent} bytes of a {} byte transfer",
        transfer.bytes
    );
    assert!(
        carried_nearly_all(delivered, transfer.bytes),
        "the fast path delivered {delivered} bytes of a {} byte transfer",
        transfer.bytes
    );
    // The kernel routed (almost) nothing but probes: the connection's
    // set-up and close, the packets of a verdict waiting for the agent, and
    // once per half TTL per flow direction a probe (a copy, taken at egress:
    // its original took the fast path). Probes come by time, not by bytes,
    // so they are counted apart: on a loaded machine the transfer is slower
    // and sees more of them.
    let fast_packets = counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::HostGw)).0
        + counters_delta(&before[1], &after[1], &HOST_GW_DELIVERY_COUNTERS).0;
    let forwarded_after = [
        inspect::forwarded_datagrams(&lab.node(NodeId::new(1)).ns).unwrap(),
        inspect::forwarded_datagrams(&lab.node(NodeId::new(3)).ns).unwrap(),
    ];
    for (index, node) in [(0, 1), (1, 3)] {
        let probes = |counter| counter_delta(&before[index], &after[index], counter).0;
        let sent_by_pods = probes(TcPodEgress.counter(Reason::ProbeSent));
        let sent = sent_by_pods + probes(TcUplink.counter(Reason::ProbeSent));
        let routed = forwarded_after[index] - forwarded[index];
        let diagnose = || {
            eprintln!(
                "node {node}: routed {routed}, probes {sent}, fast path {fast_packets}, {:?}",
                started.elapsed()
            );
            lab.print_counted_since(&before_all);
        };
        let checks = [
            (
                routed.saturating_sub(sent) * 100 < fast_packets,
                "routed more than probes and 1%",
            ),
            // Each probe renewed its verdict at egress and was dropped
            // there; each one sent from a pod out of the uplink let its
            // original pass that uplink's tc_verdict first.
            (
                probes(TcVerdict.counter(Reason::ProbeTaken)) == sent,
                "a probe not taken",
            ),
            (
                probes(TcVerdict.counter(Reason::ProbeUnjudged)) == 0,
                "a probe unjudged",
            ),
            (
                probes(TcVerdict.counter(Reason::ProbeOriginal)) == sent_by_pods,
                "an original not passed",
            ),
        ];
        for (holds, what) in checks {
            if !holds {
                diagnose();
                panic!(
                    "node {node}: {what} (routed {routed}, probes {sent}, fast path {fast_packets})"
                );
            }
        }
    }
}

#[test]
fn a_stock_kernel_node_and_host_gw_fast_path_nodes_reach_each_other() {
    let _guard = privileged!("a_stock_kernel_node_and_host_gw_fast_path_nodes_reach_each_other");
    let mut spec = host_gw("t-hg-mixed");
    spec.node_dataplanes = vec![Dataplane::Kernel, Dataplane::Ebpf, Dataplane::Ebpf];
    let lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);
    // Then the stock node's pod and one of weft's alone, 20 pings each way,
    // so the counters below hold only that pair's traffic.
    let stock_pod = lab.node(NodeId::new(1)).pods[0].clone();
    let fast_pod = lab.node(NodeId::new(2)).pods[0].clone();
    let stock = inspect::forwarded_datagrams(&lab.node(NodeId::new(1)).ns).unwrap();
    let fast = lab.counters(NodeId::new(2)).unwrap();
    for (from, to) in [(&stock_pod, &fast_pod), (&fast_pod, &stock_pod)] {
        let out = lab.ping(from, to.ip(), 20).unwrap();
        assert!(
            out.contains("20 received"),
            "{} -> {}: {out}",
            from.ip(),
            to.ip()
        );
    }
    // The stock node routed all 80 echo packets (in and out of its pod).
    let routed = inspect::forwarded_datagrams(&lab.node(NodeId::new(1)).ns).unwrap() - stock;
    assert!(
        routed >= 80,
        "the stock node routed {routed} of the pair's 80 packets"
    );
    let fast_after = lab.counters(NodeId::new(2)).unwrap();
    let sent = counter_delta(&fast, &fast_after, TcPodEgress.counter(Reason::HostGw)).0;
    let delivered = counters_delta(&fast, &fast_after, &HOST_GW_DELIVERY_COUNTERS).0;
    assert!(
        sent >= 40 - 2 * FLOW_SETUP_PACKETS && delivered >= 40 - 2 * FLOW_SETUP_PACKETS,
        "weft's node carried {sent} of 40 packets to the stock node and {delivered} of 40 from it"
    );
}

#[test]
fn direct_routing_uses_host_gw_on_the_segment_and_vxlan_across_the_router() {
    let _guard =
        privileged!("direct_routing_uses_host_gw_on_the_segment_and_vxlan_across_the_router");
    // Nodes 1 and 2 share 192.168.77.0/24; node 3 sits on 192.168.78.0/24,
    // behind the underlay namespace acting as a router.
    let mut spec = LabSpec::new("t-hg-direct", 3, 1);
    spec.network_config = Some(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#.to_owned(),
    );
    spec.second_segment_from = Some(NodeId::new(3));
    let lab = Lab::up(&spec).unwrap();
    assert_eq!(lab.node(NodeId::new(3)).ip, "192.168.78.3");
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);

    // The kernel path decided per peer as flanneld does...
    let (n1, n2, n3) = (
        lab.node(NodeId::new(1)),
        lab.node(NodeId::new(2)),
        lab.node(NodeId::new(3)),
    );
    let to_n2 = inspect::routes_to(&n1.ns, &n2.subnet).unwrap();
    assert!(
        to_n2.len() == 1 && to_n2[0]["gateway"] == n2.ip.as_str() && to_n2[0]["dev"] == "eth0",
        "{to_n2:?}"
    );
    let to_n3 = inspect::routes_to(&n1.ns, &n3.subnet).unwrap();
    assert!(
        to_n3.len() == 1 && to_n3[0]["dev"] == "flannel.1",
        "{to_n3:?}"
    );
    // ...and so did the fast path, with the router's MAC as next hop for node 3.
    let weft = lab.state.weft_bin.display().to_string();
    let peers: serde_json::Value = serde_json::from_str(
        &netns::run_host(&[
            &weft,
            "maps",
            "peers",
            "--json",
            "--bpf-pin-dir",
            &n1.pin_dir.display().to_string(),
        ])
        .unwrap(),
    )
    .unwrap();
    let row = |subnet: &str| {
        peers
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["subnet"] == subnet)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&n2.subnet)["mode"], "host-gw");
    assert_eq!(row(&n3.subnet)["mode"], "vxlan");
    let router_mac = inspect::link(&lab.state.underlay_ns, "ul0")
        .unwrap()
        .unwrap()["address"]
        .clone();
    assert_eq!(
        row(&n3.subnet)["nexthop_mac"],
        router_mac,
        "node 3 is reached through the router"
    );

    let (p1, p2, p3) = (n1.pods[0].clone(), n2.pods[0].clone(), n3.pods[0].clone());
    let before = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
        lab.counters(NodeId::new(3)).unwrap(),
    ];
    assert!(lab.ping(&p1, p2.ip(), 50).unwrap().contains("50 received"));
    assert!(lab.ping(&p1, p3.ip(), 50).unwrap().contains("50 received"));
    let after = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
        lab.counters(NodeId::new(3)).unwrap(),
    ];
    assert!(
        counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::HostGw)).0
            >= 50 - FLOW_SETUP_PACKETS,
        "node 1 -> 2 did not go host-gw"
    );
    assert!(
        counters_delta(&before[1], &after[1], &HOST_GW_DELIVERY_COUNTERS).0
            >= 50 - FLOW_SETUP_PACKETS
    );
    assert!(
        counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::Encap)).0
            >= 50 - FLOW_SETUP_PACKETS,
        "node 1 -> 3 did not go VXLAN"
    );
    let decapsulated = counters_delta(&before[2], &after[2], &DECAP_COUNTERS).0;
    assert!(
        decapsulated >= 50 - FLOW_SETUP_PACKETS,
        "node 3 decapsulated {decapsulated} of 50; its counters rose: {:?}",
        after[2]
            .iter()
            .filter(|(name, value)| before[2].get(*name) != Some(value))
            .map(|(name, value)| (name, value.0 - before[2][name].0))
            .collect::<Vec<_>>()
    );
}

#[test]
fn direct_routing_follows_an_address_added_to_and_removed_from_the_uplink() {
    let _guard =
        privileged!("direct_routing_follows_an_address_added_to_and_removed_from_the_uplink");
    // Node 3 sits on 192.168.78.0/24, behind the router: VXLAN. An address
    // in that prefix on a node's uplink puts node 3 on-link (its connected
    // route has no gateway), so DirectRouting goes direct; removing it goes
    // back. The kernel route and the PEERS entry follow together, without
    // an agent restart; node 2 checks the same with `--dataplane kernel`.
    let mut spec = LabSpec::new("t-hg-follow", 3, 0);
    spec.network_config = Some(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#.to_owned(),
    );
    spec.node_dataplanes = vec![Dataplane::Ebpf, Dataplane::Kernel];
    spec.second_segment_from = Some(NodeId::new(3));
    let lab = Lab::up(&spec).unwrap();
    let (n1, n2, n3) = (
        lab.node(NodeId::new(1)).clone(),
        lab.node(NodeId::new(2)).clone(),
        lab.node(NodeId::new(3)).clone(),
    );
    let router_mac = inspect::link(&lab.state.underlay_ns, "ul0")
        .unwrap()
        .unwrap()["address"]
        .clone();
    // Node 1's and node 2's routes to node 3's pods, and node 1's PEERS
    // entry for them.
    let state = || -> anyhow::Result<[serde_json::Value; 3]> {
        let peers = lab.maps_json(NodeId::new(1), "peers")?;
        let row = peers
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row["subnet"] == n3.subnet.as_str())
            .cloned()
            .unwrap_or_default();
        Ok([
            inspect::routes_to(&n1.ns, &n3.subnet)?.into(),
            inspect::routes_to(&n2.ns, &n3.subnet)?.into(),
            row,
        ])
    };
    let via = |routes: &serde_json::Value, dev: &str| {
        routes.as_array().is_some_and(|routes| {
            routes.len() == 1
                && routes[0]["dev"] == dev
                && (dev != "eth0" || routes[0]["gateway"] == n3.ip.as_str())
        })
    };
    let over_vxlan = |[n1, n2, peer]: &[serde_json::Value; 3]| {
        via(n1, "flannel.1")
            && via(n2, "flannel.1")
            && peer["mode"] == "vxlan"
            && peer["nexthop_mac"] == router_mac
    };
    let direct = |[n1, n2, peer]: &[serde_json::Value; 3]| {
        via(n1, "eth0") && via(n2, "eth0") && peer["mode"] == "host-gw"
    };
    let settle = |what: &str, wanted: &dyn Fn(&[serde_json::Value; 3]) -> bool| {
        let timeout = std::time::Duration::from_secs(10);
        if let Err(error) = weft_tests::lab::wait_for(what, timeout, || Ok(wanted(&state()?))) {
            panic!("{error:#}; now: {:?}", state().unwrap());
        }
    };
    settle("node 3 over VXLAN through the router", &over_vxlan);

    for (node, address) in [(&n1, "192.168.78.201/24"), (&n2, "192.168.78.202/24")] {
        netns::run(&node.ns, &["ip", "address", "add", address, "dev", "eth0"]).unwrap();
    }
    settle("node 3 direct once on-link", &direct);

    for (node, address) in [(&n1, "192.168.78.201/24"), (&n2, "192.168.78.202/24")] {
        netns::run(&node.ns, &["ip", "address", "del", address, "dev", "eth0"]).unwrap();
    }
    settle("node 3 over VXLAN again", &over_vxlan);
}

/// tc stays an authority (issue 20): the CNI `bandwidth` plugin's limits
/// hold with host-gw as with VXLAN (see fast_path.rs), here with XDP on
/// the uplinks.
#[test]
fn the_cni_bandwidth_plugins_limits_hold_with_host_gw() {
    let _guard = privileged!("the_cni_bandwidth_plugins_limits_hold_with_host_gw");
    // With XDP on the uplinks: it refuses deliveries into a limited pod.
    let mut spec = host_gw("t-tc-hostgw");
    spec.agent_args.push(XDP_NATIVE.to_owned());
    spec.node_dataplanes = vec![Dataplane::Ebpf, Dataplane::Ebpf, Dataplane::Kernel];
    let lab = Lab::up(&spec).unwrap();
    bandwidth::limits_hold_on_every_path(&lab, true);
}
