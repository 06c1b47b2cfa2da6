//! What a program did with a packet, and why: named by cause, shared by
//! every hook that can reach it.

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
    /// UDP from a pod to the VXLAN port, whatever its destination (see
    /// docs/security.md).
    DropVxlanFromPod = 32,
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
    /// Another rule in the node's ruleset uses the accept bit: weft
    /// records no verdict and leaves every flow to the kernel path until
    /// it is gone.
    PassVerdictsSuspended = 41,
    /// A TCP verdict the agent has not confirmed yet: its conntrack entry
    /// is not liberal, so conntrack must keep seeing the flow's segments.
    PassVerdictPending = 56,
    /// A marked TCP packet of a flow without a live verdict: recorded
    /// pending and the agent asked (`CT_LIBERAL`) to make its conntrack
    /// entry liberal.
    LearnedPending = 57,
    /// A marked TCP packet of a flow already waiting for the agent:
    /// nothing changed.
    AwaitingLiberal = 58,
    /// The `CT_LIBERAL` ring buffer was full: nothing recorded; the flow's
    /// next marked packet asks again.
    NotifyFailed = 59,
    /// A live TCP verdict past half its TTL: a clone of this packet (the
    /// probe) was sent through the kernel path to renew it, while the
    /// packet itself took the fast path (counted under its own reason as
    /// well).
    ProbeSent = 60,
    /// The probe coming back in (it carries the accept bit, which no
    /// packet from a pod or the wire has): cleared, and handed to the
    /// kernel path.
    ProbeReturned = 61,
    /// A probe netfilter passed: its flow's verdict renewed (or learned
    /// again), and the probe dropped, since its original took the fast
    /// path.
    ProbeTaken = 62,
    /// A probe that reached egress without the accept bit (netfilter let
    /// it through, but not as an established flow without NAT): dropped,
    /// nothing renewed.
    ProbeUnjudged = 63,
    /// XDP only: the packet's verdict is due a probe, which XDP cannot
    /// clone; `tc_uplink` delivers it and sends the probe.
    ProbeDue = 64,
    /// The probe could not be cloned (`bpf_clone_redirect` failed); the
    /// verdict expires at its TTL unless a later probe renews it.
    ProbeFailed = 65,
    /// An IPv6 packet for another pod on this node, straight into its veth.
    LocalRedirectIpv6 = 66,
    /// An IPv6 packet routed as is between nodes (host-gw, DirectRouting):
    /// to the peer node's MAC out of the uplink, or from it into a pod.
    HostGwIpv6 = 67,
    /// IPv6 over VXLAN the fast path does not carry; `flannel-v6.<VNI>`
    /// does, on the kernel path: to a VXLAN peer's pods on a node whose
    /// `CONFIG` names no `flannel-v6.<VNI>`, or at the uplink a VXLAN
    /// frame over IPv6 this node does not decapsulate (no IPv6 VXLAN
    /// configured, or not addressed to its PublicIPv6). At `tc_verdict`: a
    /// VXLAN peer's pod's IPv6 flow on a node that does not decapsulate
    /// VXLAN over IPv6, whose verdict is not recorded (nothing reads it).
    PassIpv6Vxlan = 68,
    /// A VXLAN frame over IPv6 (`flannel-v6.<VNI>`'s) for a local pod:
    /// decapsulated and delivered straight into the pod's veth.
    DecapIpv6 = 69,
    /// A VXLAN frame over IPv6 whose outer UDP checksum is zero (which
    /// `flannel-v6.<VNI>` refuses) or does not add up with its headers
    /// (one a veth handed over with the checksum still left to offload
    /// looks the same): the kernel path verifies it.
    PassUdpChecksum = 70,
    /// A pod's IPv6 packet to a VXLAN peer's pod, handed straight to
    /// `flannel-v6.<VNI>` (its egress), which encapsulates it: no bridge,
    /// no routing.
    EncapIpv6 = 71,
    /// At `tc_verdict`, unmarked: the original of an outstanding probe,
    /// which the fast path sent out of this device (host-gw, out of the
    /// uplink; a pod's IPv6 to a VXLAN peer, to `flannel-v6.<VNI>`) ahead
    /// of the probe. Let through; the probe, coming after
    /// it, is taken or dropped as any.
    ProbeOriginal = 72,
    /// ARP from a pod that claims the pods' gateway address or another
    /// local pod's: every pod on the bridge would take the claim into its
    /// own entry for that address and send its traffic there to the
    /// claimant (see docs/security.md).
    DropForgedArp = 73,
    /// tc acts on what this pod sends: its host veth's ingress holds
    /// classic filters (the CNI bandwidth plugin's redirect to its ifb) or
    /// another TCX program. Handed on (`TCX_NEXT`) untouched.
    PassTcSender = 48,
    /// tc acts on what this pod receives: its host veth has a configured
    /// root qdisc (the bandwidth plugin's tbf), egress filters or another
    /// TCX program; a redirect into the pod would skip them.
    PassTcReceiver = 49,
    /// The pods' bridge (cni0) has tc configuration the kernel path would
    /// pass through.
    PassTcBridge = 50,
    /// flannel.<VNI> has tc configuration the kernel path would pass
    /// through; encapsulation and decapsulation skip the device.
    PassTcVtep = 51,
    /// The uplink's ingress holds classic filters or another TCX program
    /// that a delivery from XDP or `tc_uplink` would skip.
    PassTcUplink = 52,
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
            Reason::DropVxlanFromPod => "drop_vxlan_from_pod",
            Reason::PassNoRoute => "pass_no_route",
            Reason::PassNoNeighbour => "pass_no_neighbour",
            Reason::PassTooBig => "pass_too_big",
            Reason::PassEncapFailed => "pass_encap_failed",
            Reason::Learned => "learned",
            Reason::Unparsed => "unparsed",
            Reason::UpdateFailed => "update_failed",
            Reason::TcpControl => "tcp_control",
            Reason::PassVerdictsSuspended => "pass_verdicts_suspended",
            Reason::PassVerdictPending => "pass_verdict_pending",
            Reason::LearnedPending => "learned_pending",
            Reason::AwaitingLiberal => "awaiting_liberal",
            Reason::NotifyFailed => "notify_failed",
            Reason::ProbeSent => "probe_sent",
            Reason::ProbeReturned => "probe_returned",
            Reason::ProbeTaken => "probe_taken",
            Reason::ProbeUnjudged => "probe_unjudged",
            Reason::ProbeDue => "probe_due",
            Reason::ProbeFailed => "probe_failed",
            Reason::LocalRedirectIpv6 => "local_redirect_ipv6",
            Reason::HostGwIpv6 => "host_gw_ipv6",
            Reason::PassIpv6Vxlan => "pass_ipv6_vxlan",
            Reason::DecapIpv6 => "decap_ipv6",
            Reason::PassUdpChecksum => "pass_udp_checksum",
            Reason::EncapIpv6 => "encap_ipv6",
            Reason::ProbeOriginal => "probe_original",
            Reason::DropForgedArp => "drop_forged_arp",
            Reason::PassTcSender => "pass_tc_sender",
            Reason::PassTcReceiver => "pass_tc_receiver",
            Reason::PassTcBridge => "pass_tc_bridge",
            Reason::PassTcVtep => "pass_tc_vtep",
            Reason::PassTcUplink => "pass_tc_uplink",
        }
    }

    /// Whether the packet is dropped (else, for a refusal, passed).
    #[inline(always)]
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::DropUnknownVtep | Reason::DropVxlanFromPod | Reason::DropForgedArp
        )
    }
}
