//! The fast path's packet counters (`weft maps stats`), read in one place
//! and compared by name.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{Lab, NodeId};

impl Lab {
    /// `weft maps stats --json` on `node`: name -> (packets, bytes).
    pub fn counters(&self, node: NodeId) -> Result<Counters> {
        let counters = self.maps_json(node, "stats")?;
        Ok(counters
            .as_array()
            .into_iter()
            .flatten()
            .map(|counter| {
                let name = counter["name"].as_str().unwrap_or_default().to_owned();
                (
                    name,
                    (
                        counter["packets"].as_u64().unwrap_or_default(),
                        counter["bytes"].as_u64().unwrap_or_default(),
                    ),
                )
            })
            .collect())
    }
}

/// Counters as [`Lab::counters`] returns them: name -> (packets, bytes).
pub type Counters = BTreeMap<String, (u64, u64)>;

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

/// How much counter `name` rose between two readings: (packets, bytes).
pub fn counter_delta(before: &Counters, after: &Counters, name: &str) -> (u64, u64) {
    (
        after[name].0 - before[name].0,
        after[name].1 - before[name].1,
    )
}

/// How much the counters in `names` rose together: (packets, bytes).
pub fn counters_delta(before: &Counters, after: &Counters, names: &[&str]) -> (u64, u64) {
    names.iter().fold((0, 0), |(packets, bytes), name| {
        let (p, b) = counter_delta(before, after, name);
        (packets + p, bytes + b)
    })
}

/// Counters of VXLAN delivered into local pods: by XDP, or after GRO by TC.
pub const DECAP_COUNTERS: [&str; 2] = ["xdp_decap", "tc_uplink_decap"];
/// Counters of host-gw packets delivered into local pods: XDP, or TC after GRO.
pub const HOST_GW_DELIVERY_COUNTERS: [&str; 2] = ["xdp_host_gw", "tc_uplink_host_gw"];
