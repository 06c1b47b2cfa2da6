//! What arrived on the uplink, and whether it may go straight into a local
//! pod. Shared by the XDP program (every frame, before GRO) and the TC
//! ingress program (what XDP left for GRO), so both apply the same checks.
//! Reads only, and returns offsets and facts, never pointers: the caller
//! may move the packet (`bpf_xdp_adjust_head`, `bpf_skb_adjust_room`)
//! before it rewrites what it delivers.

use aya_ebpf::maps::lpm_trie::Key;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vxlan::VxlanHdr,
};
use weft_common::{
    CONFIG_STRICT_VTEPS, Endpoint, EndpointKey, EndpointKey6, NodeConfig, PeerMode, Reason, VtepKey,
};

use crate::lib::{
    checksum::{SUMMED_LEN, outer_udp6_adds_up},
    flow::{netfilter_passed, netfilter_passed6},
    headers::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP,
        IPV4_NO_OPTIONS, PLAIN_HEADERS_LEN_IPV4, PLAIN_HEADERS_LEN_IPV6, TCP_TIMESTAMP_LEAD_LEN,
        VXLAN_OVERHEAD, VXLAN6_OVERHEAD, is_fragment, ptr_at,
    },
    maps::{ENDPOINTS, ENDPOINTS6, PEERS, PEERS6, VTEPS},
};

/// Headers the classifier reads in an IPv4 frame: outer
/// Ethernet/IPv4/UDP/VXLAN, inner Ethernet/IPv4 and the inner transport
/// header (ports, TCP flags); more than a host-gw packet's. TC pulls this
/// much (or the whole frame, if shorter) into the skb's linear part. Not
/// more: a GRO packet built from page fragments holds little beyond its
/// headers in the linear part, and pulling past them copies payload (or
/// reallocates the head) for every coalesced packet.
pub const HEADERS_LEN_IPV4: usize = VXLAN_OVERHEAD + EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN;
/// The same in an IPv6 frame: VXLAN over IPv6, more than host-gw's, and
/// the TCP timestamp a probe's identity reads (lib/flow.rs).
pub const HEADERS_LEN_IPV6: usize =
    VXLAN6_OVERHEAD + EthHdr::LEN + Ipv6Hdr::LEN + TcpHdr::LEN + TCP_TIMESTAMP_LEAD_LEN;
const _: () = assert!(HEADERS_LEN_IPV4 >= EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN);
const _: () = assert!(HEADERS_LEN_IPV6 >= EthHdr::LEN + Ipv6Hdr::LEN + TcpHdr::LEN);

/// How much of the frame in `[data, end)` [`classify`] reads: a VXLAN
/// frame's headers ([`HEADERS_LEN_IPV4`], [`HEADERS_LEN_IPV6`]) where the
/// outer packet is UDP (or its header is not linear), a plain (host-gw)
/// packet's where it is not, which are 50 or 70 bytes fewer: a host-gw TCP
/// segment's linear part ends with its own headers.
#[inline(always)]
pub fn headers_len(data: usize, end: usize) -> usize {
    let Some(eth) = ptr_at::<EthHdr>(data, end, 0) else {
        return HEADERS_LEN_IPV6;
    };
    // SAFETY: every pointer comes from ptr_at, inside the packet.
    match unsafe { (*eth).ether_type } {
        ETH_P_IPV4 => match ptr_at::<Ipv4Hdr>(data, end, EthHdr::LEN) {
            Some(ip) if unsafe { (*ip).proto } != IPPROTO_UDP => PLAIN_HEADERS_LEN_IPV4,
            _ => HEADERS_LEN_IPV4,
        },
        ETH_P_IPV6 => match ptr_at::<Ipv6Hdr>(data, end, EthHdr::LEN) {
            Some(ip) if unsafe { (*ip).next_hdr } != IPPROTO_UDP => PLAIN_HEADERS_LEN_IPV6,
            _ => HEADERS_LEN_IPV6,
        },
        // VLAN tags and other protocols pass on their Ethernet type alone.
        _ => EthHdr::LEN,
    }
}

/// Inner IPv4 packets at least this long and carrying TCP are bulk
/// transfer: senders fill the MTU (1,400+ bytes on a 1,450 pod MTU). They
/// gain more from GRO (one trip through the stack per ~64 KB) than from
/// skipping it; ACKs and request/response messages are smaller and keep the
/// XDP path, where latency is lowest.
const BULK_TCP_MIN_LEN: u16 = 1024;

/// A packet this node may hand straight to one of its pods.
pub struct Delivery {
    pub endpoint: Endpoint,
    /// Bytes in front of the pod's frame: the VXLAN headers, or 0
    /// (host-gw). The pod's Ethernet header starts here, its IPv4 header
    /// right after.
    pub strip: usize,
    /// A full-size TCP segment: what GRO would coalesce.
    pub bulk_tcp: bool,
    /// Its flow's verdict is due a probe (lib/probe.rs).
    pub probe_due: bool,
    /// An IPv6 packet (host-gw, or VXLAN over IPv6): the pod's IPv6
    /// header follows its Ethernet header.
    pub ipv6: bool,
}

impl Delivery {
    /// Whether it came through the VXLAN tunnel (else host-gw).
    #[inline(always)]
    pub fn is_vxlan(&self) -> bool {
        self.strip != 0
    }

    /// What delivering it is counted as.
    #[inline(always)]
    pub fn reason(&self) -> Reason {
        match (self.is_vxlan(), self.ipv6) {
            (true, false) => Reason::Decap,
            (true, true) => Reason::DecapIpv6,
            (false, false) => Reason::HostGw,
            (false, true) => Reason::HostGwIpv6,
        }
    }
}

use Reason::PassTruncated as Truncated;

/// Checks a frame of `frame_len` bytes that starts at `data` (Ethernet)
/// against this node's config and maps: a delivery, or the reason it is
/// left to the kernel (`Pass*`) or dropped (`Drop*`). With
/// `bulk_left_to_gro` (XDP with `--bulk-tcp-via-gro`), a full-size TCP
/// segment skips netfilter's verdict: it goes to the kernel either way, and
/// `tc_uplink` checks the verdict once per coalesced packet. With `gso`
/// (a GSO packet, in TC) a non-zero outer UDP checksum field holds a
/// pseudo-header sum, not the checksum: GRO verified every segment's
/// checksum when it coalesced them (and a GSO packet a veth handed over
/// never crossed a wire: its checksum is left to offload, which the
/// kernel trusts too).
#[inline(always)]
pub fn classify(
    data: usize,
    end: usize,
    frame_len: usize,
    config: &NodeConfig,
    bulk_left_to_gro: bool,
    gso: bool,
) -> Result<Delivery, Reason> {
    let eth = ptr_at::<EthHdr>(data, end, 0).ok_or(Truncated)?;
    // SAFETY: every pointer below comes from ptr_at, inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Reason::PassVlan);
    }
    if ether_type == ETH_P_IPV6 {
        let frame = Frame {
            data,
            end,
            len: frame_len,
        };
        return classify_ipv6(eth, &frame, config, bulk_left_to_gro, gso);
    }
    if ether_type != ETH_P_IPV4 {
        return Err(Reason::PassNotIpv4);
    }
    let ip = ptr_at::<Ipv4Hdr>(data, end, EthHdr::LEN).ok_or(Truncated)?;
    let outer = unsafe { &*ip };
    if outer.version() != 4 {
        return Err(Reason::PassNotIpv4);
    }
    if outer.vihl != IPV4_NO_OPTIONS {
        return Err(Reason::PassIpOptions);
    }
    if is_fragment(outer) {
        return Err(Reason::PassFragment);
    }
    if outer.dst_addr != config.node_ip {
        // Not for this node: maybe a plain (host-gw) packet for one of its pods.
        return classify_plain(eth, ip, end, config, bulk_left_to_gro);
    }
    if outer.proto != IPPROTO_UDP {
        return Err(Reason::PassNotVxlan);
    }
    let udp = ptr_at::<UdpHdr>(data, end, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Truncated)?;
    let udp = unsafe { &*udp };
    if udp.dst != config.vxlan_port_be.to_ne_bytes() {
        return Err(Reason::PassNotVxlan);
    }
    // Lengths that lie about the frame are the kernel's to judge (a VXLAN
    // frame is never short enough for Ethernet padding).
    let ip_len = usize::from(outer.tot_len());
    if ip_len + EthHdr::LEN != frame_len || usize::from(udp.len()) + Ipv4Hdr::LEN != ip_len {
        return Err(Reason::PassBadLength);
    }
    let vxlan =
        ptr_at::<VxlanHdr>(data, end, EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN).ok_or(Truncated)?;
    let vxlan = unsafe { &*vxlan };
    if !vxlan.vni_present() || vxlan.vni() != config.vni {
        return Err(Reason::PassWrongVni);
    }
    let Some(vtep) = VTEPS.get_ptr(VtepKey {
        addr: outer.src_addr,
    }) else {
        return Err(if config.flags & CONFIG_STRICT_VTEPS != 0 {
            Reason::DropUnknownVtep
        } else {
            Reason::PassUnknownVtep
        });
    };
    let inner_eth = ptr_at::<EthHdr>(data, end, VXLAN_OVERHEAD).ok_or(Truncated)?;
    if unsafe { (*inner_eth).ether_type } != ETH_P_IPV4 {
        return Err(Reason::PassInnerNotIpv4);
    }
    // flannel.<VNI> takes only frames for its own MAC; so does the fast path.
    if unsafe { (*inner_eth).dst_addr } != config.vtep_mac {
        return Err(Reason::PassNotOurVtep);
    }
    let inner_ip = ptr_at::<Ipv4Hdr>(data, end, VXLAN_OVERHEAD + EthHdr::LEN).ok_or(Truncated)?;
    let inner = unsafe { &*inner_ip };
    // A peer speaks only for its own pods: the inner source must lie in the
    // subnet of the peer whose PublicIP sent the frame. The VTEP's value
    // holds that subnet when the PublicIP has one lease (nearly always);
    // with several, PEERS says whose subnet the source is in.
    // SAFETY: a map value pointer from a successful lookup.
    let own_pod = match unsafe { (*vtep).holds(inner.src_addr) } {
        Some(held) => held,
        None => PEERS
            .get(&Key::new(32, inner.src_addr))
            .is_some_and(|peer| peer.public_ip == outer.src_addr),
    };
    if !own_pod {
        return Err(Reason::PassForeignInnerSource);
    }
    let endpoint = ENDPOINTS
        .get_ptr(EndpointKey {
            addr: inner.dst_addr,
        })
        .ok_or(Reason::PassNoEndpoint)?;
    deliverable(
        inner_ip,
        end,
        config,
        endpoint,
        VXLAN_OVERHEAD,
        bulk_left_to_gro,
    )
}

/// host-gw (and DirectRouting): a plain IPv4 packet routed to this node for
/// one of its pods, accepted only from the peer node that owns its source
/// subnet: the frame's source MAC must be that node's, as the agent
/// resolved it. Anything else is the kernel's.
#[inline(always)]
fn classify_plain(
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    end: usize,
    config: &NodeConfig,
    bulk_left_to_gro: bool,
) -> Result<Delivery, Reason> {
    // SAFETY: both pointers were bounds-checked by the caller.
    let header = unsafe { &*ip };
    let endpoint = ENDPOINTS
        .get_ptr(EndpointKey {
            addr: header.dst_addr,
        })
        .ok_or(Reason::PassNotForNode)?;
    let peer = PEERS
        .get(&Key::new(32, header.src_addr))
        .ok_or(Reason::PassUnknownSource)?;
    if peer.mode != PeerMode::HostGw as u8 || peer.nexthop_mac != unsafe { (*eth).src_addr } {
        return Err(Reason::PassUnknownSource);
    }
    deliverable(ip, end, config, endpoint, 0, bulk_left_to_gro)
}

/// A frame on the uplink: where it starts and ends, and its length (the
/// whole skb's in TC, which may exceed what is linear).
struct Frame {
    data: usize,
    end: usize,
    len: usize,
}

/// An IPv6 packet on the uplink: VXLAN over IPv6 addressed to this node's
/// PublicIPv6 (see [`classify_vxlan6`]), or host-gw (and DirectRouting)
/// for one of this node's pods, accepted, as over IPv4, only from the
/// peer node that owns its source subnet (the frame's source MAC is that
/// node's, as the agent resolved it). Anything else is the kernel's.
#[inline(always)]
fn classify_ipv6(
    eth: *mut EthHdr,
    frame: &Frame,
    config: &NodeConfig,
    bulk_left_to_gro: bool,
    gso: bool,
) -> Result<Delivery, Reason> {
    let (data, end) = (frame.data, frame.end);
    let ip = ptr_at::<Ipv6Hdr>(data, end, EthHdr::LEN).ok_or(Truncated)?;
    // SAFETY: pointers from ptr_at are inside the packet.
    let header = unsafe { &*ip };
    if header.version() != 6 {
        return Err(Reason::PassNotIpv4);
    }
    if header.next_hdr == IPPROTO_UDP
        && let Some(udp) = ptr_at::<UdpHdr>(data, end, EthHdr::LEN + Ipv6Hdr::LEN)
        && unsafe { (*udp).dst } == config.vxlan_port_be.to_ne_bytes()
    {
        // Decapsulated only where this node runs VXLAN over IPv6, and only
        // what is addressed to it.
        if config.node_ip6 == [0; 16] || header.dst_addr != config.node_ip6 {
            return Err(Reason::PassIpv6Vxlan);
        }
        return classify_vxlan6(frame, header, udp, config, bulk_left_to_gro, gso);
    }
    let endpoint = ENDPOINTS6
        .get_ptr(EndpointKey6 {
            addr: header.dst_addr,
        })
        .ok_or(Reason::PassNotForNode)?;
    let peer = PEERS6
        .get(&Key::new(128, header.src_addr))
        .ok_or(Reason::PassUnknownSource)?;
    if peer.mode != PeerMode::HostGw as u8 || peer.nexthop_mac != unsafe { (*eth).src_addr } {
        return Err(Reason::PassUnknownSource);
    }
    deliverable6(ip, end, config, endpoint, 0, bulk_left_to_gro)
}

/// VXLAN over IPv6 for this node (`flannel-v6.<VNI>`'s frames), with the
/// checks VXLAN over IPv4 gets and the device would make: lengths that
/// agree with the frame, our VNI, the outer UDP checksum
/// ([`outer_udp6_adds_up`]; GRO verified a GSO packet's), addressed
/// to flannel-v6's MAC, IPv6 inside, the inner source in the IPv6 subnet
/// of the peer whose PublicIPv6 sent it (`PEERS6`, longest prefix match:
/// an address no peer owns is refused there, and the overlay guard drops
/// it on the kernel path), a local pod as destination, a hop to spare and
/// netfilter's verdict.
#[inline(always)]
fn classify_vxlan6(
    frame: &Frame,
    outer: &Ipv6Hdr,
    udp: *mut UdpHdr,
    config: &NodeConfig,
    bulk_left_to_gro: bool,
    gso: bool,
) -> Result<Delivery, Reason> {
    let (data, end) = (frame.data, frame.end);
    // SAFETY: every pointer comes from ptr_at (the UDP header's from the
    // caller), inside the packet.
    let udp = unsafe { &*udp };
    // Lengths that lie about the frame are the kernel's to judge.
    let payload_len = usize::from(outer.payload_len());
    if payload_len + Ipv6Hdr::LEN + EthHdr::LEN != frame.len
        || usize::from(udp.len()) != payload_len
    {
        return Err(Reason::PassBadLength);
    }
    let vxlan =
        ptr_at::<VxlanHdr>(data, end, EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN).ok_or(Truncated)?;
    let vxlan = unsafe { &*vxlan };
    if !vxlan.vni_present() || vxlan.vni() != config.vni {
        return Err(Reason::PassWrongVni);
    }
    let inner_eth = ptr_at::<EthHdr>(data, end, VXLAN6_OVERHEAD).ok_or(Truncated)?;
    if unsafe { (*inner_eth).ether_type } != ETH_P_IPV6 {
        return Err(Reason::PassInnerNotIpv4);
    }
    if unsafe { (*inner_eth).dst_addr } != config.vtep6_mac {
        return Err(Reason::PassNotOurVtep);
    }
    let inner_ip = ptr_at::<Ipv6Hdr>(data, end, VXLAN6_OVERHEAD + EthHdr::LEN).ok_or(Truncated)?;
    let inner = unsafe { &*inner_ip };
    if inner.version() != 6 {
        return Err(Reason::PassInnerNotIpv4);
    }
    // Zero is no checksum, which flannel-v6 refuses; GRO keeps a zero in
    // the packets it coalesces, so this holds for GSO packets too.
    if udp.check == [0, 0] {
        return Err(Reason::PassUdpChecksum);
    }
    if !gso {
        let summed = ptr_at::<[[u8; 2]; SUMMED_LEN / 2]>(data, end, EthHdr::LEN + Ipv6Hdr::LEN)
            .ok_or(Truncated)?;
        if !outer_udp6_adds_up(outer, unsafe { &*summed }, inner, udp.len()) {
            return Err(Reason::PassUdpChecksum);
        }
    }
    // A peer speaks only for its own pods.
    let own_pod = PEERS6
        .get(&Key::new(128, inner.src_addr))
        .is_some_and(|peer| {
            peer.public_ip == outer.src_addr && peer.mode != PeerMode::HostGw as u8
        });
    if !own_pod {
        return Err(Reason::PassForeignInnerSource);
    }
    let endpoint = ENDPOINTS6
        .get_ptr(EndpointKey6 {
            addr: inner.dst_addr,
        })
        .ok_or(Reason::PassNoEndpoint)?;
    deliverable6(
        inner_ip,
        end,
        config,
        endpoint,
        VXLAN6_OVERHEAD,
        bulk_left_to_gro,
    )
}

/// [`deliverable`] for an IPv6 packet (its header at `ip`): a hop to
/// spare, and netfilter's verdict.
#[inline(always)]
fn deliverable6(
    ip: *mut Ipv6Hdr,
    end: usize,
    config: &NodeConfig,
    endpoint: *const Endpoint,
    strip: usize,
    bulk_left_to_gro: bool,
) -> Result<Delivery, Reason> {
    // SAFETY: the caller bounds-checked the header.
    let header = unsafe { &*ip };
    // The kernel path routes it once on this node; so will the caller.
    if header.hop_limit <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    let bulk_tcp = header.next_hdr == IPPROTO_TCP
        && usize::from(header.payload_len()) + Ipv6Hdr::LEN >= usize::from(BULK_TCP_MIN_LEN);
    let probe_due = if bulk_tcp && bulk_left_to_gro {
        false
    } else {
        netfilter_passed6(ip, end, config)?
    };
    Ok(Delivery {
        // SAFETY: a map value pointer from a successful lookup.
        endpoint: unsafe { *endpoint },
        strip,
        bulk_tcp,
        probe_due,
        ipv6: true,
    })
}

/// The checks every delivery to `endpoint` ends with, on the packet the
/// pod will get (IPv4 header at `ip`, its frame `strip` bytes behind the
/// start): a TTL to decrement, and netfilter's verdict (unless the packet
/// is bulk TCP left to GRO, which is checked after GRO).
#[inline(always)]
fn deliverable(
    ip: *mut Ipv4Hdr,
    end: usize,
    config: &NodeConfig,
    endpoint: *const Endpoint,
    strip: usize,
    bulk_left_to_gro: bool,
) -> Result<Delivery, Reason> {
    // SAFETY: the caller bounds-checked the header.
    let header = unsafe { &*ip };
    // The kernel path routes the inner packet once on this node; so will
    // the caller. An expiring TTL is the kernel's to answer with ICMP.
    if header.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    let bulk_tcp = header.proto == IPPROTO_TCP && header.tot_len() >= BULK_TCP_MIN_LEN;
    let probe_due = if bulk_tcp && bulk_left_to_gro {
        false
    } else {
        netfilter_passed(ip, end, config)?
    };
    Ok(Delivery {
        // SAFETY: a map value pointer from a successful lookup.
        endpoint: unsafe { *endpoint },
        strip,
        bulk_tcp,
        probe_due,
        ipv6: false,
    })
}
