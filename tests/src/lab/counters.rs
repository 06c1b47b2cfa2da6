//! The fast path's packet counters (`weft maps stats`), read in one place
//! and compared by [`CounterId`].

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use weft_common::{COUNTERS, CounterId, Hook::*, Reason};

use super::{Lab, NodeId};

impl Lab {
    /// `weft maps stats --json` on `node`: counter -> (packets, bytes).
    /// Every counter this build knows must be there, under its flat name.
    pub fn counters(&self, node: NodeId) -> Result<Counters> {
        let listed = self.maps_json(node, "stats")?;
        let value = |name: &str| {
            listed.as_array().into_iter().flatten().find_map(|counter| {
                (counter["name"].as_str() == Some(name)).then(|| {
                    (
                        counter["packets"].as_u64().unwrap_or_default(),
                        counter["bytes"].as_u64().unwrap_or_default(),
                    )
                })
            })
        };
        let mut counters = Counters::new();
        for (id, name) in COUNTERS {
            let Some(value) = value(name) else {
                bail!("weft maps stats on {node} has no counter {name}");
            };
            counters.insert(*id, value);
        }
        Ok(counters)
    }
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
