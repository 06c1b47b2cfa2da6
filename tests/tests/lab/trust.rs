//! Only what was verified, on the lab: a pod that forges ARP for other
//! addresses (a ClusterIP, a pod on another node, a pod on its own node,
//! its node's address, the gateway's) gains no one's traffic, on the fast
//! path or the kernel path, and its claims for the gateway or a neighbour
//! pod are dropped where they leave it; nor does one that forges NDP for
//! its neighbour pod's IPv6 address (dual stack); a pod that sends as
//! another is left to the kernel path (rp_filter, netfilter); VXLAN a pod
//! sends to a node's VXLAN port is dropped where it leaves the pod.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
    time::Duration,
};
use weft_common::{
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    Reason,
};

use weft_agent::{lease::MacAddr, subnet_env};
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, inspect,
    lab::{FLOW_SETUP_PACKETS, PodState, counter_delta, counters_delta, ping_counts, wait_for},
    netns,
    packets::{
        ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, Ipv4Options, NA_OVERRIDE, arp_request, eth, ipv4,
        ipv6_multicast_mac, neighbour_advertisement, neighbour_solicitation, udp, vxlan,
    },
    privileged,
};

use crate::dual_stack::dual_stack_lab;

fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<Ipv4Addr>().unwrap().octets()
}

fn mac(text: &str) -> [u8; 6] {
    text.parse::<MacAddr>().unwrap().0
}

/// `weft maps endpoints` on node `node`: address -> host-side veth ifindex.
fn endpoints(lab: &Lab, node: NodeId) -> BTreeMap<String, u64> {
    lab.maps_json(node, "endpoints")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["ip"].as_str().unwrap().to_owned(),
                row["ifindex"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What decides whether pod `from` on node 1 reaches pod `to` there: both
/// pods' neighbour entries, the ports cni0 has learned their MACs on, cni0's
/// own entries, node 1's fast-path counters (packets, those not zero) and
/// one more ping's output.
/// Printed when a ping that should pass does not, so that a failure seen
/// only under a full suite's load says where the echo was lost.
fn reachability(lab: &Lab, from: &PodState, to: &PodState) -> String {
    let node = &lab.node(NodeId::new(1)).ns;
    let run = |ns: &str, args: &[&str]| {
        netns::run(ns, args).unwrap_or_else(|error| format!("(failed: {error:#})"))
    };
    let counters = lab
        .counters(NodeId::new(1))
        .map(|counters| {
            counters
                .iter()
                .filter(|(_, (packets, _))| *packets > 0)
                .map(|(counter, (packets, _))| format!("{counter} {packets}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|error| format!("(failed: {error:#})"));
    let ping = lab
        .ping(from, to.ip(), 3)
        .unwrap_or_else(|error| format!("(failed: {error:#})"));
    format!(
        "{from_ns} neighbours:\n{}\n{to_ns} neighbours:\n{}\ncni0 fdb:\n{}\ncni0 neighbours:\n{}\n\
         node 1 counters: {counters}\n{from_ns} -> {}: {ping}",
        run(&from.ns, &["ip", "neigh", "show"]),
        run(&to.ns, &["ip", "neigh", "show"]),
        run(node, &["bridge", "fdb", "show", "br", "cni0"]),
        run(node, &["ip", "neigh", "show", "dev", "cni0"]),
        to.ip(),
        from_ns = from.ns,
        to_ns = to.ns,
    )
}

/// The MAC `pod`'s kernel holds for `address` on its eth0, where its entry
/// for the address has one.
fn learned_mac(pod: &PodState, address: &str) -> Option<String> {
    let entry = netns::run(
        &pod.ns,
        &["ip", "neigh", "show", "to", address, "dev", "eth0"],
    )
    .unwrap();
    entry
        .split_whitespace()
        .skip_while(|word| *word != "lladdr")
        .nth(1)
        .map(str::to_owned)
}

/// Forgets what `forger`'s own kernel learned from its forgery of
/// `victim_ip` (`victim`'s address). cni0 floods a forged multicast back
/// out of the port it came in on too (hairpin mode, as flannel's CNI
/// configuration asks), so where the forger's kernel already had an entry
/// for that address, the forgery updated it to the forger's own MAC: it
/// fooled itself too. Its kernel would find out on its own only once
/// neighbour unreachability detection gives up (5 s of DELAY, then probes
/// sent to its own MAC): 8 s or more, longer on a loaded machine, in which
/// its packets to the victim come back to it. Flushed here, after checking
/// that the entry names the forger or the victim and nothing else, so that
/// what follows checks the victim and the node, not the forger's timers.
fn forget_own_forgery(forger: &PodState, victim: &PodState, victim_ip: &str) {
    if let Some(learned) = learned_mac(forger, victim_ip) {
        assert!(
            learned == forger.network.mac || learned == victim.network.mac,
            "{}'s entry for {victim_ip} names neither it nor {}: {learned}",
            forger.ns,
            victim.ns
        );
    }
    netns::run(
        &forger.ns,
        &["ip", "neigh", "flush", "to", victim_ip, "dev", "eth0"],
    )
    .unwrap();
}

/// Received packets on a pod's eth0.
fn received(pod: &PodState) -> u64 {
    inspect::packet_counts(&pod.ns, "eth0").unwrap().0
}

#[test]
fn a_pod_gains_no_traffic_by_forging_arp_and_cannot_send_as_another() {
    let _guard = privileged!("a_pod_gains_no_traffic_by_forging_arp_and_cannot_send_as_another");
    let lab = Lab::up(&LabSpec::new("t-trust-arp", 2, 2)).unwrap();
    lab.warm_up().unwrap();
    let (p1, p2) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(1)).pods[1].clone(),
    );
    let remote = lab.node(NodeId::new(2)).pods[0].clone();
    let expected: BTreeMap<String, u64> = [&p1, &p2]
        .iter()
        .map(|pod| {
            let veth = inspect::link(&lab.node(NodeId::new(1)).ns, &pod.network.host_veth)
                .unwrap()
                .unwrap();
            (pod.ip().to_owned(), veth["ifindex"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(endpoints(&lab, NodeId::new(1)), expected);

    // p2 claims three addresses it does not own, three times each: a
    // ClusterIP, a pod on another node, its node's address.
    let gateway = {
        let subnet: ipnet::Ipv4Net = lab.node(NodeId::new(1)).subnet.parse().unwrap();
        subnet.hosts().next().unwrap().octets()
    };
    let claim = |address: &str| {
        let frame = eth(
            [0xff; 6],
            mac(&p2.network.mac),
            ETH_P_ARP,
            &arp_request(mac(&p2.network.mac), octets(address), gateway),
        );
        for _ in 0..3 {
            netns::send_frame(&p2.ns, "eth0", &frame).unwrap();
        }
    };
    for address in [
        "10.96.0.10",
        remote.ip(),
        lab.node(NodeId::new(1)).ip.as_str(),
    ] {
        claim(address);
    }
    // The forgery reached the kernel: cni0 now believes p2 is 10.96.0.10
    // (on stock flannel that is all there is to it).
    wait_for(
        "cni0 to learn the forged entry",
        Duration::from_secs(3),
        || {
            let neighbours = netns::run(
                &lab.node(NodeId::new(1)).ns,
                &["ip", "neigh", "show", "10.96.0.10", "dev", "cni0"],
            )?;
            Ok(neighbours.contains(&p2.network.mac))
        },
    )
    .unwrap();
    // The agent reads the kernel on every neighbour event: give it the
    // chance to believe the forgery, then check it did not.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        endpoints(&lab, NodeId::new(1)),
        expected,
        "the forged ARP changed ENDPOINTS"
    );

    // p1's pings to the claimed ClusterIP do not reach p2 by the fast path.
    let before = lab.counters(NodeId::new(1)).unwrap();
    let p2_before = received(&p2);
    let _ = lab.ping(&p1, "10.96.0.10", 5);
    assert_eq!(
        counter_delta(
            &before,
            &lab.counters(NodeId::new(1)).unwrap(),
            TcPodEgress.counter(Reason::LocalRedirect)
        )
        .0,
        0
    );
    assert!(
        received(&p2) - p2_before < 5,
        "p1's pings to 10.96.0.10 arrived at p2"
    );
    // p1's address is still p1's: the remote pod reaches it.
    assert!(
        lab.ping(&remote, p1.ip(), 5)
            .unwrap()
            .contains("5 received")
    );

    // p2 sends as p1 through a raw socket (CAP_NET_RAW): the fast path
    // leaves every such packet to the kernel.
    let cni0 = inspect::link(&lab.node(NodeId::new(1)).ns, "cni0")
        .unwrap()
        .unwrap();
    let as_p1 = eth(
        mac(cni0["address"].as_str().unwrap()),
        mac(&p2.network.mac),
        ETH_P_IPV4,
        &ipv4(
            octets(p1.ip()),
            octets(remote.ip()),
            17,
            &udp(4444, 9999, b"as p1"),
            Ipv4Options::default(),
        ),
    );
    let before = lab.counters(NodeId::new(1)).unwrap();
    for _ in 0..20 {
        netns::send_frame(&p2.ns, "eth0", &as_p1).unwrap();
    }
    lab.wait_for_packets(
        NodeId::new(1),
        &before,
        TcPodEgress.counter(Reason::PassForeignSource),
        20,
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(
        counter_delta(
            &before,
            &lab.counters(NodeId::new(1)).unwrap(),
            TcPodEgress.counter(Reason::Encap)
        )
        .0,
        0,
        "a packet sent as another pod was encapsulated by the fast path"
    );

    // p2 claims p1's address, then the gateway's: claims every pod on the
    // bridge would take into its own entry for the address, which would
    // send their traffic to p2 (on stock flannel, p1's neighbours' traffic
    // to p1 and everyone's traffic off the node). Both are dropped where
    // they leave p2, counted.
    let gateway_ip = std::net::Ipv4Addr::from(gateway).to_string();
    let before = lab.counters(NodeId::new(1)).unwrap();
    claim(p1.ip());
    claim(&gateway_ip);
    lab.wait_for_packets(
        NodeId::new(1),
        &before,
        TcPodEgress.counter(Reason::DropForgedArp),
        6,
        Duration::from_secs(3),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        endpoints(&lab, NodeId::new(1)),
        expected,
        "the forged ARP for a local pod's address changed ENDPOINTS"
    );
    // No pod took them: not p1 for the gateway, not p2 itself for p1
    // (cni0 would have flooded its broadcast back to it, hairpin mode).
    let cni0_mac = cni0["address"].as_str().unwrap();
    for (pod, address, owner_mac) in [
        (&p1, gateway_ip.as_str(), cni0_mac),
        (&p2, p1.ip(), p1.network.mac.as_str()),
    ] {
        if let Some(learned) = learned_mac(pod, address) {
            assert_eq!(learned, owner_mac, "{}'s entry for {address}", pod.ns);
        }
    }
    // Whatever reaches cni0 all the same (from a node that runs no
    // programs, say) meets p1's pinned entry there: permanent, pinned by
    // the agent from p1's own namespace, which no ARP changes.
    let entry = netns::run(
        &lab.node(NodeId::new(1)).ns,
        &["ip", "neigh", "show", p1.ip(), "dev", "cni0"],
    )
    .unwrap();
    assert!(
        entry.contains(&p1.network.mac) && entry.contains("PERMANENT"),
        "p1's neighbour entry is not pinned to p1: {entry}"
    );
    let p2_before = received(&p2);
    let answered = lab.ping(&remote, p1.ip(), 5).unwrap();
    assert!(answered.contains("5 received"), "{answered}");
    assert!(
        received(&p2) - p2_before < 5,
        "the remote pod's pings to p1 arrived at p2"
    );
    // p1 still answers its neighbours.
    match lab.ping(&p2, p1.ip(), 3) {
        Ok(out) if ping_counts(&out).1 == 3 => {}
        answered => panic!(
            "p2 -> p1 after the forged claims: {answered:?}\n{}",
            reachability(&lab, &p2, &p1)
        ),
    }

    // p1's pings to the remote pod whose address p2 claimed (a flow the
    // fast path carries) still go to the remote pod, encapsulated, and
    // none to p2.
    let before = lab.counters(NodeId::new(1)).unwrap();
    let p2_before = received(&p2);
    let out = lab.ping(&p1, remote.ip(), 5).unwrap();
    assert!(out.contains("5 received"), "p1 -> {}: {out}", remote.ip());
    let after = lab.counters(NodeId::new(1)).unwrap();
    let encapsulated = counter_delta(&before, &after, TcPodEgress.counter(Reason::Encap)).0;
    assert!(
        encapsulated >= 5 - FLOW_SETUP_PACKETS,
        "only {encapsulated} of p1's 5 pings to the claimed remote pod were encapsulated"
    );
    assert_eq!(
        counter_delta(&before, &after, TcPodEgress.counter(Reason::LocalRedirect)).0,
        0,
        "p1's pings to the claimed remote pod were redirected on the node"
    );
    assert!(
        received(&p2) - p2_before < 5,
        "p1's pings to {} arrived at p2",
        remote.ip()
    );
}

/// The forgeries a pod can make with NDP to claim `victim`'s IPv6
/// address on its node's bridge, as Ethernet frames from `forger`: an
/// unsolicited Neighbour Advertisement with the Override flag naming the
/// forger's MAC, to all nodes and to the gateway, and a Neighbour
/// Solicitation for the gateway "from" the victim's address whose source
/// link-layer option names the forger's MAC.
fn ndp_claims(
    forger: &PodState,
    victim: Ipv6Addr,
    gateway: Ipv6Addr,
    gateway_mac: [u8; 6],
) -> Vec<Vec<u8>> {
    let forger_mac = mac(&forger.network.mac);
    let forger_ip: Ipv6Addr = forger.ip6().parse().unwrap();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let frame = |dst_mac, packet: Vec<u8>| eth(dst_mac, forger_mac, ETH_P_IPV6, &packet);
    vec![
        frame(
            ipv6_multicast_mac(all_nodes),
            neighbour_advertisement(forger_ip, all_nodes, NA_OVERRIDE, victim, forger_mac),
        ),
        frame(
            gateway_mac,
            neighbour_advertisement(forger_ip, gateway, NA_OVERRIDE, victim, forger_mac),
        ),
        frame(
            gateway_mac,
            neighbour_solicitation(victim, gateway, gateway, forger_mac),
        ),
    ]
}

/// A pod that forges NDP for its neighbour pod's IPv6 address gains none of
/// that pod's traffic: the agent pinned cni0's entry for the address to the
/// pod's own MAC, which no NDP can change. Between VXLAN nodes IPv6 is the
/// kernel path's (flannel-v6.1), so it is that entry that says where a
/// remote pod's packets go. (`--dataplane kernel` pins nothing, in either
/// family: it programs what flanneld does.)
#[test]
fn a_pod_gains_no_ipv6_traffic_by_forging_ndp() {
    let _guard = privileged!("a_pod_gains_no_ipv6_traffic_by_forging_ndp");
    let lab = Lab::up(&dual_stack_lab(
        "t-trust-nd",
        Backend::Vxlan,
        Dataplane::Ebpf,
        2,
    ))
    .unwrap();
    // The warm-up pings every pod on both families: cni0 knows every local
    // pod's IPv6 address (an unsolicited advertisement only changes an
    // entry the kernel already has).
    lab.warm_up().unwrap();
    let node = lab.node(NodeId::new(1)).clone();
    let (victim, forger) = (node.pods[0].clone(), node.pods[1].clone());
    let remote = lab.node(NodeId::new(2)).pods[0].clone();
    let victim_ip: Ipv6Addr = victim.ip6().parse().unwrap();
    let gateway = subnet_env::read_if_present(&node.subnet_file)
        .unwrap()
        .unwrap()
        .ipv6
        .unwrap()
        .subnet
        .addr();
    let cni0 = inspect::link(&node.ns, "cni0").unwrap().unwrap();
    let gateway_mac = mac(cni0["address"].as_str().unwrap());
    let entry = || {
        netns::run(
            &node.ns,
            &["ip", "-6", "neigh", "show", victim.ip6(), "dev", "cni0"],
        )
        .unwrap()
    };
    println!("before: {}", entry().trim());

    let forge = || {
        for frame in ndp_claims(&forger, victim_ip, gateway, gateway_mac) {
            for _ in 0..3 {
                netns::send_frame(&forger.ns, "eth0", &frame).unwrap();
            }
        }
    };
    forge();
    std::thread::sleep(Duration::from_secs(1));
    forge();
    let after = entry();
    println!("after the forgery: {}", after.trim());

    // The remote pod's pings to the victim's IPv6 address reach the victim,
    // and not the forger.
    let (victim_before, forger_before) = (received(&victim), received(&forger));
    let out = lab
        .ping(&remote, victim.ip6(), 10)
        .unwrap_or_else(|error| format!("{error:#}"));
    let (victim_got, forger_got) = (
        received(&victim) - victim_before,
        received(&forger) - forger_before,
    );
    println!("{} -> {}: {out}", remote.ns, victim.ip6());
    println!("received: victim {victim_got}, forger {forger_got}");
    assert!(
        after.contains(&victim.network.mac) && after.contains("PERMANENT"),
        "cni0's entry for {} is not pinned to the victim ({}): {after}",
        victim.ip6(),
        victim.network.mac
    );
    assert_eq!(ping_counts(&out).1, 10, "{out}");
    assert!(victim_got >= 10, "the victim received {victim_got} packets");
    assert!(
        forger_got < 10,
        "the remote pod's pings to {} arrived at the forger ({forger_got} packets)",
        victim.ip6()
    );
    // The permanent entry does not stand in the kernel's way: the victim
    // reaches the remote pod, whose answers come back through cni0's entry.
    let out = lab.ping(&victim, remote.ip6(), 3).unwrap();
    assert_eq!(
        ping_counts(&out).1,
        3,
        "{} -> {}: {out}",
        victim.ns,
        remote.ip6()
    );
    // The forger fooled itself (its flooded advertisement came back to it;
    // no other pod here has an entry for the victim's address): once it
    // forgets that, it and the victim reach each other.
    forget_own_forgery(&forger, &victim, victim.ip6());
    for (from, to) in [(&forger, &victim), (&victim, &forger)] {
        let out = lab.ping(from, to.ip6(), 3).unwrap();
        assert_eq!(ping_counts(&out).1, 3, "{} -> {}: {out}", from.ns, to.ip6());
    }
}

#[test]
fn vxlan_a_pod_sends_to_a_node_is_dropped_where_it_leaves_the_pod() {
    let _guard = privileged!("vxlan_a_pod_sends_to_a_node_is_dropped_where_it_leaves_the_pod");
    for ip_masq in [false, true] {
        let mut spec = LabSpec::new("t-trust-vx", 2, 2);
        spec.ip_masq = ip_masq;
        let lab = Lab::up(&spec).unwrap();
        lab.warm_up().unwrap();
        let (p1, p2) = (
            lab.node(NodeId::new(1)).pods[0].clone(),
            lab.node(NodeId::new(1)).pods[1].clone(),
        );
        let victim = lab.node(NodeId::new(2)).pods[0].clone();
        let listener = netns::in_netns(&victim.ns, || {
            let socket = UdpSocket::bind(("0.0.0.0", 9999))?;
            socket.set_read_timeout(Some(Duration::from_millis(1500)))?;
            Ok(socket)
        })
        .unwrap();
        // As good a forgery as a pod can make: node 2's VTEP MAC, an inner
        // source in node 1's subnet (p1's address), a fresh flow.
        let vtep = inspect::link(&lab.node(NodeId::new(2)).ns, "flannel.1")
            .unwrap()
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_owned();
        let inner = eth(
            mac(&vtep),
            [0x0e, 0, 0, 0, 0, 1],
            ETH_P_IPV4,
            &ipv4(
                octets(p1.ip()),
                octets(victim.ip()),
                17,
                &udp(4444, 9999, b"forged"),
                Ipv4Options::default(),
            ),
        );
        let datagram = vxlan(1, &inner);
        let before = [
            lab.counters(NodeId::new(1)).unwrap(),
            lab.counters(NodeId::new(2)).unwrap(),
        ];
        let flannel_before =
            inspect::packet_counts(&lab.node(NodeId::new(2)).ns, "flannel.1").unwrap();
        let drops_before = scraped_drops(&lab, NodeId::new(1));
        let target = format!("{}:8472", lab.node(NodeId::new(2)).ip);
        netns::in_netns(&p2.ns, || {
            let socket = UdpSocket::bind(("0.0.0.0", 0))?;
            socket.send_to(&datagram, &target)?;
            Ok(())
        })
        .unwrap();
        let mut buffer = [0u8; 64];
        let arrived = listener.recv_from(&mut buffer).is_ok();
        let after = [
            lab.counters(NodeId::new(1)).unwrap(),
            lab.counters(NodeId::new(2)).unwrap(),
        ];
        // Dropped where it left the pod: masqueraded, it would have left
        // with node 1's address, a real VTEP, and looked like node 1's own.
        assert_eq!(
            counter_delta(
                &before[0],
                &after[0],
                TcPodEgress.counter(Reason::DropVxlanFromPod)
            )
            .0,
            1,
            "ip_masq {ip_masq}"
        );
        assert!(
            !arrived,
            "ip_masq {ip_masq}: a pod's forged VXLAN reached a pod"
        );
        // The operator's alert (`rate(weft_fastpath_drops_total[5m]) > 0`)
        // sees it: node 1's /metrics counts the drop, once.
        wait_for(
            "node 1's /metrics to count the drop",
            Duration::from_secs(5),
            || Ok(scraped_drops(&lab, NodeId::new(1)) > drops_before),
        )
        .unwrap();
        assert_eq!(
            scraped_drops(&lab, NodeId::new(1)),
            drops_before + 1.0,
            "ip_masq {ip_masq}: weft_fastpath_drops_total{{reason=\"vxlan_from_pod\"}}"
        );
        // Node 2 never saw it: no VXLAN verdict of any kind, and nothing
        // through flannel.1.
        let vxlan_outcomes = [
            XdpUplink.counter(Reason::DropUnknownVtep),
            XdpUplink.counter(Reason::PassNotOurVtep),
            XdpUplink.counter(Reason::PassForeignInnerSource),
            XdpUplink.counter(Reason::PassNoVerdict),
            XdpUplink.counter(Reason::Decap),
            TcUplink.counter(Reason::DropUnknownVtep),
            TcUplink.counter(Reason::PassNotOurVtep),
            TcUplink.counter(Reason::PassForeignInnerSource),
            TcUplink.counter(Reason::PassNoVerdict),
            TcUplink.counter(Reason::Decap),
        ];
        assert_eq!(
            counters_delta(&before[1], &after[1], &vxlan_outcomes).0,
            0,
            "ip_masq {ip_masq}: the forged VXLAN reached node 2"
        );
        assert_eq!(
            inspect::packet_counts(&lab.node(NodeId::new(2)).ns, "flannel.1")
                .unwrap()
                .0,
            flannel_before.0,
            "ip_masq {ip_masq}: node 2's flannel.1 received the forged VXLAN"
        );
        // The same datagram to another port of node 2 goes: only the VXLAN
        // port is refused.
        let node_listener = netns::in_netns(&lab.node(NodeId::new(2)).ns, || {
            let socket = UdpSocket::bind(("0.0.0.0", 8473))?;
            socket.set_read_timeout(Some(Duration::from_millis(1500)))?;
            Ok(socket)
        })
        .unwrap();
        let other_port = format!("{}:8473", lab.node(NodeId::new(2)).ip);
        netns::in_netns(&p2.ns, || {
            let socket = UdpSocket::bind(("0.0.0.0", 0))?;
            socket.send_to(&datagram, &other_port)?;
            Ok(())
        })
        .unwrap();
        assert!(
            node_listener.recv_from(&mut buffer).is_ok(),
            "ip_masq {ip_masq}: UDP to another port of the node did not arrive"
        );
    }
}

/// `weft_fastpath_drops_total` of VXLAN from pods, as node `node`'s
/// /metrics reports it now.
fn scraped_drops(lab: &Lab, node: NodeId) -> f64 {
    const SAMPLE: &str =
        "weft_fastpath_drops_total{hook=\"tc_pod_egress\",reason=\"vxlan_from_pod\"}";
    let body = netns::in_netns(&lab.node(node).ns, || {
        weft_tests::scrapes::get(weft_tests::lab::HEALTHZ_PORT, "/metrics")
    })
    .unwrap()
    .body;
    weft_tests::scrapes::sample(&body, SAMPLE)
        .unwrap_or_else(|| panic!("no {SAMPLE} in node {node}'s /metrics"))
}
