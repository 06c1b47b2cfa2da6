//! Keys and values of the forwarding maps. Addresses are stored as bytes in
//! network order, exactly as they sit in packets, so the datapath compares
//! them without byte swapping.

/// `PEERS` key data: the remote subnet's network address. The LPM trie
/// key is `{ prefix_len: u32, data: [u8; 4] }` (aya's `lpm_trie::Key`).
pub type PeerAddr = [u8; 4];

/// How a peer's pods are reached.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// VXLAN-encapsulated to `public_ip`.
    Vxlan = 1,
    /// Plain, routed to `public_ip` on the shared segment (host-gw, DirectRouting).
    HostGw = 2,
}

/// `PEERS` value: everything the encapsulating side needs to build the outer
/// headers without a route or neighbour lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The peer node's underlay address (outer destination).
    pub public_ip: [u8; 4],
    pub vni: u32,
    /// The peer's VTEP MAC (inner destination MAC).
    pub vtep_mac: [u8; 6],
    /// The underlay next hop's MAC (outer destination MAC); all zero while
    /// the agent has not resolved it (the kernel path is used meanwhile).
    pub nexthop_mac: [u8; 6],
    /// A [`PeerMode`].
    pub mode: u8,
    pub _pad: [u8; 3],
}

/// `ENDPOINTS` key: a local pod's IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 4],
}

/// `ENDPOINTS` value: where a local pod is plugged in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The host-side veth.
    pub ifindex: u32,
    /// The pod's own MAC (eth0 inside the pod).
    pub mac: [u8; 6],
    /// `ENDPOINT_*` flags.
    pub flags: u8,
    pub _pad: u8,
}

/// `Endpoint` flag: GRO is confirmed on at the pod's end of the veth, so
/// XDP may redirect into it (XDP_REDIRECT into a veth needs the peer's
/// NAPI, which a veth has only with GRO on). Without it, XDP leaves the
/// pod's packets to TC on the uplink or the kernel path.
pub const ENDPOINT_XDP_READY: u8 = 1 << 0;
/// `Endpoint` flag: tc acts on what the pod sends (classic filters, such
/// as the CNI bandwidth plugin's redirect to its ifb, or another TCX
/// program on the host veth's ingress). `tc_pod_egress` hands its packets
/// on untouched.
pub const ENDPOINT_TC_SENDS: u8 = 1 << 1;
/// `Endpoint` flag: tc acts on what the pod receives (a configured root
/// qdisc, such as the bandwidth plugin's tbf, egress filters or another
/// TCX program on the host veth's egress). Every redirect into the pod
/// would skip them, so its traffic is delivered by the kernel path.
pub const ENDPOINT_TC_RECEIVES: u8 = 1 << 2;

/// `VTEPS` key: an accepted outer source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VtepKey {
    pub addr: [u8; 4],
}

/// `VTEPS` value: what a frame from this VTEP may carry. The inner source
/// must lie in the subnet of the peer whose PublicIP sent the frame; for
/// the usual VTEP, which holds one lease, that subnet is here, so the check
/// is arithmetic on the value the VTEP lookup returned. A PublicIP that
/// several accepted leases name (a node that took a new subnet while its
/// old lease lives on) has `subnets > 1` and no subnet here: its frames are
/// checked against `PEERS` (longest prefix match on the inner source, whose
/// peer must have this PublicIP), as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vtep {
    /// The one subnet's network address (network order); zero unless
    /// `subnets == 1`.
    pub subnet: [u8; 4],
    /// The one subnet's prefix length; zero unless `subnets == 1`.
    pub prefix_len: u8,
    /// How many accepted subnets name this PublicIP: 1, the subnet is
    /// here; more, look in `PEERS`. Zero (never written): nothing.
    pub subnets: u8,
    pub _pad: [u8; 2],
}

impl Vtep {
    /// The VTEP of a PublicIP that exactly `subnets` peers name, the one
    /// being `(subnet, prefix_len)` when `subnets == 1`.
    pub fn new(subnets: usize, first: ([u8; 4], u8)) -> Self {
        let (subnet, prefix_len) = if subnets == 1 { first } else { ([0; 4], 0) };
        Self {
            subnet,
            prefix_len,
            subnets: subnets.min(u8::MAX as usize) as u8,
            _pad: [0; 2],
        }
    }

    /// Whether `addr` (network order) lies in this VTEP's one subnet;
    /// `None` when several subnets name it and `PEERS` must answer. A
    /// value with no subnet holds nothing. The programs judge by this.
    #[inline(always)]
    pub fn holds(&self, addr: [u8; 4]) -> Option<bool> {
        match self.subnets {
            0 => return Some(false),
            1 => {}
            _ => return None,
        }
        // A prefix length over 32 is never written; it matches nothing.
        let mask = match self.prefix_len {
            0 => 0,
            len @ 1..=32 => u32::MAX << (32 - u32::from(len)),
            _ => return Some(false),
        };
        Some(u32::from_be_bytes(addr) & mask == u32::from_be_bytes(self.subnet))
    }
}

/// `PEERS6` key data: a remote IPv6 subnet's network address (the LPM
/// trie key is `{ prefix_len: u32, data: [u8; 16] }`).
pub type PeerAddr6 = [u8; 16];

/// `PEERS6` value: how a peer's IPv6 pods are reached. The fast path
/// routes them itself on host-gw (and DirectRouting) only; a VXLAN peer
/// is written too, so that its IPv6 traffic is counted as the kernel
/// path's (`*_pass_ipv6_vxlan`) rather than as unroutable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer6 {
    /// The peer node's IPv6 underlay address (its PublicIPv6).
    pub public_ip: [u8; 16],
    pub vni: u32,
    /// The peer's IPv6 VTEP MAC (`flannel-v6.<VNI>`'s, from BackendV6Data).
    pub vtep_mac: [u8; 6],
    /// The peer node's MAC on the shared segment, as the uplink's IPv6
    /// neighbour table resolved it; all zero while unresolved (the kernel
    /// path resolves it meanwhile).
    pub nexthop_mac: [u8; 6],
    /// A [`PeerMode`].
    pub mode: u8,
    pub _pad: [u8; 3],
}

/// `ENDPOINTS6` key: a local pod's IPv6 address (the value is the pod's
/// [`Endpoint`], as for its IPv4 address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey6 {
    pub addr: [u8; 16],
}

/// `CONFIG` flag: drop VXLAN from sources not in `VTEPS` (else pass it to
/// the kernel path).
pub const CONFIG_STRICT_VTEPS: u32 = 1 << 0;
/// `CONFIG` flag: XDP leaves full-size TCP segments for local pods to the
/// uplink's GRO; TC ingress on the uplink delivers the coalesced packets.
pub const CONFIG_BULK_TCP_VIA_GRO: u32 = 1 << 1;
/// `CONFIG` flag: XDP is attached to the uplink and counts every frame
/// there; without it, TC ingress on the uplink counts them.
pub const CONFIG_UPLINK_XDP: u32 = 1 << 2;
/// `CONFIG` flag: the uplink's ingress holds classic filters or another
/// TCX program; nothing is delivered from the uplink on the fast path.
pub const CONFIG_TC_UPLINK: u32 = 1 << 3;
/// `CONFIG` flag: flannel.<VNI> has tc configuration (root qdisc, filters,
/// another TCX program); VXLAN is neither encapsulated nor decapsulated on
/// the fast path, which skips the device.
pub const CONFIG_TC_VTEP: u32 = 1 << 4;
/// `CONFIG` flag: the pods' bridge has tc configuration; pod traffic takes
/// the kernel path, which passes through it.
pub const CONFIG_TC_BRIDGE: u32 = 1 << 5;
/// `CONFIG` flag: renew live TCP verdicts with probes before they expire
/// (`--verdict-probes`, docs/datapath.md); without it, a verdict lapses
/// at its TTL and its flow's next packets re-learn it on the kernel path.
pub const CONFIG_VERDICT_PROBES: u32 = 1 << 6;

/// `FLOWS` key: one direction of a flow, as netfilter saw it leave this
/// node's forwarding path. Ports are as on the wire (big endian). For ICMP
/// echo, `sport` holds the echo identifier, `dport` is zero, and the type
/// and code are part of the key: conntrack tracks an echo request from A
/// to B and one from B to A as two flows, so a verdict learned from
/// replies must not cover requests the other way. Zero for TCP and UDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: u8,
}

/// `FLOWS6` key: one direction of an IPv6 flow, as [`FlowKey`] is for
/// IPv4. For ICMPv6 echo, `sport` holds the echo identifier and the type
/// and code are part of the key. Its size (40 bytes, [`FLOW_KEY6_LEN`])
/// is what tells it from a [`FlowKey`] (16) on `CT_LIBERAL`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: u8,
}

/// A [`FlowKey`]'s size: an IPv4 record on `CT_LIBERAL`.
pub const FLOW_KEY_LEN: usize = core::mem::size_of::<FlowKey>();
/// A [`FlowKey6`]'s size: an IPv6 record on `CT_LIBERAL`.
pub const FLOW_KEY6_LEN: usize = core::mem::size_of::<FlowKey6>();
const _: () = assert!(FLOW_KEY_LEN == 16 && FLOW_KEY6_LEN == 40);

/// `FlowVerdict::state`: a TCP verdict recorded, its conntrack entry not
/// yet made liberal by the agent; the fast path does not take it. Zero, so
/// that anything not explicitly confirmed fails closed.
pub const FLOW_PENDING: u32 = 0;
/// `FlowVerdict::state`: the fast path may take the flow (for TCP: the
/// agent marked its conntrack entry liberal in both directions).
pub const FLOW_CONFIRMED: u32 = 1;

/// `FLOWS` value: when this node's netfilter last let a packet of the flow
/// through unchanged (established, no NAT, no helper), under which
/// ruleset, whether the fast path may take it yet, and the probe that
/// renews it (docs/datapath.md, "How a verdict lives").
///
/// Every time in here is `bpf_ktime_get_coarse_ns()` (user space:
/// `CLOCK_MONOTONIC_COARSE`, the same clock), which lags the real time by
/// less than two clock ticks; the agent shortens `verdict_ttl_ns` by two
/// ticks, so the TTL stays an upper bound in real time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowVerdict {
    /// When the verdict was last seen.
    pub seen_ns: u64,
    /// `NodeConfig::ruleset_generation` then; a different one means the
    /// ruleset changed since and the verdict no longer counts.
    pub generation: u32,
    /// [`FLOW_PENDING`] or [`FLOW_CONFIRMED`].
    pub state: u32,
    /// When the last probe for this flow was sent (0: never).
    pub probe_ns: u64,
    /// The outstanding probe's TCP sequence number, as on the wire.
    pub probe_seq: [u8; 4],
    /// The outstanding probe's IPv4 identification, as on the wire (IPv6:
    /// its TCP timestamp's low 16 bits, or zero).
    pub probe_id: [u8; 2],
    /// [`PROBE_OUTSTANDING`] or [`PROBE_ORIGINAL_AHEAD`] from when a probe
    /// is sent until `tc_verdict` takes it, else 0.
    pub probe_state: u8,
    pub _pad: u8,
}

/// `FlowVerdict::probe_state`: a probe was sent and has not reached
/// `tc_verdict` yet; the packet there with the flow's key, `probe_id` and
/// `probe_seq` is it (and is dropped: its original took the fast path).
pub const PROBE_OUTSTANDING: u8 = 1;

/// `FlowVerdict::probe_state`: a probe was sent, and its original leaves
/// through a device whose egress runs `tc_verdict` (host-gw: the uplink;
/// a pod's IPv6 to a VXLAN peer: `flannel-v6.<VNI>`).
/// The original gets there first: the fast path hands it over at once,
/// while the probe waits in the backlog for the kernel path. So the first
/// *unmarked* packet there with the probe's identification is the
/// original: let through, and the state becomes [`PROBE_OUTSTANDING`]. A
/// marked one is the probe, taken as any (the original was lost or took
/// the kernel path too). In any order, one of the two copies leaves.
pub const PROBE_ORIGINAL_AHEAD: u8 = 2;

/// What `tc_pod_egress` writes into `__sk_buff.cb[0..2]` (the qdisc
/// control block's private bytes, which a redirect to another device's
/// egress leaves alone) of a packet it sends out of a device where
/// `tc_verdict` runs, and `tc_verdict` reads back and clears: "sent by the
/// fast path, no probe". Not on the original of a probe just sent, which
/// must meet `tc_verdict`'s probe logic. The second word is all ones:
/// there the kernel path's control blocks hold IPv4 option lengths and
/// offsets (at most 40 and 60), IPv6 header offsets (within the packet) or
/// the bridge's IGMP type and flags, none of which is 0xff in every byte.
pub const FAST_PATH_SENT: [u32; 2] = [0x7765_6674, u32::MAX];

impl FlowVerdict {
    /// Whether this verdict still lets the fast path take its flow: recorded
    /// under the current ruleset, seen within the re-check interval
    /// (`now_ns`, read only when the generation matches, is
    /// `bpf_ktime_get_coarse_ns`'s clock; a verdict stamped in the future
    /// counts as stale), and confirmed. If not, the reason the packet goes
    /// through netfilter. The programs and `weft maps` both judge by this.
    #[inline(always)]
    pub fn is_current(
        &self,
        config: &NodeConfig,
        now_ns: impl FnOnce() -> u64,
    ) -> Result<(), crate::Reason> {
        if self.generation != config.ruleset_generation {
            return Err(crate::Reason::PassRulesetChanged);
        }
        if now_ns().wrapping_sub(self.seen_ns) > config.verdict_ttl_ns {
            return Err(crate::Reason::PassRecheck);
        }
        if self.state != FLOW_CONFIRMED {
            return Err(crate::Reason::PassVerdictPending);
        }
        Ok(())
    }

    /// Whether a current verdict (see [`Self::is_current`]) is due a probe
    /// at `now_ns`: past half its TTL, and no probe sent in the last half
    /// TTL (one probe per half TTL at most: a probe netfilter drops or
    /// loses is not retried, and the verdict expires at its TTL).
    #[inline(always)]
    pub fn probe_due(&self, config: &NodeConfig, now_ns: u64) -> bool {
        let half = config.verdict_ttl_ns / 2;
        now_ns.wrapping_sub(self.seen_ns) > half && now_ns.wrapping_sub(self.probe_ns) > half
    }

    /// Whether the packet with IPv4 identification `id` and TCP sequence
    /// number `seq` (both as on the wire) is this flow's outstanding probe.
    #[inline(always)]
    pub fn is_probe(&self, id: [u8; 2], seq: [u8; 4]) -> bool {
        self.probe_outstanding() && self.probe_id == id && self.probe_seq == seq
    }

    /// Whether a probe was sent that `tc_verdict` has not taken yet.
    #[inline(always)]
    pub fn probe_outstanding(&self) -> bool {
        self.probe_state != 0
    }
}

/// `CT_LIBERAL` ring buffer: room for the flows `tc_verdict` asks the
/// agent to make liberal (16-byte [`FlowKey`] plus an 8-byte record
/// header each: about 10,000 waiting at once).
pub const CT_LIBERAL_BYTES: u32 = 256 * 1024;

/// `CONFIG[0]`: this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_ip: [u8; 4],
    pub uplink_ifindex: u32,
    pub vni: u32,
    /// VXLAN UDP port, network byte order.
    pub vxlan_port_be: u16,
    pub uplink_mac: [u8; 6],
    /// This node's VTEP MAC (inner source MAC of what it encapsulates).
    pub vtep_mac: [u8; 6],
    /// The pods' gateway MAC (cni0): inner source MAC of what it delivers.
    pub gateway_mac: [u8; 6],
    pub uplink_mtu: u32,
    /// `CONFIG_*` flags.
    pub flags: u32,
    /// The packet mark bit the agent's nftables rule sets on forwarded
    /// packets of established, un-NATed flows; the learning program reads
    /// and clears it.
    pub accept_mark: u32,
    /// Bumped by the agent whenever the node's nftables ruleset changes:
    /// verdicts learned under another generation are void.
    pub ruleset_generation: u32,
    /// How long a learned verdict stands before the next packet of the
    /// flow goes through netfilter again (and so refreshes conntrack): the
    /// configured TTL less two ticks of the verdict clock (see
    /// [`FlowVerdict`]).
    pub verdict_ttl_ns: u64,
    /// This node's PublicIPv6 (network order) where it runs VXLAN over
    /// IPv6 (`flannel-v6.<VNI>`), else all zero: the outer destination of
    /// the IPv6 VXLAN frames it decapsulates.
    pub node_ip6: [u8; 16],
    /// `flannel-v6.<VNI>`'s MAC: the inner destination MAC of those frames,
    /// and the source MAC of what the programs hand it to encapsulate.
    pub vtep6_mac: [u8; 6],
    pub _pad6: [u8; 2],
    /// `flannel-v6.<VNI>`'s ifindex where the node runs VXLAN over IPv6,
    /// else 0: pods' IPv6 to VXLAN peers is redirected to it.
    pub vtep6_ifindex: u32,
    /// The pods' gateway address (cni0's: the first host of this node's
    /// IPv4 subnet), network order; zero in an IPv6-only network. No pod's
    /// ARP may claim it (see `Reason::DropForgedArp`).
    pub gateway_ip: [u8; 4],
}

const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<Peer>() == 24 && align_of::<Peer>() == 4);
    assert!(size_of::<EndpointKey>() == 4);
    assert!(size_of::<Endpoint>() == 12 && align_of::<Endpoint>() == 4);
    assert!(size_of::<VtepKey>() == 4);
    assert!(size_of::<Vtep>() == 8 && align_of::<Vtep>() == 1);
    assert!(size_of::<NodeConfig>() == 88 && align_of::<NodeConfig>() == 8);
    assert!(size_of::<FlowKey>() == 16 && align_of::<FlowKey>() == 1);
    assert!(size_of::<FlowVerdict>() == 32 && align_of::<FlowVerdict>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Peer {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::VtepKey {}
    unsafe impl aya::Pod for super::Vtep {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowVerdict {}
    unsafe impl aya::Pod for super::Peer6 {}
    unsafe impl aya::Pod for super::EndpointKey6 {}
    unsafe impl aya::Pod for super::FlowKey6 {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!((size_of::<Peer>(), align_of::<Peer>()), (24, 4));
        assert_eq!(
            [
                offset_of!(Peer, vni),
                offset_of!(Peer, vtep_mac),
                offset_of!(Peer, nexthop_mac),
                offset_of!(Peer, mode)
            ],
            [4, 8, 14, 20]
        );
        assert_eq!((size_of::<Endpoint>(), align_of::<Endpoint>()), (12, 4));
        assert_eq!(offset_of!(Endpoint, mac), 4);
        assert_eq!((size_of::<NodeConfig>(), align_of::<NodeConfig>()), (88, 8));
        assert_eq!(
            [
                offset_of!(NodeConfig, uplink_ifindex),
                offset_of!(NodeConfig, vni),
                offset_of!(NodeConfig, vxlan_port_be),
                offset_of!(NodeConfig, uplink_mac),
                offset_of!(NodeConfig, vtep_mac),
                offset_of!(NodeConfig, gateway_mac),
                offset_of!(NodeConfig, uplink_mtu),
                offset_of!(NodeConfig, flags),
                offset_of!(NodeConfig, accept_mark),
                offset_of!(NodeConfig, ruleset_generation),
                offset_of!(NodeConfig, verdict_ttl_ns),
                offset_of!(NodeConfig, node_ip6),
                offset_of!(NodeConfig, vtep6_mac),
                offset_of!(NodeConfig, vtep6_ifindex),
            ],
            [4, 8, 12, 14, 20, 26, 32, 36, 40, 44, 48, 56, 72, 80]
        );
        assert_eq!(
            [
                offset_of!(FlowKey, daddr),
                offset_of!(FlowKey, sport),
                offset_of!(FlowKey, dport),
                offset_of!(FlowKey, proto),
                offset_of!(FlowKey, icmp_type),
                offset_of!(FlowKey, icmp_code),
            ],
            [4, 8, 10, 12, 13, 14]
        );
        assert_eq!(offset_of!(FlowVerdict, generation), 8);
        assert_eq!(offset_of!(FlowVerdict, state), 12);
        assert_eq!(
            [
                offset_of!(FlowVerdict, probe_ns),
                offset_of!(FlowVerdict, probe_seq),
                offset_of!(FlowVerdict, probe_id),
                offset_of!(FlowVerdict, probe_state),
            ],
            [16, 24, 28, 30]
        );
        assert_eq!(size_of::<VtepKey>(), 4);
        assert_eq!((size_of::<Vtep>(), align_of::<Vtep>()), (8, 1));
        assert_eq!(
            [offset_of!(Vtep, prefix_len), offset_of!(Vtep, subnets)],
            [4, 5]
        );
        assert_eq!(size_of::<EndpointKey>(), 4);
        assert_eq!(size_of::<EndpointKey6>(), 16);
        assert_eq!((size_of::<Peer6>(), align_of::<Peer6>()), (36, 4));
        assert_eq!(
            [
                offset_of!(Peer6, vni),
                offset_of!(Peer6, vtep_mac),
                offset_of!(Peer6, nexthop_mac),
                offset_of!(Peer6, mode)
            ],
            [16, 20, 26, 32]
        );
        assert_eq!((size_of::<FlowKey6>(), align_of::<FlowKey6>()), (40, 1));
        assert_eq!(
            [
                offset_of!(FlowKey6, daddr),
                offset_of!(FlowKey6, sport),
                offset_of!(FlowKey6, dport),
                offset_of!(FlowKey6, proto),
                offset_of!(FlowKey6, icmp_type),
            ],
            [16, 32, 34, 36, 37]
        );
    }

    #[test]
    fn a_vtep_holds_exactly_its_one_subnet() {
        let vtep = Vtep::new(1, ([10, 244, 2, 0], 24));
        assert_eq!(vtep.holds([10, 244, 2, 0]), Some(true));
        assert_eq!(vtep.holds([10, 244, 2, 255]), Some(true));
        assert_eq!(vtep.holds([10, 244, 1, 255]), Some(false));
        assert_eq!(vtep.holds([10, 244, 3, 0]), Some(false));
        let host = Vtep::new(1, ([10, 244, 2, 7], 32));
        assert_eq!(host.holds([10, 244, 2, 7]), Some(true));
        assert_eq!(host.holds([10, 244, 2, 6]), Some(false));
        assert_eq!(Vtep::new(1, ([0; 4], 0)).holds([1, 2, 3, 4]), Some(true));
        // Several subnets: PEERS answers.
        assert_eq!(
            Vtep::new(2, ([10, 244, 2, 0], 24)).holds([10, 244, 2, 1]),
            None
        );
        assert_eq!(Vtep::new(2, ([10, 244, 2, 0], 24)).subnet, [0; 4]);
        // Never written, or nonsense: nothing.
        assert_eq!(Vtep::default().holds([0; 4]), Some(false));
        let bad = Vtep {
            prefix_len: 33,
            ..Vtep::new(1, ([0; 4], 0))
        };
        assert_eq!(bad.holds([0; 4]), Some(false));
    }
}
