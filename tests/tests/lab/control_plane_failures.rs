//! The flannel-compatible control plane on the lab with the real etcd,
//! under restarts, deletions, outages, compaction, hostile values and
//! races.

use std::{
    thread::{self, sleep},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, flannel, inspect,
    lab::{ETCD_PREFIX, HEALTHZ_PORT, three_nodes, wait_for},
    privileged,
};

#[test]
fn restarted_agents_keep_subnet_and_vtep_mac_without_duplicates() {
    let _guard = privileged!("restarted_agents_keep_subnet_and_vtep_mac_without_duplicates");
    let mut lab = Lab::up(&three_nodes("t-cp-restart", Backend::Vxlan)).unwrap();
    let subnet = lab.node(NodeId::new(1)).subnet.clone();
    let mac = flannel::vtep_mac(lab.node(NodeId::new(1))).unwrap();
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        lab.stop_agent(NodeId::new(1), signal).unwrap();
        // Without its agent the node keeps forwarding: the kernel state stays.
        let from = lab.node(NodeId::new(1)).pods[0].clone();
        let to = lab.node(NodeId::new(2)).pods[0].clone();
        assert!(lab.ping(&from, to.ip(), 3).unwrap().contains("3 received"));
        lab.start_agent(NodeId::new(1)).unwrap();
        assert_eq!(
            lab.node(NodeId::new(1)).subnet,
            subnet,
            "subnet changed across a {signal} restart"
        );
        assert_eq!(
            flannel::vtep_mac(lab.node(NodeId::new(1))).unwrap(),
            mac,
            "VTEP MAC changed across a {signal} restart"
        );
        flannel::check(&lab).unwrap();
        lab.assert_all_pairs_ping(2);
    }
}

#[test]
fn a_deleted_lease_is_cleaned_up_by_peers_and_reacquired_by_its_owner() {
    let _guard = privileged!("a_deleted_lease_is_cleaned_up_by_peers_and_reacquired_by_its_owner");
    let lab = Lab::up(&three_nodes("t-cp-delete", Backend::Vxlan)).unwrap();
    // Stop node 3's agent so it does not re-acquire before we look.
    lab.stop_agent(NodeId::new(3), Signal::SIGTERM).unwrap();
    let gone = lab.node(NodeId::new(3)).clone();
    let key = format!("{ETCD_PREFIX}/subnets/{}", gone.subnet.replace('/', "-"));
    let mac = flannel::vtep_mac(&gone).unwrap();
    let gateway = gone.subnet.split('/').next().unwrap().to_owned();
    // Someone else's entries on node 1 next to weft's for that lease, each
    // differing from weft's in one of the fields removal compares: a route
    // with the same destination, device and gateway but another protocol, a
    // neighbour with the same MAC but another address, an fdb entry with the
    // same destination but another MAC (the all-zero MAC, a flood entry: a
    // unicast MAC has one destination only, `bridge fdb append` adds none).
    let node1 = lab.node(NodeId::new(1)).ns.clone();
    let foreign_neighbour = {
        let mut octets: [u8; 4] = gateway.parse::<std::net::Ipv4Addr>().unwrap().octets();
        octets[3] += 1;
        std::net::Ipv4Addr::from(octets).to_string()
    };
    const FLOOD_MAC: &str = "00:00:00:00:00:00";
    let foreign_entries = [
        (
            format!(
                "ip route add {} via {gateway} dev flannel.1 onlink",
                gone.subnet
            ),
            format!("ip route del {} via {gateway} dev flannel.1", gone.subnet),
            " proto static metric 4242",
        ),
        (
            format!("ip neigh add {foreign_neighbour} lladdr {mac} dev flannel.1"),
            format!("ip neigh del {foreign_neighbour} dev flannel.1"),
            " nud permanent",
        ),
        (
            format!(
                "bridge fdb append {FLOOD_MAC} dev flannel.1 dst {}",
                gone.ip
            ),
            format!("bridge fdb del {FLOOD_MAC} dev flannel.1 dst {}", gone.ip),
            "",
        ),
    ];
    let run = |command: &str| {
        let args: Vec<&str> = command.split_whitespace().collect();
        weft_tests::netns::run(&node1, &args).unwrap();
    };
    for (add, _, options) in &foreign_entries {
        run(&format!("{add}{options}"));
    }
    let foreign_route = |route: &serde_json::Value| route["protocol"] == "static";
    lab.etcd().delete(&key).unwrap();
    // A generous bound (the machine may be shared and slow); the time it
    // took is logged, for a human to compare.
    let started = Instant::now();
    for node in [lab.node(NodeId::new(1)), lab.node(NodeId::new(2))] {
        wait_for(
            &format!("{} to drop {}", node.ns, gone.subnet),
            Duration::from_secs(20),
            || {
                Ok(inspect::routes_to(&node.ns, &gone.subnet)?
                    .iter()
                    .all(foreign_route)
                    && !inspect::neighbours(&node.ns, "flannel.1")?
                        .iter()
                        .any(|n| n["dst"] == gateway.as_str())
                    && !inspect::fdb(&node.ns, "flannel.1")?.iter().any(|entry| {
                        entry["mac"] == mac.as_str() && entry["dst"] == gone.ip.as_str()
                    }))
            },
        )
        .unwrap();
    }
    eprintln!(
        "peers dropped the deleted lease's routes, neighbour and FDB entries in {:?}",
        started.elapsed()
    );
    // Removal took only what weft wrote.
    let routes = inspect::routes_to(&node1, &gone.subnet).unwrap();
    assert!(
        routes.len() == 1 && foreign_route(&routes[0]),
        "node 1: someone else's route to {} did not survive: {routes:?}",
        gone.subnet
    );
    let neighbours = inspect::neighbours(&node1, "flannel.1").unwrap();
    assert!(
        neighbours
            .iter()
            .any(|n| n["dst"] == foreign_neighbour.as_str() && n["lladdr"] == mac.as_str()),
        "node 1: someone else's neighbour {foreign_neighbour} did not survive: {neighbours:?}"
    );
    let fdb = inspect::fdb(&node1, "flannel.1").unwrap();
    assert!(
        fdb.iter()
            .any(|entry| entry["mac"] == FLOOD_MAC && entry["dst"] == gone.ip.as_str()),
        "node 1: someone else's fdb entry {FLOOD_MAC} to {} did not survive: {fdb:?}",
        gone.ip
    );
    for (_, remove, options) in &foreign_entries {
        let options = if remove.starts_with("ip route") {
            options
        } else {
            ""
        };
        run(&format!("{remove}{options}"));
    }
    // Back on: node 3 takes its subnet again (from its subnet.env).
    let mut lab = lab;
    lab.start_agent(NodeId::new(3)).unwrap();
    assert_eq!(lab.node(NodeId::new(3)).subnet, gone.subnet);
    // A running owner whose lease is deleted re-acquires it by itself.
    let own_key = format!(
        "{ETCD_PREFIX}/subnets/{}",
        lab.node(NodeId::new(1)).subnet.replace('/', "-")
    );
    let etcd = lab.etcd();
    etcd.delete(&own_key).unwrap();
    wait_for(
        "node 1 to re-acquire its lease",
        Duration::from_secs(5),
        || Ok(etcd.get_prefix(&own_key)?.len() == 1),
    )
    .unwrap();
    wait_for("every node to agree again", Duration::from_secs(5), || {
        Ok(flannel::check(&lab).is_ok())
    })
    .unwrap();
    lab.assert_all_pairs_ping(2);
}

#[test]
fn an_etcd_outage_loses_no_packet_and_agents_reconnect() {
    let _guard = privileged!("an_etcd_outage_loses_no_packet_and_agents_reconnect");
    let lab = Lab::up(&three_nodes("t-cp-outage", Backend::Vxlan)).unwrap();
    let from = lab.node(NodeId::new(1)).pods[0].clone();
    let to = lab.node(NodeId::new(2)).pods[0].clone();
    // 35 s of pings at 10/s across the 30 s outage.
    let ping = {
        let from = from.clone();
        let to_ip = to.ip().to_owned();
        thread::spawn(move || {
            weft_tests::netns::run(
                &from.ns,
                &[
                    "ping", "-q", "-n", "-c", "350", "-i", "0.1", "-W", "1", &to_ip,
                ],
            )
        })
    };
    // What the operator's alerts watch, on node 1: `weft_etcd_connected`
    // falls during the outage and comes back after it, the errors are
    // counted, and the agent lists again (a resync) once etcd is back.
    let metric = |name: &str| lab.metric(NodeId::new(1), name);
    sleep(Duration::from_secs(2));
    assert_eq!(metric("weft_etcd_connected").unwrap(), 1.0);
    let errors_before = metric("weft_etcd_errors_total").unwrap();
    let resyncs_before = metric("weft_lease_watch_resyncs_total").unwrap();
    let outage = Instant::now();
    lab.stop_etcd().unwrap();
    wait_for(
        "node 1 to report etcd lost (weft_etcd_connected 0)",
        Duration::from_secs(25),
        || Ok(metric("weft_etcd_connected")? == 0.0),
    )
    .unwrap();
    eprintln!(
        "weft_etcd_connected fell {:?} into the outage",
        outage.elapsed()
    );
    sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    lab.start_etcd().unwrap();
    let out = ping.join().unwrap().unwrap();
    assert!(
        out.contains("350 received"),
        "packets lost during the outage: {out}"
    );
    wait_for(
        "node 1 to report etcd back and resync",
        Duration::from_secs(30),
        || {
            Ok(metric("weft_etcd_connected")? == 1.0
                && metric("weft_lease_watch_resyncs_total")? > resyncs_before)
        },
    )
    .unwrap();
    let errors = metric("weft_etcd_errors_total").unwrap();
    assert!(
        errors > errors_before,
        "weft_etcd_errors_total stayed at {errors} across the outage"
    );
    // The agents are back on etcd by themselves: a lease change made now
    // reaches them.
    let key = format!("{ETCD_PREFIX}/subnets/10.244.250.0-24");
    lab.etcd().put(&key, r#"{"PublicIP":"192.168.77.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:01:c0:a8:4d:63"}}"#).unwrap();
    for node in &lab.state.nodes {
        wait_for(
            &format!("{} to learn a lease written after the outage", node.ns),
            Duration::from_secs(20),
            || Ok(inspect::routes_to(&node.ns, "10.244.250.0/24")?.len() == 1),
        )
        .unwrap();
    }
}

#[test]
fn compaction_past_the_watch_revision_loses_no_event() {
    let _guard = privileged!("compaction_past_the_watch_revision_loses_no_event");
    let lab = Lab::up(&three_nodes("t-cp-compact", Backend::Vxlan)).unwrap();
    let etcd = lab.etcd();
    let fake = |n: u8| {
        (
            format!("{ETCD_PREFIX}/subnets/10.244.{}.0-24", 200 + n),
            format!(
                r#"{{"PublicIP":"192.168.77.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:c0:a8:4d:{:02x}"}}}}"#,
                100 + n,
                100 + n
            ),
        )
    };
    let (key_a, value_a) = fake(1);
    etcd.put(&key_a, &value_a).unwrap();
    for node in &lab.state.nodes {
        wait_for("lease a", Duration::from_secs(5), || {
            Ok(inspect::routes_to(&node.ns, "10.244.201.0/24")?.len() == 1)
        })
        .unwrap();
    }
    // Freeze the agents so their watches fall behind: etcd keeps sending
    // while HTTP/2 flow control lets it (a few MB), then parks each watch
    // as a slow watcher. Change leases behind that (a junk lease rewritten
    // with 32 KiB values overflows every buffer on the way) and compact
    // history past what the watches have seen. etcd stays up: the watches
    // survive and must be told they were compacted.
    let pids: Vec<u32> = lab
        .node_ids()
        .map(|node| lab.agent_pid(node).unwrap())
        .collect();
    let log_of = |node: &weft_tests::lab::NodeState| {
        std::fs::read_to_string(node.agent_log.as_ref().unwrap()).unwrap()
    };
    let logged_before: Vec<usize> = lab
        .state
        .nodes
        .iter()
        .map(|node| log_of(node).len())
        .collect();
    for pid in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGSTOP).unwrap();
    }
    let (key_b, value_b) = fake(2);
    etcd.put(&key_b, &value_b).unwrap();
    etcd.delete(&key_a).unwrap();
    let junk_key = format!("{ETCD_PREFIX}/subnets/10.244.209.0-24");
    let junk = "x".repeat(32 * 1024);
    for _ in 0..WRITES_BEHIND {
        etcd.put(&junk_key, &junk).unwrap();
    }
    etcd.delete(&junk_key).unwrap();
    let (key_c, value_c) = fake(3);
    etcd.put(&key_c, &value_c).unwrap();
    etcd.compact(etcd.revision().unwrap()).unwrap();
    for pid in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGCONT).unwrap();
    }
    for (node, logged_before) in lab.state.nodes.iter().zip(logged_before) {
        wait_for(
            &format!("{} to converge after compaction", node.ns),
            Duration::from_secs(30),
            || {
                Ok(inspect::routes_to(&node.ns, "10.244.201.0/24")?.is_empty()
                    && inspect::routes_to(&node.ns, "10.244.202.0/24")?.len() == 1
                    && inspect::routes_to(&node.ns, "10.244.203.0/24")?.len() == 1)
            },
        )
        .unwrap();
        // Through the compaction branch, not a lost connection: the agent
        // said so, and counted the resync.
        let log = log_of(node)[logged_before..].to_owned();
        assert!(
            log.contains("lease watch fell behind a compaction; resyncing"),
            "{}: the watch was never told it was compacted",
            node.ns
        );
        assert!(
            !log.contains("lost etcd"),
            "{}: the watch broke instead",
            node.ns
        );
        let metrics = weft_tests::netns::in_netns(&node.ns, || {
            weft_tests::scrapes::get(HEALTHZ_PORT, "/metrics")
        })
        .unwrap();
        let resyncs = weft_tests::scrapes::sample(&metrics.body, "weft_lease_watch_resyncs_total");
        assert!(
            resyncs.is_some_and(|resyncs| resyncs >= 1.0),
            "{}: weft_lease_watch_resyncs_total is {resyncs:?}",
            node.ns
        );
    }
}

/// Lease writes made while the agents are frozen: enough to overflow the
/// watch's HTTP/2 window and etcd's per-watch buffer, so etcd parks the
/// watches as slow watchers.
const WRITES_BEHIND: usize = 400;

#[test]
fn hostile_values_are_logged_by_key_and_the_rest_keeps_working() {
    let _guard = privileged!("hostile_values_are_logged_by_key_and_the_rest_keeps_working");
    let lab = Lab::up(&three_nodes("t-cp-hostile", Backend::Vxlan)).unwrap();
    let etcd = lab.etcd();
    let hostile = [
        ("10.244.211.0-24", "this is not json"),
        (
            "10.244.212.0-24",
            r#"{"PublicIP":"192.168.77.50","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":"one","VtepMAC":"0e:00:00:00:00:01"}}"#,
        ),
        (
            "10.244.213.0-24",
            r#"{"PublicIP":"not-an-address","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#,
        ),
        (
            "not-a-subnet",
            r#"{"PublicIP":"192.168.77.51","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#,
        ),
    ];
    for (name, value) in hostile {
        etcd.put(&format!("{ETCD_PREFIX}/subnets/{name}"), value)
            .unwrap();
    }
    // A good lease written after them is still served.
    etcd.put(
        &format!("{ETCD_PREFIX}/subnets/10.244.214.0-24"),
        r#"{"PublicIP":"192.168.77.52","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:01:c0:a8:4d:34"}}"#,
    )
    .unwrap();
    for node in &lab.state.nodes {
        wait_for("the good lease", Duration::from_secs(5), || {
            Ok(inspect::routes_to(&node.ns, "10.244.214.0/24")?.len() == 1)
        })
        .unwrap();
        let log = std::fs::read_to_string(node.agent_log.as_ref().unwrap()).unwrap();
        for (name, _) in hostile {
            let key = format!("{ETCD_PREFIX}/subnets/{name}");
            assert!(
                log.lines()
                    .any(|line| line.contains(&key) && line.contains("WARN")),
                "{}: no warning naming {key}:\n{log}",
                node.ns
            );
        }
        for subnet in ["10.244.211.0/24", "10.244.212.0/24", "10.244.213.0/24"] {
            assert!(
                inspect::routes_to(&node.ns, subnet).unwrap().is_empty(),
                "{}: hostile {subnet} was programmed",
                node.ns
            );
        }
    }
    lab.assert_all_pairs_ping(2);
    // An invalid config: a starting agent names the key and the rule, keeps
    // waiting, and comes up once the config is fixed.
    etcd.put(
        &format!("{ETCD_PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let mut lab = lab;
    lab.stop_agent(NodeId::new(1), Signal::SIGTERM).unwrap();
    let restart = {
        let etcd = etcd.clone();
        let log = lab.node(NodeId::new(1)).agent_log.clone().unwrap();
        thread::spawn(move || {
            wait_for("the config error in the log", Duration::from_secs(15), || {
                Ok(std::fs::read_to_string(&log)?.contains("/coreos.com/network/config: network config: SubnetLen 31 is invalid: it must be at most 30"))
            })
            .unwrap();
            etcd.put(
                &format!("{ETCD_PREFIX}/config"),
                &Backend::Vxlan.network_config(),
            )
            .unwrap();
        })
    };
    lab.start_agent(NodeId::new(1)).unwrap();
    restart.join().unwrap();
    lab.assert_all_pairs_ping(2);
}

#[test]
fn two_agents_racing_for_one_subnet_end_with_distinct_subnets() {
    let _guard = privileged!("two_agents_racing_for_one_subnet_end_with_distinct_subnets");
    // Both nodes start at once, each believing (from its subnet.env) that
    // the same free subnet was its own: creation is a transaction, so one
    // gets it and the other must look again.
    let mut spec = LabSpec::new("t-cp-race", 2, 1);
    spec.dataplane = Dataplane::Kernel;
    spec.preset_subnet_env = Some("10.244.77.1/24".to_owned());
    let lab = Lab::up(&spec).unwrap();
    let (a, b) = (
        &lab.node(NodeId::new(1)).subnet,
        &lab.node(NodeId::new(2)).subnet,
    );
    assert_ne!(a, b, "both agents hold {a}");
    assert!(
        a == "10.244.77.0/24" || b == "10.244.77.0/24",
        "nobody got the contested subnet: {a} {b}"
    );
    assert_eq!(
        lab.etcd()
            .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
            .unwrap()
            .len(),
        2
    );
    flannel::check(&lab).unwrap();
    lab.assert_all_pairs_ping(2);
}

#[test]
fn a_restarted_agent_removes_entries_for_leases_that_vanished_while_it_was_down() {
    let _guard =
        privileged!("a_restarted_agent_removes_entries_for_leases_that_vanished_while_it_was_down");
    let mut lab = Lab::up(&three_nodes("t-cp-stale", Backend::Vxlan)).unwrap();
    let gone = lab.node(NodeId::new(3)).clone();
    let mac = flannel::vtep_mac(&gone).unwrap();
    lab.stop_agent(NodeId::new(1), Signal::SIGKILL).unwrap();
    lab.stop_agent(NodeId::new(3), Signal::SIGTERM).unwrap();
    lab.etcd()
        .delete(&format!(
            "{ETCD_PREFIX}/subnets/{}",
            gone.subnet.replace('/', "-")
        ))
        .unwrap();
    // Node 1 still has node 3's entries: nobody was there to remove them.
    assert_eq!(
        inspect::routes_to(&lab.node(NodeId::new(1)).ns, &gone.subnet)
            .unwrap()
            .len(),
        1
    );
    lab.start_agent(NodeId::new(1)).unwrap();
    let ns = &lab.node(NodeId::new(1)).ns;
    assert!(
        inspect::routes_to(ns, &gone.subnet).unwrap().is_empty(),
        "stale route survived the restart"
    );
    assert!(
        !inspect::fdb(ns, "flannel.1")
            .unwrap()
            .iter()
            .any(|entry| entry["mac"] == mac.as_str()),
        "stale fdb entry"
    );
    let gateway = gone.subnet.split('/').next().unwrap();
    assert!(
        !inspect::neighbours(ns, "flannel.1")
            .unwrap()
            .iter()
            .any(|n| n["dst"] == gateway),
        "stale neighbour"
    );
    // And what is still leased is intact.
    let from = lab.node(NodeId::new(1)).pods[0].clone();
    let to = lab.node(NodeId::new(2)).pods[1].clone();
    assert!(lab.ping(&from, to.ip(), 3).unwrap().contains("3 received"));
}

/// The lease value of a node at `ip` (a fake one: no such node runs).
fn fake_lease(ip: [u8; 4]) -> String {
    let [a, b, c, d] = ip;
    format!(
        r#"{{"PublicIP":"{a}.{b}.{c}.{d}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:{a:02x}:{b:02x}:{c:02x}:{d:02x}"}}}}"#
    )
}

#[test]
fn sigterm_is_honoured_at_once_while_a_lost_lease_finds_no_free_subnet() {
    let _guard = privileged!("sigterm_is_honoured_at_once_while_a_lost_lease_finds_no_free_subnet");
    // Room for four /24 leases; the node takes one, fake nodes the others.
    let mut spec = LabSpec::new("t-lp-nofree", 1, 0);
    spec.ip_masq = true;
    spec.network_config = Some(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.4.0","Backend":{"Type":"vxlan"}}"#
            .to_owned(),
    );
    let lab = Lab::up(&spec).unwrap();
    let node = lab.node(NodeId::FIRST).clone();
    let etcd = lab.etcd();
    let key = |subnet: &str| format!("{ETCD_PREFIX}/subnets/{}", subnet.replace('/', "-"));
    let others: Vec<String> = (1..=4)
        .map(|third| format!("10.244.{third}.0/24"))
        .filter(|subnet| *subnet != node.subnet)
        .collect();
    for (n, subnet) in others.iter().enumerate() {
        etcd.put(&key(subnet), &fake_lease([192, 168, 77, 101 + n as u8]))
            .unwrap();
    }
    // Someone else takes the node's own subnet: every subnet is taken now,
    // and the agent looks for one every 2 s for as long as that lasts.
    etcd.put(&key(&node.subnet), &fake_lease([192, 168, 77, 120]))
        .unwrap();
    let log = node.agent_log.clone().unwrap();
    wait_for(
        "the agent to find no free subnet",
        Duration::from_secs(10),
        || {
            Ok(std::fs::read_to_string(&log)?
                .matches("cannot acquire a subnet lease")
                .count()
                >= 2)
        },
    )
    .unwrap();
    // The loop goes on meanwhile: a peer's new VTEP reaches the kernel,
    // and the metrics say the lease is not held.
    etcd.put(&key(&others[0]), &fake_lease([192, 168, 77, 130]))
        .unwrap();
    wait_for(
        "a peer's change to be followed while no subnet is free",
        Duration::from_secs(3),
        || {
            Ok(inspect::fdb(&node.ns, "flannel.1")?
                .iter()
                .any(|entry| entry["mac"] == "0e:01:c0:a8:4d:82"))
        },
    )
    .unwrap();
    let metrics = weft_tests::netns::in_netns(&node.ns, || {
        weft_tests::scrapes::get(weft_tests::lab::HEALTHZ_PORT, "/metrics")
    })
    .unwrap()
    .body;
    assert_eq!(
        weft_tests::scrapes::sample(&metrics, "weft_lease_held"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        weft_tests::scrapes::sample(&metrics, "weft_lease_losses_total"),
        Some(1.0),
        "{metrics}"
    );
    // SIGTERM is taken between two handlers, not after the search ends.
    let pid = lab.agent_pid(NodeId::FIRST).unwrap();
    let program = lab.state.weft_bin.display().to_string();
    let sent = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    while weft_tests::process::is_running(pid, &program) && sent.elapsed() < Duration::from_secs(5)
    {
        sleep(Duration::from_millis(5));
    }
    let took = sent.elapsed();
    eprintln!("the agent exited {took:?} after SIGTERM while no subnet was free");
    assert!(
        !weft_tests::process::is_running(pid, &program),
        "the agent survived SIGTERM for 5 s while no subnet was free:\n{}",
        weft_tests::process::log_tail(&log, 20)
    );
    assert!(
        took < Duration::from_secs(1),
        "the agent took {took:?} to honour SIGTERM"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("SIGTERM: detaching"),
        "the agent did not stop through its SIGTERM path:\n{}",
        weft_tests::process::log_tail(&log, 20)
    );
}
