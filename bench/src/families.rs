//! IPv6 next to IPv4 (issue 23): in one dual-stack lab per backend and
//! dataplane (weft's kernel path, and its fast path, which carries both
//! families, handing IPv6 to VXLAN peers to `flannel-v6.<VNI>`), TCP
//! request/response latency and TCP throughput between the same two pods
//! over each family, so the two rows differ only in the family.
//!
//! Request/response is timed by `traffic::tcp_rr_latencies` for both rows
//! (Debian 12's sockperf, which the main table uses, takes no IPv6
//! address), client and server pinned to one CPU as in the main table's
//! RR columns; these rows compare with each other, not with the main
//! table's sockperf columns. Throughput is iperf3, as in the main table.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde::Serialize;
use weft_common::{CounterId, Hook, Reason};
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, inspect,
    lab::{Counters, carried_nearly_all, counter_delta, counters_delta},
    traffic,
};

use crate::{
    BenchOptions,
    measure::{Endpoint, iperf_tcp, percentile},
};

/// The overlay devices whose received bytes show which family's device
/// carried a VXLAN run.
const VXLAN_DEVICES: [(&str, &str); 2] = [("IPv4", "flannel.1"), ("IPv6", "flannel-v6.1")];

/// The CPU client and server share for request/response (the main
/// table's same-CPU pinning uses it too).
const RR_CPU: usize = 1;

/// The dual-stack configurations, in table order.
const CONFIGS: [(Dataplane, Backend); 4] = [
    (Dataplane::Kernel, Backend::Vxlan),
    (Dataplane::Kernel, Backend::HostGw),
    (Dataplane::Ebpf, Backend::Vxlan),
    (Dataplane::Ebpf, Backend::HostGw),
];

/// What the sending pod's fast path counts for a family's bytes on a
/// backend: encapsulated (IPv6: handed to `flannel-v6.<VNI>`, which
/// encapsulates it) or routed.
fn sent_counter(backend: Backend, family: &str) -> CounterId {
    Hook::TcPodEgress.counter(match (backend, family) {
        (Backend::Vxlan, "IPv4") => Reason::Encap,
        (Backend::Vxlan, _) => Reason::EncapIpv6,
        (Backend::HostGw, "IPv4") => Reason::HostGw,
        (Backend::HostGw, _) => Reason::HostGwIpv6,
    })
}

/// What the receiving node's fast path counts for a family's bytes on a
/// backend, in XDP or in TC: decapsulated or routed into the pod.
fn delivered_counters(backend: Backend, family: &str) -> [CounterId; 2] {
    let reason = match (backend, family) {
        (Backend::Vxlan, "IPv4") => Reason::Decap,
        (Backend::Vxlan, _) => Reason::DecapIpv6,
        (Backend::HostGw, "IPv4") => Reason::HostGw,
        (Backend::HostGw, _) => Reason::HostGwIpv6,
    };
    [
        Hook::XdpUplink.counter(reason),
        Hook::TcUplink.counter(reason),
    ]
}

/// One family's row.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyRow {
    /// `kernel-vxlan`, `kernel-host-gw`, `ebpf-vxlan` or `ebpf-host-gw`,
    /// dual-stack.
    pub config: String,
    /// `IPv4` or `IPv6`.
    pub family: String,
    pub tcp_rr_us_p50: f64,
    pub tcp_rr_us_p99: f64,
    pub tcp_gbps: f64,
}

/// Both backends' rows, IPv4 then IPv6 each.
pub fn family_rows(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<FamilyRow>> {
    let mut rows = Vec::new();
    for (dataplane, backend) in CONFIGS {
        let fast_path = dataplane == Dataplane::Ebpf;
        let config = format!(
            "{}-{}",
            if fast_path { "ebpf" } else { "kernel" },
            backend.flag()
        );
        let name = format!(
            "{}-{}-{}-ds",
            options.lab_prefix,
            if fast_path { "e" } else { "k" },
            match backend {
                Backend::Vxlan => "vx",
                Backend::HostGw => "hg",
            }
        );
        progress(&format!("{config} dual-stack: bringing up a 2-node lab"));
        let mut spec = LabSpec::new(&name, 2, 1);
        spec.backend = backend;
        spec.dataplane = dataplane;
        spec.dual_stack = true;
        spec.weft_bin = options.weft_bin.clone();
        let lab = Lab::up(&spec)?;
        lab.warm_up()?;
        let (client, server) = (
            lab.node(NodeId::new(1)).pods[0].clone(),
            lab.node(NodeId::new(2)).pods[0].clone(),
        );
        for (family, server_ip) in [("IPv4", server.ip()), ("IPv6", server.ip6())] {
            progress(&format!("  {family}: TCP request/response latency"));
            let mut latencies: Vec<f64> = traffic::tcp_rr_latencies(
                &server.ns,
                server_ip,
                5301,
                &client.ns,
                64,
                Duration::from_secs_f64(options.seconds),
                Some(RR_CPU),
            )?
            .into_iter()
            .map(|latency| latency.as_secs_f64() * 1e6)
            .collect();
            latencies.sort_by(f64::total_cmp);
            progress(&format!("  {family}: TCP throughput"));
            let receiver = &lab.node(NodeId::new(2)).ns;
            // The kernel path's VXLAN rows cross their family's device.
            let device = VXLAN_DEVICES
                .iter()
                .find(|(of, _)| *of == family)
                .map(|(_, device)| *device)
                .filter(|_| backend == Backend::Vxlan && !fast_path);
            let before = device
                .map(|device| inspect::received_bytes(receiver, device))
                .transpose()?;
            let counters_before: Option<(Counters, Counters)> = fast_path
                .then(|| {
                    Ok::<_, anyhow::Error>((
                        lab.counters(NodeId::new(1))?,
                        lab.counters(NodeId::new(2))?,
                    ))
                })
                .transpose()?;
            let tcp = iperf_tcp(
                &Endpoint {
                    ns: client.ns.clone(),
                    ip: client.ip().to_owned(),
                },
                &Endpoint {
                    ns: server.ns.clone(),
                    ip: server_ip.to_owned(),
                },
                options.seconds,
            )?;
            // The family's own VXLAN device carried the run.
            if let (Some(device), Some(before)) = (device, before) {
                let carried = inspect::received_bytes(receiver, device)? - before;
                ensure!(
                    carried >= tcp.bytes,
                    "{config} {family}: {device} received {carried} bytes of a {} byte run",
                    tcp.bytes
                );
            }
            // On the fast path, its counters say it took the path the row
            // is named for.
            if let Some((sender_before, receiver_before)) = counters_before {
                let counter = sent_counter(backend, family);
                let counted =
                    counter_delta(&sender_before, &lab.counters(NodeId::new(1))?, counter).1;
                ensure!(
                    carried_nearly_all(counted, tcp.bytes),
                    "{config} {family}: {counter} counted {counted} bytes of a {} byte run",
                    tcp.bytes
                );
                let delivered = delivered_counters(backend, family);
                let counted =
                    counters_delta(&receiver_before, &lab.counters(NodeId::new(2))?, &delivered).1;
                ensure!(
                    carried_nearly_all(counted, tcp.bytes),
                    "{config} {family}: the receiver's fast path delivered {counted} bytes of a {} byte run",
                    tcp.bytes
                );
            }
            rows.push(FamilyRow {
                config: config.clone(),
                family: family.to_owned(),
                tcp_rr_us_p50: percentile(&latencies, 50.0),
                tcp_rr_us_p99: percentile(&latencies, 99.0),
                tcp_gbps: tcp.gbps,
            });
        }
        drop(lab);
    }
    Ok(rows)
}

/// The rows as a table, IPv6 under IPv4 for each configuration.
pub fn family_table(rows: &[FamilyRow]) -> String {
    let mut out = format!(
        "{:<26} {:>6} {:>14} {:>14} {:>10}\n",
        "dual-stack", "family", "TCP RR p50 us", "TCP RR p99 us", "TCP Gb/s"
    );
    for row in rows {
        out += &format!(
            "{:<26} {:>6} {:>14.1} {:>14.1} {:>10.2}\n",
            row.config, row.family, row.tcp_rr_us_p50, row.tcp_rr_us_p99, row.tcp_gbps
        );
    }
    out
}
