//! The eBPF VXLAN fast path on the lab, under attack and failure: spoofed
//! VXLAN never reaches a pod, an agent killed under load loses nothing, and
//! a restarted agent honours no netfilter verdict recorded before it.

use std::{
    net::{IpAddr, Ipv4Addr, UdpSocket},
    time::Duration,
};

use ipnet::Ipv4Net;
use weft_agent::lease::MacAddr;
use weft_common::{
    Hook::{TcPodEgress, TcUplink},
    Reason,
};

use nix::sys::signal::Signal;
use weft_common::program_names::{TC_POD_EGRESS, TC_UPLINK};
use weft_tests::{
    Lab, LabSpec, NodeId,
    echo::EchoServer,
    flannel, inspect,
    lab::{DECAP_COUNTERS, PodState, counter_delta, wait_for},
    netns,
    packets::{ETH_P_IPV4, Ipv4Options, eth, ipv4, udp, vxlan},
    privileged,
    traffic::tcp_transfer,
};

/// The best forgery a stranger can make: a VXLAN datagram (VNI 1)
/// addressed inside to the target node's real VTEP MAC (`vtep`), carrying
/// UDP `payload` to `pod` port 9999 from `inner_src`, an address in a peer
/// node's pod subnet. The target's flannel.1 takes it (the real peer's
/// copy below arrives), so only the VTEP check keeps the stranger's out.
fn vxlan_to_pod(vtep: [u8; 6], inner_src: Ipv4Addr, pod: &PodState, payload: &[u8]) -> Vec<u8> {
    let inner_ip = ipv4(
        inner_src.octets(),
        pod.ip().parse::<Ipv4Addr>().unwrap().octets(),
        17,
        &udp(4444, 9999, payload),
        Ipv4Options::default(),
    );
    vxlan(1, &eth(vtep, [0x0e, 0, 0, 0, 0, 2], ETH_P_IPV4, &inner_ip))
}

#[test]
fn spoofed_vxlan_never_reaches_a_pod_in_strict_mode() {
    let _guard = privileged!("spoofed_vxlan_never_reaches_a_pod_in_strict_mode");
    let lab = Lab::up(&LabSpec::new("t-fp-spoof", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let target = lab.node(NodeId::new(1));
    let peer = lab.node(NodeId::new(2));
    let pod = target.pods[0].clone();
    let vtep: MacAddr = flannel::vtep_mac(target).unwrap().parse().unwrap();
    // An address in the peer's pod subnet (no pod holds it: only the
    // datagram's delivery is in question).
    let inner_src = {
        let subnet: Ipv4Net = peer.subnet.parse().unwrap();
        Ipv4Addr::from(u32::from(subnet.network()) + 200)
    };
    let listener = netns::in_netns(&pod.ns, || {
        let socket = UdpSocket::bind(("0.0.0.0", 9999))?;
        socket.set_read_timeout(Some(Duration::from_millis(1500)))?;
        Ok(socket)
    })
    .unwrap();
    let send_from = |ns: &str, source: &str, payload: &[u8]| {
        let datagram = vxlan_to_pod(vtep.0, inner_src, &pod, payload);
        let destination = format!("{}:8472", target.ip);
        netns::in_netns(ns, || {
            let socket = UdpSocket::bind((source, 0))?;
            socket.send_to(&datagram, &destination)?;
            Ok(())
        })
        .unwrap();
    };
    let receive = || {
        let mut buffer = [0u8; 64];
        listener
            .recv_from(&mut buffer)
            .ok()
            .map(|(len, from)| (from.ip(), buffer[..len].to_vec()))
    };
    // From an underlay address that holds no lease.
    netns::run_host(&[
        "ip",
        "-n",
        &lab.state.underlay_ns,
        "addr",
        "add",
        "192.168.77.66/24",
        "dev",
        "ul0",
    ])
    .unwrap();
    let before = lab.counters(NodeId::new(1)).unwrap();
    send_from(&lab.state.underlay_ns, "192.168.77.66", b"spoofed");
    let received = receive();
    assert_eq!(received, None, "the stranger's packet reached the pod");
    assert_eq!(
        counter_delta(
            &before,
            &lab.counters(NodeId::new(1)).unwrap(),
            TcUplink.counter(Reason::DropUnknownVtep)
        )
        .0,
        1
    );
    // The same datagram from the peer that holds the lease arrives, from
    // the inner source: so nothing but the VTEP check stopped the
    // stranger's copy.
    let before = lab.counters(NodeId::new(1)).unwrap();
    send_from(&peer.ns, &peer.ip, b"legit");
    assert_eq!(
        receive(),
        Some((IpAddr::V4(inner_src), b"legit".to_vec())),
        "the peer's copy of the datagram did not arrive"
    );
    assert_eq!(
        counter_delta(
            &before,
            &lab.counters(NodeId::new(1)).unwrap(),
            TcUplink.counter(Reason::DropUnknownVtep)
        )
        .0,
        0
    );
}

#[test]
fn killing_the_agent_under_load_loses_nothing_and_the_restart_adopts_the_pins() {
    let _guard =
        privileged!("killing_the_agent_under_load_loses_nothing_and_the_restart_adopts_the_pins");
    let mut lab = Lab::up(&LabSpec::new("t-fp-restart", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let (client, server) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(2)).pods[0].clone(),
    );
    // Kill the receiving node's agent as soon as the transfer is under way
    // on the fast path (watched in its pinned STATS every millisecond), so
    // the kill lands while bytes are still arriving however fast this
    // machine is, and read STATS right after it.
    const UNDER_WAY: u64 = 1024 * 1024;
    const TRANSFER: u64 = 256 * 1024 * 1024;
    const AFTER_THE_KILL: u64 = TRANSFER / 2;
    let pid = lab.agent_pid(NodeId::new(2)).unwrap();
    let started = lab.pinned_counters(NodeId::new(2)).unwrap();
    let begun = std::time::Instant::now();
    let (transfer, (at_kill, received_at_kill)) = std::thread::scope(|scope| {
        let lab = &lab;
        let killer = scope.spawn(move || {
            lab.wait_for_bytes(
                NodeId::new(2),
                &started,
                &DECAP_COUNTERS,
                UNDER_WAY,
                Duration::from_secs(30),
            )?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL)?;
            let at_kill = lab.pinned_counters(NodeId::new(2))?;
            let received = inspect::received_bytes(&lab.node(NodeId::new(2)).ns, "eth0")?;
            eprintln!("killed {:?} into the transfer", begun.elapsed());
            anyhow::Ok((at_kill, received))
        });
        let began = std::time::Instant::now();
        let transfer = tcp_transfer(&server.ns, server.ip(), 5002, &client.ns, TRANSFER).unwrap();
        eprintln!("{TRANSFER} bytes across the kill in {:?}", began.elapsed());
        (transfer, killer.join().unwrap().unwrap())
    });
    assert_eq!(
        transfer.sent, transfer.received,
        "the transfer was damaged by the agent's death"
    );
    lab.stop_agent(NodeId::new(2), Signal::SIGKILL).ok();
    lab.start_agent(NodeId::new(2)).unwrap();
    lab.wait_pods_attached(NodeId::new(2)).unwrap();
    // Adopted, not duplicated: one tc_uplink on the uplink, one TC program
    // per pod veth.
    let node = lab.node(NodeId::new(2));
    let copies = |iface: &str, program: &str| {
        netns::in_netns(&node.ns, || {
            let (_, programs) = aya::programs::SchedClassifier::query_tcx(
                iface,
                aya::programs::TcAttachType::Ingress,
            )?;
            Ok(programs
                .iter()
                .filter(|info| info.name_as_str() == Some(program))
                .count())
        })
        .unwrap()
    };
    assert_eq!(copies("eth0", TC_UPLINK), 1, "eth0: copies of {TC_UPLINK}");
    for pod in &node.pods {
        assert_eq!(
            copies(&pod.network.host_veth, TC_POD_EGRESS),
            1,
            "{}: copies of {TC_POD_EGRESS}",
            pod.network.host_veth
        );
    }
    // Half the transfer or more still arrived after the kill, by the
    // kernel path (the programs' attachments ended with the agent): at
    // least that many bytes on node 2's uplink. And the restart carried
    // the pinned counters on from the reading taken right after the kill.
    let received =
        inspect::received_bytes(&lab.node(NodeId::new(2)).ns, "eth0").unwrap() - received_at_kill;
    assert!(
        received >= AFTER_THE_KILL,
        "only {received} bytes arrived after the kill: the transfer was (nearly) over before it"
    );
    let now = lab.counters(NodeId::new(2)).unwrap();
    for (counter, value) in &at_kill {
        assert!(
            now[counter] >= *value,
            "{counter} went back from {value:?} to {:?}: the restart did not adopt STATS",
            now[counter]
        );
    }
    lab.assert_all_pairs_ping(2);
}

/// A verdict lives far longer than the agent's restart here
/// (`--verdict-ttl-ms` at its 60 s maximum), so only the new run's ruleset
/// generation can void what the previous run recorded: an established
/// flow held across the restart must go through netfilter again
/// (`tc_pod_egress` counts `pass_ruleset_changed`, not `encap`) before the
/// fast path takes it back. UDP, so that each request is exactly one
/// packet from the client (no ACK of TCP's to count as well).
#[test]
fn a_restarted_agent_honours_no_verdict_recorded_before_it() {
    let _guard = privileged!("a_restarted_agent_honours_no_verdict_recorded_before_it");
    const VERDICT_TTL_MS: u64 = 60_000;
    let mut spec = LabSpec::new("uc-fp-void", 2, 1);
    spec.agent_args
        .push(format!("--verdict-ttl-ms={VERDICT_TTL_MS}"));
    let mut lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    let n1 = NodeId::new(1);
    let (client, server) = (
        lab.node(n1).pods[0].clone(),
        lab.node(NodeId::new(2)).pods[0].clone(),
    );
    let _server = EchoServer::start(&server.ns, 8080).unwrap();
    let target = format!("{}:8080", server.ip());
    let socket = netns::in_netns(&client.ns, || {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.connect(&target)?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(socket)
    })
    .unwrap();
    let mut requests = Requests { socket, next: 0 };
    let encap = TcPodEgress.counter(Reason::Encap);
    let ruleset_changed = TcPodEgress.counter(Reason::PassRulesetChanged);
    let on_fast_path = requests.carried(&lab, n1);
    assert!(
        on_fast_path >= 90,
        "the flow did not ride the fast path before the restart: {on_fast_path} of 100 requests"
    );
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let flows = lab.maps_json(n1, "flows").unwrap();
        assert!(
            flows.as_array().is_some_and(|flows| !flows.is_empty()),
            "no verdict recorded before the {signal} restart: {flows}"
        );
        lab.stop_agent(n1, signal).unwrap();
        lab.start_agent(n1).unwrap();
        lab.wait_pods_attached(n1).unwrap();
        // Live: CONFIG names the uplink again (dormant, the programs act on
        // nothing and would count `pass_no_config`).
        wait_for(
            "node 1's CONFIG to go live",
            Duration::from_secs(10),
            || {
                let config = lab.maps_json(n1, "config")?;
                Ok(config["uplink_ifindex"].as_u64() != Some(0)
                    && config["verdict_ttl_ms"].as_u64() == Some(VERDICT_TTL_MS))
            },
        )
        .unwrap();
        // The previous run's verdict for this flow is still in the pinned
        // FLOWS, well within its TTL; the first request after the restart
        // must not ride on it.
        let before = lab.counters(n1).unwrap();
        requests.send(1);
        let after = lab.counters(n1).unwrap();
        assert_eq!(
            (
                counter_delta(&before, &after, encap).0,
                counter_delta(&before, &after, ruleset_changed).0
            ),
            (0, 1),
            "after a {signal} restart, (encap, pass_ruleset_changed) for the first request: \
             a verdict from before the restart was honoured"
        );
        // Netfilter passes it again, and the fast path takes it back.
        let on_fast_path = requests.carried(&lab, n1);
        assert!(
            on_fast_path >= 90,
            "after a {signal} restart the flow did not return to the fast path: \
             {on_fast_path} of 100 requests"
        );
    }
}

/// Numbered UDP requests on one flow, each waited for.
struct Requests {
    socket: UdpSocket,
    next: usize,
}

impl Requests {
    fn send(&mut self, count: usize) {
        let mut reply = [0u8; 64];
        for _ in 0..count {
            let request = format!("request {:06}", self.next);
            self.socket.send(request.as_bytes()).unwrap();
            let len = self
                .socket
                .recv(&mut reply)
                .unwrap_or_else(|error| panic!("no answer to {request}: {error}"));
            assert_eq!(&reply[..len], request.as_bytes());
            self.next += 1;
        }
    }

    /// Of 100 requests (after 20 that let the flow settle), how many
    /// `node`'s `tc_pod_egress` put on the fast path.
    fn carried(&mut self, lab: &Lab, node: NodeId) -> u64 {
        self.send(20);
        let before = lab.counters(node).unwrap();
        self.send(100);
        counter_delta(
            &before,
            &lab.counters(node).unwrap(),
            TcPodEgress.counter(Reason::Encap),
        )
        .0
    }
}
