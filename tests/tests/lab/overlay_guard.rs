//! Nothing but a peer node feeds the overlay, in both dataplanes (see the
//! overlay guard in docs/security.md). Each path a forged VXLAN frame can
//! take to a node's VXLAN socket is tried with the best forgery its sender can make
//! (the target node's real VTEP MAC, an inner source in another node's
//! subnet, a listening victim pod): from a pod to its own gateway, to its
//! node's flannel.1 address, to another node's gateway, with a forged
//! source address; from an underlay host that holds no lease to a node's
//! flannel.1 address and to its node address. None arrives, each is
//! counted by cause where weft refused it, real peers keep talking, a
//! lease whose PublicIP moves to the sender's address is honoured after
//! the move and not before, and a process on the node itself sending from
//! a local address a lease names is refused. And the guard is in before
//! the agent makes a VXLAN device, so a first start leaves no moment open.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use nix::sys::signal::Signal;
use weft_agent::lease::MacAddr;
use weft_common::{
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    Reason,
};
use weft_tests::{
    Dataplane, Lab, LabSpec, NodeId, inspect,
    lab::{NodeState, PodState, counters_delta, wait_for},
    leases::key,
    netns,
    packets::{ETH_P_IPV4, Ipv4Options, eth, ipv4, udp, vxlan},
    privileged, process,
};

const VICTIM_PORT: u16 = 9999;

fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<Ipv4Addr>().unwrap().octets()
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let link = inspect::link(ns, dev).unwrap().unwrap();
    link["address"]
        .as_str()
        .unwrap()
        .parse::<MacAddr>()
        .unwrap()
        .0
}

/// The first address of `dev` in `ns`, without its prefix.
fn address_of(ns: &str, dev: &str) -> String {
    let addresses = inspect::addresses(ns, dev).unwrap();
    addresses[0].split('/').next().unwrap().to_owned()
}

/// A VXLAN datagram (VNI 1) carrying UDP from `inner_src` to the victim,
/// addressed inside to `vtep`: what the target node's flannel.1 accepts.
fn forged_vxlan(vtep: [u8; 6], inner_src: &str, victim: &str, tag: &[u8]) -> Vec<u8> {
    let inner = eth(
        vtep,
        [0x0e, 0, 0, 0, 0, 1],
        ETH_P_IPV4,
        &ipv4(
            octets(inner_src),
            octets(victim),
            17,
            &udp(4444, VICTIM_PORT, tag),
            Ipv4Options::default(),
        ),
    );
    vxlan(1, &inner)
}

fn listen(pod: &PodState) -> UdpSocket {
    netns::in_netns(&pod.ns, || {
        let socket = UdpSocket::bind(("0.0.0.0", VICTIM_PORT))?;
        socket.set_read_timeout(Some(Duration::from_millis(1500)))?;
        Ok(socket)
    })
    .unwrap()
}

/// What the victim received before its timeout: (source, payload).
fn received(socket: &UdpSocket) -> Option<(String, Vec<u8>)> {
    let mut buffer = [0u8; 256];
    let (length, from) = socket.recv_from(&mut buffer).ok()?;
    Some((from.ip().to_string(), buffer[..length].to_vec()))
}

fn send_udp(ns: &str, target: &str, payload: &[u8]) {
    netns::in_netns(ns, || {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.send_to(payload, target)?;
        Ok(())
    })
    .unwrap();
}

/// The overlay guard's counters on `node`, by name, as `nft` prints them.
fn guard_counters(node: &NodeState) -> std::collections::BTreeMap<String, u64> {
    let out = netns::run(
        &node.ns,
        &["nft", "-j", "list", "counters", "table", "inet", "weft"],
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|object| object.get("counter"))
        .map(|counter| {
            (
                counter["name"].as_str().unwrap().to_owned(),
                counter["packets"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// How many refusals of `cause` `node` counted while `send` ran: the
/// guard's nftables counter, plus, with the fast path, the program
/// counters that refuse the same datagram first (`programs`).
fn refused_while(
    lab: &Lab,
    node: NodeId,
    cause: &str,
    programs: &[weft_common::CounterId],
    send: impl FnOnce(),
) -> u64 {
    let state = lab.node(node);
    let fast = state.dataplane == Dataplane::Ebpf;
    let sample = format!(r#"weft_overlay_refused_packets_total{{cause="{cause}"}}"#);
    let metric_before = lab.metric(node, &sample).unwrap();
    let nft_before = guard_counters(state);
    let programs_before = fast.then(|| lab.counters(node).unwrap());
    send();
    std::thread::sleep(Duration::from_millis(300));
    let nft_after = guard_counters(state);
    let by_nft = nft_after[cause] - nft_before[cause];
    // What an operator's alert reads: /metrics says the same (a scrape
    // may serve a rendering up to a second old).
    wait_for(
        &format!("{sample} on /metrics to rise by {by_nft}"),
        Duration::from_secs(5),
        || Ok(lab.metric(node, &sample)? - metric_before == by_nft as f64),
    )
    .unwrap();
    let by_program = match programs_before {
        Some(before) => counters_delta(&before, &lab.counters(node).unwrap(), programs).0,
        None => 0,
    };
    by_nft + by_program
}

fn no_vxlan_reaches_a_pod_but_a_peer_s(dataplane: Dataplane, name: &str) {
    let mut spec = LabSpec::new(name, 2, 2);
    spec.dataplane = dataplane;
    let lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    let (n1, n2) = (NodeId::new(1), NodeId::new(2));
    let (node1, node2) = (lab.node(n1).clone(), lab.node(n2).clone());
    let (victim, sender) = (node1.pods[0].clone(), node1.pods[1].clone());
    let remote = node2.pods[0].clone();
    let remote_victim = node2.pods[1].clone();
    let vtep1 = mac_of(&node1.ns, "flannel.1");
    let vtep2 = mac_of(&node2.ns, "flannel.1");
    let gateway1 = address_of(&node1.ns, "cni0");
    let gateway2 = address_of(&node2.ns, "cni0");
    let flannel1 = address_of(&node1.ns, "flannel.1");
    let pod_drop = [TcPodEgress.counter(Reason::DropVxlanFromPod)];
    // Refused by the uplink's program (XDP, or TC when XDP is off) before
    // the kernel's socket: the strict VTEP check.
    let strict = [
        XdpUplink.counter(Reason::DropUnknownVtep),
        TcUplink.counter(Reason::DropUnknownVtep),
    ];
    let listener = listen(&victim);
    let remote_listener = listen(&remote_victim);

    // A pod's ordinary UDP socket, to its own gateway and to its node's
    // flannel.1 address: the frame claims to come from a pod of node 2.
    for (what, target) in [
        ("its gateway", &gateway1),
        ("its node's flannel.1 address", &flannel1),
    ] {
        let frame = forged_vxlan(vtep1, remote.ip(), victim.ip(), what.as_bytes());
        let refused = refused_while(&lab, n1, "vxlan_from_pod", &pod_drop, || {
            send_udp(&sender.ns, &format!("{target}:8472"), &frame)
        });
        assert_eq!(
            received(&listener),
            None,
            "{dataplane:?}: a pod's VXLAN to {what} reached a pod"
        );
        assert_eq!(
            refused, 1,
            "{dataplane:?}: a pod's VXLAN to {what} was not counted once"
        );
    }

    // Through the overlay, to another node's gateway: refused where it
    // leaves the pod, so node 2 never sees it.
    let frame = forged_vxlan(vtep2, victim.ip(), remote_victim.ip(), b"other gateway");
    let node2_before = guard_counters(&node2);
    let refused = refused_while(&lab, n1, "vxlan_from_pod", &pod_drop, || {
        send_udp(&sender.ns, &format!("{gateway2}:8472"), &frame)
    });
    assert_eq!(
        received(&remote_listener),
        None,
        "{dataplane:?}: a pod's VXLAN to another node's gateway reached a pod"
    );
    assert_eq!(
        refused, 1,
        "{dataplane:?}: a pod's VXLAN to another node's gateway was not refused on its node"
    );
    assert_eq!(
        guard_counters(&node2),
        node2_before,
        "{dataplane:?}: node 2 saw the datagram"
    );

    // With a forged source (CAP_NET_RAW): node 2's own address, a real
    // peer's, sent to the gateway. Refused before anything hands it to the
    // kernel (the fast path) or before conntrack (the kernel path).
    let frame = forged_vxlan(vtep1, remote.ip(), victim.ip(), b"forged source");
    let packet = eth(
        mac_of(&node1.ns, "cni0"),
        sender.network.mac.parse::<MacAddr>().unwrap().0,
        ETH_P_IPV4,
        &ipv4(
            octets(&node2.ip),
            octets(&gateway1),
            17,
            &udp(8472, 8472, &frame),
            Ipv4Options::default(),
        ),
    );
    let refused = refused_while(&lab, n1, "vxlan_from_pod", &pod_drop, || {
        netns::send_frame(&sender.ns, "eth0", &packet).unwrap()
    });
    assert_eq!(
        received(&listener),
        None,
        "{dataplane:?}: a pod's VXLAN with a forged source reached a pod"
    );
    assert_eq!(
        refused, 1,
        "{dataplane:?}: a pod's VXLAN with a forged source was not counted once"
    );

    // An underlay host that holds no lease, to node 1's flannel.1 address
    // (routed via node 1) and to node 1's address.
    let underlay = lab.state.underlay_ns.clone();
    netns::run(
        &underlay,
        &[
            "ip",
            "route",
            "add",
            &format!("{flannel1}/32"),
            "via",
            &node1.ip,
        ],
    )
    .unwrap();
    let frame = forged_vxlan(vtep1, remote.ip(), victim.ip(), b"stranger");
    let refused = refused_while(&lab, n1, "vxlan_not_a_peer", &[], || {
        send_udp(&underlay, &format!("{flannel1}:8472"), &frame)
    });
    assert_eq!(
        received(&listener),
        None,
        "{dataplane:?}: a stranger's VXLAN to flannel.1's address reached a pod"
    );
    assert_eq!(
        refused, 1,
        "{dataplane:?}: a stranger's VXLAN to flannel.1's address was not counted once"
    );
    let refused = refused_while(&lab, n1, "vxlan_not_a_peer", &strict, || {
        send_udp(&underlay, &format!("{}:8472", node1.ip), &frame)
    });
    assert_eq!(
        received(&listener),
        None,
        "{dataplane:?}: a stranger's VXLAN to the node address reached a pod"
    );
    assert_eq!(
        refused, 1,
        "{dataplane:?}: a stranger's VXLAN to the node address was not counted once"
    );

    // Real peers still talk: every pod pair, and a datagram node 2's pod
    // sends node 1's pod through the overlay, with nothing refused.
    let before = guard_counters(&node1);
    lab.assert_all_pairs_ping(2);
    send_udp(
        &remote.ns,
        &format!("{}:{VICTIM_PORT}", victim.ip()),
        b"from a peer",
    );
    assert_eq!(
        received(&listener),
        Some((remote.ip().to_owned(), b"from a peer".to_vec())),
        "{dataplane:?}: a real peer's pod could not reach the victim"
    );
    assert_eq!(
        guard_counters(&node1),
        before,
        "{dataplane:?}: the guard refused a real peer"
    );

    // A lease whose PublicIP moves to the underlay host's address: its
    // frames are refused before the move and honoured after it.
    let subnet = "10.244.200.0";
    let lease_key = key(&format!("{subnet}-24"));
    let lease = |public_ip: &str| {
        format!(
            r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:77:00:00:00:c8"}}}}"#
        )
    };
    let etcd = lab.etcd();
    let stranger = "192.168.77.254";
    let members = || {
        netns::run(
            &node1.ns,
            &["nft", "list", "set", "inet", "weft", "overlay_members"],
        )
        .unwrap()
    };
    etcd.put(&lease_key, &lease("192.168.77.200")).unwrap();
    wait_for(
        "the peer's first address in the guard's set",
        Duration::from_secs(10),
        || Ok(members().contains("192.168.77.200")),
    )
    .unwrap();
    let frame = forged_vxlan(vtep1, "10.244.200.5", victim.ip(), b"moved peer");
    let refused = refused_while(&lab, n1, "vxlan_not_a_peer", &strict, || {
        send_udp(&underlay, &format!("{}:8472", node1.ip), &frame)
    });
    assert_eq!(
        received(&listener),
        None,
        "{dataplane:?}: a frame from the peer's next address arrived before the move"
    );
    assert_eq!(
        refused, 1,
        "{dataplane:?}: a frame from the peer's next address was not refused before the move"
    );
    etcd.put(&lease_key, &lease(stranger)).unwrap();
    wait_for(
        "the peer's move in the guard's set",
        Duration::from_secs(10),
        || {
            let set = members();
            Ok(set.contains(stranger) && !set.contains("192.168.77.200"))
        },
    )
    .unwrap();
    // The guard's set is written before the maps and the kernel (the
    // sinks run in turn): the frame is sent again until every sink
    // holds the move, within a bound.
    let honoured = (0..10).find_map(|_| {
        send_udp(&underlay, &format!("{}:8472", node1.ip), &frame);
        received(&listener)
    });
    assert_eq!(
        honoured,
        Some(("10.244.200.5".to_owned(), b"moved peer".to_vec())),
        "{dataplane:?}: the moved peer's frame was not honoured after the move"
    );

    // A process on node 1 itself, from a second address of its uplink that
    // a lease names (an accepted peer's PublicIP): it arrives on `lo`,
    // which no peer's datagram ever does.
    let second = "192.168.77.150";
    let local = [second, "/32"].concat();
    netns::run(&node1.ns, &["ip", "addr", "add", &local, "dev", "eth0"]).unwrap();
    etcd.put(&lease_key, &lease(second)).unwrap();
    wait_for(
        "node 1's second address in the guard's set",
        Duration::from_secs(10),
        || Ok(members().contains(second)),
    )
    .unwrap();
    let frame = forged_vxlan(vtep1, "10.244.200.5", victim.ip(), b"from the node");
    let refused = refused_while(&lab, n1, "vxlan_not_a_peer", &[], || {
        netns::in_netns(&node1.ns, || {
            let socket = UdpSocket::bind((second, 0))?;
            socket.send_to(&frame, format!("{}:8472", node1.ip))?;
            Ok(())
        })
        .unwrap()
    });
    assert_eq!(
        received(&listener),
        None,
        "{dataplane:?}: VXLAN from node 1 itself, from an address a lease names, reached a pod"
    );
    assert_eq!(
        refused, 1,
        "{dataplane:?}: VXLAN from node 1 itself was not refused once"
    );
    netns::run(&node1.ns, &["ip", "addr", "del", &local, "dev", "eth0"]).unwrap();
    etcd.delete(&lease_key).unwrap();
    netns::run(
        &underlay,
        &["ip", "route", "del", &format!("{flannel1}/32")],
    )
    .unwrap();
}

#[test]
fn no_vxlan_reaches_a_pod_but_a_peer_s_on_the_fast_path() {
    let _guard = privileged!("no_vxlan_reaches_a_pod_but_a_peer_s_on_the_fast_path");
    no_vxlan_reaches_a_pod_but_a_peer_s(Dataplane::Ebpf, "t-og-ebpf");
}

#[test]
fn no_vxlan_reaches_a_pod_but_a_peer_s_on_the_kernel_path() {
    let _guard = privileged!("no_vxlan_reaches_a_pod_but_a_peer_s_on_the_kernel_path");
    no_vxlan_reaches_a_pod_but_a_peer_s(Dataplane::Kernel, "t-og-kernel");
}

/// The guard is in before the agent makes a VXLAN device (each opens a
/// VXLAN socket on every local address): at a node's first start no
/// datagram reaches an unguarded socket. Shown where the agent gets no
/// further than that: another VXLAN device already holds VNI 1 on the
/// port, so flannel.1 cannot be created. The agent stops and says so, and
/// the node is guarded all the same: a datagram from the other node, no
/// peer of this node yet (nothing listed, no fdb to start from), is
/// refused and counted.
#[test]
fn the_guard_is_in_before_the_agent_makes_a_vxlan_device() {
    let _guard = privileged!("the_guard_is_in_before_the_agent_makes_a_vxlan_device");
    let mut spec = LabSpec::new("t-og-first", 2, 0);
    spec.dataplane = Dataplane::Kernel;
    let mut lab = Lab::up(&spec).unwrap();
    let (n1, n2) = (NodeId::new(1), NodeId::new(2));
    lab.stop_agent(n1, Signal::SIGTERM).unwrap();
    let node = lab.node(n1).clone();
    // A first start: neither weft's table nor flannel.1 ...
    netns::run(&node.ns, &["nft", "delete", "table", "inet", "weft"]).unwrap();
    netns::run(&node.ns, &["ip", "link", "del", "flannel.1"]).unwrap();
    // ... and someone else's VXLAN device on VNI 1 and the port.
    netns::run(
        &node.ns,
        &[
            "ip", "link", "add", "vx-squat", "type", "vxlan", "id", "1", "dstport", "8472",
            "local", &node.ip, "dev", "eth0",
        ],
    )
    .unwrap();
    netns::run(&node.ns, &["ip", "link", "set", "vx-squat", "up"]).unwrap();

    lab.launch_agent(n1).unwrap();
    let pid_file = node.agent_pid_file(&weft_tests::lab::run_dir(&spec.name));
    wait_for(
        "the agent that cannot create flannel.1 to stop",
        Duration::from_secs(30),
        || Ok(process::running_pid(&pid_file).is_none()),
    )
    .unwrap();
    let log = lab.node(n1).agent_log.clone().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("cannot create flannel.1"),
        "the agent stopped without naming the device it could not make:\n{}",
        process::log_tail(&log, 20)
    );

    let before = guard_counters(&node)["vxlan_not_a_peer"];
    let sender = lab.node(n2).ns.clone();
    send_udp(&sender, &format!("{}:8472", node.ip), b"first-start");
    wait_for(
        "the guard to refuse node 2's datagram",
        Duration::from_secs(5),
        || Ok(guard_counters(&node)["vxlan_not_a_peer"] == before + 1),
    )
    .unwrap();
}
