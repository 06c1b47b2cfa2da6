//! The eBPF VXLAN fast path on the lab, under attack and failure: spoofed
//! VXLAN never reaches a pod, and an agent killed under load loses nothing.

// Each integration test is its own crate and sees every dependency of the
// package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};
use weft_common::{Hook::TcUplink, Reason};

use nix::sys::signal::Signal;
use weft_common::program_names::{TC_POD_EGRESS, TC_UPLINK};
use weft_tests::{
    Lab, LabSpec, NodeId,
    lab::{self, PodState, counter_delta},
    netns,
    packets::{ETH_P_IPV4, Ipv4Options, eth, ipv4, udp, vxlan},
    privileged_test,
    traffic::tcp_transfer,
};

/// A VXLAN datagram carrying UDP `payload` from a remote pod to `pod` on port 9999.
fn vxlan_to_pod(pod: &PodState, payload: &[u8]) -> Vec<u8> {
    let inner_ip = ipv4(
        [10, 244, 250, 9],
        pod.ip().parse::<std::net::Ipv4Addr>().unwrap().octets(),
        17,
        &udp(4444, 9999, payload),
        Ipv4Options::default(),
    );
    vxlan(
        1,
        &eth(
            [0x0e, 0, 0, 0, 0, 1],
            [0x0e, 0, 0, 0, 0, 2],
            ETH_P_IPV4,
            &inner_ip,
        ),
    )
}

#[test]
fn spoofed_vxlan_never_reaches_a_pod_in_strict_mode() {
    let Some(_guard) = privileged_test("spoofed_vxlan_never_reaches_a_pod_in_strict_mode") else {
        return;
    };
    let lab = Lab::up(&LabSpec::new("t-fp-spoof", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let pod = lab.node(NodeId::new(1)).pods[0].clone();
    let node_ip = lab.node(NodeId::new(1)).ip.clone();
    let listener = netns::in_netns(&pod.ns, || {
        let socket = UdpSocket::bind(("0.0.0.0", 9999))?;
        socket.set_read_timeout(Some(Duration::from_millis(1500)))?;
        Ok(socket)
    })
    .unwrap();
    let send_from = |ns: &str, source: &str, payload: &[u8]| {
        let datagram = vxlan_to_pod(&pod, payload);
        let target = format!("{node_ip}:8472");
        netns::in_netns(ns, || {
            let socket = UdpSocket::bind((source, 0))?;
            socket.send_to(&datagram, &target)?;
            Ok(())
        })
        .unwrap();
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
    let mut buffer = [0u8; 64];
    let received = listener.recv_from(&mut buffer);
    assert!(
        received.is_err(),
        "the spoofed packet reached the pod: {:?}",
        received.map(|(len, _)| String::from_utf8_lossy(&buffer[..len]).into_owned())
    );
    assert_eq!(
        counter_delta(
            &before,
            &lab.counters(NodeId::new(1)).unwrap(),
            TcUplink.counter(Reason::DropUnknownVtep)
        )
        .0,
        1
    );
    // The same packet from a node that holds a lease passes the VTEP
    // check (the check above could have failed) and meets the next one: it
    // is not addressed to this node's VTEP MAC, so it goes to the kernel
    // path (where flannel.1 ignores it) rather than into the pod.
    let before = lab.counters(NodeId::new(1)).unwrap();
    send_from(
        &lab.node(NodeId::new(2)).ns,
        &lab.node(NodeId::new(2)).ip,
        b"legit",
    );
    lab::wait_for(
        "the packet from a real node to be classified",
        Duration::from_secs(5),
        || {
            Ok(counter_delta(
                &before,
                &lab.counters(NodeId::new(1))?,
                TcUplink.counter(Reason::PassNotOurVtep),
            )
            .0 == 1)
        },
    )
    .unwrap();
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
    let Some(_guard) = privileged_test(
        "killing_the_agent_under_load_loses_nothing_and_the_restart_adopts_the_pins",
    ) else {
        return;
    };
    let mut lab = Lab::up(&LabSpec::new("t-fp-restart", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let (client, server) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(2)).pods[0].clone(),
    );
    let counters_before = lab.counters(NodeId::new(2)).unwrap();
    let killer = {
        let pid = lab.agent_pid(NodeId::new(2)).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL)
                .unwrap();
        })
    };
    let started = Instant::now();
    let transfer =
        tcp_transfer(&server.ns, server.ip(), 5002, &client.ns, 200 * 1024 * 1024).unwrap();
    killer.join().unwrap();
    assert!(
        started.elapsed() > Duration::from_millis(300),
        "the transfer ended before the kill"
    );
    assert_eq!(
        transfer.sent, transfer.received,
        "the transfer was damaged by the agent's death"
    );
    lab.stop_agent(NodeId::new(2), Signal::SIGKILL).ok();
    lab.start_agent(NodeId::new(2)).unwrap();
    lab.wait_pods_attached(NodeId::new(2)).unwrap();
    // Adopted, not duplicated: one XDP program on the uplink, one TC program
    // per pod veth, and the pinned counters carried on from before the kill.
    let node = lab.node(NodeId::new(2));
    assert!(lab::tc_attached(&node.ns, "eth0", TC_UPLINK).unwrap());
    for pod in &node.pods {
        let count = netns::in_netns(&node.ns, || {
            let (_, programs) = aya::programs::SchedClassifier::query_tcx(
                &pod.network.host_veth,
                aya::programs::TcAttachType::Ingress,
            )?;
            Ok(programs
                .iter()
                .filter(|info| info.name_as_str() == Some(TC_POD_EGRESS))
                .count())
        })
        .unwrap();
        assert_eq!(
            count, 1,
            "{} has {count} copies of {TC_POD_EGRESS}",
            pod.network.host_veth
        );
    }
    assert!(
        lab.counters(NodeId::new(2)).unwrap()[&TcUplink.counter(Reason::Seen)].0
            >= counters_before[&TcUplink.counter(Reason::Seen)].0
    );
    lab.assert_all_pairs_ping(2);
}
