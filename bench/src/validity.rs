//! Whether a configuration's traffic took the path it claims: the fast
//! path's counters, netfilter's share and the kernel path's counters.

use anyhow::Result;
use weft_common::{
    CounterId,
    Hook::{self, TcPodEgress, TcUplink, XdpUplink},
    Reason,
};
use weft_tests::{Backend, Dataplane, Lab, inspect};

use crate::measure::Run;

/// Every counter of a packet the fast path carried: sent to a peer node,
/// or delivered into a pod (by XDP, or by TC after GRO, where one packet
/// stands for many wire frames).
pub const FAST_PATH_COUNTERS: [CounterId; 6] = [
    TcPodEgress.counter(Reason::Encap),
    TcPodEgress.counter(Reason::HostGw),
    XdpUplink.counter(Reason::Decap),
    XdpUplink.counter(Reason::HostGw),
    TcUplink.counter(Reason::Decap),
    TcUplink.counter(Reason::HostGw),
];

/// (packets, bytes) of the fast path on both nodes.
pub(crate) fn fast_path_counts(lab: &Lab) -> Result<(u64, u64)> {
    let mut total = (0, 0);
    for node in lab.node_ids() {
        if lab.node(node).dataplane != Dataplane::Ebpf {
            continue;
        }
        let counters = lab.counters(node)?;
        for counter in FAST_PATH_COUNTERS {
            let (packets, bytes) = counters.get(&counter).copied().unwrap_or_default();
            total = (total.0 + packets, total.1 + bytes);
        }
    }
    Ok(total)
}

/// Why the fast path hands a packet to netfilter: a few packets per flow
/// (set-up, SYN/FIN, one per re-check interval), never a share of a
/// transfer.
const NETFILTER_REFUSALS: [CounterId; 12] = {
    const fn on(hook: Hook) -> [CounterId; 4] {
        [
            hook.counter(Reason::PassNoVerdict),
            hook.counter(Reason::PassRulesetChanged),
            hook.counter(Reason::PassRecheck),
            hook.counter(Reason::PassTcpControl),
        ]
    }
    let [xdp, tc_uplink, pod] = [on(XdpUplink), on(TcUplink), on(TcPodEgress)];
    [
        xdp[0],
        xdp[1],
        xdp[2],
        xdp[3],
        tc_uplink[0],
        tc_uplink[1],
        tc_uplink[2],
        tc_uplink[3],
        pod[0],
        pod[1],
        pod[2],
        pod[3],
    ]
};

pub(crate) fn netfilter_refusals(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for node in lab.node_ids() {
        if lab.node(node).dataplane != Dataplane::Ebpf {
            continue;
        }
        let counters = lab.counters(node)?;
        total += NETFILTER_REFUSALS
            .iter()
            .map(|id| counters.get(id).map_or(0, |(packets, _)| *packets))
            .sum::<u64>();
    }
    Ok(total)
}

pub(crate) fn kernel_path_packets(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for node in lab.node_ids() {
        let ns = &lab.node(node).ns;
        if let Ok((rx, tx)) = inspect::packet_counts(ns, "flannel.1") {
            total += rx + tx;
        }
        total += inspect::forwarded_datagrams(ns)?;
    }
    Ok(total)
}

/// The path check: the fast path must have carried the TCP run on eBPF
/// configurations (and the kernel path must be near idle), and must not
/// exist on the others.
pub(crate) fn check_path(
    name: &str,
    dataplane: Dataplane,
    backend: Backend,
    runs: &[Run],
) -> Option<String> {
    for run in runs {
        match dataplane {
            Dataplane::Ebpf => {
                // Bytes, not packets: after GRO one packet is many frames.
                if run.fastpath_bytes < run.tcp_bytes * 9 / 5 {
                    return Some(format!(
                        "{name}: the fast path carried {} bytes of a {} byte transfer \
                         (sent and delivered: expected twice that)",
                        run.fastpath_bytes, run.tcp_bytes
                    ));
                }
                if run.netfilter_refusals > run.tcp_packets / 100 {
                    return Some(format!(
                        "{name}: the fast path handed {} packets of ~{} to netfilter",
                        run.netfilter_refusals, run.tcp_packets
                    ));
                }
                if run.kernel_packets > run.tcp_packets / 20 {
                    return Some(format!(
                        "{name}: the kernel path carried {} packets of ~{}",
                        run.kernel_packets, run.tcp_packets
                    ));
                }
            }
            Dataplane::Kernel | Dataplane::Floor | Dataplane::Flanneld => {
                if run.fastpath_packets != 0 {
                    return Some(format!(
                        "{name}: eBPF counters rose on a {} node",
                        dataplane.flag()
                    ));
                }
                // The kernel counts GRO-merged packets, so only "none at all"
                // proves a wrong path here.
                if run.kernel_packets == 0 {
                    return Some(format!(
                        "{name}: the kernel path ({backend:?}) carried nothing"
                    ));
                }
            }
        }
    }
    None
}
