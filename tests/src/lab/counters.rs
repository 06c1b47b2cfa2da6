//! The fast path's packet counters (`weft maps stats`), read in one place
//! and compared by [`CounterId`].

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use weft_common::{COUNTERS, CounterId, Hook::*, Reason};

use super::{Lab, NodeId};

impl Lab {
    /// `weft maps stats --json` on `node`: counter -> (packets, bytes).
    /// Every counter this build knows must be there, under its flat name.
    pub fn counters(&self, node: NodeId) -> Result<Counters> {
        parse_counters(&self.maps_json(node, "stats")?)
            .with_context(|| format!("weft maps stats on {node}"))
    }
}

impl Lab {
    /// `bytes` over TCP each way between `weft_pod` (on the eBPF node
    /// `weft`) and `stock_pod` (a stock flanneld node): every byte arrives,
    /// and weft's programs carried nearly all of it, decapsulating what
    /// flanneld's kernel VXLAN device sent and encapsulating to the VTEP MAC
    /// flanneld announced.
    pub fn assert_bulk_both_ways_with_flanneld(
        &self,
        weft: NodeId,
        weft_pod: &super::PodState,
        stock_pod: &super::PodState,
        bytes: u64,
    ) {
        let transfer = |to: &super::PodState, port, from: &super::PodState| {
            crate::traffic::tcp_transfer(&to.ns, to.ip(), port, &from.ns, bytes).unwrap()
        };
        let before = self.counters(weft).unwrap();
        let inbound = transfer(weft_pod, 5001, stock_pod);
        assert_eq!(
            inbound.sent, inbound.received,
            "flanneld -> weft: bytes differ"
        );
        let middle = self.counters(weft).unwrap();
        let (_, decapsulated) = counters_delta(&before, &middle, &DECAP_COUNTERS);
        assert!(
            carried_nearly_all(decapsulated, inbound.bytes),
            "weft decapsulated {decapsulated} bytes of flanneld's {} byte transfer",
            inbound.bytes
        );
        let outbound = transfer(stock_pod, 5002, weft_pod);
        assert_eq!(
            outbound.sent, outbound.received,
            "weft -> flanneld: bytes differ"
        );
        let after = self.counters(weft).unwrap();
        let (_, encapsulated) = counter_delta(&middle, &after, TcPodEgress.counter(Reason::Encap));
        assert!(
            carried_nearly_all(encapsulated, outbound.bytes),
            "weft encapsulated {encapsulated} bytes of its {} byte transfer to flanneld",
            outbound.bytes
        );
    }
}

impl Lab {
    /// The counters read straight from `node`'s pinned STATS, in this
    /// process (the agent's own reader, no `weft` process started): fast
    /// enough to poll while a transfer runs, and readable with no agent.
    pub fn pinned_counters(&self, node: NodeId) -> Result<Counters> {
        let values = weft_agent::stats::read_pinned(&self.node(node).pin_dir)?;
        COUNTERS
            .iter()
            .map(|(id, name)| {
                let value = values
                    .iter()
                    .find(|value| value.name == *name)
                    .with_context(|| format!("STATS on {node} has no counter {name}"))?;
                Ok((*id, (value.packets, value.bytes)))
            })
            .collect()
    }

    /// Polls `node`'s counters (`weft maps stats`) until `counter` rose by
    /// `packets` since `since`, for packets a test sent itself.
    pub fn wait_for_packets(
        &self,
        node: NodeId,
        since: &Counters,
        counter: CounterId,
        packets: u64,
        timeout: std::time::Duration,
    ) -> Result<()> {
        super::wait_for(
            &format!("{node}: {counter} to rise by {packets}"),
            timeout,
            || Ok(counter_delta(since, &self.counters(node)?, counter).0 >= packets),
        )
    }

    /// Polls `node`'s pinned STATS (every millisecond) until `counters`
    /// rose by `bytes` since `since`.
    pub fn wait_for_bytes(
        &self,
        node: NodeId,
        since: &Counters,
        counters: &[CounterId],
        bytes: u64,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while counters_delta(since, &self.pinned_counters(node)?, counters).1 < bytes {
            if std::time::Instant::now() > deadline {
                bail!("{node}: {counters:?} did not rise by {bytes} bytes within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }
}

/// `weft maps stats --json` output as [`Counters`]. A missing counter or a
/// renamed field is an error, never 0: a 0 would make every "stayed idle"
/// assertion pass whatever the fast path did.
fn parse_counters(listed: &serde_json::Value) -> Result<Counters> {
    let entry = |name: &str| {
        listed
            .as_array()
            .into_iter()
            .flatten()
            .find(|counter| counter["name"].as_str() == Some(name))
    };
    let number = |counter: &serde_json::Value, name: &str, field: &str| {
        counter[field]
            .as_u64()
            .with_context(|| format!("counter {name} has no {field}"))
    };
    let mut counters = Counters::new();
    for (id, name) in COUNTERS {
        let Some(counter) = entry(name) else {
            bail!("no counter {name}");
        };
        let value = (
            number(counter, name, "packets")?,
            number(counter, name, "bytes")?,
        );
        counters.insert(*id, value);
    }
    Ok(counters)
}

/// Counters as [`Lab::counters`] returns them: counter -> (packets, bytes).
pub type Counters = BTreeMap<CounterId, (u64, u64)>;

/// A flow's first packets take the kernel path until netfilter has passed
/// it both ways: the first request (new to conntrack), then the first reply
/// and the second request, which are recorded as they leave netfilter.
pub const FLOW_SETUP_PACKETS: u64 = 3;

/// Whether the fast path's byte counter (`counted`, headers included) covers
/// at least 99% of a transfer's `payload` bytes: the rest is the flow's
/// set-up and one packet per re-check interval, which netfilter sees.
pub fn carried_nearly_all(counted: u64, payload: u64) -> bool {
    counted * 100 >= payload * 99
}

/// How much `counter` rose between two readings: (packets, bytes).
pub fn counter_delta(before: &Counters, after: &Counters, counter: CounterId) -> (u64, u64) {
    (
        after[&counter].0 - before[&counter].0,
        after[&counter].1 - before[&counter].1,
    )
}

/// How much the `counters` rose together: (packets, bytes).
pub fn counters_delta(before: &Counters, after: &Counters, counters: &[CounterId]) -> (u64, u64) {
    counters.iter().fold((0, 0), |(packets, bytes), counter| {
        let (p, b) = counter_delta(before, after, *counter);
        (packets + p, bytes + b)
    })
}

/// Counters of VXLAN delivered into local pods: by XDP, or after GRO by TC.
pub const DECAP_COUNTERS: [CounterId; 2] = [
    XdpUplink.counter(Reason::Decap),
    TcUplink.counter(Reason::Decap),
];
/// Counters of host-gw packets delivered into local pods: XDP, or TC after GRO.
pub const HOST_GW_DELIVERY_COUNTERS: [CounterId; 2] = [
    XdpUplink.counter(Reason::HostGw),
    TcUplink.counter(Reason::HostGw),
];

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listing(field: &str) -> serde_json::Value {
        COUNTERS
            .iter()
            .map(|(_, name)| json!({"name": name, field: 3, "bytes": 300}))
            .collect()
    }

    #[test]
    fn every_counter_is_read_by_name() {
        let counters = parse_counters(&listing("packets")).unwrap();
        assert_eq!(counters.len(), COUNTERS.len());
        assert!(counters.values().all(|value| *value == (3, 300)));
    }

    #[test]
    fn a_renamed_field_or_a_missing_counter_is_an_error_not_zero() {
        let error = parse_counters(&listing("pkts")).unwrap_err();
        assert!(error.to_string().contains("has no packets"), "{error}");
        let mut short = listing("packets");
        short.as_array_mut().unwrap().pop();
        let error = parse_counters(&short).unwrap_err();
        assert!(error.to_string().starts_with("no counter"), "{error}");
    }
}
