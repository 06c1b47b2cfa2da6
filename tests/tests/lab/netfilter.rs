//! Netfilter stays the authority, on the lab with real netfilter: rules
//! shaped like kube-proxy's (iptables and nftables modes), NodePort with
//! masquerade, FORWARD drops as a NetworkPolicy agent installs them, and
//! `conntrack -F` under load. Every check is one a user makes: requests
//! answered from the address they were sent to, pings and connections
//! blocked or restored, a transfer's digest intact, and the counters that
//! prove the fast path still carries what netfilter passed unchanged.
//!
//! An iptables-legacy rule, which no notification announces, bites within
//! the verdict TTL; conntrack helpers' connections and the connections
//! they expect stay on the kernel path.
//!
//! With the fast path made to ignore verdicts, the ClusterIP check fails
//! (checked by hand).

use std::{net::SocketAddr, time::Duration};
use weft_common::{
    Hook::{TcPodEgress, TcUplink, TcVerdict, XdpUplink},
    Reason,
};

use weft_tests::{
    Backend, Lab, LabSpec, NodeId, cni,
    echo::{EchoServer, TcpSession, tcp_echo, udp_echo},
    kube_proxy::{self, Service},
    lab::{
        DECAP_COUNTERS, HOST_GW_DELIVERY_COUNTERS, XDP_NATIVE, carried_nearly_all, counter_delta,
        counters_delta, wait_for,
    },
    netns, privileged,
    traffic::tcp_transfer,
};

const ECHO_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
const TIMEOUT: Duration = Duration::from_secs(3);
/// Every counter of a packet the fast path delivered into a pod: VXLAN and
/// host-gw from the uplink, and same-node pod to pod.
const POD_DELIVERY_COUNTERS: [weft_common::CounterId; 5] = [
    DECAP_COUNTERS[0],
    DECAP_COUNTERS[1],
    HOST_GW_DELIVERY_COUNTERS[0],
    HOST_GW_DELIVERY_COUNTERS[1],
    TcPodEgress.counter(Reason::LocalRedirect),
];

#[test]
fn vxlan_with_tc_keeps_every_netfilter_decision() {
    let _guard = privileged!("vxlan_with_tc_keeps_every_netfilter_decision");
    keeps_every_netfilter_decision(LabSpec::new("t-nf-vx", 2, 2));
}

#[test]
fn vxlan_with_native_xdp_keeps_every_netfilter_decision() {
    let _guard = privileged!("vxlan_with_native_xdp_keeps_every_netfilter_decision");
    let mut spec = LabSpec::new("t-nf-vxdp", 2, 2);
    spec.agent_args.push(XDP_NATIVE.to_owned());
    keeps_every_netfilter_decision(spec);
}

#[test]
fn host_gw_keeps_every_netfilter_decision() {
    let _guard = privileged!("host_gw_keeps_every_netfilter_decision");
    let mut spec = LabSpec::new("t-nf-hg", 2, 2);
    spec.backend = Backend::HostGw;
    keeps_every_netfilter_decision(spec);
}

#[test]
fn host_gw_with_native_xdp_keeps_every_netfilter_decision() {
    let _guard = privileged!("host_gw_with_native_xdp_keeps_every_netfilter_decision");
    let mut spec = LabSpec::new("t-nf-hgxdp", 2, 2);
    spec.backend = Backend::HostGw;
    spec.agent_args.push(XDP_NATIVE.to_owned());
    keeps_every_netfilter_decision(spec);
}

/// Pods A and C on node 1, B on node 2 (echo servers on B and C).
fn keeps_every_netfilter_decision(spec: LabSpec) {
    let host_gw = spec.backend == Backend::HostGw;
    let lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    let (a, c) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(1)).pods[1].clone(),
    );
    let b = lab.node(NodeId::new(2)).pods[0].clone();
    let _servers: Vec<EchoServer> = [&b, &c]
        .iter()
        .map(|pod| EchoServer::start(&pod.ns, ECHO_PORT).unwrap())
        .collect();
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };

    // kube-proxy, iptables mode, on both nodes: a Service with endpoints on
    // both nodes, one with its endpoint on the client's node, one on the
    // other node (with a NodePort), each for TCP and UDP.
    let service = |ip: &str, protocol, node_port, endpoints: &[&str]| Service {
        cluster_ip: ip.to_owned(),
        port: if protocol == "tcp" { 80 } else { 53 },
        protocol,
        node_port,
        endpoints: endpoints
            .iter()
            .map(|ip| (ip.to_string(), ECHO_PORT))
            .collect(),
    };
    let services = [
        service("10.96.0.10", "tcp", None, &[b.ip(), c.ip()]),
        service("10.96.0.10", "udp", None, &[b.ip(), c.ip()]),
        service("10.96.0.11", "tcp", None, &[c.ip()]),
        service("10.96.0.11", "udp", None, &[c.ip()]),
        service("10.96.0.12", "tcp", Some(NODE_PORT), &[b.ip()]),
        service("10.96.0.12", "udp", None, &[b.ip()]),
    ];
    for node in [NodeId::new(1), NodeId::new(2)] {
        kube_proxy::install_iptables(&lab.node(node).ns, &services).unwrap();
    }
    let before = lab.counters(NodeId::new(1)).unwrap();
    assert_services_answer(
        &lab,
        &a.ns,
        &["10.96.0.10", "10.96.0.11", "10.96.0.12"],
        "iptables mode",
    );
    let after = lab.counters(NodeId::new(1)).unwrap();
    // Every packet reaching pod A was a reply to be un-DNATed on node 1
    // (its source rewritten to the Service address): the fast path, which
    // does no NAT, must have delivered none of them, whichever node the
    // endpoint was on.
    let delivered_to_a = counters_delta(&before, &after, &POD_DELIVERY_COUNTERS);
    assert_eq!(
        delivered_to_a.0, 0,
        "node 1's fast path delivered {} DNAT'd replies past netfilter",
        delivered_to_a.0
    );
    // NodePort from outside the cluster (the underlay), masqueraded to a
    // backend on the other node.
    tcp_echo(
        &lab.state.underlay_ns,
        at(&lab.node(NodeId::new(1)).ip, NODE_PORT),
        50,
        TIMEOUT,
    )
    .expect("the NodePort did not answer from the underlay");

    // A hostPort (the real portmap plugin, as a runtime runs it) on node 2
    // for pod B, reached from a pod on node 1 and from the underlay.
    let host_port = 8081;
    cni::add_port_mappings(
        &lab.node(NodeId::new(2)).ns,
        &b.ns,
        &b.network,
        &[("tcp", host_port, ECHO_PORT), ("udp", host_port, ECHO_PORT)],
    )
    .unwrap();
    let node2 = at(&lab.node(NodeId::new(2)).ip, host_port);
    for client in [a.ns.as_str(), lab.state.underlay_ns.as_str()] {
        tcp_echo(client, node2, 50, TIMEOUT)
            .unwrap_or_else(|error| panic!("hostPort over TCP from {client}: {error:#}"));
        assert_udp_answered(
            &lab,
            client,
            node2,
            &format!("hostPort over UDP from {client}"),
        );
    }

    // The fast path still carries what netfilter passes unchanged, with
    // KUBE-FORWARD dropping conntrack INVALID on both nodes.
    let before = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
    ];
    let transfer = tcp_transfer(&b.ns, b.ip(), 5001, &a.ns, 200 * 1024 * 1024).unwrap();
    assert_eq!(
        transfer.sent, transfer.received,
        "the transfer was corrupted"
    );
    let after = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
    ];
    let (sent, delivered) = if host_gw {
        (
            counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::HostGw)).1,
            counters_delta(&before[1], &after[1], &HOST_GW_DELIVERY_COUNTERS).1,
        )
    } else {
        (
            counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::Encap)).1,
            counters_delta(&before[1], &after[1], &DECAP_COUNTERS).1,
        )
    };
    assert!(
        carried_nearly_all(sent, transfer.bytes) && carried_nearly_all(delivered, transfer.bytes),
        "the fast path sent {sent} and delivered {delivered} bytes of {}",
        transfer.bytes
    );

    // conntrack forgets everything in the middle of a transfer: netfilter
    // sees the flow again, the verdicts are learned again, and nothing is
    // lost. The flush waits until the transfer is under way (watched in
    // node 2's pinned STATS every millisecond), and must land well before
    // its end, however fast this machine is.
    const UNDER_WAY: u64 = 1024 * 1024;
    const TRANSFER: u64 = 256 * 1024 * 1024;
    const AFTER_THE_FLUSH: u64 = TRANSFER / 2;
    let delivery = if host_gw {
        HOST_GW_DELIVERY_COUNTERS
    } else {
        DECAP_COUNTERS
    };
    let started = lab.pinned_counters(NodeId::new(2)).unwrap();
    let (transfer, at_flush) = std::thread::scope(|scope| {
        let lab = &lab;
        let flusher = scope.spawn(move || {
            lab.wait_for_bytes(
                NodeId::new(2),
                &started,
                &delivery,
                UNDER_WAY,
                Duration::from_secs(30),
            )?;
            let node2 = &lab.node(NodeId::new(2)).ns;
            anyhow::ensure!(
                transfer_conntrack_entries(node2)? > 0,
                "no conntrack entry for the transfer"
            );
            for node in [NodeId::new(1), NodeId::new(2)] {
                netns::run(&lab.node(node).ns, &["conntrack", "-F"])?;
            }
            let at_flush = [
                lab.pinned_counters(NodeId::new(1))?,
                lab.pinned_counters(NodeId::new(2))?,
            ];
            // Once the verdict recorded before the flush lapses (or its
            // probe meets netfilter), a packet of the flow takes the kernel
            // path and conntrack makes a new entry for it, while bytes
            // still arrive. `conntrack -F` has removed every entry when it
            // returns, so any entry listed now is a new one. (Not told by
            // its id: the kernel derives the id from the entry's address
            // and tuple, and a new entry for the same tuple often reuses
            // the freed one's memory, id and all.)
            wait_for(
                "conntrack to track the transfer again after the flush",
                Duration::from_secs(10),
                || Ok(transfer_conntrack_entries(node2)? > 0),
            )?;
            anyhow::Ok((at_flush, lab.pinned_counters(NodeId::new(2))?))
        });
        let began = std::time::Instant::now();
        let transfer = tcp_transfer(&b.ns, b.ip(), 5002, &a.ns, TRANSFER).unwrap();
        eprintln!(
            "{TRANSFER} bytes across conntrack -F in {:?}",
            began.elapsed()
        );
        (transfer, flusher.join().unwrap().unwrap())
    });
    let (at_flush, at_new_entry) = at_flush;
    assert_eq!(
        transfer.sent, transfer.received,
        "the transfer across conntrack -F was corrupted"
    );
    let after = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
    ];
    // Seen on node 2's uplink (XDP's count, or TC's without XDP), by
    // whichever path then carried it.
    let after_the_flush = counters_delta(
        &at_flush[1],
        &after[1],
        &[
            XdpUplink.counter(Reason::Seen),
            TcUplink.counter(Reason::Seen),
        ],
    )
    .1;
    assert!(
        after_the_flush >= AFTER_THE_FLUSH,
        "only {after_the_flush} bytes arrived after the flush: \
         the transfer was (nearly) over before it"
    );
    // The verdict learned on the new conntrack entry carried the rest.
    let carried_after_new_entry = counters_delta(&at_new_entry, &after[1], &delivery).1;
    assert!(
        carried_after_new_entry > 0,
        "node 2's fast path carried nothing once conntrack tracked the transfer again"
    );
    // Each node recorded the connection's verdict again after the flush
    // (pending, then confirmed on the new conntrack entry), and carried it.
    for (index, node) in [NodeId::new(1), NodeId::new(2)].into_iter().enumerate() {
        let learned = counter_delta(
            &at_flush[index],
            &after[index],
            TcVerdict.counter(Reason::LearnedPending),
        )
        .0;
        assert!(
            learned > 0,
            "node {node} learned no verdict after the flush"
        );
    }
    // NetworkPolicy as FORWARD drops: each direction, on either node,
    // blocks A and B exactly as the kernel path would; removing it restores
    // them.
    for node in [NodeId::new(1), NodeId::new(2)] {
        for (src, dst) in [(a.ip(), b.ip()), (b.ip(), a.ip())] {
            let rule = ["-s", src, "-d", dst, "-j", "DROP"];
            let ns = &lab.node(node).ns;
            iptables(ns, "-I", &rule);
            assert!(
                !pings(&lab, &a, b.ip()),
                "A reached B with {src} -> {dst} dropped on node {node}"
            );
            assert!(
                tcp_echo(&a.ns, at(b.ip(), ECHO_PORT), 1, Duration::from_secs(1)).is_err(),
                "A connected to B with {src} -> {dst} dropped on node {node}"
            );
            iptables(ns, "-D", &rule);
            assert!(
                pings(&lab, &a, b.ip()),
                "A did not reach B after the drop on node {node} was removed"
            );
        }
    }

    // A drop added to an established connection that the fast path
    // carries: like the kernel path (the rule is inserted before any
    // ESTABLISHED accept), the next request goes unanswered once the agent
    // has seen nftables' change notification (milliseconds; waited for
    // here so the check does not race it).
    // On the receiving node and on the sending one.
    for node in [NodeId::new(2), NodeId::new(1)] {
        let mut session = TcpSession::connect(&a.ns, at(b.ip(), ECHO_PORT), TIMEOUT).unwrap();
        for index in 0..100 {
            session.exchange(index).unwrap();
        }
        let before = lab.counters(NodeId::new(1)).unwrap();
        for index in 100..200 {
            session.exchange(index).unwrap();
        }
        let carried = if host_gw {
            TcPodEgress.counter(Reason::HostGw)
        } else {
            TcPodEgress.counter(Reason::Encap)
        };
        assert!(
            counter_delta(&before, &lab.counters(NodeId::new(1)).unwrap(), carried).0 >= 90,
            "the established connection did not ride the fast path"
        );
        let rule = ["-s", a.ip(), "-d", b.ip(), "-j", "DROP"];
        let generation = lab.ruleset_generation(node).unwrap();
        iptables(&lab.node(node).ns, "-I", &rule);
        wait_for(
            &format!("node {node}'s agent to see the new rule"),
            Duration::from_secs(2),
            || Ok(lab.ruleset_generation(node).unwrap() != generation),
        )
        .unwrap();
        session.set_timeout(Duration::from_secs(1)).unwrap();
        assert!(
            session.exchange(200).is_err(),
            "a request crossed a drop on node {node} added to its established connection"
        );
        iptables(&lab.node(node).ns, "-D", &rule);
        tcp_echo(&a.ns, at(b.ip(), ECHO_PORT), 20, TIMEOUT)
            .expect("no connection after the drop went");
    }

    // kube-proxy, nftables mode, instead.
    for node in [NodeId::new(1), NodeId::new(2)] {
        let ns = &lab.node(node).ns;
        for table in ["nat", "filter"] {
            netns::run(ns, &["iptables", "-t", table, "-F"]).unwrap();
            netns::run(ns, &["iptables", "-t", table, "-X"]).unwrap();
        }
        let nft_services = [
            service("10.96.0.20", "tcp", None, &[b.ip(), c.ip()]),
            service("10.96.0.20", "udp", None, &[b.ip(), c.ip()]),
            service("10.96.0.21", "tcp", None, &[c.ip()]),
            service("10.96.0.21", "udp", None, &[c.ip()]),
            service("10.96.0.22", "tcp", None, &[b.ip()]),
            service("10.96.0.22", "udp", None, &[b.ip()]),
        ];
        kube_proxy::install_nftables(ns, &nft_services).unwrap();
    }
    assert_services_answer(
        &lab,
        &a.ns,
        &["10.96.0.20", "10.96.0.21", "10.96.0.22"],
        "nftables mode",
    );
}

/// Every TCP request and UDP query to each Service address is answered
/// from that address: 10 connections of 20 requests, and 50 queries.
fn assert_services_answer(lab: &Lab, client_ns: &str, addresses: &[&str], mode: &str) {
    for address in addresses {
        let tcp: SocketAddr = format!("{address}:80").parse().unwrap();
        for connection in 0..10 {
            tcp_echo(client_ns, tcp, 20, TIMEOUT).unwrap_or_else(|error| {
                panic!("{mode}: {tcp}, connection {connection}: {error:#}")
            });
        }
        let udp: SocketAddr = format!("{address}:53").parse().unwrap();
        assert_udp_answered(lab, client_ns, udp, &format!("{mode}: {udp}"));
    }
}

/// 50 UDP queries from `client_ns` to `target`, each answered once, from
/// the address it was sent to (a reply that skipped reverse NAT is never
/// received). An answer later than the query's 1 s timeout still counts,
/// reported on stderr: these tests check netfilter's decisions, and latency
/// is the bench's to measure. On a failure, what each node's programs
/// counted meanwhile says which path the queries and answers took.
fn assert_udp_answered(lab: &Lab, client_ns: &str, target: SocketAddr, what: &str) {
    let before = lab.all_counters();
    let outcome = udp_echo(client_ns, target, 50, Duration::from_secs(1)).unwrap();
    if !outcome.every_query_answered_once() {
        lab.print_counted_since(&before);
        panic!("{what}: {outcome}");
    }
    if !outcome.late.is_empty() {
        eprintln!("NOTE: {what}: {outcome}");
    }
}

/// The ids of `ns`'s conntrack entries for the conntrack -F transfer (TCP
/// with port 5002 on either side: after a flush, conntrack may pick the
/// connection up from a packet of either direction).
/// How many conntrack entries node `ns` holds for the transfer to port 5002.
fn transfer_conntrack_entries(ns: &str) -> anyhow::Result<usize> {
    let listing = netns::run(ns, &["conntrack", "-L", "-p", "tcp"])?;
    Ok(listing
        .lines()
        .filter(|entry| entry.contains("port=5002 "))
        .count())
}

fn pings(lab: &Lab, from: &weft_tests::lab::PodState, to: &str) -> bool {
    lab.ping(from, to, 3)
        .map(|out| out.contains("3 received"))
        .unwrap_or(false)
}

fn iptables(ns: &str, action: &str, rule: &[&str]) {
    let mut args = vec!["iptables", action, "FORWARD"];
    args.extend_from_slice(rule);
    netns::run(ns, &args).unwrap();
}

/// What netfilter decides without telling weft, and what it keeps for
/// itself: an iptables-legacy DROP (no nftables notification) added to an
/// established fast-pathed connection stops it once the verdict that let it
/// skip netfilter expires (`--verdict-ttl-ms`, the default 1 s here), with
/// the ruleset generation untouched; and a connection with a conntrack
/// helper (FTP, assigned with nftables' `ct helper set`) and the helper's
/// expected connection never ride the fast path.
#[test]
fn iptables_legacy_bites_within_the_verdict_ttl_and_helper_flows_stay_on_the_kernel_path() {
    let _guard = privileged!(
        "iptables_legacy_bites_within_the_verdict_ttl_and_helper_flows_stay_on_the_kernel_path"
    );
    const VERDICT_TTL: Duration = Duration::from_millis(1000);
    let lab = Lab::up(&LabSpec::new("uc-nf-legacy", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let (n1, n2) = (NodeId::new(1), NodeId::new(2));
    let a = lab.node(n1).pods[0].clone();
    let b = lab.node(n2).pods[0].clone();
    const FTP_CONTROL: u16 = 21;
    const FTP_DATA: u16 = 20021;
    let _servers: Vec<EchoServer> = [ECHO_PORT, FTP_CONTROL, FTP_DATA]
        .into_iter()
        .map(|port| EchoServer::start(&b.ns, port).unwrap())
        .collect();
    let at = |port: u16| -> SocketAddr { format!("{}:{port}", b.ip()).parse().unwrap() };
    let encap = TcPodEgress.counter(Reason::Encap);

    // An established connection on the fast path.
    let mut session = TcpSession::connect(&a.ns, at(ECHO_PORT), TIMEOUT).unwrap();
    for index in 0..100 {
        session.exchange(index).unwrap();
    }
    let before = lab.counters(n1).unwrap();
    for index in 100..200 {
        session.exchange(index).unwrap();
    }
    let carried = counter_delta(&before, &lab.counters(n1).unwrap(), encap).0;
    assert!(
        carried >= 90,
        "the established connection did not ride the fast path: {carried} of 100 requests"
    );

    // iptables-legacy's DROP on the receiving node, where the fast path
    // delivers A's requests into B past FORWARD: it bites at the flow's
    // next look through netfilter, one verdict TTL at the latest. A
    // generous margin over the TTL for this shared machine; the time it
    // took is logged.
    let generation = lab.ruleset_generation(n2).unwrap();
    let rule = ["-s", a.ip(), "-d", b.ip(), "-j", "DROP"];
    legacy_iptables(&lab.node(n2).ns, "-I", &rule);
    let inserted = std::time::Instant::now();
    session.set_timeout(Duration::from_millis(300)).unwrap();
    let mut index = 200;
    let bit = loop {
        if session.exchange(index).is_err() {
            break inserted.elapsed();
        }
        index += 1;
        assert!(
            inserted.elapsed() < VERDICT_TTL + Duration::from_secs(4),
            "requests still crossed an iptables-legacy DROP {:?} after it was added \
             (verdict TTL {VERDICT_TTL:?})",
            inserted.elapsed()
        );
    };
    eprintln!(
        "the iptables-legacy DROP bit after {bit:?}, {} requests answered meanwhile",
        index - 200
    );
    assert_eq!(
        lab.ruleset_generation(n2).unwrap(),
        generation,
        "the agent saw a ruleset change: the DROP did not bite by the verdict TTL alone"
    );
    // Reset (the reset is dropped too), so that the unanswered request is
    // not retransmitted into the counts below once the DROP goes.
    session.abort().unwrap();
    legacy_iptables(&lab.node(n2).ns, "-D", &rule);
    tcp_echo(&a.ns, at(ECHO_PORT), 20, TIMEOUT).expect("no connection after the DROP went");

    // FTP's conntrack helper on both nodes, for connections to port 21.
    for node in [n1, n2] {
        netns::run_with_input(
            &lab.node(node).ns,
            &["nft", "-f", "-"],
            &format!(
                "table inet uc_helper {{
                   ct helper ftp {{ type \"ftp\" protocol tcp; }}
                   chain forward {{
                     type filter hook forward priority filter;
                     tcp dport {FTP_CONTROL} ct helper set \"ftp\"
                   }}
                 }}"
            ),
        )
        .unwrap();
    }
    // Each connection's requests, on both nodes: carried by the fast path
    // (encap on the sender's tc_pod_egress), or handed to the kernel path
    // for want of a verdict.
    let kernel_path_only = |session: &mut TcpSession, what: &str| {
        for index in 0..50 {
            session.exchange(index).unwrap();
        }
        let before = [lab.counters(n1).unwrap(), lab.counters(n2).unwrap()];
        for index in 50..150 {
            session.exchange(index).unwrap();
        }
        let after = [lab.counters(n1).unwrap(), lab.counters(n2).unwrap()];
        let no_verdict = counter_delta(
            &before[0],
            &after[0],
            TcPodEgress.counter(Reason::PassNoVerdict),
        )
        .0;
        let carried = (
            counter_delta(&before[0], &after[0], encap).0,
            counter_delta(&before[1], &after[1], encap).0,
        );
        eprintln!(
            "{what}: (node 1, node 2) fast-pathed {carried:?} packets; \
             node 1 refused {no_verdict} of A's for want of a verdict"
        );
        assert_eq!(
            carried,
            (0, 0),
            "{what}: packets the fast path carried on (node 1, node 2)"
        );
        // Each of A's 100 requests met tc_pod_egress and went to netfilter.
        assert!(
            no_verdict >= 100,
            "{what}: node 1 refused {no_verdict} of A's 100 requests for want of a verdict"
        );
    };
    // The control connection.
    let mut control = TcpSession::connect(&a.ns, at(FTP_CONTROL), TIMEOUT).unwrap();
    kernel_path_only(&mut control, "the helper's connection");
    // Then the helper opens a data connection: it parses only lines that
    // start right after a newline it saw, so B echoes a line first, then
    // the passive-mode reply (the echo server repeats what A sends, so the
    // reply comes from B, as an FTP server's would).
    control.exchange_line("220 uc ftp\r\n").unwrap();
    let address = b.ip().replace('.', ",");
    control
        .exchange_line(&format!(
            "227 Entering Passive Mode ({address},{},{}).\r\n",
            FTP_DATA >> 8,
            FTP_DATA & 0xff
        ))
        .unwrap();
    for node in [n1, n2] {
        let expectations = netns::run(&lab.node(node).ns, &["conntrack", "-L", "expect"]).unwrap();
        assert!(
            expectations.contains(&format!("dport={FTP_DATA}")),
            "node {node}: the FTP helper expects no data connection:\n{expectations}"
        );
    }
    let mut data = TcpSession::connect(&a.ns, at(FTP_DATA), TIMEOUT).unwrap();
    kernel_path_only(&mut data, "the expected connection");
}

fn legacy_iptables(ns: &str, action: &str, rule: &[&str]) {
    let mut args = vec!["iptables-legacy", action, "FORWARD"];
    args.extend_from_slice(rule);
    netns::run(ns, &args).unwrap();
}
