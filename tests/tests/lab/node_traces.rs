//! What weft leaves on a node, and what it follows while it runs: a pod's
//! pinned neighbour entry follows a MAC changed inside the pod, goes when
//! the agent stops cleanly (its IPv6 one too, in a dual-stack network), and `weft cleanup` removes every trace a killed
//! agent left (table `inet weft`, the pinned maps, the pinned entries) and
//! nothing else (someone else's nftables table stays), so the node's pods
//! stay reachable in each case, as under flanneld.

use std::time::Duration;

use nix::sys::signal::Signal;
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId,
    lab::{NodeState, PodState, wait_for},
    netns, privileged,
};

use crate::dual_stack::dual_stack_lab;

/// cni0's permanent neighbour entries on `ns`: (address, MAC).
fn pinned(ns: &str) -> Vec<(String, String)> {
    let out = netns::run(
        ns,
        &[
            "ip",
            "-j",
            "neigh",
            "show",
            "dev",
            "cni0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let entries: serde_json::Value =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["dst"].as_str().unwrap_or_default().to_owned(),
                entry["lladdr"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn set_mac(pod: &PodState, mac: &str) {
    netns::run(&pod.ns, &["ip", "link", "set", "eth0", "address", mac]).unwrap();
}

/// `weft cleanup` for `node`, run in its network namespace (and the host's
/// mount namespace, where bpffs is): its output.
fn cleanup(lab: &Lab, node: &NodeState) -> anyhow::Result<String> {
    netns::run(
        &node.ns,
        &[
            &lab.state.weft_bin.display().to_string(),
            "cleanup",
            "--bpf-pin-dir",
            &node.pin_dir.display().to_string(),
            "--subnet-file",
            &node.subnet_file.display().to_string(),
        ],
    )
}

fn table_exists(ns: &str) -> bool {
    netns::run(ns, &["nft", "list", "tables"])
        .unwrap()
        .contains("inet weft")
}

/// Whether weft's verdict chain (the accept mark's only setter) is in
/// table `inet weft`.
fn verdict_chain_exists(ns: &str) -> bool {
    netns::run(ns, &["nft", "list", "chain", "inet", "weft", "verdict"]).is_ok()
}

#[test]
fn pinned_neighbours_follow_the_pod_and_leave_with_the_agent_and_cleanup() {
    let _guard =
        privileged!("pinned_neighbours_follow_the_pod_and_leave_with_the_agent_and_cleanup");
    let mut lab = Lab::up(&LabSpec::new("t-nt-neigh", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let n1 = NodeId::new(1);
    let node1 = lab.node(n1).clone();
    let pod = node1.pods[0].clone();
    let remote = lab.node(NodeId::new(2)).pods[0].clone();
    let reaches = |lab: &Lab| {
        let out = lab.ping(&remote, pod.ip(), 3).unwrap();
        assert!(out.contains("3 received"), "{out}");
    };
    assert_eq!(
        pinned(&node1.ns),
        [(pod.ip().to_owned(), pod.network.mac.clone())]
    );
    // Someone else's nftables table next to weft's: neither a stop nor
    // `weft cleanup` touches it.
    netns::run_with_input(
        &node1.ns,
        &["nft", "-f", "-"],
        "table inet uc_mine { chain forward { type filter hook forward priority filter; counter; }; }",
    )
    .unwrap();
    let foreign_table_kept = |when: &str| {
        let chain = netns::run(
            &node1.ns,
            &["nft", "list", "chain", "inet", "uc_mine", "forward"],
        );
        assert!(
            chain.as_ref().is_ok_and(|chain| chain.contains("counter")),
            "{when} removed someone else's table inet uc_mine: {chain:?}"
        );
    };

    // A MAC changed inside the running pod: the pin and ENDPOINTS follow.
    let new_mac = "02:aa:bb:cc:dd:01";
    set_mac(&pod, new_mac);
    wait_for(
        "the pin to follow the pod's MAC",
        Duration::from_secs(15),
        || Ok(pinned(&node1.ns) == [(pod.ip().to_owned(), new_mac.to_owned())]),
    )
    .unwrap();
    let endpoints = lab.maps_json(n1, "endpoints").unwrap();
    assert!(
        endpoints.to_string().contains(new_mac),
        "ENDPOINTS kept the old MAC: {endpoints}"
    );
    reaches(&lab);

    // A clean stop removes the pins: a MAC changed while no agent runs is
    // learned again from ARP, as under flanneld.
    lab.stop_agent(n1, Signal::SIGTERM).unwrap();
    assert_eq!(pinned(&node1.ns), []);
    assert!(table_exists(&node1.ns), "SIGTERM removed the overlay guard");
    assert!(
        !verdict_chain_exists(&node1.ns),
        "SIGTERM left the verdict chain"
    );
    foreign_table_kept("SIGTERM");
    set_mac(&pod, "02:aa:bb:cc:dd:02");
    reaches(&lab);

    // kill -9 leaves everything; weft cleanup removes it.
    lab.start_agent(n1).unwrap();
    lab.wait_pods_attached(n1).unwrap();
    wait_for("the pin after a restart", Duration::from_secs(10), || {
        Ok(!pinned(&node1.ns).is_empty())
    })
    .unwrap();
    lab.stop_agent(n1, Signal::SIGKILL).unwrap();
    assert!(!pinned(&node1.ns).is_empty(), "kill -9 removed the pins");
    assert!(
        verdict_chain_exists(&node1.ns),
        "kill -9 removed the verdict chain"
    );
    assert!(node1.pin_dir.exists());
    let out = cleanup(&lab, &node1).unwrap();
    assert!(out.contains("removed table inet weft"), "{out}");
    assert_eq!(pinned(&node1.ns), [], "weft cleanup left pins");
    assert!(
        !table_exists(&node1.ns),
        "weft cleanup left table inet weft"
    );
    assert!(!node1.pin_dir.exists(), "weft cleanup left the pin dir");
    foreign_table_kept("weft cleanup");
    set_mac(&pod, "02:aa:bb:cc:dd:03");
    reaches(&lab);

    // A node cleaned up takes an agent again.
    lab.start_agent(n1).unwrap();
    lab.wait_pods_attached(n1).unwrap();
    reaches(&lab);
}

#[test]
fn dual_stack_pins_both_addresses_and_both_leave_with_the_agent_and_cleanup() {
    let _guard =
        privileged!("dual_stack_pins_both_addresses_and_both_leave_with_the_agent_and_cleanup");
    let mut lab = Lab::up(&dual_stack_lab(
        "t-nt-neigh6",
        Backend::Vxlan,
        Dataplane::Ebpf,
        1,
    ))
    .unwrap();
    lab.warm_up().unwrap();
    let n1 = NodeId::new(1);
    let node1 = lab.node(n1).clone();
    let pod = node1.pods[0].clone();
    let remote = lab.node(NodeId::new(2)).pods[0].clone();
    let both = {
        let mut both = vec![
            (pod.ip().to_owned(), pod.network.mac.clone()),
            (pod.ip6().to_owned(), pod.network.mac.clone()),
        ];
        both.sort();
        both
    };
    let pinned_sorted = || {
        let mut pinned = pinned(&node1.ns);
        pinned.sort();
        pinned
    };
    // The remote pod reaches both of the pod's addresses: the permanent
    // IPv6 entry leaves the kernel's routing to the pod as it was.
    let reaches = |lab: &Lab| {
        for address in [pod.ip(), pod.ip6()] {
            let out = lab.ping(&remote, address, 3).unwrap();
            assert!(out.contains("3 received"), "{address}: {out}");
        }
    };
    assert_eq!(pinned_sorted(), both);
    reaches(&lab);

    lab.stop_agent(n1, Signal::SIGTERM).unwrap();
    assert_eq!(pinned(&node1.ns), [], "SIGTERM left pins");
    reaches(&lab);

    lab.start_agent(n1).unwrap();
    lab.wait_pods_attached(n1).unwrap();
    wait_for("both pins after a restart", Duration::from_secs(10), || {
        Ok(pinned_sorted() == both)
    })
    .unwrap();
    lab.stop_agent(n1, Signal::SIGKILL).unwrap();
    assert_eq!(pinned_sorted(), both, "kill -9 removed pins");
    let out = cleanup(&lab, &node1).unwrap();
    assert!(
        out.contains("removed 2 pinned pod neighbour entries"),
        "{out}"
    );
    assert_eq!(pinned(&node1.ns), [], "weft cleanup left pins");
    reaches(&lab);
}

#[test]
fn cleanup_refuses_while_an_agent_runs() {
    let _guard = privileged!("cleanup_refuses_while_an_agent_runs");
    let lab = Lab::up(&LabSpec::new("t-nt-busy", 1, 1)).unwrap();
    let node = lab.node(NodeId::new(1)).clone();
    let error = cleanup(&lab, &node).unwrap_err();
    assert!(
        format!("{error:#}").contains("stop the agent first"),
        "{error:#}"
    );
    assert!(
        table_exists(&node.ns),
        "the refused cleanup removed the table"
    );
    assert!(node.pin_dir.exists());
}
