//! weft's kube subnet manager when things go wrong, against the lab's real
//! kube-apiserver (TLS, RBAC, the agents' ServiceAccount with exactly
//! kube-flannel.yml's rights), weft agents with the eBPF dataplane, VXLAN,
//! 2 nodes:
//!
//! - the API server stopped for 30 s changes nothing on any node (routes,
//!   fdb, neighbours, maps), pods keep pinging across nodes, the agents stay
//!   up with `weft_kube_api_connected` 0, then 1 after the restart, and
//!   follow a Node added and deleted afterwards;
//! - agents frozen while the API server restarts, a Node is deleted and
//!   etcd compacts (their watch's revision is gone: 410 Gone) list again
//!   (`weft_node_watch_relists_total`) and drop the Node no event told them of;
//! - hostile Nodes registered by the admin (public-ip not an IP, inside the
//!   pod network, multicast, loopback, the victim's own; backend-type `udp`,
//!   `host-gw` or missing; backend-data not JSON or without VtepMAC; VNI 2;
//!   a multicast VtepMAC or another node's; podCIDR outside Network, on the
//!   underlay, another node's, a /25, not a network address) are each
//!   logged once by rule and counted once in
//!   `weft_leases_rejected_total{rule}`, also after the Nodes are touched
//!   again, and change nothing; a peer in use turned hostile is removed;
//! - with `nodes/status` patch revoked from the agents' ClusterRole the
//!   agent names the forbidden patch, retries, stays up and unready, and
//!   turns ready without a restart once the right is back;
//! - a Node registered without a podCIDR makes the agent say once that it
//!   waits, and it turns ready once the admin sets one.
//!
//! What each test asserts is what an operator checks: pods reaching each
//! other, the routes, fdb and maps on every node, the agent's log, its
//! /readyz and its /metrics.

use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;
use weft_tests::{
    Lab, LabSpec, NodeId, SubnetManager, flannel, inspect,
    kube::{NodeRegistration, flannel_annotation},
    lab::{HEALTHZ_PORT, NodeState, agent_ready, wait_for},
    leases::{assert_underlay_route_intact, log_of},
    netns,
    privileged::{PrivilegedGuard, reference_kubernetes},
    privileged_test, process, scrapes,
};

/// A lab of weft agents (eBPF dataplane, VXLAN) in kube mode, or `None`
/// where the test is skipped.
fn kube_lab(test: &str, name: &str, nodes: usize) -> Option<(PrivilegedGuard, Lab)> {
    let guard = privileged_test(test)?;
    let kubernetes = reference_kubernetes(test)?;
    let mut spec = LabSpec::new(name, nodes, 1);
    spec.subnet_manager = SubnetManager::Kube;
    spec.kubernetes_bin = Some(kubernetes);
    let lab = Lab::up(&spec).unwrap();
    wait_every_peer_programmed(&lab);
    Some((guard, lab))
}

/// Waits until every node routes every other node's podCIDR and has its
/// fdb entry and PEERS row: an agent turns ready before the nodes started
/// after it have published their Nodes.
fn wait_every_peer_programmed(lab: &Lab) {
    for node in lab.node_ids() {
        for peer in lab.node_ids().filter(|peer| *peer != node) {
            wait_for(
                &format!("{node} to program {peer}"),
                Duration::from_secs(30),
                || {
                    let traces = lab.peer_traces(node, peer)?;
                    Ok(!traces.routes.is_empty()
                        && !traces.fdb.is_empty()
                        && !traces.peers.is_empty())
                },
            )
            .unwrap_or_else(|error| {
                panic!(
                    "{error:#}\n{}",
                    process::log_tail(node_log(lab.node(node)), 30)
                )
            });
        }
    }
}

/// `GET /metrics` from `node`'s agent, parsed.
fn scrape(node: &NodeState) -> Scrape {
    let response = netns::in_netns(&node.ns, || scrapes::get(HEALTHZ_PORT, "/metrics"))
        .unwrap_or_else(|error| panic!("{}: /metrics: {error:#}", node.ns));
    assert!(
        response.status.contains(" 200"),
        "{}: /metrics: {}",
        node.ns,
        response.status
    );
    Scrape::parse(response.body.lines().map(|line| Ok(line.to_owned()))).unwrap()
}

/// The samples of `name` whose labels include `labels`, summed; `None`
/// where the agent exports no such sample.
fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => value,
            _ => panic!("{name} is not a plain sample"),
        })
        .reduce(|sum, value| sum + value)
}

/// `weft_leases_rejected_total{rule}` (0 before the first rejection).
fn rejected(scrape: &Scrape, rule: &str) -> f64 {
    metric(scrape, "weft_leases_rejected_total", &[("rule", rule)]).unwrap_or(0.0)
}

/// `weft_kube_api_connected`, which the agent must always export.
fn api_connected(node: &NodeState) -> f64 {
    metric(&scrape(node), "weft_kube_api_connected", &[])
        .unwrap_or_else(|| panic!("{}: no weft_kube_api_connected", node.ns))
}

/// Everything on a node a Node object can change: the main routing table,
/// flannel.1's neighbours and fdb, PEERS and VTEPS.
#[derive(Debug, PartialEq)]
struct Datapath {
    routes: Vec<Json>,
    neighbours: Vec<Json>,
    fdb: Vec<Json>,
    peers: Json,
    vteps: Json,
}

fn datapath(lab: &Lab, node: NodeId) -> Datapath {
    let ns = &lab.node(node).ns;
    Datapath {
        routes: inspect::routes(ns).unwrap(),
        neighbours: inspect::neighbours(ns, "flannel.1").unwrap(),
        fdb: inspect::fdb(ns, "flannel.1").unwrap(),
        peers: lab.maps_json(node, "peers").unwrap(),
        vteps: lab.maps_json(node, "vteps").unwrap(),
    }
}

/// Waits until every node's datapath is as `before` again (a change the
/// agents are still undoing) and its underlay route is the kernel's.
fn assert_datapath_as_before(lab: &Lab, before: &[Datapath]) {
    for (node, before) in lab.node_ids().zip(before) {
        wait_for(
            &format!("{} to be as before", lab.node(node).ns),
            Duration::from_secs(10),
            || Ok(datapath(lab, node) == *before),
        )
        .unwrap_or_else(|error| {
            panic!(
                "{error:#}\nbefore: {before:#?}\nnow: {:#?}",
                datapath(lab, node)
            )
        });
        assert_underlay_route_intact(lab.node(node));
    }
}

/// The annotations stock flanneld v0.20.2 writes on a VXLAN node.
fn vxlan_annotations(public_ip: &str, backend_data: &str) -> Vec<(String, Option<String>)> {
    [
        ("backend-type", "vxlan"),
        ("backend-data", backend_data),
        ("public-ip", public_ip),
        ("kube-subnet-manager", "true"),
    ]
    .into_iter()
    .map(|(key, value)| (flannel_annotation(key), Some(value.to_owned())))
    .collect()
}

fn backend_data(vni: u32, mac: &str) -> String {
    format!(r#"{{"VNI":{vni},"VtepMAC":"{mac}"}}"#)
}

/// A Node no agent runs on, claiming `pod_cidr` at `public_ip` with
/// flanneld's annotations (a well-formed peer unless the values are bad).
fn register_peer(lab: &Lab, name: &str, pod_cidr: &str, annotations: &[(String, Option<String>)]) {
    let internal_ip = annotations
        .iter()
        .find(|(key, _)| *key == flannel_annotation("public-ip"))
        .and_then(|(_, value)| value.clone())
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or_else(|| "192.168.77.200".to_owned());
    lab.kube()
        .unwrap()
        .register_annotated_node(
            &NodeRegistration {
                name,
                internal_ip: &internal_ip,
                pod_cidr,
            },
            annotations,
        )
        .unwrap();
}

/// Whether `node` routes `subnet` through flannel.1 and has an fdb entry
/// for `mac`: a VXLAN peer in use.
fn uses_peer(node: &NodeState, subnet: &str, mac: &str) -> anyhow::Result<bool> {
    let routed = inspect::routes_to(&node.ns, subnet)?
        .iter()
        .any(|route| route["dev"] == "flannel.1");
    let in_fdb = inspect::fdb(&node.ns, "flannel.1")?
        .iter()
        .any(|entry| entry["mac"] == mac);
    Ok(routed && in_fdb)
}

/// Whether `node` has no trace of `subnet` (route) or `mac` (fdb, neighbours).
fn free_of(node: &NodeState, subnet: &str, mac: &str) -> anyhow::Result<bool> {
    Ok(inspect::routes_to(&node.ns, subnet)?.is_empty()
        && !inspect::fdb(&node.ns, "flannel.1")?
            .iter()
            .any(|entry| entry["mac"] == mac)
        && !inspect::neighbours(&node.ns, "flannel.1")?
            .iter()
            .any(|entry| entry["lladdr"] == mac))
}

/// Waits until every node uses (`true`) or has dropped (`false`) the peer.
fn wait_every_node(lab: &Lab, subnet: &str, mac: &str, in_use: bool) {
    for node in &lab.state.nodes {
        wait_for(
            &format!(
                "{} to {} {subnet} ({mac})",
                node.ns,
                if in_use { "use" } else { "drop" }
            ),
            Duration::from_secs(30),
            || {
                if in_use {
                    uses_peer(node, subnet, mac)
                } else {
                    free_of(node, subnet, mac)
                }
            },
        )
        .unwrap_or_else(|error| panic!("{error:#}\n{}", process::log_tail(node_log(node), 30)));
    }
}

fn node_log(node: &NodeState) -> &std::path::Path {
    node.agent_log.as_deref().expect("the agent has a log")
}

/// Every agent still runs as the process it was.
fn assert_same_agents(lab: &Lab, pids: &[u32]) {
    for (node, pid) in lab.node_ids().zip(pids) {
        assert_eq!(
            lab.agent_pid(node),
            Some(*pid),
            "{}: the agent restarted or exited:\n{}",
            lab.node(node).ns,
            process::log_tail(node_log(lab.node(node)), 30)
        );
    }
}

/// Pings `to` from `from` `count` times at 10 ms; the number answered.
fn answered(lab: &Lab, from: &weft_tests::lab::PodState, to: &str, count: u32) -> u32 {
    let out = lab
        .ping(from, to, count)
        .unwrap_or_else(|error| format!("{error:#}"));
    out.split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|received| received.parse().ok())
        .unwrap_or_else(|| panic!("no ping summary in: {out}"))
}

#[test]
fn api_server_outage_leaves_the_datapath_alone_and_changes_are_followed_after() {
    const TEST: &str = "api_server_outage_leaves_the_datapath_alone_and_changes_are_followed_after";
    let Some((_guard, lab)) = kube_lab(TEST, "kf-outage", 2) else {
        return;
    };
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);
    let nodes = lab.state.nodes.clone();
    let pids: Vec<u32> = lab
        .node_ids()
        .map(|node| lab.agent_pid(node).unwrap())
        .collect();
    for node in &nodes {
        assert_eq!(api_connected(node), 1.0, "{}", node.ns);
    }
    let before: Vec<Datapath> = lab.node_ids().map(|node| datapath(&lab, node)).collect();

    // 30 s without an API server, pods pinging across nodes all along.
    const OUTAGE: Duration = Duration::from_secs(30);
    const PINGS: u32 = 2500; // 25 s at 10 ms
    let stopped = lab.stop_kube_apiserver().unwrap();
    let down_since = Instant::now();
    let pods: Vec<_> = lab.pods().cloned().collect();
    let (there, back) = std::thread::scope(|scope| {
        let there = scope.spawn(|| answered(&lab, &pods[0], pods[1].ip(), PINGS));
        let back = scope.spawn(|| answered(&lab, &pods[1], pods[0].ip(), PINGS));
        for node in &nodes {
            wait_for(
                &format!("{} to notice the API server is gone", node.ns),
                Duration::from_secs(20),
                || Ok(api_connected(node) == 0.0),
            )
            .unwrap();
        }
        while down_since.elapsed() < OUTAGE {
            assert_same_agents(&lab, &pids);
            for (node, before) in lab.node_ids().zip(&before) {
                assert_eq!(
                    datapath(&lab, node),
                    *before,
                    "{}: the datapath changed while the API server was down",
                    lab.node(node).ns
                );
            }
            sleep(Duration::from_secs(2));
        }
        (there.join().unwrap(), back.join().unwrap())
    });
    eprintln!("during the outage: {there}/{PINGS} and {back}/{PINGS} echoes answered");
    // A lost echo now and then is the lab's (see assert_all_pairs_ping);
    // a datapath the agents touched loses them all.
    for answered in [there, back] {
        assert!(
            answered * 100 >= PINGS * 99,
            "pods lost echoes while the API server was down: {there}/{PINGS}, {back}/{PINGS}"
        );
    }
    lab.restart_kube_apiserver(&stopped).unwrap();
    for node in &nodes {
        wait_for(
            &format!("{} to reconnect", node.ns),
            Duration::from_secs(90),
            || Ok(api_connected(node) == 1.0),
        )
        .unwrap_or_else(|error| panic!("{error:#}\n{}", process::log_tail(node_log(node), 30)));
    }
    assert_same_agents(&lab, &pids);

    // Changes after the restart are followed by every agent: a new Node,
    // then its deletion.
    let mac = "0e:01:c0:a8:4d:3c";
    register_peer(
        &lab,
        "kf-newcomer",
        "10.244.60.0/24",
        &vxlan_annotations("192.168.77.60", &backend_data(1, mac)),
    );
    wait_every_node(&lab, "10.244.60.0/24", mac, true);
    lab.kube().unwrap().delete_node("kf-newcomer").unwrap();
    wait_every_node(&lab, "10.244.60.0/24", mac, false);
    assert_datapath_as_before(&lab, &before);
    assert_same_agents(&lab, &pids);
    lab.assert_all_pairs_ping(2);
}

/// Sends SIGCONT to frozen agents when dropped, also when the test fails.
struct Frozen(Vec<u32>);

impl Frozen {
    fn agents(lab: &Lab) -> Frozen {
        let pids: Vec<u32> = lab
            .node_ids()
            .map(|node| lab.agent_pid(node).unwrap())
            .collect();
        for pid in &pids {
            nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGSTOP).unwrap();
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
        }
    }
}

#[test]
fn a_watch_behind_a_compaction_relists_and_applies_what_it_missed() {
    const TEST: &str = "a_watch_behind_a_compaction_relists_and_applies_what_it_missed";
    let Some((_guard, lab)) = kube_lab(TEST, "kf-relist", 2) else {
        return;
    };
    let api = lab.kube().unwrap();
    let (gone, gone_mac) = ("10.244.61.0/24", "0e:01:c0:a8:4d:3d");
    let (new, new_mac) = ("10.244.62.0/24", "0e:01:c0:a8:4d:3e");
    register_peer(
        &lab,
        "kf-leaving",
        gone,
        &vxlan_annotations("192.168.77.61", &backend_data(1, gone_mac)),
    );
    wait_every_node(&lab, gone, gone_mac, true);
    let relists = |node: &NodeState| {
        metric(&scrape(node), "weft_node_watch_relists_total", &[])
            .unwrap_or_else(|| panic!("{}: no weft_node_watch_relists_total", node.ns))
    };
    let relists_before: Vec<f64> = lab.state.nodes.iter().map(relists).collect();
    let logged_before: Vec<usize> = lab
        .state
        .nodes
        .iter()
        .map(|node| log_of(node).len())
        .collect();

    // While the agents are frozen their watches break (the API server
    // restarts), a Node goes and another comes, and etcd compacts the
    // history: the revision each agent's watch was at is gone (410 Gone
    // for a watch resumed from it), and the deletion is in no event any
    // more. Only a new listing, compared with what the agent holds, shows it.
    let frozen = Frozen::agents(&lab);
    let stopped = lab.stop_kube_apiserver().unwrap();
    lab.restart_kube_apiserver(&stopped).unwrap();
    api.delete_node("kf-leaving").unwrap();
    register_peer(
        &lab,
        "kf-arriving",
        new,
        &vxlan_annotations("192.168.77.62", &backend_data(1, new_mac)),
    );
    let etcd = lab.etcd();
    etcd.compact(etcd.revision().unwrap()).unwrap();
    let resumed = format!(
        "/api/v1/nodes?watch=true&timeoutSeconds=1&resourceVersion={}",
        etcd.revision().unwrap() - 2
    );
    let expired = api.admin(&["get", "--raw", &resumed]).unwrap();
    assert!(
        expired.contains("\"code\":410"),
        "a watch from before the compaction is not expired: {expired}"
    );
    drop(frozen);

    wait_every_node(&lab, gone, gone_mac, false);
    wait_every_node(&lab, new, new_mac, true);
    for ((node, before), logged_before) in lab
        .state
        .nodes
        .iter()
        .zip(relists_before)
        .zip(logged_before)
    {
        let after = relists(node);
        let log = log_of(node)[logged_before..].to_owned();
        eprintln!("{}: relists {before} -> {after}; logged:\n{log}", node.ns);
        assert!(
            after > before,
            "{}: weft_node_watch_relists_total stayed at {before}",
            node.ns,
        );
    }
    lab.assert_all_pairs_ping(2);
}

/// One hostile Node: its name, podCIDR and annotations, and the rule each
/// node (in order) must name.
struct Hostile {
    name: &'static str,
    pod_cidr: String,
    annotations: Vec<(String, Option<String>)>,
    rules: [&'static str; 2],
}

/// The agent's rejection lines for Node `name`.
fn rejections(log: &str, name: &str) -> Vec<String> {
    let prefix = format!("node/{name}: rejected: ");
    log.lines()
        .filter(|line| line.contains(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn hostile_node_annotations_are_rejected_by_rule_and_change_nothing() {
    const TEST: &str = "hostile_node_annotations_are_rejected_by_rule_and_change_nothing";
    let Some((_guard, lab)) = kube_lab(TEST, "kf-hostile", 2) else {
        return;
    };
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(1);
    let api = lab.kube().unwrap();
    let nodes = lab.state.nodes.clone();
    let pids: Vec<u32> = lab
        .node_ids()
        .map(|node| lab.agent_pid(node).unwrap())
        .collect();
    let before: Vec<Datapath> = lab.node_ids().map(|node| datapath(&lab, node)).collect();
    let rejected_before: Vec<Scrape> = nodes.iter().map(scrape).collect();

    // A Node that names node 1's own address is wrong only for node 1:
    // node 2 uses it (so the rule is node 1's judgment), until it goes.
    let ours_mac = "0e:01:c0:a8:4d:50";
    register_peer(
        &lab,
        "kf-claims-n1",
        "10.244.50.0/24",
        &vxlan_annotations(&nodes[0].ip, &backend_data(1, ours_mac)),
    );
    wait_for(
        "node 2 to use a peer at node 1's address",
        Duration::from_secs(30),
        || uses_peer(&nodes[1], "10.244.50.0/24", ours_mac),
    )
    .unwrap();
    let lines = rejections(&log_of(&nodes[0]), "kf-claims-n1");
    assert!(
        lines.len() == 1 && lines[0].contains("public_ip_ours"),
        "{}: {lines:?}",
        nodes[0].ns
    );
    assert!(free_of(&nodes[0], "10.244.50.0/24", ours_mac).unwrap());
    api.delete_node("kf-claims-n1").unwrap();
    wait_every_node(&lab, "10.244.50.0/24", ours_mac, false);

    // A peer in use turns hostile (its public-ip rewritten to loopback):
    // removed from every node, logged once.
    let turned_mac = "0e:01:c0:a8:4d:51";
    register_peer(
        &lab,
        "kf-turned",
        "10.244.51.0/24",
        &vxlan_annotations("192.168.77.51", &backend_data(1, turned_mac)),
    );
    wait_every_node(&lab, "10.244.51.0/24", turned_mac, true);
    api.annotate_node(
        "kf-turned",
        &[(
            flannel_annotation("public-ip"),
            Some("127.0.0.1".to_owned()),
        )],
    )
    .unwrap();
    wait_every_node(&lab, "10.244.51.0/24", turned_mac, false);
    for node in &nodes {
        let lines = rejections(&log_of(node), "kf-turned");
        assert!(
            lines.len() == 1 && lines[0].contains("public_ip_not_unicast"),
            "{}: {lines:?}",
            node.ns
        );
    }
    api.delete_node("kf-turned").unwrap();

    // Every other class, each on a Node of its own, all at once.
    let node_2_mac = flannel::vtep_mac(&nodes[1]).unwrap();
    let good = |ip: &str, mac: &str| vxlan_annotations(ip, &backend_data(1, mac));
    let with = |ip: &str, mac: &str, key: &str, value: Option<&str>| {
        let mut annotations = good(ip, mac);
        let key = flannel_annotation(key);
        annotations.retain(|(k, _)| *k != key);
        annotations.push((key, value.map(str::to_owned)));
        annotations
    };
    let cidr = |third: u8| format!("10.244.{third}.0/24");
    let classes = vec![
        Hostile {
            name: "kf-ip-not-ip",
            pod_cidr: cidr(70),
            annotations: with(
                "192.168.77.70",
                "0e:01:c0:a8:4d:70",
                "public-ip",
                Some("not-an-ip"),
            ),
            rules: ["malformed_annotation"; 2],
        },
        Hostile {
            name: "kf-ip-in-pods",
            pod_cidr: cidr(71),
            annotations: good("10.244.3.3", "0e:01:c0:a8:4d:71"),
            rules: ["public_ip_inside_network"; 2],
        },
        Hostile {
            name: "kf-ip-mcast",
            pod_cidr: cidr(72),
            annotations: good("239.1.1.1", "0e:01:c0:a8:4d:72"),
            rules: ["public_ip_not_unicast"; 2],
        },
        Hostile {
            name: "kf-ip-loop",
            pod_cidr: cidr(73),
            annotations: good("127.0.0.1", "0e:01:c0:a8:4d:73"),
            rules: ["public_ip_not_unicast"; 2],
        },
        Hostile {
            name: "kf-type-udp",
            pod_cidr: cidr(74),
            annotations: with(
                "192.168.77.74",
                "0e:01:c0:a8:4d:74",
                "backend-type",
                Some("udp"),
            ),
            rules: ["backend_type_mismatch"; 2],
        },
        Hostile {
            name: "kf-type-hostgw",
            pod_cidr: cidr(75),
            annotations: with(
                "192.168.77.75",
                "0e:01:c0:a8:4d:75",
                "backend-type",
                Some("host-gw"),
            )
            .into_iter()
            .map(|(key, value)| {
                if key == flannel_annotation("backend-data") {
                    (key, Some("null".to_owned()))
                } else {
                    (key, value)
                }
            })
            .collect(),
            rules: ["backend_type_mismatch"; 2],
        },
        Hostile {
            name: "kf-type-none",
            pod_cidr: cidr(76),
            annotations: with("192.168.77.76", "0e:01:c0:a8:4d:76", "backend-type", None),
            rules: ["malformed_annotation"; 2],
        },
        Hostile {
            name: "kf-data-junk",
            pod_cidr: cidr(77),
            annotations: with(
                "192.168.77.77",
                "0e:01:c0:a8:4d:77",
                "backend-data",
                Some("{not json"),
            ),
            rules: ["malformed_annotation"; 2],
        },
        Hostile {
            name: "kf-data-no-mac",
            pod_cidr: cidr(78),
            annotations: with(
                "192.168.77.78",
                "0e:01:c0:a8:4d:78",
                "backend-data",
                Some(r#"{"VNI":1}"#),
            ),
            rules: ["malformed_annotation"; 2],
        },
        Hostile {
            name: "kf-vni",
            pod_cidr: cidr(79),
            annotations: vxlan_annotations("192.168.77.79", &backend_data(2, "0e:01:c0:a8:4d:79")),
            rules: ["vni_mismatch"; 2],
        },
        Hostile {
            name: "kf-mac-mcast",
            pod_cidr: cidr(80),
            annotations: good("192.168.77.80", "01:00:5e:00:00:01"),
            rules: ["vtep_mac_not_unicast"; 2],
        },
        // Node 2's VTEP MAC at another address: the fdb would send node
        // 2's traffic there.
        Hostile {
            name: "kf-mac-n2",
            pod_cidr: cidr(81),
            annotations: good("192.168.77.81", &node_2_mac),
            rules: ["vtep_mac_in_use"; 2],
        },
        Hostile {
            name: "kf-cidr-out",
            pod_cidr: "10.245.1.0/24".to_owned(),
            annotations: good("192.168.77.82", "0e:01:c0:a8:4d:82"),
            rules: ["subnet_outside_network"; 2],
        },
        Hostile {
            name: "kf-cidr-underlay",
            pod_cidr: "192.168.77.0/24".to_owned(),
            annotations: good("192.168.77.83", "0e:01:c0:a8:4d:83"),
            rules: ["subnet_outside_network"; 2],
        },
        // Node 2's podCIDR: another node's for node 1, its own for node 2.
        Hostile {
            name: "kf-cidr-n2",
            pod_cidr: Lab::pod_cidr(NodeId::all(2).nth(1).unwrap()),
            annotations: good("192.168.77.84", "0e:01:c0:a8:4d:84"),
            rules: ["subnet_overlaps_peer", "subnet_overlaps_own"],
        },
        Hostile {
            name: "kf-cidr-len",
            pod_cidr: "10.244.85.0/25".to_owned(),
            annotations: good("192.168.77.85", "0e:01:c0:a8:4d:85"),
            rules: ["subnet_wrong_prefix"; 2],
        },
        Hostile {
            name: "kf-cidr-host",
            pod_cidr: "10.244.86.7/24".to_owned(),
            annotations: good("192.168.77.86", "0e:01:c0:a8:4d:86"),
            rules: ["malformed_pod_cidr"; 2],
        },
    ];
    for class in &classes {
        register_peer(&lab, class.name, &class.pod_cidr, &class.annotations);
    }
    let all_rejected = |node: &NodeState| {
        let log = log_of(node);
        classes
            .iter()
            .all(|class| !rejections(&log, class.name).is_empty())
    };
    for node in &nodes {
        wait_for(
            &format!("{} to reject every hostile Node", node.ns),
            Duration::from_secs(30),
            || Ok(all_rejected(node)),
        )
        .unwrap_or_else(|error| {
            let log = log_of(node);
            let missing: Vec<&str> = classes
                .iter()
                .filter(|class| rejections(&log, class.name).is_empty())
                .map(|class| class.name)
                .collect();
            panic!("{error:#}: never rejected {missing:?}\n{log}")
        });
    }
    // Logged once by the rule, counted once: a Node touched again (a label,
    // as any controller writes) with the same claims is not judged anew.
    // A good Node registered afterwards shows the touches were processed.
    for class in &classes {
        api.admin(&["label", "node", class.name, "touched=yes"])
            .unwrap();
    }
    let sentinel_mac = "0e:01:c0:a8:4d:5f";
    register_peer(
        &lab,
        "kf-sentinel",
        "10.244.95.0/24",
        &vxlan_annotations("192.168.77.95", &backend_data(1, sentinel_mac)),
    );
    wait_every_node(&lab, "10.244.95.0/24", sentinel_mac, true);
    api.delete_node("kf-sentinel").unwrap();
    wait_every_node(&lab, "10.244.95.0/24", sentinel_mac, false);
    for (index, node) in nodes.iter().enumerate() {
        let log = log_of(node);
        let mut failures = Vec::new();
        for class in &classes {
            let lines = rejections(&log, class.name);
            if !(lines.len() == 1 && lines[0].contains(class.rules[index])) {
                failures.push(format!(
                    "{} should be rejected once by {}: {lines:?}",
                    class.name, class.rules[index]
                ));
            }
        }
        let now = scrape(node);
        let mut rules: Vec<&str> = classes.iter().map(|class| class.rules[index]).collect();
        rules.sort();
        rules.dedup();
        for rule in rules {
            // The two single cases above count too: public_ip_ours on node 1,
            // public_ip_not_unicast (kf-turned) on both.
            let expected = classes
                .iter()
                .filter(|class| class.rules[index] == rule)
                .count() as f64
                + f64::from(u8::from(rule == "public_ip_not_unicast"));
            let counted = rejected(&now, rule) - rejected(&rejected_before[index], rule);
            if counted != expected {
                failures.push(format!(
                    "weft_leases_rejected_total{{rule=\"{rule}\"}} rose by {counted}, not {expected}"
                ));
            }
        }
        let ours =
            rejected(&now, "public_ip_ours") - rejected(&rejected_before[index], "public_ip_ours");
        if ours != if index == 0 { 1.0 } else { 0.0 } {
            failures.push(format!("public_ip_ours counted {ours} times"));
        }
        assert!(failures.is_empty(), "{}:\n{}", node.ns, failures.join("\n"));
    }
    assert_datapath_as_before(&lab, &before);
    assert_same_agents(&lab, &pids);
    lab.assert_all_pairs_ping(2);
}

#[test]
fn a_token_without_node_status_patch_is_reported_and_retried_until_granted() {
    const TEST: &str = "a_token_without_node_status_patch_is_reported_and_retried_until_granted";
    let Some((_guard, mut lab)) = kube_lab(TEST, "kf-rbac", 2) else {
        return;
    };
    let api = lab.kube().unwrap().clone();
    let node = NodeId::all(2).nth(1).unwrap();
    let state = lab.node(node).clone();
    // Node 2 starts afresh: no annotations of a previous run, so its agent
    // must write them, with a role that does not allow it.
    lab.stop_agent(node, Signal::SIGTERM).unwrap();
    let keys = [
        "backend-type",
        "backend-data",
        "public-ip",
        "kube-subnet-manager",
    ];
    api.annotate_node(
        state.node_name(),
        &keys.map(|key| (flannel_annotation(key), None)),
    )
    .unwrap();
    api.revoke_agent_resource("nodes/status").unwrap();
    // `kubectl auth can-i` exits 1 for "no".
    let allowed = api.as_agent(&["auth", "can-i", "patch", "nodes", "--subresource=status"]);
    assert!(
        allowed.is_err(),
        "the agents may still patch nodes/status: {allowed:?}"
    );
    let pid = lab.launch_agent(node).unwrap();
    let log = node_log(lab.node(node)).to_owned();
    let forbidden = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.contains("forbidden")
                    && line.contains("patch")
                    && line.contains("nodes/status")
            })
            .map(str::to_owned)
            .collect()
    };
    let api_errors = || metric(&scrape(&state), "weft_kube_api_errors_total", &[]).unwrap_or(0.0);
    wait_for(
        "the agent to report the forbidden patch, then retry it",
        Duration::from_secs(60),
        || {
            ensure_running(pid, &lab, &log)?;
            Ok(!forbidden().is_empty() && api_errors() >= 2.0)
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}\n{}", process::log_tail(&log, 30)));
    eprintln!(
        "the agent said: {}\n(weft_kube_api_errors_total {})",
        forbidden()[0],
        api_errors()
    );
    assert!(
        !agent_ready(&state.ns).unwrap(),
        "{}: ready without having published its Node",
        state.ns
    );

    // The right comes back: ready without a restart, and a peer again.
    api.restore_agent_rbac().unwrap();
    wait_ready_without_restart(&mut lab, node, pid);
    lab.wait_until_ready(node)
        .unwrap_or_else(|error| panic!("{error:#}\n{}", process::log_tail(&log, 30)));
    assert_eq!(lab.agent_pid(node), Some(pid), "the agent restarted");
    let annotations = &api.node(state.node_name()).unwrap()["metadata"]["annotations"];
    assert_eq!(
        annotations[flannel_annotation("kube-subnet-manager")],
        "true",
        "{annotations}"
    );
    wait_every_peer_programmed(&lab);
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);
}

/// Waits (longer than the lab's start-up wait: the agent retries with a
/// backoff of up to 30 s) until `node`'s agent `pid` is ready.
fn wait_ready_without_restart(lab: &mut Lab, node: NodeId, pid: u32) {
    let state = lab.node(node).clone();
    let log = node_log(&state).to_owned();
    wait_for(
        &format!("the agent on {} to turn ready", state.ns),
        Duration::from_secs(60),
        || {
            ensure_running(pid, lab, &log)?;
            agent_ready(&state.ns)
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}\n{}", process::log_tail(&log, 30)));
}

/// Fails if the agent `pid` is gone, with its log.
fn ensure_running(pid: u32, lab: &Lab, log: &std::path::Path) -> anyhow::Result<()> {
    let program = lab.state.weft_bin.display().to_string();
    anyhow::ensure!(
        process::is_running(pid, &program),
        "the agent exited:\n{}",
        process::log_tail(log, 30)
    );
    Ok(())
}

#[test]
fn a_node_without_a_pod_cidr_waits_saying_so_once_until_it_has_one() {
    const TEST: &str = "a_node_without_a_pod_cidr_waits_saying_so_once_until_it_has_one";
    let Some((_guard, mut lab)) = kube_lab(TEST, "kf-nocidr", 2) else {
        return;
    };
    let api = lab.kube().unwrap().clone();
    let node = NodeId::all(2).nth(1).unwrap();
    let state = lab.node(node).clone();
    lab.reregister_without_pod_cidr(node).unwrap();
    let pid = lab.launch_agent(node).unwrap();
    let log = node_log(lab.node(node)).to_owned();
    let waiting = format!("Node {} has no podCIDR yet; waiting", state.node_name());
    let said = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(&waiting)
            .count()
    };
    wait_for(
        "the agent to say it waits for a podCIDR",
        Duration::from_secs(30),
        || {
            ensure_running(pid, &lab, &log)?;
            Ok(said() >= 1)
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}\n{}", process::log_tail(&log, 30)));
    // Its Node changes meanwhile (labels, as controllers write them), and
    // time passes: still waiting, said once.
    for round in 0..5 {
        api.admin(&[
            "label",
            "node",
            state.node_name(),
            "--overwrite",
            &format!("kf-round={round}"),
        ])
        .unwrap();
        sleep(Duration::from_secs(1));
    }
    ensure_running(pid, &lab, &log).unwrap();
    assert_eq!(said(), 1, "{}", process::log_tail(&log, 30));
    assert!(!agent_ready(&state.ns).unwrap(), "ready without a podCIDR");

    // Node IPAM assigns it: ready, without a restart, and a peer again.
    api.set_pod_cidr(state.node_name(), &Lab::pod_cidr(node))
        .unwrap();
    wait_ready_without_restart(&mut lab, node, pid);
    lab.wait_until_ready(node)
        .unwrap_or_else(|error| panic!("{error:#}\n{}", process::log_tail(&log, 30)));
    assert_eq!(lab.agent_pid(node), Some(pid), "the agent restarted");
    assert_eq!(said(), 1, "{}", process::log_tail(&log, 30));
    wait_every_peer_programmed(&lab);
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(2);
}
