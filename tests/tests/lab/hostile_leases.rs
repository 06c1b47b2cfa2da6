//! Trust only what was verified (issue 13): leases anyone can write into
//! etcd, checked against the network config before they reach the kernel
//! or a map. On the lab, with the real etcd: every invalid lease class is
//! logged by key and rule and changes nothing on any node. The listing of
//! 20,000 leases: hostile_leases_scale.rs.

use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use weft_tests::{
    Lab, LabSpec, flannel, inspect,
    lab::{NodeState, wait_for},
    leases::{assert_underlay_route_intact, key, log_of},
    netns, privileged,
};

fn vxlan_value(public_ip: &str, vni: u32, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
    )
}

/// Everything on a node a lease can change: the main routing table,
/// flannel.1's neighbours and fdb, PEERS and VTEPS.
#[derive(Debug, PartialEq)]
struct NodeSnapshot {
    routes: Vec<Value>,
    neighbours: Vec<Value>,
    fdb: Vec<Value>,
    peers: Value,
    vteps: Value,
}

fn snapshot(lab: &Lab, node: &NodeState) -> NodeSnapshot {
    let weft = lab.state.weft_bin.display().to_string();
    let pin_dir = node.pin_dir.display().to_string();
    let map = |name: &str| -> Value {
        let out =
            netns::run_host(&[&weft, "maps", name, "--json", "--bpf-pin-dir", &pin_dir]).unwrap();
        serde_json::from_str(&out).unwrap()
    };
    NodeSnapshot {
        routes: inspect::routes(&node.ns).unwrap(),
        neighbours: inspect::neighbours(&node.ns, "flannel.1").unwrap(),
        fdb: inspect::fdb(&node.ns, "flannel.1").unwrap(),
        peers: map("peers"),
        vteps: map("vteps"),
    }
}

/// The agent's rejection lines for `key`.
fn rejections(log: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}: rejected: ");
    log.lines()
        .filter(|line| line.contains(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn hostile_leases_are_rejected_by_rule_and_change_nothing() {
    let _guard = privileged!("hostile_leases_are_rejected_by_rule_and_change_nothing");
    let lab = Lab::up(&LabSpec::new("t-hl-rules", 2, 2)).unwrap();
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(1);
    let etcd = lab.etcd();
    let nodes: Vec<NodeState> = lab.state.nodes.clone();
    let subnet = |node: &NodeState| -> Ipv4Net { node.subnet.parse().unwrap() };
    let before: Vec<NodeSnapshot> = nodes.iter().map(|node| snapshot(&lab, node)).collect();

    // A lease that names node 1's own PublicIP is wrong only for node 1:
    // node 2 takes it (so the rule is really node 1's judgment), and it goes
    // again before the comparison.
    let ours = key("10.244.230.0-24");
    etcd.put(&ours, &vxlan_value("192.168.77.1", 1, "0e:01:c0:a8:4d:e6"))
        .unwrap();
    wait_for(
        "node 1 to reject its own PublicIP",
        Duration::from_secs(10),
        || {
            Ok(rejections(&log_of(&nodes[0]), &ours)
                .iter()
                .any(|line| line.contains("public_ip_ours")))
        },
    )
    .unwrap();
    wait_for("node 2 to use it", Duration::from_secs(10), || {
        Ok(inspect::routes_to(&nodes[1].ns, "10.244.230.0/24")?.len() == 1)
    })
    .unwrap();
    assert!(
        inspect::routes_to(&nodes[0].ns, "10.244.230.0/24")
            .unwrap()
            .is_empty()
    );
    etcd.delete(&ours).unwrap();

    // A lease accepted first and rewritten with a bad value: removed, and
    // the log says so.
    let turned = key("10.244.231.0-24");
    etcd.put(
        &turned,
        &vxlan_value("192.168.77.61", 1, "0e:01:c0:a8:4d:3d"),
    )
    .unwrap();
    for node in &nodes {
        wait_for("the good lease", Duration::from_secs(10), || {
            Ok(inspect::routes_to(&node.ns, "10.244.231.0/24")?.len() == 1)
        })
        .unwrap();
    }
    etcd.put(&turned, &vxlan_value("0.0.0.0", 1, "0e:01:c0:a8:4d:3d"))
        .unwrap();
    for node in &nodes {
        wait_for("the rewritten lease to go", Duration::from_secs(10), || {
            Ok(inspect::routes_to(&node.ns, "10.244.231.0/24")?.is_empty())
        })
        .unwrap();
        let lines = rejections(&log_of(node), &turned);
        assert!(
            lines.len() == 1
                && lines[0].contains("public_ip_not_unicast")
                && lines[0].contains("it was in use and is removed from the datapath"),
            "{}: {lines:?}",
            node.ns
        );
    }
    etcd.delete(&turned).unwrap();

    // Every other class, with the rule each node must name.
    let (own_1, own_2) = (subnet(&nodes[0]), subnet(&nodes[1]));
    let inside_node_1 = Ipv4Net::new(own_1.network(), 25).unwrap();
    let around_node_2 = Ipv4Net::new(own_2.network(), 23).unwrap().trunc();
    let overlap_rule = |of: Ipv4Net, node: &NodeState| {
        if subnet(node).contains(&of.network()) || of.contains(&subnet(node).network()) {
            "subnet_overlaps_own"
        } else {
            "subnet_wrong_prefix"
        }
    };
    let good = |ip: &str| vxlan_value(ip, 1, "0e:01:c0:a8:4d:40");
    let node_2_mac = flannel::vtep_mac(&nodes[1]).unwrap();
    let huge = format!(
        r#"{{"PublicIP":"192.168.77.70","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:c0:a8:4d:46"}},"Padding":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let classes: Vec<(String, String, [&str; 2])> = vec![
        (
            "10.245.1.0-24".into(),
            good("192.168.77.62"),
            ["subnet_outside_network"; 2],
        ),
        (
            "10.244.250.0-25".into(),
            good("192.168.77.63"),
            ["subnet_wrong_prefix"; 2],
        ),
        (
            "10.244.0.0-24".into(),
            good("192.168.77.64"),
            ["subnet_outside_range"; 2],
        ),
        (
            weft_agent::lease::key_name(&inside_node_1),
            good("192.168.77.65"),
            [
                overlap_rule(inside_node_1, &nodes[0]),
                overlap_rule(inside_node_1, &nodes[1]),
            ],
        ),
        (
            weft_agent::lease::key_name(&around_node_2),
            good("192.168.77.66"),
            [
                overlap_rule(around_node_2, &nodes[0]),
                overlap_rule(around_node_2, &nodes[1]),
            ],
        ),
        (
            "192.168.77.0-24".into(),
            good("192.168.77.9"),
            ["subnet_outside_network"; 2],
        ),
        (
            "10.96.0.0-12".into(),
            good("192.168.77.67"),
            ["subnet_outside_network"; 2],
        ),
        (
            "10.244.201.0-24".into(),
            good("0.0.0.0"),
            ["public_ip_not_unicast"; 2],
        ),
        (
            "10.244.202.0-24".into(),
            good("10.244.3.3"),
            ["public_ip_inside_network"; 2],
        ),
        (
            "10.244.203.0-24".into(),
            good("239.1.1.1"),
            ["public_ip_not_unicast"; 2],
        ),
        (
            "10.244.204.0-24".into(),
            vxlan_value("192.168.77.68", 2, "0e:01:c0:a8:4d:44"),
            ["vni_mismatch"; 2],
        ),
        (
            "10.244.205.0-24".into(),
            vxlan_value("192.168.77.69", 1, "01:00:5e:00:00:01"),
            ["vtep_mac_not_unicast"; 2],
        ),
        ("10.244.206.0-24".into(), huge, ["value_too_large"; 2]),
        // Node 2's VTEP MAC towards another address: the fdb would send
        // node 2's traffic there.
        (
            "10.244.207.0-24".into(),
            vxlan_value("192.168.77.71", 1, &node_2_mac),
            ["vtep_mac_in_use"; 2],
        ),
    ];
    for (name, value, _) in &classes {
        etcd.put(&key(name), value).unwrap();
    }
    for (index, node) in nodes.iter().enumerate() {
        wait_for(
            &format!("{} to reject every hostile lease", node.ns),
            Duration::from_secs(10),
            || {
                let log = log_of(node);
                Ok(classes
                    .iter()
                    .all(|(name, _, _)| !rejections(&log, &key(name)).is_empty()))
            },
        )
        .unwrap_or_else(|error| panic!("{error:#}\n{}", log_of(node)));
        let log = log_of(node);
        for (name, _, rules) in &classes {
            let lines = rejections(&log, &key(name));
            assert!(
                lines.len() == 1 && lines[0].contains(rules[index]),
                "{}: {} should be rejected once by {}: {lines:?}",
                node.ns,
                key(name),
                rules[index]
            );
        }
    }
    for (node, before) in nodes.iter().zip(&before) {
        wait_for(
            &format!("{} to be as before", node.ns),
            Duration::from_secs(5),
            || Ok(snapshot(&lab, node) == *before),
        )
        .unwrap_or_else(|error| {
            panic!(
                "{error:#}\nbefore: {before:#?}\nafter: {:#?}",
                snapshot(&lab, node)
            )
        });
        assert_underlay_route_intact(node);
    }
    lab.assert_all_pairs_ping(2);

    // A resync (etcd restarts: every agent lists again) logs nothing new.
    lab.stop_etcd().unwrap();
    lab.start_etcd().unwrap();
    for node in &nodes {
        wait_for(
            &format!("{} to resync", node.ns),
            Duration::from_secs(30),
            || Ok(log_of(node).contains("etcd is back; leases resynced")),
        )
        .unwrap();
    }
    for (node, before) in nodes.iter().zip(&before) {
        let log = log_of(node);
        for (name, _, _) in &classes {
            assert_eq!(
                rejections(&log, &key(name)).len(),
                1,
                "{}: {} logged again after a resync",
                node.ns,
                key(name)
            );
        }
        assert_eq!(snapshot(&lab, node), *before, "{}", node.ns);
        assert_underlay_route_intact(node);
    }
    lab.assert_all_pairs_ping(1);
}
