//! weft as a drop-in flanneld, on the lab with the real etcd: leases,
//! subnet.env and kernel state exactly as flanneld writes them, and the
//! control plane's behaviour under restarts, deletions, outages, compaction,
//! hostile values and races.

// Each integration test is its own crate and sees every dependency of the
// package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use std::{
    thread::{self, sleep},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, flannel, inspect,
    lab::{ETCD_PREFIX, wait_for},
    privileged_test,
};

fn three_nodes(name: &str, backend: Backend) -> LabSpec {
    let mut spec = LabSpec::new(name, 3, 2);
    spec.backend = backend;
    spec.dataplane = Dataplane::Kernel;
    spec
}

#[test]
fn vxlan_lab_matches_flannel_and_every_pod_reaches_every_pod() {
    let Some(_guard) = privileged_test("vxlan_lab_matches_flannel_and_every_pod_reaches_every_pod")
    else {
        return;
    };
    let lab = Lab::up(&three_nodes("t-cp-vxlan", Backend::Vxlan)).unwrap();
    flannel::check(&lab).unwrap();
    lab.assert_all_pairs_ping(2);
}

#[test]
fn host_gw_lab_matches_flannel_and_every_pod_reaches_every_pod() {
    let Some(_guard) =
        privileged_test("host_gw_lab_matches_flannel_and_every_pod_reaches_every_pod")
    else {
        return;
    };
    let lab = Lab::up(&three_nodes("t-cp-hostgw", Backend::HostGw)).unwrap();
    flannel::check(&lab).unwrap();
    lab.assert_all_pairs_ping(2);
}

#[test]
fn restarted_agents_keep_subnet_and_vtep_mac_without_duplicates() {
    let Some(_guard) =
        privileged_test("restarted_agents_keep_subnet_and_vtep_mac_without_duplicates")
    else {
        return;
    };
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
    let Some(_guard) =
        privileged_test("a_deleted_lease_is_cleaned_up_by_peers_and_reacquired_by_its_owner")
    else {
        return;
    };
    let lab = Lab::up(&three_nodes("t-cp-delete", Backend::Vxlan)).unwrap();
    // Stop node 3's agent so it does not re-acquire before we look.
    lab.stop_agent(NodeId::new(3), Signal::SIGTERM).unwrap();
    let gone = lab.node(NodeId::new(3)).clone();
    let key = format!("{ETCD_PREFIX}/subnets/{}", gone.subnet.replace('/', "-"));
    let mac = flannel::vtep_mac(&gone).unwrap();
    let gateway = gone.subnet.split('/').next().unwrap().to_owned();
    lab.etcd().delete(&key).unwrap();
    let started = Instant::now();
    for node in [lab.node(NodeId::new(1)), lab.node(NodeId::new(2))] {
        wait_for(
            &format!("{} to drop {}", node.ns, gone.subnet),
            Duration::from_secs(2),
            || {
                Ok(inspect::routes_to(&node.ns, &gone.subnet)?.is_empty()
                    && !inspect::neighbours(&node.ns, "flannel.1")?
                        .iter()
                        .any(|n| n["dst"] == gateway.as_str())
                    && !inspect::fdb(&node.ns, "flannel.1")?
                        .iter()
                        .any(|entry| entry["mac"] == mac.as_str()))
            },
        )
        .unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2));
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
    let Some(_guard) = privileged_test("an_etcd_outage_loses_no_packet_and_agents_reconnect")
    else {
        return;
    };
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
    sleep(Duration::from_secs(2));
    lab.stop_etcd().unwrap();
    sleep(Duration::from_secs(30));
    lab.start_etcd().unwrap();
    let out = ping.join().unwrap().unwrap();
    assert!(
        out.contains("350 received"),
        "packets lost during the outage: {out}"
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
    let Some(_guard) = privileged_test("compaction_past_the_watch_revision_loses_no_event") else {
        return;
    };
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
    // Freeze the agents so their watches fall behind, change leases, compact
    // history past what they have seen, and restart etcd so every watch
    // must be re-established from a compacted revision.
    let pids: Vec<u32> = lab
        .node_ids()
        .map(|node| lab.agent_pid(node).unwrap())
        .collect();
    for pid in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGSTOP).unwrap();
    }
    let (key_b, value_b) = fake(2);
    etcd.put(&key_b, &value_b).unwrap();
    etcd.delete(&key_a).unwrap();
    let (key_c, value_c) = fake(3);
    etcd.put(&key_c, &value_c).unwrap();
    etcd.compact(etcd.revision().unwrap()).unwrap();
    lab.stop_etcd().unwrap();
    lab.start_etcd().unwrap();
    for pid in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGCONT).unwrap();
    }
    for node in &lab.state.nodes {
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
    }
}

#[test]
fn hostile_values_are_logged_by_key_and_the_rest_keeps_working() {
    let Some(_guard) =
        privileged_test("hostile_values_are_logged_by_key_and_the_rest_keeps_working")
    else {
        return;
    };
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
    let Some(_guard) =
        privileged_test("two_agents_racing_for_one_subnet_end_with_distinct_subnets")
    else {
        return;
    };
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
    let Some(_guard) = privileged_test(
        "a_restarted_agent_removes_entries_for_leases_that_vanished_while_it_was_down",
    ) else {
        return;
    };
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

#[test]
fn ip_masq_lets_pods_reach_the_underlay_and_restores_flushed_rules() {
    let Some(_guard) =
        privileged_test("ip_masq_lets_pods_reach_the_underlay_and_restores_flushed_rules")
    else {
        return;
    };
    // The underlay has no route back to the pod network: a pod reaches
    // 192.168.77.254 only if its node masquerades.
    let mut plain = LabSpec::new("t-cp-nomasq", 1, 1);
    plain.dataplane = Dataplane::Kernel;
    let lab = Lab::up(&plain).unwrap();
    let pod = lab.node(NodeId::new(1)).pods[0].clone();
    assert!(
        lab.ping(&pod, "192.168.77.254", 1).is_err(),
        "reached the underlay without masquerade"
    );
    drop(lab);

    let mut spec = LabSpec::new("t-cp-masq", 2, 1);
    spec.dataplane = Dataplane::Kernel;
    spec.ip_masq = true;
    let lab = Lab::up(&spec).unwrap();
    let ns = lab.node(NodeId::new(1)).ns.clone();
    let rules =
        weft_tests::netns::run(&ns, &["nft", "list", "table", "ip", "flannel-ipv4"]).unwrap();
    let network = "10.244.0.0/16";
    for rule in [
        "meta mark 0x00004000 return".to_owned(),
        format!("ip saddr {network} ip daddr {network} return"),
        format!(
            "ip saddr != {network} ip daddr {} return",
            lab.node(NodeId::new(1)).subnet
        ),
        format!("ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random"),
        format!("ip saddr != {network} ip daddr {network} masquerade fully-random"),
        format!("ip saddr {network} accept"),
        format!("ip daddr {network} accept"),
    ] {
        assert!(rules.contains(&rule), "missing `{rule}` in\n{rules}");
    }
    let env = std::fs::read_to_string(&lab.node(NodeId::new(1)).subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    let pod = lab.node(NodeId::new(1)).pods[0].clone();
    assert!(
        lab.ping(&pod, "192.168.77.254", 3)
            .unwrap()
            .contains("3 received")
    );
    // Pod-to-pod traffic is not masqueraded: it still works across nodes.
    lab.assert_all_pairs_ping(2);
    // Someone flushes the table: the agent puts it back.
    weft_tests::netns::run(&ns, &["nft", "delete", "table", "ip", "flannel-ipv4"]).unwrap();
    wait_for(
        "the masquerade rules to come back",
        Duration::from_secs(15),
        || {
            Ok(
                weft_tests::netns::run(&ns, &["nft", "list", "table", "ip", "flannel-ipv4"])
                    .is_ok_and(|rules| rules.contains("masquerade fully-random")),
            )
        },
    )
    .unwrap();
    assert!(
        lab.ping(&pod, "192.168.77.254", 3)
            .unwrap()
            .contains("3 received")
    );
}

#[test]
fn leases_live_24_hours_and_are_renewed_before_the_margin() {
    let Some(_guard) = privileged_test("leases_live_24_hours_and_are_renewed_before_the_margin")
    else {
        return;
    };
    // A margin of 23 h 59 min makes the agent renew one minute after taking
    // the lease, instead of after 23 h.
    let mut spec = LabSpec::new("t-cp-renew", 1, 0);
    spec.dataplane = Dataplane::Kernel;
    spec.agent_args = vec!["--subnet-lease-renew-margin".into(), "1439".into()];
    let lab = Lab::up(&spec).unwrap();
    let key = format!(
        "{ETCD_PREFIX}/subnets/{}",
        lab.node(NodeId::new(1)).subnet.replace('/', "-")
    );
    let etcd = lab.etcd();
    let (first_id, granted, remaining) = etcd.lease_of(&key).unwrap();
    assert_eq!(granted, 24 * 3600, "lease TTL");
    assert!(remaining > 24 * 3600 - 60, "remaining TTL {remaining}");
    wait_for("the lease to be renewed", Duration::from_secs(90), || {
        Ok(etcd.lease_of(&key)?.0 != first_id)
    })
    .unwrap();
    let (_, granted, remaining) = etcd.lease_of(&key).unwrap();
    assert_eq!(granted, 24 * 3600);
    assert!(
        remaining > 24 * 3600 - 60,
        "renewed lease has {remaining} s left"
    );
    let value = etcd.get_prefix(&key).unwrap();
    assert_eq!(value.len(), 1);
    assert!(
        value[0].1.contains(r#""PublicIP":"192.168.77.1""#),
        "{value:?}"
    );
}

#[test]
fn the_agent_speaks_to_etcd_over_tls_with_client_certificates_and_a_password() {
    let Some(_guard) = privileged_test(
        "the_agent_speaks_to_etcd_over_tls_with_client_certificates_and_a_password",
    ) else {
        return;
    };
    let mut spec = LabSpec::new("t-cp-tls", 1, 0);
    spec.dataplane = Dataplane::Kernel;
    let mut lab = Lab::up(&spec).unwrap();
    lab.stop_agent(NodeId::new(1), Signal::SIGTERM).unwrap();
    let run_dir = lab.state.run_dir.clone();
    let tls = run_dir.join("tls");
    weft_tests::etcd::make_certificates(&tls, "192.168.77.254").unwrap();
    weft_tests::etcd::start_secure(&lab.state.underlay_ns, "192.168.77.254", &run_dir, &tls)
        .unwrap();
    let admin = weft_tests::etcd::LabEtcd {
        ns: lab.state.underlay_ns.clone(),
        endpoint: weft_tests::etcd::SECURE_ADMIN.to_owned(),
        credentials: None,
    };
    admin
        .put("/secure/config", &Backend::Vxlan.network_config())
        .unwrap();
    admin.enable_auth("root", "s3cret").unwrap();
    let admin = weft_tests::etcd::LabEtcd {
        credentials: Some(("root".into(), "s3cret".into())),
        ..admin
    };

    let node = lab.node(NodeId::new(1)).clone();
    let start = |password: &str, port: u16, env_file: &str, tag: &str| {
        let mut command =
            weft_tests::netns::command(&node.ns, &lab.state.weft_bin.display().to_string())
                .unwrap();
        let file = |name: &str| tls.join(name).display().to_string();
        command
            .args([
                "agent",
                "--iface",
                "eth0",
                "--dataplane",
                "kernel",
                "--etcd-prefix",
                "/secure",
            ])
            .args([
                "--etcd-endpoints",
                &format!("https://192.168.77.254:{}", weft_tests::etcd::SECURE_PORT),
            ])
            .args([
                "--etcd-cafile",
                &file("ca.crt"),
                "--etcd-certfile",
                &file("client.crt"),
                "--etcd-keyfile",
                &file("client.key"),
            ])
            .args(["--etcd-username", "root", "--etcd-password", password])
            .args([
                "--healthz-ip",
                "127.0.0.1",
                "--healthz-port",
                &port.to_string(),
            ])
            .args([
                "--subnet-file",
                &run_dir.join(env_file).display().to_string(),
            ]);
        let log = run_dir.join(format!("{tag}.log"));
        weft_tests::process::spawn_daemon(command, &log, &run_dir.join(format!("{tag}.pid")))
            .unwrap();
        log
    };
    // A wrong password: the agent says so and never becomes ready.
    let refused_log = start("wrong", 10258, "refused.env", "agent-refused");
    wait_for("the authentication error", Duration::from_secs(15), || {
        Ok(std::fs::read_to_string(&refused_log)?
            .to_lowercase()
            .contains("authentication failed"))
    })
    .unwrap();
    // Alive (healthz 200) but not ready (readyz 503).
    assert!(weft_tests::lab::http_ok(&node.ns, 10258, "/healthz").unwrap());
    assert!(!weft_tests::lab::agent_ready_on(&node.ns, 10258).unwrap());
    weft_tests::process::stop(&run_dir.join("agent-refused.pid"), Duration::from_secs(5)).unwrap();

    // The right one: a lease in the TLS etcd, subnet.env written, ready.
    let log = start("s3cret", 10257, "secure.env", "agent-secure");
    wait_for("the TLS agent to be ready", Duration::from_secs(20), || {
        weft_tests::lab::agent_ready_on(&node.ns, 10257)
    })
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let leases = admin.get_prefix("/secure/subnets/").unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(
        leases[0]
            .1
            .starts_with(r#"{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan""#),
        "{leases:?}"
    );
    let env = std::fs::read_to_string(run_dir.join("secure.env")).unwrap();
    let subnet = leases[0].0.rsplit('/').next().unwrap().replace('-', "/");
    let first_host = subnet
        .parse::<ipnet::Ipv4Net>()
        .unwrap()
        .hosts()
        .next()
        .unwrap();
    assert!(
        env.contains(&format!("FLANNEL_SUBNET={first_host}/24")),
        "{env}"
    );
    // Without the password the same etcd refuses plain reads: auth is really on.
    let anonymous = weft_tests::etcd::LabEtcd {
        credentials: None,
        ..admin
    };
    assert!(anonymous.get_prefix("/secure/subnets/").is_err());
    let _ = &mut lab;
}

#[test]
fn direct_routing_routes_on_link_peers_without_encapsulation() {
    let Some(_guard) = privileged_test("direct_routing_routes_on_link_peers_without_encapsulation")
    else {
        return;
    };
    let mut spec = three_nodes("t-cp-direct", Backend::Vxlan);
    spec.network_config = Some(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#.to_owned(),
    );
    let lab = Lab::up(&spec).unwrap();
    // Leases stay vxlan leases (peers off the segment would still need the
    // VTEP), but every peer here is on-link, so each is routed like host-gw.
    for (key, value) in lab
        .etcd()
        .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .unwrap()
    {
        assert!(
            value.contains(r#""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":""#),
            "{key}: {value}"
        );
    }
    for node in &lab.state.nodes {
        for peer in lab.state.nodes.iter().filter(|peer| peer.id != node.id) {
            let route = inspect::routes_to(&node.ns, &peer.subnet).unwrap();
            assert!(
                route.len() == 1
                    && route[0]["gateway"] == peer.ip.as_str()
                    && route[0]["dev"] == "eth0",
                "{}: {route:?}",
                node.ns
            );
        }
        assert!(
            inspect::neighbours(&node.ns, "flannel.1")
                .unwrap()
                .is_empty()
        );
        assert!(inspect::fdb(&node.ns, "flannel.1").unwrap().is_empty());
    }
    lab.assert_all_pairs_ping(2);
}
