//! Where the TCP throughput run's packets were dropped, by location: the
//! kernel's own drop counters on every link of the lab, the CPUs' backlog
//! queues and the receiving socket, read before and after the run.
//!
//! Which counter proves what (Linux `drivers/net/veth.c`, `net/core/dev.c`,
//! `net/ipv4/tcp_input.c`):
//! - an underlay port's `tx_dropped`: the underlay (standing for the
//!   switch and the NIC's receive ring) could not hand a frame to a node's
//!   uplink. A veth with GRO on (the lab's uplinks, as a NIC driver)
//!   receives through NAPI and a 256-frame ring; `veth_xmit` drops when
//!   that ring is full, i.e. when the node's uplink NAPI (GRO, the TC
//!   programs, and whatever runs inside its poll) falls behind.
//! - a node's `eth0` `tx_dropped`: the same towards the underlay.
//! - the pods' veths (`tx_dropped` on either end): into or out of a pod.
//! - `/proc/net/softnet_stat`'s second column: a CPU's backlog queue
//!   (`netdev_max_backlog`) was full. Host-wide: it also counts other
//!   namespaces' traffic on this machine.
//! - the receiver's `TcpExtTCPRcvQDrop`, `TcpExtTCPBacklogDrop` and
//!   `TcpExtTCPOFODrop`: the socket had no room.

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;
use weft_tests::{Lab, lab::UPLINK, netns};

/// Drops during one TCP run, by location (summed over the lab).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// Frames the underlay dropped on their way into a node's uplink
    /// (underlay ports' `tx_dropped`: the uplink's receive ring was full).
    pub drops_into_uplink: u64,
    /// Frames a node's uplink dropped on their way out (`eth0` `tx_dropped`).
    pub drops_out_of_uplink: u64,
    /// On the pods' veths, either end (`tx_dropped`).
    pub drops_pod_veths: u64,
    /// CPU backlog queues full (host-wide: other namespaces count too).
    pub drops_cpu_backlog: u64,
    /// The receiving socket had no room.
    pub drops_receiver_socket: u64,
}

/// One reading of every drop counter the bench reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DropReading(Drops);

impl DropReading {
    /// Reads the lab's links and the host's backlog counters; the receiving
    /// socket's counters come from `receiver_ns`.
    pub(crate) fn read(lab: &Lab, receiver_ns: &str) -> Result<Self> {
        let mut drops = Drops {
            drops_into_uplink: veth_tx_dropped(&lab.state.underlay_ns, |_| true)?,
            drops_cpu_backlog: backlog_dropped(
                &std::fs::read_to_string("/proc/net/softnet_stat")
                    .context("cannot read /proc/net/softnet_stat")?,
            )?,
            drops_receiver_socket: socket_dropped(&netns::run(
                receiver_ns,
                &["nstat", "-asz", "--json"],
            )?)
            .with_context(|| format!("nstat in {receiver_ns}"))?,
            ..Drops::default()
        };
        for node in lab.node_ids() {
            let node = lab.node(node);
            drops.drops_out_of_uplink += veth_tx_dropped(&node.ns, |name| name == UPLINK)?;
            drops.drops_pod_veths += veth_tx_dropped(&node.ns, |name| name != UPLINK)?;
            for pod in &node.pods {
                drops.drops_pod_veths += veth_tx_dropped(&pod.ns, |_| true)?;
            }
        }
        Ok(Self(drops))
    }

    pub(crate) fn since(&self, before: &Self) -> Drops {
        let (now, then) = (self.0, before.0);
        Drops {
            drops_into_uplink: now.drops_into_uplink.saturating_sub(then.drops_into_uplink),
            drops_out_of_uplink: now
                .drops_out_of_uplink
                .saturating_sub(then.drops_out_of_uplink),
            drops_pod_veths: now.drops_pod_veths.saturating_sub(then.drops_pod_veths),
            drops_cpu_backlog: now.drops_cpu_backlog.saturating_sub(then.drops_cpu_backlog),
            drops_receiver_socket: now
                .drops_receiver_socket
                .saturating_sub(then.drops_receiver_socket),
        }
    }
}

/// The summed `tx_dropped` of the veths in `ns` whose name `pick` accepts.
fn veth_tx_dropped(ns: &str, pick: impl Fn(&str) -> bool) -> Result<u64> {
    let out = netns::run_host(&["ip", "-n", ns, "-d", "-s", "-j", "link", "show"])?;
    veths_tx_dropped(&out, pick).with_context(|| format!("`ip -s link` in {ns}"))
}

fn veths_tx_dropped(json: &str, pick: impl Fn(&str) -> bool) -> Result<u64> {
    let links: serde_json::Value = serde_json::from_str(json).context("ip printed no JSON")?;
    let links = links
        .as_array()
        .ok_or_else(|| anyhow!("ip printed no list of links"))?;
    let mut total = 0;
    for link in links {
        let name = link["ifname"].as_str().unwrap_or_default();
        if link["linkinfo"]["info_kind"] != "veth" || !pick(name) {
            continue;
        }
        total += link["stats64"]["tx"]["dropped"]
            .as_u64()
            .ok_or_else(|| anyhow!("{name}: no stats64.tx.dropped"))?;
    }
    Ok(total)
}

/// The second column of `/proc/net/softnet_stat` (hexadecimal, one line
/// per CPU): packets dropped because that CPU's backlog was full.
fn backlog_dropped(softnet_stat: &str) -> Result<u64> {
    softnet_stat
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let column = line
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| anyhow!("softnet_stat line without a drop column: {line}"))?;
            u64::from_str_radix(column, 16)
                .with_context(|| format!("softnet_stat drop column {column:?}"))
        })
        .sum()
}

fn socket_dropped(nstat_json: &str) -> Result<u64> {
    let value: serde_json::Value =
        serde_json::from_str(nstat_json).context("nstat printed no JSON")?;
    [
        "TcpExtTCPRcvQDrop",
        "TcpExtTCPBacklogDrop",
        "TcpExtTCPOFODrop",
    ]
    .iter()
    .map(|name| {
        value["kernel"][*name]
            .as_u64()
            .with_context(|| format!("nstat printed no {name}"))
    })
    .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_picked_veths_tx_drops_count() {
        let json = r#"[
            {"ifname":"lo","stats64":{"tx":{"dropped":7}}},
            {"ifname":"eth0","linkinfo":{"info_kind":"veth"},"stats64":{"tx":{"dropped":3},"rx":{"dropped":100}}},
            {"ifname":"veth1","linkinfo":{"info_kind":"veth"},"stats64":{"tx":{"dropped":5}}},
            {"ifname":"cni0","linkinfo":{"info_kind":"bridge"},"stats64":{"tx":{"dropped":11}}}
        ]"#;
        assert_eq!(veths_tx_dropped(json, |_| true).unwrap(), 8);
        assert_eq!(veths_tx_dropped(json, |name| name == "eth0").unwrap(), 3);
        assert_eq!(veths_tx_dropped(json, |name| name != "eth0").unwrap(), 5);
    }

    #[test]
    fn a_veth_without_drop_statistics_is_an_error_naming_it() {
        let json = r#"[{"ifname":"eth0","linkinfo":{"info_kind":"veth"},"stats64":{}}]"#;
        let error = veths_tx_dropped(json, |_| true).unwrap_err();
        assert!(format!("{error:#}").contains("eth0"), "{error:#}");
    }

    #[test]
    fn backlog_drops_are_summed_over_cpus_in_hex() {
        let stat = "131d8bb6 0000000a 000003a9 00000000\n2d1bf2fd 00000010 00000386 00000000\n";
        assert_eq!(backlog_dropped(stat).unwrap(), 26);
    }

    #[test]
    fn socket_drops_sum_the_three_counters() {
        let json =
            r#"{"kernel":{"TcpExtTCPRcvQDrop":1,"TcpExtTCPBacklogDrop":2,"TcpExtTCPOFODrop":4}}"#;
        assert_eq!(socket_dropped(json).unwrap(), 7);
        let error = socket_dropped(r#"{"kernel":{"TcpExtTCPRcvQDrop":1}}"#).unwrap_err();
        assert!(
            format!("{error:#}").contains("TcpExtTCPBacklogDrop"),
            "{error:#}"
        );
    }

    #[test]
    fn this_host_has_every_counter_the_bench_reads() {
        let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap();
        backlog_dropped(&softnet).unwrap();
        let out = netns::run_host(&["nstat", "-asz", "--json"]).unwrap();
        socket_dropped(&out).unwrap();
        let links = netns::run_host(&["ip", "-d", "-s", "-j", "link", "show"]).unwrap();
        veths_tx_dropped(&links, |_| true).unwrap();
    }
}
