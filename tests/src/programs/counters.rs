//! The programs' STATS counters: read, and checked for exactly which rose.

use std::collections::BTreeMap;

use aya::maps::PerCpuArray;
use weft_common::{
    COUNTERS, CounterId,
    Hook::{TcPodEgress, TcUplink, XdpUplink},
    PacketCounter, Reason,
};

use super::Programs;

impl Programs {
    /// Packets per counter, summed over CPUs.
    pub fn counters(&self) -> Counts {
        let stats: PerCpuArray<_, PacketCounter> =
            PerCpuArray::try_from(self.ebpf.map("STATS").unwrap()).unwrap();
        COUNTERS
            .iter()
            .map(|(id, _)| {
                (
                    *id,
                    stats
                        .get(&id.slot(), 0)
                        .unwrap()
                        .iter()
                        .map(|slot| slot.packets)
                        .sum(),
                )
            })
            .collect()
    }
}

/// Packets per counter, as [`Programs::counters`] reads them.
pub type Counts = BTreeMap<CounterId, u64>;

/// Asserts that exactly the counters in `rose` rose, each by one.
pub fn assert_only(before: &Counts, after: &Counts, rose: &[CounterId]) {
    for (name, value) in after {
        let expected = before[name] + u64::from(rose.contains(name));
        assert_eq!(
            *value, expected,
            "counter {name} (expected only {rose:?} to rise)"
        );
    }
}

/// The counters of every frame a program sees.
const SEEN: [CounterId; 3] = [
    XdpUplink.counter(Reason::Seen),
    TcUplink.counter(Reason::Seen),
    TcPodEgress.counter(Reason::Seen),
];

/// Asserts that exactly `counter` rose by one (besides the `Seen` counters
/// `uplink_rx`, `tc_uplink_seen` and `pod_egress`, which count every frame
/// a program sees).
pub fn assert_counted(before: &Counts, after: &Counts, counter: CounterId) {
    for (name, value) in after {
        let expected = before[name] + u64::from(*name == counter || SEEN.contains(name));
        if SEEN.contains(name) {
            continue;
        }
        assert_eq!(
            *value, expected,
            "counter {name} (expected only {counter} to rise)"
        );
    }
}
