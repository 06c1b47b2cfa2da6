//! What arrived on the uplink, and whether it may go straight into a local
//! pod. Shared by the XDP program (every frame, before GRO) and the TC
//! ingress program (what XDP left for GRO), so both apply the same checks.

use aya_ebpf::maps::lpm_trie::Key;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr, vxlan::VxlanHdr};
use weft_common::{
    CONFIG_STRICT_VTEPS, CounterId, Endpoint, EndpointKey, NodeConfig, PeerMode, VtepKey,
};

use crate::{
    flow::{Unverified, netfilter_passed},
    maps::{ENDPOINTS, PEERS, VTEPS},
    parse::{
        ETH_LEN, ETH_P_8021AD_BE, ETH_P_8021Q_BE, ETH_P_IPV4_BE, IP_MF_OFFSET_MASK, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_LEN, UDP_LEN, VXLAN_FLAG_I, VXLAN_OVERHEAD, ptr_at,
    },
};

/// Headers the classifier reads: outer Ethernet/IPv4/UDP/VXLAN, inner
/// Ethernet/IPv4 and the inner transport header (ports, TCP flags). TC
/// pulls this much into the skb's linear part.
pub const HEADERS_LEN: usize = VXLAN_OVERHEAD + ETH_LEN + IPV4_LEN + TcpHdr::LEN;

/// Inner IPv4 packets at least this long and carrying TCP are bulk
/// transfer: senders fill the MTU (1,400+ bytes on a 1,450 pod MTU). They
/// gain more from GRO (one trip through the stack per ~64 KB) than from
/// skipping it; ACKs and request/response messages are smaller and keep the
/// XDP path, where latency is lowest.
const BULK_TCP_MIN_LEN: u16 = 1024;

/// A packet this node may hand straight to one of its pods.
pub struct Delivery {
    pub endpoint: Endpoint,
    /// Bytes in front of the pod's frame: the VXLAN headers, or 0 (host-gw).
    pub strip: usize,
    /// The Ethernet header the pod will see (inner for VXLAN).
    pub eth: *mut EthHdr,
    /// The IPv4 header the pod will see.
    pub ip: *mut Ipv4Hdr,
}

impl Delivery {
    /// Whether it came through the VXLAN tunnel (else host-gw).
    #[inline(always)]
    pub fn is_vxlan(&self) -> bool {
        self.strip != 0
    }

    /// Full-size TCP segments: what GRO would coalesce.
    #[inline(always)]
    pub fn is_bulk_tcp(&self) -> bool {
        // SAFETY: `ip` was bounds-checked by `classify`.
        let ip = unsafe { &*self.ip };
        ip.proto == IPPROTO_TCP && u16::from_be_bytes(ip.tot_len) >= BULK_TCP_MIN_LEN
    }
}

/// Why a frame is not delivered: left to the kernel path, or dropped.
pub enum Refusal {
    Pass(CounterId),
    Drop(CounterId),
}

use Refusal::Pass;

/// Checks a frame of `frame_len` bytes that starts at `data` (Ethernet)
/// against this node's config and maps. Reads only; the caller rewrites
/// what it delivers.
#[inline(always)]
pub fn classify(
    data: usize,
    end: usize,
    frame_len: usize,
    config: &NodeConfig,
) -> Result<Delivery, Refusal> {
    let eth = ptr_at::<EthHdr>(data, end, 0).ok_or(Pass(CounterId::XdpPassTruncated))?;
    // SAFETY: every pointer below comes from ptr_at, inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021Q_BE || ether_type == ETH_P_8021AD_BE {
        return Err(Pass(CounterId::XdpPassVlan));
    }
    if ether_type != ETH_P_IPV4_BE {
        return Err(Pass(CounterId::XdpPassNotIpv4));
    }
    let ip = ptr_at::<Ipv4Hdr>(data, end, ETH_LEN).ok_or(Pass(CounterId::XdpPassTruncated))?;
    let outer = unsafe { &*ip };
    if outer.vihl >> 4 != 4 {
        return Err(Pass(CounterId::XdpPassNotIpv4));
    }
    if outer.vihl != 0x45 {
        return Err(Pass(CounterId::XdpPassIpOptions));
    }
    if u16::from_be_bytes(outer.frags) & IP_MF_OFFSET_MASK != 0 {
        return Err(Pass(CounterId::XdpPassFragment));
    }
    if outer.dst_addr != config.node_ip {
        // Not for this node: maybe a plain (host-gw) packet for one of its pods.
        return classify_plain(eth, ip, end, config);
    }
    if outer.proto != IPPROTO_UDP {
        return Err(Pass(CounterId::XdpPassNotVxlan));
    }
    let udp =
        ptr_at::<UdpHdr>(data, end, ETH_LEN + IPV4_LEN).ok_or(Pass(CounterId::XdpPassTruncated))?;
    if unsafe { (*udp).dst } != config.vxlan_port_be.to_ne_bytes() {
        return Err(Pass(CounterId::XdpPassNotVxlan));
    }
    // Lengths that lie about the frame are the kernel's to judge (a VXLAN
    // frame is never short enough for Ethernet padding).
    let ip_len = usize::from(u16::from_be_bytes(outer.tot_len));
    if ip_len + ETH_LEN != frame_len
        || usize::from(u16::from_be_bytes(unsafe { (*udp).len })) + IPV4_LEN != ip_len
    {
        return Err(Pass(CounterId::XdpPassBadLength));
    }
    let vxlan = ptr_at::<VxlanHdr>(data, end, ETH_LEN + IPV4_LEN + UDP_LEN)
        .ok_or(Pass(CounterId::XdpPassTruncated))?;
    let vxlan = unsafe { &*vxlan };
    let [a, b, c] = vxlan.vni;
    if vxlan.flags & VXLAN_FLAG_I == 0 || u32::from_be_bytes([0, a, b, c]) != config.vni {
        return Err(Pass(CounterId::XdpPassWrongVni));
    }
    if VTEPS
        .get_ptr(VtepKey {
            addr: outer.src_addr,
        })
        .is_none()
    {
        return Err(if config.flags & CONFIG_STRICT_VTEPS != 0 {
            Refusal::Drop(CounterId::XdpDropUnknownVtep)
        } else {
            Pass(CounterId::XdpPassUnknownVtep)
        });
    }
    let inner_eth =
        ptr_at::<EthHdr>(data, end, VXLAN_OVERHEAD).ok_or(Pass(CounterId::XdpPassTruncated))?;
    if unsafe { (*inner_eth).ether_type } != ETH_P_IPV4_BE {
        return Err(Pass(CounterId::XdpPassInnerNotIpv4));
    }
    // flannel.<VNI> takes only frames for its own MAC; so does the fast path.
    if unsafe { (*inner_eth).dst_addr } != config.vtep_mac {
        return Err(Pass(CounterId::XdpPassNotOurVtep));
    }
    let inner_ip = ptr_at::<Ipv4Hdr>(data, end, VXLAN_OVERHEAD + ETH_LEN)
        .ok_or(Pass(CounterId::XdpPassTruncated))?;
    let inner = unsafe { &*inner_ip };
    // A peer speaks only for its own pods: the inner source must lie in the
    // subnet of the peer whose PublicIP sent the frame.
    match PEERS.get(&Key::new(32, inner.src_addr)) {
        Some(peer) if peer.public_ip == outer.src_addr => {}
        _ => return Err(Pass(CounterId::XdpPassForeignInnerSource)),
    }
    let endpoint = ENDPOINTS
        .get_ptr(EndpointKey {
            addr: inner.dst_addr,
        })
        .ok_or(Pass(CounterId::XdpPassNoEndpoint))?;
    // The kernel path routes the inner packet once on this node; so will
    // the caller. An expiring TTL is the kernel's to answer with ICMP.
    if inner.ttl <= 1 {
        return Err(Pass(CounterId::XdpPassTtlExpired));
    }
    netfilter_passed(inner_ip, end, config).map_err(unverified)?;
    Ok(Delivery {
        // SAFETY: a map value pointer from a successful lookup.
        endpoint: unsafe { *endpoint },
        strip: VXLAN_OVERHEAD,
        eth: inner_eth,
        ip: inner_ip,
    })
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
) -> Result<Delivery, Refusal> {
    // SAFETY: both pointers were bounds-checked by the caller.
    let header = unsafe { &*ip };
    let endpoint = ENDPOINTS
        .get_ptr(EndpointKey {
            addr: header.dst_addr,
        })
        .ok_or(Pass(CounterId::XdpPassNotForNode))?;
    let peer = PEERS
        .get(&Key::new(32, header.src_addr))
        .ok_or(Pass(CounterId::XdpPassUnknownSource))?;
    if peer.mode != PeerMode::HostGw as u8 || peer.nexthop_mac != unsafe { (*eth).src_addr } {
        return Err(Pass(CounterId::XdpPassUnknownSource));
    }
    if header.ttl <= 1 {
        return Err(Pass(CounterId::XdpPassTtlExpired));
    }
    netfilter_passed(ip, end, config).map_err(unverified)?;
    Ok(Delivery {
        // SAFETY: a map value pointer from a successful lookup.
        endpoint: unsafe { *endpoint },
        strip: 0,
        eth,
        ip,
    })
}

/// The receive-side counter for a packet netfilter has not passed yet.
#[inline(always)]
fn unverified(why: Unverified) -> Refusal {
    Pass(match why {
        Unverified::NoVerdict => CounterId::XdpPassNoVerdict,
        Unverified::RulesetChanged => CounterId::XdpPassRulesetChanged,
        Unverified::Recheck => CounterId::XdpPassRecheck,
        Unverified::TcpControl => CounterId::XdpPassTcpControl,
        Unverified::NotAFlow => CounterId::XdpPassNotAFlow,
    })
}
