//! The kube subnet manager in a dual-stack cluster, end to end: the lab's
//! kube-apiserver (with `IPv6DualStack=true`) holds every Node with
//! `podCIDRs` [IPv4, IPv6]; weft agents in kube mode publish the six
//! annotations flanneld v0.20.2 writes (`public-ipv6` and `backend-v6-data`
//! among them), write subnet.env's IPv6 pair from the IPv6 podCIDR, program
//! both families' kernel state and carry both families on the fast path
//! (IPv6 handed to `flannel-v6.<VNI>` and decapsulated by the programs);
//! and weft shares such a cluster with stock flanneld in
//! `--kube-subnet-mgr` mode, IPv6 bytes both ways.

use std::collections::BTreeSet;

use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, SubnetManager, flannel_dual_stack, kube, privileged,
    privileged::{reference_flanneld, reference_kubernetes},
};

use crate::dual_stack::{
    FAST_PATH_TRANSFER, TRANSFER, assert_mtus_fit, assert_transfer,
    assert_weft_carries_both_families, dual_stack_lab, pod,
};

/// The flannel annotations (without the prefix) flanneld v0.20.2 writes on
/// a dual-stack VXLAN node in kube mode (subnet/kube/kube.go,
/// `AcquireLease`).
const DUAL_STACK_ANNOTATIONS: [&str; 6] = [
    "backend-data",
    "backend-type",
    "backend-v6-data",
    "kube-subnet-manager",
    "public-ip",
    "public-ipv6",
];

fn kube_dual_stack_lab(name: &str, kubernetes: std::path::PathBuf) -> LabSpec {
    let mut spec = dual_stack_lab(name, Backend::Vxlan, Dataplane::Ebpf, 2);
    spec.subnet_manager = SubnetManager::Kube;
    spec.kubernetes_bin = Some(kubernetes);
    spec
}

/// `node`'s flannel annotations as the API server holds them.
fn annotations(lab: &Lab, node: NodeId) -> std::collections::BTreeMap<String, String> {
    let object = lab
        .kube()
        .unwrap()
        .node(lab.node(node).node_name())
        .unwrap();
    kube::flannel_annotations(&object).unwrap()
}

/// Every node's Node, subnet.env and kernel state are flanneld's, and each
/// node's IPv6 subnet is the IPv6 podCIDR the lab registered.
fn assert_published_as_flanneld(lab: &Lab) {
    for node in lab.node_ids() {
        lab.check_published_as_flanneld(node)
            .unwrap_or_else(|error| panic!("{error:#}"));
        let found: BTreeSet<String> = annotations(lab, node).into_keys().collect();
        assert_eq!(
            found,
            DUAL_STACK_ANNOTATIONS.map(str::to_owned).into(),
            "{}",
            lab.node(node).ns
        );
        assert_eq!(
            lab.node(node).subnet6.as_deref(),
            Some(Lab::pod_cidr_v6(node).as_str()),
            "{}: the IPv6 subnet is not the Node's IPv6 podCIDR",
            lab.node(node).ns
        );
    }
}

#[test]
fn weft_kube_dual_stack_vxlan_publishes_flanneld_annotations_and_carries_both_families() {
    const TEST: &str =
        "weft_kube_dual_stack_vxlan_publishes_flanneld_annotations_and_carries_both_families";
    let _guard = privileged!(TEST);
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let lab = Lab::up(&kube_dual_stack_lab("q6-kvx", kubernetes)).unwrap();
    assert_published_as_flanneld(&lab);
    let observed =
        flannel_dual_stack::check_nodes(&lab).unwrap_or_else(|error| panic!("{error:#}"));
    assert_mtus_fit(&lab, &observed);
    assert_weft_carries_both_families(&lab, Backend::Vxlan);
}

#[test]
fn weft_and_stock_flanneld_share_a_kube_dual_stack_cluster_both_ways() {
    const TEST: &str = "weft_and_stock_flanneld_share_a_kube_dual_stack_cluster_both_ways";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let (stock, weft) = (NodeId::new(1), NodeId::new(2));
    let mut spec = kube_dual_stack_lab("q6-kmix", kubernetes);
    spec.pods_per_node = 1;
    spec.node_dataplanes = vec![Dataplane::Flanneld, Dataplane::Ebpf];
    spec.flanneld_bin = Some(flanneld);
    let lab = Lab::up(&spec).unwrap();
    // Both Nodes hold what flanneld writes (the expectation is built from
    // each node's own MACs and addresses, so the two agree but for those),
    // and both nodes' kernel state is flanneld's.
    assert_published_as_flanneld(&lab);
    let observed =
        flannel_dual_stack::check_nodes(&lab).unwrap_or_else(|error| panic!("{error:#}"));
    println!("flanneld's node, weft's node: {observed:?}");
    let (stock_annotations, weft_annotations) = (annotations(&lab, stock), annotations(&lab, weft));
    for key in ["backend-type", "kube-subnet-manager"] {
        assert_eq!(stock_annotations[key], weft_annotations[key], "{key}");
    }

    lab.wait_all_pairs_reach(std::time::Duration::from_secs(20))
        .unwrap();
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);
    let (stock_pod, weft_pod) = (pod(&lab, stock, 0), pod(&lab, weft, 0));
    // IPv6 both ways, then IPv4 both ways, with the fast path's part.
    assert_transfer(&stock_pod, &weft_pod, weft_pod.ip6(), 5001, TRANSFER);
    assert_transfer(&weft_pod, &stock_pod, stock_pod.ip6(), 5002, TRANSFER);
    lab.assert_bulk_both_ways_with_flanneld(weft, &weft_pod, &stock_pod, FAST_PATH_TRANSFER);
}
