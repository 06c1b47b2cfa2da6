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

/// What a program did with a packet, and why. Values are stable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Every packet the hook saw (`tc_uplink`: only when XDP is off; with
    /// XDP, XDP saw the frame).
    Seen = 0,
    /// VXLAN decapsulated and redirected straight into a pod.
    Decap = 1,
    /// host-gw: a plain packet delivered into a pod (uplink) or forwarded
    /// to the peer node's MAC (pod egress).
    HostGw = 2,
    /// Encapsulated and redirected to the uplink.
    Encap = 3,
    /// Redirected straight into another local pod.
    LocalRedirect = 4,
    /// No `CONFIG` written yet.
    PassNoConfig = 5,
    /// A header is cut short.
    PassTruncated = 6,
    /// A VLAN tag.
    PassVlan = 7,
    PassNotIpv4 = 8,
    PassIpOptions = 9,
    /// An outer fragment.
    PassFragment = 10,
    /// Neither for this node nor a host-gw packet for one of its pods.
    PassNotForNode = 11,
    /// For this node, but not UDP to the VXLAN port.
    PassNotVxlan = 12,
    /// No I flag, or another VNI.
    PassWrongVni = 13,
    /// VXLAN from an address that holds no lease, with `--strict-vteps`.
    DropUnknownVtep = 14,
    /// As above, without `--strict-vteps`.
    PassUnknownVtep = 15,
    PassInnerNotIpv4 = 16,
    /// The destination is no local pod.
    PassNoEndpoint = 17,
    /// TTL 1: the kernel answers with ICMP.
    PassTtlExpired = 18,
    /// A plain packet for a local pod whose source is not the peer node
    /// that owns it.
    PassUnknownSource = 19,
    /// A full-size TCP segment for a local pod, left for the uplink's GRO;
    /// `tc_uplink` delivers it after GRO.
    PassBulkTcp = 20,
    /// The VXLAN headers could not be stripped.
    PassDecapFailed = 21,
    /// Netfilter has not passed this flow unchanged yet (a new flow, one
    /// with NAT or a helper, or one netfilter drops).
    PassNoVerdict = 22,
    /// The verdict predates the last ruleset change.
    PassRulesetChanged = 23,
    /// The verdict is older than the re-check interval; this packet goes
    /// through netfilter (and conntrack) again.
    PassRecheck = 24,
    /// TCP SYN, FIN or RST, which conntrack must see.
    PassTcpControl = 25,
    /// Not TCP, UDP or ICMP echo, or a packet with IPv4 options or
    /// fragmented: no flow to look up.
    PassNotAFlow = 26,
    /// VXLAN whose inner source is not in the subnet of the peer whose
    /// PublicIP sent it.
    PassForeignInnerSource = 27,
    /// VXLAN whose inner destination MAC is not this node's VTEP.
    PassNotOurVtep = 28,
    /// The outer IPv4 or UDP length disagrees with the frame.
    PassBadLength = 29,
    /// XDP only: the pod's veth cannot take an XDP redirect yet (GRO not
    /// confirmed at its end); TC on the uplink or the kernel delivers.
    PassPodNotReady = 30,
    /// The source address or MAC is not the sending pod's own.
    PassForeignSource = 31,
    /// UDP from a pod to a node's VXLAN port (see the README's security
    /// model).
    DropVxlanToNode = 32,
    /// No `PEERS` entry for the destination (e.g. leaving the cluster).
    PassNoRoute = 33,
    /// The peer's underlay next hop is not resolved yet.
    PassNoNeighbour = 34,
    /// Too big for the uplink MTU (per GSO segment).
    PassTooBig = 35,
    /// `bpf_skb_adjust_room` or the header write failed.
    PassEncapFailed = 36,
    /// A marked packet's flow verdict was recorded.
    Learned = 37,
    /// Marked, but not parsed into a flow (mark cleared, nothing recorded).
    Unparsed = 38,
    /// FLOWS refused the update.
    UpdateFailed = 39,
    /// A marked TCP SYN, FIN or RST: nothing recorded (a FIN or RST ends
    /// the direction's verdict).
    TcpControl = 40,
}

impl Reason {
    /// The reason's name, as in the reason x hook view.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Seen => "seen",
            Reason::Decap => "decap",
            Reason::HostGw => "host_gw",
            Reason::Encap => "encap",
            Reason::LocalRedirect => "local_redirect",
            Reason::PassNoConfig => "pass_no_config",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassVlan => "pass_vlan",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassIpOptions => "pass_ip_options",
            Reason::PassFragment => "pass_fragment",
            Reason::PassNotForNode => "pass_not_for_node",
            Reason::PassNotVxlan => "pass_not_vxlan",
            Reason::PassWrongVni => "pass_wrong_vni",
            Reason::DropUnknownVtep => "drop_unknown_vtep",
            Reason::PassUnknownVtep => "pass_unknown_vtep",
            Reason::PassInnerNotIpv4 => "pass_inner_not_ipv4",
            Reason::PassNoEndpoint => "pass_no_endpoint",
            Reason::PassTtlExpired => "pass_ttl_expired",
            Reason::PassUnknownSource => "pass_unknown_source",
            Reason::PassBulkTcp => "pass_bulk_tcp",
            Reason::PassDecapFailed => "pass_decap_failed",
            Reason::PassNoVerdict => "pass_no_verdict",
            Reason::PassRulesetChanged => "pass_ruleset_changed",
            Reason::PassRecheck => "pass_recheck",
            Reason::PassTcpControl => "pass_tcp_control",
            Reason::PassNotAFlow => "pass_not_a_flow",
            Reason::PassForeignInnerSource => "pass_foreign_inner_source",
            Reason::PassNotOurVtep => "pass_not_our_vtep",
            Reason::PassBadLength => "pass_bad_length",
            Reason::PassPodNotReady => "pass_pod_not_ready",
            Reason::PassForeignSource => "pass_foreign_source",
            Reason::DropVxlanToNode => "drop_vxlan_to_node",
            Reason::PassNoRoute => "pass_no_route",
            Reason::PassNoNeighbour => "pass_no_neighbour",
            Reason::PassTooBig => "pass_too_big",
            Reason::PassEncapFailed => "pass_encap_failed",
            Reason::Learned => "learned",
            Reason::Unparsed => "unparsed",
            Reason::UpdateFailed => "update_failed",
            Reason::TcpControl => "tcp_control",
        }
    }

    /// Whether the packet is dropped (else, for a refusal, passed).
    #[inline(always)]
    pub const fn drops(self) -> bool {
        matches!(self, Reason::DropUnknownVtep | Reason::DropVxlanToNode)
    }
}

/// Slots reserved per hook: room to add reasons without re-creating the
/// pinned map.
pub const REASON_SLOTS: u32 = 64;

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

const fn id(hook: Hook, reason: Reason) -> CounterId {
    CounterId::new(hook, reason)
}

use Hook::{TcPodEgress, TcUplink, TcVerdict, XdpUplink};

/// Every counter a program can bump, with its flat name: `<hook
/// prefix>_<reason>`, except the `Seen` counters of the uplink's XDP
/// (`uplink_rx`) and of pod egress (`pod_egress`), which keep their
/// historical names.
pub const COUNTERS: &[(CounterId, &str)] = &[
    (id(XdpUplink, Reason::Seen), "uplink_rx"),
    (id(XdpUplink, Reason::Decap), "xdp_decap"),
    (id(XdpUplink, Reason::HostGw), "xdp_host_gw"),
    (id(XdpUplink, Reason::PassNoConfig), "xdp_pass_no_config"),
    (id(XdpUplink, Reason::PassBulkTcp), "xdp_pass_bulk_tcp"),
    (
        id(XdpUplink, Reason::PassPodNotReady),
        "xdp_pass_pod_not_ready",
    ),
    (id(XdpUplink, Reason::PassTruncated), "xdp_pass_truncated"),
    (id(XdpUplink, Reason::PassVlan), "xdp_pass_vlan"),
    (id(XdpUplink, Reason::PassNotIpv4), "xdp_pass_not_ipv4"),
    (id(XdpUplink, Reason::PassIpOptions), "xdp_pass_ip_options"),
    (id(XdpUplink, Reason::PassFragment), "xdp_pass_fragment"),
    (
        id(XdpUplink, Reason::PassNotForNode),
        "xdp_pass_not_for_node",
    ),
    (id(XdpUplink, Reason::PassNotVxlan), "xdp_pass_not_vxlan"),
    (id(XdpUplink, Reason::PassBadLength), "xdp_pass_bad_length"),
    (id(XdpUplink, Reason::PassWrongVni), "xdp_pass_wrong_vni"),
    (
        id(XdpUplink, Reason::DropUnknownVtep),
        "xdp_drop_unknown_vtep",
    ),
    (
        id(XdpUplink, Reason::PassUnknownVtep),
        "xdp_pass_unknown_vtep",
    ),
    (
        id(XdpUplink, Reason::PassInnerNotIpv4),
        "xdp_pass_inner_not_ipv4",
    ),
    (
        id(XdpUplink, Reason::PassNotOurVtep),
        "xdp_pass_not_our_vtep",
    ),
    (
        id(XdpUplink, Reason::PassForeignInnerSource),
        "xdp_pass_foreign_inner_source",
    ),
    (
        id(XdpUplink, Reason::PassNoEndpoint),
        "xdp_pass_no_endpoint",
    ),
    (
        id(XdpUplink, Reason::PassUnknownSource),
        "xdp_pass_unknown_source",
    ),
    (
        id(XdpUplink, Reason::PassTtlExpired),
        "xdp_pass_ttl_expired",
    ),
    (id(XdpUplink, Reason::PassNoVerdict), "xdp_pass_no_verdict"),
    (
        id(XdpUplink, Reason::PassRulesetChanged),
        "xdp_pass_ruleset_changed",
    ),
    (id(XdpUplink, Reason::PassRecheck), "xdp_pass_recheck"),
    (
        id(XdpUplink, Reason::PassTcpControl),
        "xdp_pass_tcp_control",
    ),
    (id(XdpUplink, Reason::PassNotAFlow), "xdp_pass_not_a_flow"),
    (id(TcUplink, Reason::Seen), "tc_uplink_seen"),
    (id(TcUplink, Reason::Decap), "tc_uplink_decap"),
    (id(TcUplink, Reason::HostGw), "tc_uplink_host_gw"),
    (
        id(TcUplink, Reason::PassDecapFailed),
        "tc_uplink_pass_decap_failed",
    ),
    (
        id(TcUplink, Reason::PassTruncated),
        "tc_uplink_pass_truncated",
    ),
    (id(TcUplink, Reason::PassVlan), "tc_uplink_pass_vlan"),
    (id(TcUplink, Reason::PassNotIpv4), "tc_uplink_pass_not_ipv4"),
    (
        id(TcUplink, Reason::PassIpOptions),
        "tc_uplink_pass_ip_options",
    ),
    (
        id(TcUplink, Reason::PassFragment),
        "tc_uplink_pass_fragment",
    ),
    (
        id(TcUplink, Reason::PassNotForNode),
        "tc_uplink_pass_not_for_node",
    ),
    (
        id(TcUplink, Reason::PassNotVxlan),
        "tc_uplink_pass_not_vxlan",
    ),
    (
        id(TcUplink, Reason::PassBadLength),
        "tc_uplink_pass_bad_length",
    ),
    (
        id(TcUplink, Reason::PassWrongVni),
        "tc_uplink_pass_wrong_vni",
    ),
    (
        id(TcUplink, Reason::DropUnknownVtep),
        "tc_uplink_drop_unknown_vtep",
    ),
    (
        id(TcUplink, Reason::PassUnknownVtep),
        "tc_uplink_pass_unknown_vtep",
    ),
    (
        id(TcUplink, Reason::PassInnerNotIpv4),
        "tc_uplink_pass_inner_not_ipv4",
    ),
    (
        id(TcUplink, Reason::PassNotOurVtep),
        "tc_uplink_pass_not_our_vtep",
    ),
    (
        id(TcUplink, Reason::PassForeignInnerSource),
        "tc_uplink_pass_foreign_inner_source",
    ),
    (
        id(TcUplink, Reason::PassNoEndpoint),
        "tc_uplink_pass_no_endpoint",
    ),
    (
        id(TcUplink, Reason::PassUnknownSource),
        "tc_uplink_pass_unknown_source",
    ),
    (
        id(TcUplink, Reason::PassTtlExpired),
        "tc_uplink_pass_ttl_expired",
    ),
    (
        id(TcUplink, Reason::PassNoVerdict),
        "tc_uplink_pass_no_verdict",
    ),
    (
        id(TcUplink, Reason::PassRulesetChanged),
        "tc_uplink_pass_ruleset_changed",
    ),
    (id(TcUplink, Reason::PassRecheck), "tc_uplink_pass_recheck"),
    (
        id(TcUplink, Reason::PassTcpControl),
        "tc_uplink_pass_tcp_control",
    ),
    (
        id(TcUplink, Reason::PassNotAFlow),
        "tc_uplink_pass_not_a_flow",
    ),
    (id(TcPodEgress, Reason::Seen), "pod_egress"),
    (id(TcPodEgress, Reason::Encap), "tc_encap"),
    (id(TcPodEgress, Reason::HostGw), "tc_host_gw"),
    (id(TcPodEgress, Reason::LocalRedirect), "tc_local_redirect"),
    (id(TcPodEgress, Reason::PassNoConfig), "tc_pass_no_config"),
    (id(TcPodEgress, Reason::PassTruncated), "tc_pass_truncated"),
    (id(TcPodEgress, Reason::PassNotIpv4), "tc_pass_not_ipv4"),
    (
        id(TcPodEgress, Reason::PassForeignSource),
        "tc_pass_foreign_source",
    ),
    (
        id(TcPodEgress, Reason::DropVxlanToNode),
        "tc_drop_vxlan_to_node",
    ),
    (id(TcPodEgress, Reason::PassNoRoute), "tc_pass_no_route"),
    (
        id(TcPodEgress, Reason::PassNoNeighbour),
        "tc_pass_no_neighbour",
    ),
    (
        id(TcPodEgress, Reason::PassTtlExpired),
        "tc_pass_ttl_expired",
    ),
    (id(TcPodEgress, Reason::PassTooBig), "tc_pass_too_big"),
    (
        id(TcPodEgress, Reason::PassEncapFailed),
        "tc_pass_encap_failed",
    ),
    (id(TcPodEgress, Reason::PassNoVerdict), "tc_pass_no_verdict"),
    (
        id(TcPodEgress, Reason::PassRulesetChanged),
        "tc_pass_ruleset_changed",
    ),
    (id(TcPodEgress, Reason::PassRecheck), "tc_pass_recheck"),
    (
        id(TcPodEgress, Reason::PassTcpControl),
        "tc_pass_tcp_control",
    ),
    (id(TcPodEgress, Reason::PassNotAFlow), "tc_pass_not_a_flow"),
    (id(TcVerdict, Reason::Learned), "verdict_learned"),
    (id(TcVerdict, Reason::Unparsed), "verdict_unparsed"),
    (id(TcVerdict, Reason::UpdateFailed), "verdict_update_failed"),
    (id(TcVerdict, Reason::TcpControl), "verdict_tcp_control"),
];

const _: () = assert!(HOOKS.len() == 4 && (Reason::TcpControl as u32) < REASON_SLOTS);

#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketCounter {}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use super::*;

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
            assert_eq!(id.name(), *name);
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
