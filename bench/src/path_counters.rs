//! Reading the path counters a configuration's traffic leaves behind: the
//! fast path's counters, netfilter's share and the kernel path's counters.
//! `measure` reads them around a run; `validity` judges the result.
//!
//! Every weft counter the bench reads is named in this module and nowhere
//! else, so a renamed counter is one edit here.

use anyhow::{Context as _, Result};
use weft_common::{
    CounterId,
    Hook::{self, TcPodEgress, TcUplink, XdpUplink},
    Reason,
};
use weft_tests::{Dataplane, Lab, inspect, lab::UPLINK, netns};

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

/// The kernel's VXLAN device, as flanneld and weft name it.
pub(crate) const VXLAN_DEVICE: &str = "flannel.1";

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
/// (set-up, SYN/FIN, one or two per re-check interval while the agent
/// confirms a TCP flow liberal), never a share of a transfer.
const NETFILTER_REFUSALS: [CounterId; 15] = {
    const fn on(hook: Hook) -> [CounterId; 5] {
        [
            hook.counter(Reason::PassNoVerdict),
            hook.counter(Reason::PassRulesetChanged),
            hook.counter(Reason::PassRecheck),
            hook.counter(Reason::PassTcpControl),
            hook.counter(Reason::PassVerdictPending),
        ]
    }
    let [xdp, tc_uplink, pod] = [on(XdpUplink), on(TcUplink), on(TcPodEgress)];
    [
        xdp[0],
        xdp[1],
        xdp[2],
        xdp[3],
        xdp[4],
        tc_uplink[0],
        tc_uplink[1],
        tc_uplink[2],
        tc_uplink[3],
        tc_uplink[4],
        pod[0],
        pod[1],
        pod[2],
        pod[3],
        pod[4],
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

/// What the kernel path carried, summed over both nodes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KernelPath {
    /// Packets through `flannel.1` (received and sent).
    pub(crate) vxlan_packets: u64,
    /// Bytes through `flannel.1` (received and sent, inner frames).
    pub(crate) vxlan_bytes: u64,
    /// Packets the IPv4 stack forwarded (`ForwDatagrams`).
    pub(crate) forwarded: u64,
    /// Nodes whose `ForwDatagrams` rose: at least the two the flow crosses
    /// when the kernel routes it.
    pub(crate) forwarding_nodes: u64,
    /// Bytes through the nodes' underlay links (`eth0`, received and sent).
    pub(crate) uplink_bytes: u64,
}

impl KernelPath {
    pub(crate) fn packets(&self) -> u64 {
        self.vxlan_packets + self.forwarded
    }
}

/// One reading of the kernel path's counters, per node: (`flannel.1`
/// packets, `flannel.1` bytes, `ForwDatagrams`, `eth0` bytes).
#[derive(Clone, Debug, Default)]
pub(crate) struct KernelReading(Vec<(u64, u64, u64, u64)>);

impl KernelReading {
    pub(crate) fn read(lab: &Lab) -> Result<Self> {
        let mut per_node = Vec::new();
        for node in lab.node_ids() {
            let ns = &lab.node(node).ns;
            let (packets, bytes) = vxlan_device_counts(ns)?.unwrap_or_default();
            let (_, uplink_bytes) = link_counts(ns, UPLINK)?;
            per_node.push((
                packets,
                bytes,
                inspect::forwarded_datagrams(ns)?,
                uplink_bytes,
            ));
        }
        Ok(Self(per_node))
    }

    /// What the kernel path carried between `before` and this reading.
    pub(crate) fn since(&self, before: &KernelReading) -> KernelPath {
        let mut path = KernelPath::default();
        for (now, then) in self.0.iter().zip(&before.0) {
            path.vxlan_packets += now.0 - then.0;
            path.vxlan_bytes += now.1 - then.1;
            path.forwarded += now.2 - then.2;
            path.forwarding_nodes += u64::from(now.2 > then.2);
            path.uplink_bytes += now.3 - then.3;
        }
        path
    }
}

/// (packets, bytes) received plus sent by `flannel.1` in `ns`, if it exists.
fn vxlan_device_counts(ns: &str) -> Result<Option<(u64, u64)>> {
    if inspect::link(ns, VXLAN_DEVICE)?.is_none() {
        return Ok(None);
    }
    link_counts(ns, VXLAN_DEVICE).map(Some)
}

/// (packets, bytes) received plus sent by `device` in `ns`.
fn link_counts(ns: &str, device: &str) -> Result<(u64, u64)> {
    let out = netns::run_host(&["ip", "-j", "-s", "-n", ns, "link", "show", device])?;
    let links: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ip -s link printed no JSON: {out}"))?;
    let stats = &links[0]["stats64"];
    let sum = |what: &str| {
        stats["rx"][what].as_u64().unwrap_or_default()
            + stats["tx"][what].as_u64().unwrap_or_default()
    };
    Ok((sum("packets"), sum("bytes")))
}
