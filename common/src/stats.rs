//! Fast-path counters: the `STATS` per-CPU array.
//!
//! The array is indexed by [`CounterId`]; each slot is a [`PacketCounter`] so
//! `bpftool map dump` prints `packets` and `bytes` by name. New counters are
//! appended (ids are never reused) so a running agent and an older pinned
//! map agree on what every slot means.

/// One counter slot: packets and bytes seen by one program outcome.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCounter>() == 16);
const _: () = assert!(core::mem::align_of::<PacketCounter>() == 8);

/// Index of a counter in `STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterId {
    /// Every frame the XDP program saw arrive on the uplink.
    UplinkRx = 0,
    /// Every packet the TC program saw leave a pod (ingress on the host-side veth).
    PodEgress = 1,
}

/// Every counter with its stable, user-facing name, in id order.
pub const COUNTERS: &[(CounterId, &str)] = &[
    (CounterId::UplinkRx, "uplink_rx"),
    (CounterId::PodEgress, "pod_egress"),
];

/// Slots reserved in `STATS`: room to add counters without re-creating the
/// pinned map.
pub const STATS_MAX_ENTRIES: u32 = 64;

const _: () = assert!(COUNTERS.len() as u32 <= STATS_MAX_ENTRIES);

impl CounterId {
    /// The counter's user-facing name (as printed by `weft maps stats`).
    pub fn name(self) -> &'static str {
        COUNTERS[self as usize].1
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketCounter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_counter_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<PacketCounter>(), 16);
        assert_eq!(core::mem::align_of::<PacketCounter>(), 8);
        assert_eq!(core::mem::offset_of!(PacketCounter, packets), 0);
        assert_eq!(core::mem::offset_of!(PacketCounter, bytes), 8);
    }

    #[test]
    fn counter_table_is_in_id_order_and_names_are_unique() {
        for (index, (id, name)) in COUNTERS.iter().enumerate() {
            assert_eq!(*id as usize, index, "{name} is out of order");
            assert_eq!(id.name(), *name);
            assert!(
                COUNTERS.iter().filter(|(_, other)| other == name).count() == 1,
                "{name} is listed twice"
            );
        }
    }
}
