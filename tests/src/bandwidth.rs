//! tc as an authority, checked on a lab the way a user would: pods limited
//! by the real CNI `bandwidth` plugin get no more than their limit, both
//! ways, same node and across nodes, with either dataplane; the counters
//! prove the eBPF fast path left their traffic to the kernel path; with
//! the limits removed the fast path carries it again; and a second TCX
//! program attached after weft's on a pod's veth still sees its packets.
//! Shared by the VXLAN (fast_path.rs) and host-gw (host_gw.rs) tests.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType},
};
use weft_common::{
    CounterId,
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    PacketCounter, Reason, program_names,
};

use crate::{
    Dataplane, Lab, NodeId, cni,
    lab::{PodState, UPLINK, counters_delta},
    netns,
    traffic::tcp_transfer,
};

/// The limit each way, as kube's annotations would set it (10M).
pub const LIMIT_BPS: u64 = 10_000_000;

/// What each limited transfer moves: about 0.8 s at the limit.
const LIMITED_BYTES: u64 = 1 << 20;

/// Everything the eBPF fast path counts as carried for local pods, on
/// either hook and backend.
const CARRIED: [CounterId; 7] = [
    XdpUplink.counter(Reason::Decap),
    XdpUplink.counter(Reason::HostGw),
    TcUplink.counter(Reason::Decap),
    TcUplink.counter(Reason::HostGw),
    TcPodEgress.counter(Reason::Encap),
    TcPodEgress.counter(Reason::HostGw),
    TcPodEgress.counter(Reason::LocalRedirect),
];

/// Limits `pod` (an index into `node`'s pods) with the real plugin.
pub fn limit(lab: &Lab, node: NodeId, pod: usize) -> Result<()> {
    let state = lab.node(node);
    let pod = &state.pods[pod];
    cni::add_bandwidth_limits(&state.ns, &pod.ns, &pod.network, LIMIT_BPS)
}

/// Removes `pod`'s limits as an operator would: its host veth's root and
/// ingress qdiscs, with the filters on them.
pub fn unlimit(lab: &Lab, node: NodeId, pod: usize) -> Result<()> {
    let state = lab.node(node);
    let veth = &state.pods[pod].network.host_veth;
    netns::run(&state.ns, &["tc", "qdisc", "del", "dev", veth, "root"])?;
    netns::run(&state.ns, &["tc", "qdisc", "del", "dev", veth, "ingress"])?;
    Ok(())
}

/// Waits (up to 15 s: TCX attachments are seen on the agent's 5 s
/// re-read) until `weft maps endpoints` on `node` shows `ip` with these
/// tc flags.
pub fn wait_tc_flags(lab: &Lab, node: NodeId, ip: &str, sends: bool, receives: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = lab.maps_json(node, "endpoints")?;
        let row = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row["ip"] == ip)
            .cloned();
        if let Some(row) = &row
            && row["tc_sends"] == sends
            && row["tc_receives"] == receives
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ip} on {node}: want tc_sends {sends}, tc_receives {receives}; have {row:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Moves `bytes` from `client` to `server` (checked end to end), returns
/// the rate in Mbit/s.
pub fn transfer_mbit(server: &PodState, client: &PodState, port: u16, bytes: u64) -> Result<f64> {
    let started = Instant::now();
    let transfer = tcp_transfer(&server.ns, server.ip(), port, &client.ns, bytes)
        .with_context(|| format!("{} -> {}", client.ns, server.ns))?;
    let elapsed = started.elapsed();
    if transfer.sent != transfer.received {
        bail!("{} -> {}: the bytes arrived changed", client.ns, server.ns);
    }
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6)
}

/// A limited transfer: at most twice the limit (generous: the limit holds,
/// and a slow machine only makes it slower). Returns the rate.
fn assert_limited(what: &str, server: &PodState, client: &PodState, port: u16) -> f64 {
    let mbit = transfer_mbit(server, client, port, LIMITED_BYTES)
        .unwrap_or_else(|error| panic!("{what}: {error:#}"));
    eprintln!("{what}: {mbit:.1} Mbit/s (limit {})", LIMIT_BPS / 1_000_000);
    assert!(
        mbit < 2.0 * LIMIT_BPS as f64 / 1e6,
        "{what}: {mbit:.1} Mbit/s through a {} Mbit/s limit",
        LIMIT_BPS / 1_000_000
    );
    mbit
}

/// The whole check on a lab of three nodes with two pods each: nodes 1
/// and 2 on the eBPF dataplane, node 3 on the kernel dataplane. Node 1's
/// first pod and node 3's first pod get limits; node 2's first pod and
/// node 1's second are free. `xdp`: XDP is on the uplinks (it then counts
/// what is refused on the uplink).
pub fn limits_hold_on_every_path(lab: &Lab, xdp: bool) {
    let uplink_hook = if xdp { XdpUplink } else { TcUplink };
    let (n1, n2, n3) = (NodeId::new(1), NodeId::new(2), NodeId::new(3));
    assert_eq!(lab.node(n1).dataplane, Dataplane::Ebpf);
    assert_eq!(lab.node(n3).dataplane, Dataplane::Kernel);
    lab.warm_up().unwrap();
    let limited = lab.node(n1).pods[0].clone();
    let neighbour = lab.node(n1).pods[1].clone();
    let remote = lab.node(n2).pods[0].clone();
    let kernel_limited = lab.node(n3).pods[0].clone();

    limit(lab, n1, 0).unwrap();
    limit(lab, n3, 0).unwrap();
    wait_tc_flags(lab, n1, limited.ip(), true, true).unwrap();
    wait_tc_flags(lab, n1, neighbour.ip(), false, false).unwrap();
    // The agent says so, naming the veth.
    let log = lab
        .node(n1)
        .agent_log
        .as_ref()
        .expect("node 1 runs an agent");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("tc on a pod's veth changed")
                && line.contains(&limited.network.host_veth)),
        "node 1's agent did not log the limited pod's tc"
    );

    // eBPF dataplane: each path, each way, within the limit, and not one
    // packet of it on node 1's fast path; each refusal counted by cause.
    let cases: [(&str, &PodState, &PodState, CounterId); 4] = [
        (
            "cross node, into the limited pod",
            &limited,
            &remote,
            uplink_hook.counter(Reason::PassTcReceiver),
        ),
        (
            "cross node, from the limited pod",
            &remote,
            &limited,
            TcPodEgress.counter(Reason::PassTcSender),
        ),
        (
            "same node, into the limited pod",
            &limited,
            &neighbour,
            TcPodEgress.counter(Reason::PassTcReceiver),
        ),
        (
            "same node, from the limited pod",
            &neighbour,
            &limited,
            TcPodEgress.counter(Reason::PassTcSender),
        ),
    ];
    for (port, (what, server, client, refusal)) in (5301..).zip(cases) {
        let before = lab.counters(n1).unwrap();
        assert_limited(&format!("ebpf, {what}"), server, client, port);
        let after = lab.counters(n1).unwrap();
        assert_eq!(
            counters_delta(&before, &after, &CARRIED),
            (0, 0),
            "ebpf, {what}: node 1's fast path carried some of it"
        );
        let (_, refused) = counters_delta(&before, &after, &[refusal]);
        assert!(
            refused >= LIMITED_BYTES / 2,
            "ebpf, {what}: {refusal} counted {refused} bytes"
        );
    }

    // Kernel dataplane (node 3): the plugin's limits hold both ways.
    assert_limited(
        "kernel, into the limited pod",
        &kernel_limited,
        &remote,
        5311,
    );
    assert_limited(
        "kernel, from the limited pod",
        &remote,
        &kernel_limited,
        5312,
    );

    // Limits removed: the fast path carries the pod's traffic again.
    unlimit(lab, n1, 0).unwrap();
    wait_tc_flags(lab, n1, limited.ip(), false, false).unwrap();
    let bytes = 16 << 20;
    for (port, (what, server, client)) in (5321..).zip([
        ("cross node, into the pod", &limited, &remote),
        ("cross node, from the pod", &remote, &limited),
    ]) {
        let before = lab.counters(n1).unwrap();
        transfer_mbit(server, client, port, bytes).unwrap();
        let after = lab.counters(n1).unwrap();
        let (_, carried) = counters_delta(&before, &after, &CARRIED);
        // Most, not nearly all: in a 16 MiB transfer the few packets of a
        // re-check (and of a TCP verdict waiting for its conntrack entry to
        // be made liberal) are 64 KiB GRO packets, a few per cent of it.
        assert!(
            carried >= bytes / 10 * 9,
            "limits removed, {what}: node 1's fast path carried {carried} of {bytes} bytes"
        );
    }

    // The uplink's own root qdisc: a redirect to the uplink's egress (VXLAN
    // or host-gw) goes through it, so the fast path keeps the traffic and
    // the shaping still holds.
    let node_ns = &lab.node(n1).ns;
    netns::run(
        node_ns,
        &[
            "tc", "qdisc", "add", "dev", UPLINK, "root", "tbf", "rate", "10mbit", "burst", "125kb",
            "latency", "25ms",
        ],
    )
    .unwrap();
    let before = lab.counters(n1).unwrap();
    let shaped = std::panic::catch_unwind(|| {
        assert_limited("ebpf, out of a shaped uplink", &remote, &neighbour, 5341)
    });
    netns::run(node_ns, &["tc", "qdisc", "del", "dev", UPLINK, "root"]).unwrap();
    if let Err(panic) = shaped {
        std::panic::resume_unwind(panic);
    }
    let after = lab.counters(n1).unwrap();
    let (_, carried) = counters_delta(&before, &after, &CARRIED);
    assert!(
        carried >= LIMITED_BYTES / 2,
        "out of a shaped uplink: the fast path carried only {carried} bytes"
    );
}

/// A second TCX program, attached after weft's on a hook: an unpinned
/// copy of weft's own `tc_pod_egress`, with maps of its own and no CONFIG,
/// so it counts every packet it sees (`pod_egress`) and hands it on.
pub struct SecondProgram {
    ebpf: Ebpf,
}

impl SecondProgram {
    pub fn attach(ns: &str, iface: &str, hook: TcAttachType) -> Result<Self> {
        let mut ebpf = EbpfLoader::new().load(weft_agent::dataplane::ebpf::OBJECT)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(program_names::TC_POD_EGRESS)
            .context("no tc_pod_egress")?
            .try_into()?;
        program.load()?;
        // aya appends a TCX link at the end of the chain: after weft's.
        netns::in_netns(ns, || Ok(program.attach(iface, hook)?))
            .with_context(|| format!("cannot attach a second program to {iface}"))?;
        Ok(Self { ebpf })
    }

    /// What it saw: (packets, bytes).
    pub fn seen(&self) -> Result<(u64, u64)> {
        let stats: PerCpuArray<_, PacketCounter> =
            PerCpuArray::try_from(self.ebpf.map("STATS").context("no STATS")?)?;
        let per_cpu = stats.get(&TcPodEgress.counter(Reason::Seen).slot(), 0)?;
        Ok(per_cpu.iter().fold((0, 0), |(packets, bytes), counter| {
            (packets + counter.packets, bytes + counter.bytes)
        }))
    }
}

/// A second TCX program attached after weft's on a free pod's veth (where
/// weft takes the pod's packets) still sees every packet the pod sends:
/// weft notices it, leaves the pod's traffic to the kernel path, and hands
/// each packet on with `TCX_NEXT`.
pub fn a_second_program_after_wefts_sees_the_packets(lab: &Lab) {
    let (n1, n2) = (NodeId::new(1), NodeId::new(2));
    let pod = lab.node(n1).pods[1].clone();
    let remote = lab.node(n2).pods[0].clone();
    let second = SecondProgram::attach(
        &lab.node(n1).ns,
        &pod.network.host_veth,
        TcAttachType::Ingress,
    )
    .unwrap();
    wait_tc_flags(lab, n1, pod.ip(), true, false).unwrap();
    let before = lab.counters(n1).unwrap();
    let (_, seen_before) = second.seen().unwrap();
    let bytes = 4 << 20;
    transfer_mbit(&remote, &pod, 5331, bytes).unwrap();
    let (_, seen) = second.seen().unwrap();
    let after = lab.counters(n1).unwrap();
    assert!(
        seen - seen_before >= bytes,
        "the second program saw {} of the {bytes} bytes sent",
        seen - seen_before
    );
    let (_, refused) = counters_delta(
        &before,
        &after,
        &[TcPodEgress.counter(Reason::PassTcSender)],
    );
    assert!(
        refused >= bytes,
        "tc_pass_tc_sender counted {refused} bytes"
    );
    // Detached: weft takes the pod's packets again.
    drop(second);
    wait_tc_flags(lab, n1, pod.ip(), false, false).unwrap();
}
