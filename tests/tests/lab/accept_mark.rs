//! The accept bit is weft's alone, and operators keep chosen traffic on the
//! kernel path (see docs/datapath.md and docs/security.md): another
//! rule that sets or tests the bit (native nftables or iptables-nft's
//! MARK/mark extensions) suspends the fast path until it is gone, with the
//! bit left alone meanwhile; a flow whose connection carries the
//! kernel-path bit stays under a per-packet rule (`meta length`) that the
//! fast path would otherwise skip for an established flow.
//!
//! Without the kernel-path bit's condition in weft's chain, 53 of the 200
//! large datagrams got through (checked by hand).

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use weft_agent::verdicts::{
    DEFAULT_ACCEPT_MARK as ACCEPT, DEFAULT_KERNEL_PATH_MARK as KERNEL_PATH,
};
use weft_common::{
    Hook::{TcPodEgress, TcUplink},
    Reason,
};
use weft_tests::{
    Lab, LabSpec, NodeId,
    lab::{NodeState, PodState, counter_delta, wait_for},
    leases::log_of,
    netns, privileged,
};

/// A warmed-up lab of two nodes with one pod each: node 1, its pod and
/// node 2's pod.
fn two_nodes(name: &str) -> (Lab, NodeState, PodState, PodState) {
    let lab = Lab::up(&LabSpec::new(name, 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let node1 = lab.node(NodeId::new(1)).clone();
    let (local, remote) = (
        node1.pods[0].clone(),
        lab.node(NodeId::new(2)).pods[0].clone(),
    );
    (lab, node1, local, remote)
}

/// iptables-nft adding (`-A`) or deleting (`-D`) a mangle rule that tests
/// the mark bits `bit_and_mask`.
fn iptables_rule<'a>(action: &'a str, bit_and_mask: &'a str) -> Vec<&'a str> {
    vec![
        "iptables-nft",
        "-t",
        "mangle",
        action,
        "FORWARD",
        "-m",
        "mark",
        "--mark",
        bit_and_mask,
        "-j",
        "ACCEPT",
    ]
}

/// Whether table `inet weft` on `ns` holds the verdict chain.
fn verdict_chain_installed(ns: &str) -> bool {
    netns::run(ns, &["nft", "list", "table", "inet", "weft"])
        .unwrap()
        .contains("chain verdict")
}

#[test]
fn another_rule_using_the_accept_bit_suspends_the_fast_path_until_it_is_gone() {
    let _guard =
        privileged!("another_rule_using_the_accept_bit_suspends_the_fast_path_until_it_is_gone");
    let (lab, node1, local, remote) = two_nodes("t-am-bit");
    let n1 = node1.id;
    let encap = TcPodEgress.counter(Reason::Encap);
    let suspended = TcPodEgress.counter(Reason::PassVerdictsSuspended);
    // node 1's pod answers node 2's pings: its replies are what node 1's
    // fast path encapsulates once netfilter passed the flow.
    let replies_carried = |count: u32| {
        let before = lab.counters(n1).unwrap();
        let out = lab.ping(&remote, local.ip(), count).unwrap();
        assert!(out.contains(&format!("{count} received")), "{out}");
        let after = lab.counters(n1).unwrap();
        (
            counter_delta(&before, &after, encap).0,
            counter_delta(&before, &after, suspended).0,
        )
    };
    assert!(verdict_chain_installed(&node1.ns));
    let (carried, _) = replies_carried(20);
    assert!(carried > 0, "the fast path carried nothing to begin with");

    let bit_and_mask = format!("{ACCEPT:#x}/{ACCEPT:#x}");
    let nft_rule = format!(
        "add table ip other; add chain ip other fw {{ type filter hook forward priority mangle; }}; add rule ip other fw meta mark set meta mark | {ACCEPT:#x}"
    );
    let conflicts = [
        (
            "an nftables mangle rule",
            vec!["nft", &nft_rule],
            vec!["nft", "delete table ip other"],
        ),
        (
            "an iptables-nft mark match",
            iptables_rule("-A", &bit_and_mask),
            iptables_rule("-D", &bit_and_mask),
        ),
    ];
    for (what, add, remove) in conflicts {
        let warnings_before = log_of(&node1)
            .matches("other rules use weft's accept bit")
            .count();
        netns::run(&node1.ns, &add).unwrap();
        wait_for(what, Duration::from_secs(10), || {
            Ok(!verdict_chain_installed(&node1.ns)
                && log_of(&node1)
                    .matches("other rules use weft's accept bit")
                    .count()
                    > warnings_before)
        })
        .unwrap();
        let conflicting =
            |lab: &Lab| lab.metric(NodeId::new(1), "weft_accept_mark_conflicting_rules");
        wait_for(
            &format!("{what}: weft_accept_mark_conflicting_rules above 0"),
            Duration::from_secs(5),
            || Ok(conflicting(&lab)? >= 1.0),
        )
        .unwrap();
        let (carried, passed) = replies_carried(10);
        assert_eq!(carried, 0, "{what}: the fast path carried flows");
        assert!(passed >= 10, "{what}: replies not counted as suspended");

        netns::run(&node1.ns, &remove).unwrap();
        wait_for(
            &format!("{what} gone: the verdict chain back"),
            Duration::from_secs(10),
            || Ok(verdict_chain_installed(&node1.ns) && conflicting(&lab)? == 0.0),
        )
        .unwrap();
        let (carried, _) = replies_carried(20);
        assert!(carried > 0, "{what} gone: the fast path carries nothing");
    }
}

#[test]
fn the_kernel_path_bit_keeps_an_established_flow_under_a_per_packet_rule() {
    let _guard =
        privileged!("the_kernel_path_bit_keeps_an_established_flow_under_a_per_packet_rule");
    let (lab, node1, receiver, sender) = two_nodes("t-am-kp");
    let n1 = node1.id;
    let socket = netns::in_netns(&receiver.ns, || {
        let socket = UdpSocket::bind(("0.0.0.0", 9999))?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(socket)
    })
    .unwrap();
    let target = format!("{}:9999", receiver.ip());
    let out = netns::in_netns(&sender.ns, || Ok(UdpSocket::bind(("0.0.0.0", 40000))?)).unwrap();
    // One answer makes the flow established in conntrack (UDP is
    // established once a reply was seen), as any request/response flow is.
    out.send_to(b"hello", &target).unwrap();
    let mut buffer = [0u8; 2048];
    let (_, from) = socket.recv_from(&mut buffer).unwrap();
    socket.send_to(b"hi", from).unwrap();
    let decap = TcUplink.counter(Reason::Decap);
    // Sends `rounds` small datagrams and, when `large`, a 1,000-byte one
    // after each; returns (small, large) received.
    let mut exchange = |rounds: usize, large: bool| {
        for _ in 0..rounds {
            out.send_to(&[b's'; 100], &target).unwrap();
            if large {
                out.send_to(&[b'L'; 1000], &target).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (mut small, mut big) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(length) = socket.recv(&mut buffer) {
            match length {
                100 => small += 1,
                1000 => big += 1,
                other => panic!("a {other}-byte datagram"),
            }
            if Instant::now() > deadline {
                break;
            }
        }
        (small, big)
    };
    // Established, and carried by node 1's fast path.
    let before = lab.counters(n1).unwrap();
    assert_eq!(exchange(100, false), (100, 0));
    let carried = counter_delta(&before, &lab.counters(n1).unwrap(), decap).0;
    assert!(carried > 0, "the flow never took the fast path");

    // The operator's rules: this flow on the kernel path, and a per-packet
    // rule the fast path does not run for established flows.
    let ip = receiver.ip();
    netns::run_with_input(
        &node1.ns,
        &["nft", "-f", "-"],
        &format!(
            "table inet ops {{
  chain fw {{
    type filter hook forward priority filter; policy accept;
    ip daddr {ip} udp dport 9999 ct mark set ct mark | {KERNEL_PATH:#x}
    ip daddr {ip} udp dport 9999 meta length > 500 drop
  }}
}}
"
        ),
    )
    .unwrap();
    let before = lab.counters(n1).unwrap();
    let (small, big) = exchange(200, true);
    let carried = counter_delta(&before, &lab.counters(n1).unwrap(), decap).0;
    assert_eq!(big, 0, "large datagrams passed the length rule");
    assert_eq!(small, 200, "small datagrams were lost");
    assert_eq!(carried, 0, "the fast path carried the kernel-path flow");
    netns::run(&node1.ns, &["nft", "delete", "table", "inet", "ops"]).unwrap();
}
