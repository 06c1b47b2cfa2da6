//! Fast-path counters: the `STATS` per-CPU array.
//!
//! A counter is a ([`Hook`], [`Reason`]) pair: which program counted the
//! packet, and what it did with it and why. Reasons are named by cause
//! (and action: `Pass*` hands the packet to the kernel path, `Drop*` drops
//! it) and shared by every hook that can reach them, so `weft maps stats`
//! can show reason x hook. Each slot is a [`PacketCounter`], so `bpftool map
//! dump` prints `packets` and `bytes` by name.
//!
//! Slot `hook * REASON_SLOTS + reason`: new reasons are appended (values are
//! never reused) within the reserved room, so a running agent and an older
//! pinned map agree on what every slot means.

mod names;
mod reason;

pub use names::COUNTERS;
pub use reason::Reason;

/// One counter slot: packets and bytes seen by one program outcome.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCounter>() == 16);
const _: () = assert!(core::mem::align_of::<PacketCounter>() == 8);

/// The program (and so the attach point) that counted a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// XDP on the uplink: every wire frame, before GRO.
    XdpUplink = 0,
    /// TC ingress on the uplink: after GRO; every frame when XDP is off.
    TcUplink = 1,
    /// TC ingress on the host side of a pod veth: what a pod sends.
    TcPodEgress = 2,
    /// TC egress after netfilter: verdicts learned.
    TcVerdict = 3,
}

/// Every hook, in slot order.
pub const HOOKS: [Hook; 4] = [
    Hook::XdpUplink,
    Hook::TcUplink,
    Hook::TcPodEgress,
    Hook::TcVerdict,
];

impl Hook {
    /// The program's name.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::XdpUplink => "xdp_uplink",
            Hook::TcUplink => "tc_uplink",
            Hook::TcPodEgress => "tc_pod_egress",
            Hook::TcVerdict => "tc_verdict",
        }
    }

    /// This hook's counter for `reason`.
    #[inline(always)]
    pub const fn counter(self, reason: Reason) -> CounterId {
        CounterId::new(self, reason)
    }

    /// What the hook's flat counter names start with (`xdp_decap`,
    /// `tc_uplink_decap`, `tc_encap`, `verdict_learned`).
    pub const fn prefix(self) -> &'static str {
        match self {
            Hook::XdpUplink => "xdp",
            Hook::TcUplink => "tc_uplink",
            Hook::TcPodEgress => "tc",
            Hook::TcVerdict => "verdict",
        }
    }
}

/// Slots reserved per hook: room to add reasons without re-creating the
/// pinned map.
pub const REASON_SLOTS: u32 = 80;

/// Slots in `STATS`: every hook's reasons.
pub const STATS_MAX_ENTRIES: u32 = HOOKS.len() as u32 * REASON_SLOTS;

/// One counter: a reason as counted by one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterId {
    pub hook: Hook,
    pub reason: Reason,
}

impl CounterId {
    #[inline(always)]
    pub const fn new(hook: Hook, reason: Reason) -> Self {
        Self { hook, reason }
    }

    /// The counter's slot in `STATS`.
    #[inline(always)]
    pub const fn slot(self) -> u32 {
        self.hook as u32 * REASON_SLOTS + self.reason as u32
    }

    /// The counter's flat name, as `weft maps stats` prints it.
    pub fn name(self) -> &'static str {
        COUNTERS
            .iter()
            .find(|(id, _)| *id == self)
            .map_or("unknown", |(_, name)| name)
    }
}

/// The flat name.
impl core::fmt::Display for CounterId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

const _: () = assert!(HOOKS.len() == 4 && (Reason::DropForgedArp as u32) < REASON_SLOTS);

#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketCounter {}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use super::*;
    use Hook::{TcPodEgress, TcUplink, TcVerdict, XdpUplink};

    const fn id(hook: Hook, reason: Reason) -> CounterId {
        CounterId::new(hook, reason)
    }

    #[test]
    fn packet_counter_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<PacketCounter>(), 16);
        assert_eq!(core::mem::align_of::<PacketCounter>(), 8);
        assert_eq!(core::mem::offset_of!(PacketCounter, packets), 0);
        assert_eq!(core::mem::offset_of!(PacketCounter, bytes), 8);
    }

    #[test]
    fn flat_names_are_derived_from_hook_and_reason_and_unique() {
        for (id, name) in COUNTERS {
            let derived = format!("{}_{}", id.hook.prefix(), id.reason.name());
            let historical = matches!(
                (id.hook, id.reason),
                (XdpUplink | TcPodEgress, Reason::Seen)
            );
            assert!(historical || *name == derived, "{name} is not {derived}");
            assert!(
                COUNTERS.iter().filter(|(_, other)| other == name).count() == 1,
                "{name} is listed twice"
            );
            assert!(
                COUNTERS.iter().filter(|(other, _)| other == id).count() == 1,
                "{id:?} is listed twice"
            );
            assert!(id.slot() < STATS_MAX_ENTRIES);
        }
    }

    /// The names the docs, dashboards and alerts use, written out: a
    /// renamed counter (in the table or in its derivation) fails here.
    #[test]
    fn documented_names_stay() {
        for (hook, reason, name) in [
            (XdpUplink, Reason::Seen, "uplink_rx"),
            (TcPodEgress, Reason::Seen, "pod_egress"),
            (TcPodEgress, Reason::Encap, "tc_encap"),
            (TcPodEgress, Reason::PassNoVerdict, "tc_pass_no_verdict"),
            (XdpUplink, Reason::Decap, "xdp_decap"),
            (XdpUplink, Reason::PassBulkTcp, "xdp_pass_bulk_tcp"),
            (XdpUplink, Reason::PassBadLength, "xdp_pass_bad_length"),
            (TcUplink, Reason::Seen, "tc_uplink_seen"),
            (TcUplink, Reason::Decap, "tc_uplink_decap"),
            (TcUplink, Reason::HostGw, "tc_uplink_host_gw"),
            (TcVerdict, Reason::TcpControl, "verdict_tcp_control"),
            (TcVerdict, Reason::Unparsed, "verdict_unparsed"),
            (TcVerdict, Reason::UpdateFailed, "verdict_update_failed"),
            (TcVerdict, Reason::NotifyFailed, "verdict_notify_failed"),
        ] {
            assert_eq!(id(hook, reason).name(), name);
            assert_eq!(format!("{}", id(hook, reason)), name);
        }
        // A counter no program bumps has no name to show.
        assert_eq!(id(TcVerdict, Reason::Decap).name(), "unknown");
    }

    #[test]
    fn slots_are_hook_major() {
        assert_eq!(id(XdpUplink, Reason::Seen).slot(), 0);
        assert_eq!(id(TcUplink, Reason::Seen).slot(), REASON_SLOTS);
        assert_eq!(
            id(TcVerdict, Reason::Learned).slot(),
            3 * REASON_SLOTS + Reason::Learned as u32
        );
    }
}
