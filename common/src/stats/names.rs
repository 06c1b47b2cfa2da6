//! Every counter a program can bump, with its flat name.

use super::{CounterId, Hook, Reason};

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
    (id(XdpUplink, Reason::DecapIpv6), "xdp_decap_ipv6"),
    (
        id(XdpUplink, Reason::PassUdpChecksum),
        "xdp_pass_udp_checksum",
    ),
    (id(XdpUplink, Reason::HostGw), "xdp_host_gw"),
    (id(XdpUplink, Reason::HostGwIpv6), "xdp_host_gw_ipv6"),
    (id(XdpUplink, Reason::PassIpv6Vxlan), "xdp_pass_ipv6_vxlan"),
    (id(XdpUplink, Reason::PassNoConfig), "xdp_pass_no_config"),
    (id(XdpUplink, Reason::PassBulkTcp), "xdp_pass_bulk_tcp"),
    (id(XdpUplink, Reason::ProbeDue), "xdp_probe_due"),
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
    (
        id(XdpUplink, Reason::PassVerdictsSuspended),
        "xdp_pass_verdicts_suspended",
    ),
    (
        id(XdpUplink, Reason::PassVerdictPending),
        "xdp_pass_verdict_pending",
    ),
    (
        id(XdpUplink, Reason::PassTcReceiver),
        "xdp_pass_tc_receiver",
    ),
    (id(XdpUplink, Reason::PassTcBridge), "xdp_pass_tc_bridge"),
    (id(XdpUplink, Reason::PassTcVtep), "xdp_pass_tc_vtep"),
    (id(XdpUplink, Reason::PassTcUplink), "xdp_pass_tc_uplink"),
    (id(TcUplink, Reason::Seen), "tc_uplink_seen"),
    (id(TcUplink, Reason::Decap), "tc_uplink_decap"),
    (id(TcUplink, Reason::DecapIpv6), "tc_uplink_decap_ipv6"),
    (
        id(TcUplink, Reason::PassUdpChecksum),
        "tc_uplink_pass_udp_checksum",
    ),
    (id(TcUplink, Reason::HostGw), "tc_uplink_host_gw"),
    (id(TcUplink, Reason::HostGwIpv6), "tc_uplink_host_gw_ipv6"),
    (
        id(TcUplink, Reason::PassIpv6Vxlan),
        "tc_uplink_pass_ipv6_vxlan",
    ),
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
    (
        id(TcUplink, Reason::PassVerdictsSuspended),
        "tc_uplink_pass_verdicts_suspended",
    ),
    (
        id(TcUplink, Reason::PassVerdictPending),
        "tc_uplink_pass_verdict_pending",
    ),
    (
        id(TcUplink, Reason::PassTcReceiver),
        "tc_uplink_pass_tc_receiver",
    ),
    (
        id(TcUplink, Reason::PassTcBridge),
        "tc_uplink_pass_tc_bridge",
    ),
    (id(TcUplink, Reason::PassTcVtep), "tc_uplink_pass_tc_vtep"),
    (
        id(TcUplink, Reason::PassTcUplink),
        "tc_uplink_pass_tc_uplink",
    ),
    (id(TcUplink, Reason::ProbeSent), "tc_uplink_probe_sent"),
    (id(TcUplink, Reason::ProbeFailed), "tc_uplink_probe_failed"),
    (
        id(TcUplink, Reason::ProbeReturned),
        "tc_uplink_probe_returned",
    ),
    (id(TcPodEgress, Reason::Seen), "pod_egress"),
    (id(TcPodEgress, Reason::Encap), "tc_encap"),
    (id(TcPodEgress, Reason::HostGw), "tc_host_gw"),
    (id(TcPodEgress, Reason::LocalRedirect), "tc_local_redirect"),
    (
        id(TcPodEgress, Reason::LocalRedirectIpv6),
        "tc_local_redirect_ipv6",
    ),
    (id(TcPodEgress, Reason::HostGwIpv6), "tc_host_gw_ipv6"),
    (id(TcPodEgress, Reason::EncapIpv6), "tc_encap_ipv6"),
    (id(TcPodEgress, Reason::PassIpv6Vxlan), "tc_pass_ipv6_vxlan"),
    (id(TcPodEgress, Reason::PassNoConfig), "tc_pass_no_config"),
    (id(TcPodEgress, Reason::PassTruncated), "tc_pass_truncated"),
    (id(TcPodEgress, Reason::PassNotIpv4), "tc_pass_not_ipv4"),
    (
        id(TcPodEgress, Reason::PassForeignSource),
        "tc_pass_foreign_source",
    ),
    (
        id(TcPodEgress, Reason::DropVxlanFromPod),
        "tc_drop_vxlan_from_pod",
    ),
    (id(TcPodEgress, Reason::DropForgedArp), "tc_drop_forged_arp"),
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
    (
        id(TcPodEgress, Reason::PassVerdictsSuspended),
        "tc_pass_verdicts_suspended",
    ),
    (
        id(TcPodEgress, Reason::PassVerdictPending),
        "tc_pass_verdict_pending",
    ),
    (id(TcPodEgress, Reason::PassTcSender), "tc_pass_tc_sender"),
    (
        id(TcPodEgress, Reason::PassTcReceiver),
        "tc_pass_tc_receiver",
    ),
    (id(TcPodEgress, Reason::PassTcBridge), "tc_pass_tc_bridge"),
    (id(TcPodEgress, Reason::PassTcVtep), "tc_pass_tc_vtep"),
    (id(TcPodEgress, Reason::ProbeSent), "tc_probe_sent"),
    (id(TcPodEgress, Reason::ProbeFailed), "tc_probe_failed"),
    (id(TcPodEgress, Reason::ProbeReturned), "tc_probe_returned"),
    (id(TcVerdict, Reason::Learned), "verdict_learned"),
    (
        id(TcVerdict, Reason::PassIpv6Vxlan),
        "verdict_pass_ipv6_vxlan",
    ),
    (id(TcVerdict, Reason::Unparsed), "verdict_unparsed"),
    (id(TcVerdict, Reason::UpdateFailed), "verdict_update_failed"),
    (id(TcVerdict, Reason::TcpControl), "verdict_tcp_control"),
    (
        id(TcVerdict, Reason::LearnedPending),
        "verdict_learned_pending",
    ),
    (
        id(TcVerdict, Reason::AwaitingLiberal),
        "verdict_awaiting_liberal",
    ),
    (id(TcVerdict, Reason::NotifyFailed), "verdict_notify_failed"),
    (id(TcVerdict, Reason::ProbeTaken), "verdict_probe_taken"),
    (
        id(TcVerdict, Reason::ProbeUnjudged),
        "verdict_probe_unjudged",
    ),
    (
        id(TcVerdict, Reason::ProbeOriginal),
        "verdict_probe_original",
    ),
];
