//! IPv6-only clusters (`EnableIPv4: false`), as flannel runs them: with the
//! kube subnet manager, every Node holding one IPv6 podCIDR. weft publishes
//! what flanneld v0.20.2 publishes on such a Node, writes subnet.env's IPv6
//! pair alone, creates `flannel-v6.<VNI>` and no `flannel.<VNI>`, and its
//! fast path carries the pods' IPv6 traffic; stock flanneld and weft share
//! such a cluster, bytes both ways.

use std::{collections::BTreeMap, time::Duration};

use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, SubnetManager,
    flannel_dual_stack::{self, VXLAN_V6_DEV},
    inspect,
    lab::{carried_nearly_all, counter_delta, counters_delta},
    privileged,
    privileged::{reference_flanneld, reference_kubernetes},
};

use crate::dual_stack::{
    DECAP_V6, ENCAP_V6, FAST_PATH_TRANSFER, HOST_GW_DELIVERY_V6, HOST_GW_SEND_V6, TRANSFER,
    assert_local_ipv6_redirected, assert_transfer, dual_stack_lab, pod, split,
};

fn ipv6_only_lab(name: &str, backend: Backend, kubernetes: std::path::PathBuf) -> LabSpec {
    let mut spec = dual_stack_lab(name, backend, Dataplane::Ebpf, 2);
    spec.subnet_manager = SubnetManager::Kube;
    spec.kubernetes_bin = Some(kubernetes);
    spec.ipv6_only = true;
    spec
}

/// What flanneld v0.20.2 writes on an IPv6-only Node (subnet/kube/kube.go,
/// `AcquireLease`): vxlan has no IPv4 backend data (`null`), so neither
/// `backend-data` nor `public-ip` is written; host-gw writes both, `null`
/// and its zero IPv4 address `0.0.0.0`. `flannel-v6.1`'s MAC for vxlan,
/// `null` for host-gw, and the node's IPv6 address in either.
fn expected_annotations(lab: &Lab, node: NodeId, backend: Backend) -> BTreeMap<String, String> {
    let state = lab.node(node);
    let mut expected = BTreeMap::from([
        ("backend-type", backend.flag().to_owned()),
        ("kube-subnet-manager", "true".to_owned()),
        ("public-ipv6", state.ip6.clone().expect("an IPv6 underlay")),
    ]);
    match backend {
        Backend::Vxlan => {
            let mac = flannel_dual_stack::vtep_v6_mac(state).unwrap();
            expected.insert(
                "backend-v6-data",
                format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            );
        }
        Backend::HostGw => {
            expected.insert("backend-v6-data", "null".to_owned());
            expected.insert("backend-data", "null".to_owned());
            expected.insert("public-ip", "0.0.0.0".to_owned());
        }
    }
    expected
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// `node`'s flannel annotations as the API server holds them.
fn annotations(lab: &Lab, node: NodeId) -> BTreeMap<String, String> {
    let object = lab
        .kube()
        .unwrap()
        .node(lab.node(node).node_name())
        .unwrap();
    weft_tests::kube::flannel_annotations(&object).unwrap()
}

/// Every node publishes flanneld's annotations, writes flanneld's
/// IPv6-only subnet.env, has `flannel-v6.1` (vxlan) and never `flannel.1`,
/// and its pods have an IPv6 address alone. The VXLAN MTU is where weft
/// and flanneld differ: flanneld takes 50 bytes off the uplink's 1500 for
/// either family, weft the 70 an IPv6 outer header needs (docs/datapath.md).
fn assert_ipv6_only_nodes(lab: &Lab, backend: Backend) {
    for node in lab.node_ids() {
        let state = lab.node(node);
        let mtu = match (backend, state.dataplane) {
            (Backend::HostGw, _) => 1500,
            (Backend::Vxlan, Dataplane::Flanneld) => 1450,
            (Backend::Vxlan, _) => 1430,
        };
        assert_eq!(
            annotations(lab, node),
            expected_annotations(lab, node, backend),
            "{}",
            state.ns
        );
        let subnet_env = std::fs::read_to_string(&state.subnet_file).unwrap();
        assert_eq!(
            subnet_env,
            format!(
                "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:{:x}::1/64\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n",
                node.number()
            ),
            "{}",
            state.ns
        );
        assert_eq!(
            state.subnet6.as_deref(),
            Some(Lab::pod_cidr_v6(node).as_str()),
            "{}: the IPv6 subnet is not the Node's podCIDR",
            state.ns
        );
        assert!(
            inspect::link(&state.ns, "flannel.1").unwrap().is_none(),
            "{}: flannel.1 in an IPv6-only network",
            state.ns
        );
        let flannel_v6 = inspect::link(&state.ns, VXLAN_V6_DEV).unwrap();
        assert_eq!(
            flannel_v6.is_some(),
            backend == Backend::Vxlan,
            "{}: {VXLAN_V6_DEV} {flannel_v6:?}",
            state.ns
        );
        if state.dataplane == Dataplane::Ebpf {
            // `weft status` names the IPv6 lease alone.
            let status = lab.weft_status(node, Some(&state.ns), false).unwrap();
            let lease = format!(
                "lease ipv6  fd00:10:244:{:x}::1/64 in fd00:10:244::/56",
                node.number()
            );
            assert!(
                status.contains(&lease) && !status.contains("lease       "),
                "{status}"
            );
        }
        for pod in &state.pods {
            assert!(
                pod.network.address.contains(':')
                    && pod.network.address6.as_ref() == Some(&pod.network.address),
                "{}: not an IPv6-only pod: {:?}",
                pod.ns,
                pod.network
            );
        }
    }
}

/// Every pair of pods pings; IPv6 bytes between pods on two nodes and on
/// one node travel on the fast path, counted by the programs.
fn assert_fast_path_carries_ipv6(lab: &Lab, backend: Backend) {
    lab.wait_all_pairs_reach(Duration::from_secs(20)).unwrap();
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);
    let (sender, receiver) = (NodeId::new(1), NodeId::new(2));
    let (client, server) = (pod(lab, sender, 0), pod(lab, receiver, 0));
    let counters = match backend {
        Backend::Vxlan => (ENCAP_V6, &DECAP_V6[..]),
        Backend::HostGw => (HOST_GW_SEND_V6, &HOST_GW_DELIVERY_V6[..]),
    };
    let across = split(lab, (sender, receiver), counters, || {
        assert_transfer(&client, &server, server.ip6(), 5001, FAST_PATH_TRANSFER)
    });
    assert!(
        carried_nearly_all(across.sent, FAST_PATH_TRANSFER)
            && carried_nearly_all(across.delivered, FAST_PATH_TRANSFER),
        "IPv6-only {backend:?}: the fast path sent {} and delivered {} bytes of {FAST_PATH_TRANSFER}",
        across.sent,
        across.delivered
    );
    assert_local_ipv6_redirected(lab, sender, 5002);
}

fn weft_ipv6_only(test: &str, name: &str, backend: Backend) {
    let Some(kubernetes) = reference_kubernetes(test) else {
        return;
    };
    let lab = Lab::up(&ipv6_only_lab(name, backend, kubernetes)).unwrap();
    assert_ipv6_only_nodes(&lab, backend);
    assert_fast_path_carries_ipv6(&lab, backend);
}

#[test]
fn weft_kube_ipv6_only_vxlan_publishes_flanneld_annotations_and_carries_ipv6() {
    const TEST: &str = "weft_kube_ipv6_only_vxlan_publishes_flanneld_annotations_and_carries_ipv6";
    let _guard = privileged!(TEST);
    weft_ipv6_only(TEST, "q6o-vx", Backend::Vxlan);
}

#[test]
fn weft_kube_ipv6_only_host_gw_publishes_flanneld_annotations_and_carries_ipv6() {
    const TEST: &str =
        "weft_kube_ipv6_only_host_gw_publishes_flanneld_annotations_and_carries_ipv6";
    let _guard = privileged!(TEST);
    weft_ipv6_only(TEST, "q6o-hg", Backend::HostGw);
}

/// `--dataplane kernel`: flanneld's datapath, programmed by weft: the
/// pods' IPv6 goes through `flannel-v6.1` on both nodes.
#[test]
fn weft_kube_ipv6_only_vxlan_on_the_kernel_dataplane_carries_ipv6_through_flannel_v6() {
    const TEST: &str =
        "weft_kube_ipv6_only_vxlan_on_the_kernel_dataplane_carries_ipv6_through_flannel_v6";
    let _guard = privileged!(TEST);
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let mut spec = ipv6_only_lab("q6o-kvx", Backend::Vxlan, kubernetes);
    spec.dataplane = Dataplane::Kernel;
    spec.pods_per_node = 1;
    let lab = Lab::up(&spec).unwrap();
    assert_ipv6_only_nodes(&lab, Backend::Vxlan);
    lab.wait_all_pairs_reach(Duration::from_secs(20)).unwrap();
    lab.assert_all_pairs_ping(5);
    let (sender, receiver) = (NodeId::new(1), NodeId::new(2));
    let (client, server) = (pod(&lab, sender, 0), pod(&lab, receiver, 0));
    let sent_before = inspect::sent_bytes(&lab.node(sender).ns, VXLAN_V6_DEV).unwrap();
    let received_before = inspect::received_bytes(&lab.node(receiver).ns, VXLAN_V6_DEV).unwrap();
    assert_transfer(&client, &server, server.ip6(), 5001, TRANSFER);
    let sent = inspect::sent_bytes(&lab.node(sender).ns, VXLAN_V6_DEV).unwrap() - sent_before;
    let received =
        inspect::received_bytes(&lab.node(receiver).ns, VXLAN_V6_DEV).unwrap() - received_before;
    assert!(
        sent >= TRANSFER && received >= TRANSFER,
        "{VXLAN_V6_DEV} sent {sent} and received {received} bytes of {TRANSFER}"
    );
}

#[test]
fn weft_and_stock_flanneld_share_a_kube_ipv6_only_cluster_both_ways() {
    const TEST: &str = "weft_and_stock_flanneld_share_a_kube_ipv6_only_cluster_both_ways";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let (stock, weft) = (NodeId::new(1), NodeId::new(2));
    let mut spec = ipv6_only_lab("q6o-mix", Backend::Vxlan, kubernetes);
    spec.pods_per_node = 1;
    spec.node_dataplanes = vec![Dataplane::Flanneld, Dataplane::Ebpf];
    spec.flanneld_bin = Some(flanneld);
    let lab = Lab::up(&spec).unwrap();
    // flanneld's Node is what the expectation says flanneld writes, and
    // weft's the same but for its own MAC and address.
    assert_ipv6_only_nodes(&lab, Backend::Vxlan);
    lab.wait_all_pairs_reach(Duration::from_secs(20)).unwrap();
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);
    let (stock_pod, weft_pod) = (pod(&lab, stock, 0), pod(&lab, weft, 0));
    // Into weft's pod: decapsulated by weft's programs; out of it: handed
    // to weft's flannel-v6.1 by them (flanneld's node has no counters).
    let counted = |transfer: &dyn Fn()| {
        let before = lab.counters(weft).unwrap();
        transfer();
        let after = lab.counters(weft).unwrap();
        (
            counter_delta(&before, &after, ENCAP_V6).1,
            counters_delta(&before, &after, &DECAP_V6).1,
        )
    };
    let (_, delivered) =
        counted(&|| assert_transfer(&stock_pod, &weft_pod, weft_pod.ip6(), 5001, TRANSFER));
    assert!(
        carried_nearly_all(delivered, TRANSFER),
        "weft's fast path delivered {delivered} bytes of {TRANSFER} from flanneld's pod"
    );
    let (sent, _) =
        counted(&|| assert_transfer(&weft_pod, &stock_pod, stock_pod.ip6(), 5002, TRANSFER));
    assert!(
        carried_nearly_all(sent, TRANSFER),
        "weft's fast path sent {sent} bytes of {TRANSFER} to flanneld's pod"
    );
}
