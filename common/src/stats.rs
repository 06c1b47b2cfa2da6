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

/// Index of a counter in `STATS`. `Xdp*` counters belong to the uplink's
/// XDP program, `TcUplink*` ones to the uplink's TC program, other `Tc*`
/// ones to the pod veth program; `Pass*` means "handed to the
/// kernel path", with the reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterId {
    /// Every frame that arrived on the uplink (counted by XDP, or by
    /// `tc_uplink` when XDP is off).
    UplinkRx = 0,
    /// Every packet the TC program saw leave a pod (ingress on the host-side veth).
    PodEgress = 1,
    /// VXLAN decapsulated and redirected straight into a pod.
    XdpDecap = 2,
    XdpPassNoConfig = 3,
    XdpPassTruncated = 4,
    XdpPassVlan = 5,
    XdpPassNotIpv4 = 6,
    XdpPassIpOptions = 7,
    XdpPassFragment = 8,
    XdpPassNotForNode = 9,
    XdpPassNotVxlan = 10,
    XdpPassWrongVni = 11,
    XdpDropUnknownVtep = 12,
    XdpPassUnknownVtep = 13,
    XdpPassInnerNotIpv4 = 14,
    XdpPassNoEndpoint = 15,
    XdpPassTtlExpired = 16,
    /// Encapsulated and redirected to the uplink.
    TcEncap = 17,
    /// Redirected straight into another local pod.
    TcLocalRedirect = 18,
    TcPassNoConfig = 19,
    TcPassTruncated = 20,
    TcPassNotIpv4 = 21,
    TcPassNoRoute = 22,
    TcPassNoNeighbour = 23,
    TcPassTooBig = 24,
    TcPassTtlExpired = 25,
    TcPassEncapFailed = 26,
    /// Forwarded plain (host-gw / DirectRouting) to a peer node on the uplink.
    TcHostGw = 27,
    /// A plain packet for a local pod from a host-gw peer, delivered straight into the pod.
    XdpHostGw = 28,
    /// A plain packet for a local pod whose source is not the peer node that owns it.
    XdpPassUnknownSource = 29,
    /// A full-size TCP segment for a local pod, left for the uplink's GRO;
    /// `tc_uplink` delivers it after GRO.
    XdpPassBulkTcp = 30,
    /// After GRO: VXLAN decapsulated by TC on the uplink, redirected into a pod.
    TcUplinkDecap = 31,
    /// After GRO: a plain host-gw packet delivered by TC on the uplink.
    TcUplinkHostGw = 32,
    /// After GRO: the VXLAN headers could not be stripped; the kernel path took it.
    TcUplinkPassDecapFailed = 33,
    /// Receiving: netfilter has not passed this flow unchanged yet (a new
    /// flow, one with NAT or a helper, or one netfilter drops).
    XdpPassNoVerdict = 34,
    /// Receiving: the verdict predates the last ruleset change.
    XdpPassRulesetChanged = 35,
    /// Receiving: the verdict is older than the re-check interval; this
    /// packet goes through netfilter (and conntrack) again.
    XdpPassRecheck = 36,
    /// Receiving: TCP SYN, FIN or RST, which conntrack must see.
    XdpPassTcpControl = 37,
    /// Receiving: not TCP, UDP or ICMP echo, or an inner packet with IPv4
    /// options or fragmented: no flow to look up.
    XdpPassNotAFlow = 38,
    /// Sending: as `XdpPassNoVerdict`, for a packet leaving a pod.
    TcPassNoVerdict = 39,
    TcPassRulesetChanged = 40,
    TcPassRecheck = 41,
    TcPassTcpControl = 42,
    TcPassNotAFlow = 43,
    /// After netfilter: a forwarded packet carried the accept mark and its
    /// flow's verdict was recorded.
    VerdictLearned = 44,
    /// After netfilter: the accept mark was set but the packet could not be
    /// parsed into a flow (cleared, nothing recorded).
    VerdictUnparsed = 45,
    /// After netfilter: FLOWS refused the update.
    VerdictUpdateFailed = 46,
    /// After netfilter: a marked TCP SYN, FIN or RST; nothing recorded
    /// (a FIN or RST ends the direction's verdict).
    VerdictTcpControl = 47,
    /// Receiving VXLAN: the inner source is not in the subnet of the peer
    /// whose PublicIP sent it.
    XdpPassForeignInnerSource = 48,
    /// Receiving VXLAN: the inner destination MAC is not this node's VTEP.
    XdpPassNotOurVtep = 49,
    /// Receiving VXLAN: the outer IPv4 or UDP length disagrees with the frame.
    XdpPassBadLength = 50,
    /// XDP only: the pod's veth cannot take an XDP redirect yet (GRO not
    /// confirmed at its end); TC on the uplink or the kernel delivers.
    XdpPassPodNotReady = 51,
    /// Sending: the source address or MAC is not the sending pod's own.
    TcPassForeignSource = 52,
    /// Sending: UDP from a pod to a node's VXLAN port, dropped (see the
    /// README's security model).
    TcDropVxlanToNode = 53,
}

/// Every counter with its stable, user-facing name, in id order.
pub const COUNTERS: &[(CounterId, &str)] = &[
    (CounterId::UplinkRx, "uplink_rx"),
    (CounterId::PodEgress, "pod_egress"),
    (CounterId::XdpDecap, "xdp_decap"),
    (CounterId::XdpPassNoConfig, "xdp_pass_no_config"),
    (CounterId::XdpPassTruncated, "xdp_pass_truncated"),
    (CounterId::XdpPassVlan, "xdp_pass_vlan"),
    (CounterId::XdpPassNotIpv4, "xdp_pass_not_ipv4"),
    (CounterId::XdpPassIpOptions, "xdp_pass_ip_options"),
    (CounterId::XdpPassFragment, "xdp_pass_fragment"),
    (CounterId::XdpPassNotForNode, "xdp_pass_not_for_node"),
    (CounterId::XdpPassNotVxlan, "xdp_pass_not_vxlan"),
    (CounterId::XdpPassWrongVni, "xdp_pass_wrong_vni"),
    (CounterId::XdpDropUnknownVtep, "xdp_drop_unknown_vtep"),
    (CounterId::XdpPassUnknownVtep, "xdp_pass_unknown_vtep"),
    (CounterId::XdpPassInnerNotIpv4, "xdp_pass_inner_not_ipv4"),
    (CounterId::XdpPassNoEndpoint, "xdp_pass_no_endpoint"),
    (CounterId::XdpPassTtlExpired, "xdp_pass_ttl_expired"),
    (CounterId::TcEncap, "tc_encap"),
    (CounterId::TcLocalRedirect, "tc_local_redirect"),
    (CounterId::TcPassNoConfig, "tc_pass_no_config"),
    (CounterId::TcPassTruncated, "tc_pass_truncated"),
    (CounterId::TcPassNotIpv4, "tc_pass_not_ipv4"),
    (CounterId::TcPassNoRoute, "tc_pass_no_route"),
    (CounterId::TcPassNoNeighbour, "tc_pass_no_neighbour"),
    (CounterId::TcPassTooBig, "tc_pass_too_big"),
    (CounterId::TcPassTtlExpired, "tc_pass_ttl_expired"),
    (CounterId::TcPassEncapFailed, "tc_pass_encap_failed"),
    (CounterId::TcHostGw, "tc_host_gw"),
    (CounterId::XdpHostGw, "xdp_host_gw"),
    (CounterId::XdpPassUnknownSource, "xdp_pass_unknown_source"),
    (CounterId::XdpPassBulkTcp, "xdp_pass_bulk_tcp"),
    (CounterId::TcUplinkDecap, "tc_uplink_decap"),
    (CounterId::TcUplinkHostGw, "tc_uplink_host_gw"),
    (
        CounterId::TcUplinkPassDecapFailed,
        "tc_uplink_pass_decap_failed",
    ),
    (CounterId::XdpPassNoVerdict, "xdp_pass_no_verdict"),
    (CounterId::XdpPassRulesetChanged, "xdp_pass_ruleset_changed"),
    (CounterId::XdpPassRecheck, "xdp_pass_recheck"),
    (CounterId::XdpPassTcpControl, "xdp_pass_tcp_control"),
    (CounterId::XdpPassNotAFlow, "xdp_pass_not_a_flow"),
    (CounterId::TcPassNoVerdict, "tc_pass_no_verdict"),
    (CounterId::TcPassRulesetChanged, "tc_pass_ruleset_changed"),
    (CounterId::TcPassRecheck, "tc_pass_recheck"),
    (CounterId::TcPassTcpControl, "tc_pass_tcp_control"),
    (CounterId::TcPassNotAFlow, "tc_pass_not_a_flow"),
    (CounterId::VerdictLearned, "verdict_learned"),
    (CounterId::VerdictUnparsed, "verdict_unparsed"),
    (CounterId::VerdictUpdateFailed, "verdict_update_failed"),
    (CounterId::VerdictTcpControl, "verdict_tcp_control"),
    (
        CounterId::XdpPassForeignInnerSource,
        "xdp_pass_foreign_inner_source",
    ),
    (CounterId::XdpPassNotOurVtep, "xdp_pass_not_our_vtep"),
    (CounterId::XdpPassBadLength, "xdp_pass_bad_length"),
    (CounterId::XdpPassPodNotReady, "xdp_pass_pod_not_ready"),
    (CounterId::TcPassForeignSource, "tc_pass_foreign_source"),
    (CounterId::TcDropVxlanToNode, "tc_drop_vxlan_to_node"),
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
