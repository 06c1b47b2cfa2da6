//! weft as a drop-in flanneld, on the lab with the real etcd: leases,
//! subnet.env and kernel state exactly as flanneld writes them, ip-masq,
//! lease lifetimes, etcd over TLS and DirectRouting. Restarts, deletions,
//! outages, compaction, hostile values and races: control_plane_failures.rs.

use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, flannel, inspect,
    lab::{ETCD_PREFIX, three_nodes, wait_for},
    netns, privileged,
};

#[test]
fn vxlan_lab_matches_flannel_and_every_pod_reaches_every_pod() {
    let _guard = privileged!("vxlan_lab_matches_flannel_and_every_pod_reaches_every_pod");
    let lab = Lab::up(&three_nodes("t-cp-vxlan", Backend::Vxlan)).unwrap();
    flannel::check(&lab).unwrap();
    lab.assert_all_pairs_ping(2);
}

#[test]
fn host_gw_lab_matches_flannel_and_every_pod_reaches_every_pod() {
    let _guard = privileged!("host_gw_lab_matches_flannel_and_every_pod_reaches_every_pod");
    let lab = Lab::up(&three_nodes("t-cp-hostgw", Backend::HostGw)).unwrap();
    flannel::check(&lab).unwrap();
    lab.assert_all_pairs_ping(2);
}

#[test]
fn ip_masq_lets_pods_reach_the_underlay_and_restores_flushed_rules() {
    let _guard = privileged!("ip_masq_lets_pods_reach_the_underlay_and_restores_flushed_rules");
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
        "meta mark & 0x00004000 == 0x00004000 return".to_owned(),
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
fn leases_live_24_hours_are_renewed_before_the_margin_and_a_failed_renewal_alerts() {
    let _guard = privileged!(
        "leases_live_24_hours_are_renewed_before_the_margin_and_a_failed_renewal_alerts"
    );
    // A margin of 23 h 59 min makes the agent renew one minute after taking
    // the lease, instead of after 23 h. etcd is away when that renewal is
    // due: the failure is counted (the alert the docs recommend), and the
    // retry a minute later renews the lease.
    let mut spec = LabSpec::new("t-cp-renew", 1, 0);
    spec.dataplane = Dataplane::Kernel;
    spec.agent_args = vec!["--subnet-lease-renew-margin".into(), "1439".into()];
    let lab = Lab::up(&spec).unwrap();
    let node = NodeId::new(1);
    let key = format!(
        "{ETCD_PREFIX}/subnets/{}",
        lab.node(node).subnet.replace('/', "-")
    );
    let etcd = lab.etcd();
    let (first_id, granted, remaining) = etcd.lease_of(&key).unwrap();
    assert_eq!(granted, 24 * 3600, "lease TTL");
    assert!(remaining > 24 * 3600 - 60, "remaining TTL {remaining}");
    assert_eq!(lab.metric(node, "weft_lease_renewals_total").unwrap(), 0.0);
    assert_eq!(
        lab.metric(node, "weft_lease_renewal_failures_total")
            .unwrap(),
        0.0
    );
    // The renewal is due 60 s after the grant; etcd stops 10 s before.
    let lease_age = Duration::from_secs((24 * 3600 - remaining) as u64);
    sleep(Duration::from_secs(50).saturating_sub(lease_age));
    lab.stop_etcd().unwrap();
    wait_for(
        "the renewal due while etcd is away to fail and be counted",
        Duration::from_secs(45),
        || Ok(lab.metric(node, "weft_lease_renewal_failures_total")? == 1.0),
    )
    .unwrap();
    assert_eq!(lab.metric(node, "weft_lease_renewals_total").unwrap(), 0.0);
    lab.start_etcd().unwrap();
    let retried = Instant::now();
    wait_for(
        "the renewal retried a minute later to succeed",
        Duration::from_secs(90),
        || Ok(lab.metric(node, "weft_lease_renewals_total")? == 1.0),
    )
    .unwrap();
    eprintln!("renewed {:?} after etcd came back", retried.elapsed());
    assert_eq!(
        lab.metric(node, "weft_lease_renewal_failures_total")
            .unwrap(),
        1.0,
        "one failure only: the retry worked"
    );
    let (renewed_id, granted, remaining) = etcd.lease_of(&key).unwrap();
    assert_ne!(renewed_id, first_id, "the key is still on the first grant");
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
    let _guard =
        privileged!("the_agent_speaks_to_etcd_over_tls_with_client_certificates_and_a_password");
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
    let _guard = privileged!("direct_routing_routes_on_link_peers_without_encapsulation");
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

/// A dual-stack network config (issue #23): the lab's IPv4 network and an
/// IPv6 one with flannel's default /64 subnets.
const DUAL_STACK_CONFIG: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:c6::/56","Backend":{"Type":"vxlan"}}"#;

/// What stock flanneld v0.20.2 writes for a dual-stack vxlan peer, derived
/// from its source (see `lease/mod.rs`' byte-compatibility test).
fn dual_value(public_ip: &str, public_ipv6: &str, mac: &str, mac_v6: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":"{public_ipv6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac_v6}"}}}}"#
    )
}

#[test]
fn dual_stack_leases_are_taken_kept_and_judged_on_the_real_etcd() {
    let _guard = privileged!("dual_stack_leases_are_taken_kept_and_judged_on_the_real_etcd");
    // An IPv4-only network turned dual-stack: the node (given an IPv6
    // underlay address) keeps its IPv4 subnet. flanneld deletes a lease of
    // ours that no longer fits and picks both halves anew; weft deletes it
    // too, but keeps its IPv4 subnet so running pods keep their addresses.
    let mut spec = LabSpec::new("c6-dual-etcd", 1, 0);
    spec.dataplane = Dataplane::Kernel;
    let mut lab = Lab::up(&spec).unwrap();
    let node = NodeId::new(1);
    let ns = lab.node(node).ns.clone();
    let etcd = lab.etcd();
    let subnets = format!("{ETCD_PREFIX}/subnets/");
    let v4_only = format!("{subnets}{}", lab.node(node).subnet.replace('/', "-"));
    assert_eq!(etcd.get_prefix(&subnets).unwrap().len(), 1);
    lab.stop_agent(node, Signal::SIGTERM).unwrap();
    netns::run(
        &ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd77::1/64",
            "dev",
            "eth0",
            "nodad",
        ],
    )
    .unwrap();
    etcd.put(&format!("{ETCD_PREFIX}/config"), DUAL_STACK_CONFIG)
        .unwrap();
    // Without subnet.env, the deleted lease's IPv4 subnet is the one kept.
    std::fs::remove_file(&lab.node(node).subnet_file).unwrap();
    let before = lab.node(node).subnet.clone();
    lab.start_agent(node).unwrap();
    assert_eq!(lab.node(node).subnet, before);
    // Our lease: one key, `<v4>-24&<v6>-64`, its v6 half a /64 of
    // IPv6Network from IPv6SubnetMin on, named in subnet.env, its value
    // byte for byte what flanneld v0.20.2 writes for a dual-stack node.
    let leases = etcd.get_prefix(&subnets).unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    let name = leases[0].0.strip_prefix(&subnets).unwrap().to_owned();
    let (v4, v6) = name.split_once('&').expect("a dual-stack key");
    assert_eq!(format!("{subnets}{v4}"), v4_only);
    let v6_subnet: ipnet::Ipv6Net = v6.replacen('-', "/", 1).parse().unwrap();
    assert_eq!(v6_subnet.prefix_len(), 64);
    assert!(
        "fd00:c6::/56"
            .parse::<ipnet::Ipv6Net>()
            .unwrap()
            .contains(&v6_subnet)
    );
    assert_ne!(
        v6_subnet.network(),
        "fd00:c6::".parse::<std::net::Ipv6Addr>().unwrap(),
        "below IPv6SubnetMin"
    );
    let mac_of = |device: &str| {
        inspect::link(&ns, device).unwrap().unwrap()["address"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        leases[0].1,
        dual_value(
            "192.168.77.1",
            "fd77::1",
            &mac_of("flannel.1"),
            &mac_of("flannel-v6.1")
        )
    );
    let env = std::fs::read_to_string(&lab.node(node).subnet_file).unwrap();
    let first_host = format!("{}1/64", v6_subnet.network());
    assert!(
        env.contains(&format!(
            "FLANNEL_IPV6_NETWORK=fd00:c6::/56\nFLANNEL_IPV6_SUBNET={first_host}\n"
        )),
        "{env}"
    );

    // A dual-stack peer as flanneld writes it is accepted; hostile v6
    // halves are rejected whole, each counted by its rule. Their subnets
    // (10.244.150-158.0/24, fd00:c6:0:d0-d8::/64) lie past the first 100
    // of each family, the pool our own lease was picked from at random: a
    // peer colliding with our own subnet would be counted by another rule.
    let peer = |v4: &str, v6: &str| format!("{subnets}{v4}&{v6}");
    let good = dual_value(
        "192.168.77.50",
        "fd77::50",
        "0e:01:00:00:00:50",
        "0e:06:00:00:00:50",
    );
    etcd.put(&peer("10.244.150.0-24", "fd00:c6:0:d0::-64"), &good)
        .unwrap();
    let hostile = [
        (
            "10.244.151.0-24",
            "fd00:c7:0:51::-64",
            dual_value(
                "192.168.77.51",
                "fd77::51",
                "0e:01:00:00:00:51",
                "0e:06:00:00:00:51",
            ),
            "ipv6_subnet_outside_network",
        ),
        (
            "10.244.152.0-24",
            v6,
            dual_value(
                "192.168.77.52",
                "fd77::52",
                "0e:01:00:00:00:52",
                "0e:06:00:00:00:52",
            ),
            "ipv6_subnet_overlaps_own",
        ),
        (
            "10.244.153.0-24",
            "fd00:c6:0:d3::-64",
            dual_value(
                "192.168.77.53",
                "fe80::53",
                "0e:01:00:00:00:53",
                "0e:06:00:00:00:53",
            ),
            "public_ipv6_not_unicast",
        ),
        (
            "10.244.154.0-24",
            "fd00:c6:0:d4::-64",
            dual_value(
                "192.168.77.54",
                "fd00:c6:0:d0::1",
                "0e:01:00:00:00:54",
                "0e:06:00:00:00:54",
            ),
            "public_ipv6_inside_network",
        ),
        (
            "10.244.155.0-24",
            "fd00:c6:0:d5::-64",
            dual_value(
                "192.168.77.55",
                "fd77::55",
                "0e:01:00:00:00:55",
                "0e:06:00:00:00:55",
            )
            .replace(r#""PublicIPv6":"fd77::55""#, r#""PublicIPv6":null"#),
            "ipv6_half_incomplete",
        ),
        (
            "10.244.156.0-24",
            "fd00:c6:0:d0::-64",
            dual_value(
                "192.168.77.56",
                "fd77::56",
                "0e:01:00:00:00:56",
                "0e:06:00:00:00:56",
            ),
            "ipv6_subnet_overlaps_peer",
        ),
        (
            "10.244.158.0-24",
            "fd00:c6:0:d8::-64",
            dual_value(
                "192.168.77.58",
                "fd77::1",
                "0e:01:00:00:00:58",
                "0e:06:00:00:00:58",
            ),
            "public_ipv6_ours",
        ),
        (
            "10.244.157.0-24",
            "fd00:c6:0:d7::-64",
            dual_value(
                "192.168.77.57",
                "fd77::57",
                "0e:01:00:00:00:57",
                "0e:06:00:00:00:50",
            ),
            "ipv6_vtep_mac_in_use",
        ),
    ];
    for (v4, v6, value, _) in &hostile {
        etcd.put(&peer(v4, v6), value).unwrap();
    }
    for (_, _, _, rule) in &hostile {
        wait_for(
            &format!("the lease breaking {rule} to be rejected and counted"),
            Duration::from_secs(20),
            || {
                Ok(lab
                    .metric(
                        node,
                        &format!("weft_leases_rejected_total{{rule=\"{rule}\"}}"),
                    )
                    .unwrap_or(0.0)
                    == 1.0)
            },
        )
        .unwrap_or_else(|error| {
            // What was counted instead, and our own subnets.
            let ns = &lab.node(node).ns;
            let counted = netns::in_netns(ns, || {
                weft_tests::scrapes::get(weft_tests::lab::HEALTHZ_PORT, "/metrics")
            })
            .map(|response| {
                response
                    .body
                    .lines()
                    .filter(|line| line.starts_with("weft_leases_rejected_total"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|error| format!("{error:#}"));
            let env = std::fs::read_to_string(&lab.node(node).subnet_file).unwrap_or_default();
            panic!("{error:#}\n{counted}\n{env}")
        });
    }
    // The good peer is programmed, both halves (the routes via flannel.1
    // and flannel-v6.1), none of the hostile ones is.
    wait_for(
        "the dual-stack peer's routes",
        Duration::from_secs(20),
        || {
            let ns = &lab.node(node).ns;
            Ok(!inspect::routes_to(ns, "10.244.150.0/24")?.is_empty()
                && !inspect::routes6_to(ns, "fd00:c6:0:d0::/64")?.is_empty())
        },
    )
    .unwrap();
    for (v4, _, _, rule) in &hostile {
        let subnet = v4.replace('-', "/");
        assert!(
            inspect::routes_to(&lab.node(node).ns, &subnet)
                .unwrap()
                .is_empty(),
            "{subnet} ({rule}) was programmed"
        );
    }

    // A restart keeps both halves (our existing lease), and so does taking
    // the lease again after it is deleted (subnet.env's subnets).
    lab.stop_agent(node, Signal::SIGTERM).unwrap();
    lab.start_agent(node).unwrap();
    let own_key = format!("{subnets}{name}");
    let ours = |etcd: &weft_tests::etcd::LabEtcd| {
        etcd.get_prefix(&own_key)
            .unwrap()
            .into_iter()
            .filter(|(key, _)| *key == own_key)
            .count()
    };
    assert_eq!(ours(&etcd), 1);
    let env_again = std::fs::read_to_string(&lab.node(node).subnet_file).unwrap();
    assert_eq!(env_again, env);
    // The allocator avoids every key's subnets, as flanneld's does, even a
    // rejected squatter's: without it gone our IPv6 subnet would be taken.
    etcd.delete(&peer("10.244.152.0-24", v6)).unwrap();
    etcd.delete(&own_key).unwrap();
    wait_for(
        "our lease to be taken again with both halves",
        Duration::from_secs(30),
        || Ok(ours(&etcd) == 1),
    )
    .unwrap();
    assert_eq!(
        lab.metric(node, "weft_lease_reacquisitions_total{subnet=\"same\"}")
            .unwrap(),
        1.0
    );
}

/// Two nodes racing for subnets on the real etcd: the creation
/// transaction keeps the IPv4 half unique whatever IPv6 half a key pairs it
/// with, and the younger of two leases naming one IPv6 subnet sees that it
/// lost (etcd cannot make an IPv6 half unique across IPv4 keys).
#[test]
fn racing_dual_stack_creations_never_leave_one_subnet_with_two_nodes() {
    let _guard = privileged!("racing_dual_stack_creations_never_leave_one_subnet_with_two_nodes");
    let mut spec = LabSpec::new("t-cp-race6", 1, 0);
    spec.dataplane = Dataplane::Kernel;
    let lab = Lab::up(&spec).unwrap();
    let config = weft_agent::config::NetworkConfig::parse(DUAL_STACK_CONFIG).unwrap();
    let endpoint = lab.state.etcd_endpoint.clone();
    netns::in_netns(&lab.state.underlay_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            use weft_agent::lease::{LeaseAttrs, LeaseSubnets, acquire, registry};
            let options = registry::EtcdOptions {
                endpoints: vec![endpoint],
                // Apart from the lab agent's own keys.
                prefix: "/weft-race".into(),
                keyfile: None,
                certfile: None,
                cafile: None,
                username: None,
                password: None,
            };
            let mut etcd =
                registry::Registry::connect(&options, &options.connect_options()?).await?;
            let attrs = LeaseAttrs::from_json(
                br#"{"PublicIP":"192.168.77.9","PublicIPv6":"fd00:192:168:77::9","BackendType":"host-gw"}"#,
            )?;
            let ttl = Duration::from_secs(60);
            let subnets = |v4: &str, v6: Option<&str>| LeaseSubnets {
                v4: v4.parse().unwrap(),
                v6: v6.map(|v6| v6.parse().unwrap()),
            };
            let first = subnets("10.244.200.0/24", Some("fd00:c6:0:c8::/64"));
            let first_revision = etcd.create(&first, &attrs, ttl).await?;
            assert!(first_revision.is_some(), "the first creation failed");
            // The same IPv4 subnet under another key: refused.
            for same_v4 in [
                subnets("10.244.200.0/24", Some("fd00:c6:0:c9::/64")),
                subnets("10.244.200.0/24", None),
            ] {
                assert_eq!(
                    etcd.create(&same_v4, &attrs, ttl).await?,
                    None,
                    "{same_v4} was created next to {first}"
                );
            }
            // A key that sorts next to it but names another subnet: taken.
            let neighbour = subnets("10.244.20.0/24", Some("fd00:c6:0:14::/64"));
            let neighbour_revision = etcd
                .create(&neighbour, &attrs, ttl)
                .await?
                .expect("10.244.20.0/24 is free");
            // The same IPv6 subnet under another IPv4 key: etcd lets it in;
            // the younger lease sees that it lost, the older that it did not.
            let second = subnets("10.244.201.0/24", Some("fd00:c6:0:c8::/64"));
            let second_revision = etcd
                .create(&second, &attrs, ttl)
                .await?
                .expect("etcd keeps only the IPv4 half unique");
            assert!(acquire::lost_ipv6_race(&mut etcd, &config, &second, second_revision).await?);
            assert!(
                !acquire::lost_ipv6_race(&mut etcd, &config, &first, first_revision.unwrap())
                    .await?
            );
            assert!(
                !acquire::lost_ipv6_race(&mut etcd, &config, &neighbour, neighbour_revision)
                    .await?
            );
            anyhow::Ok(())
        })
    })
    .unwrap();
}
