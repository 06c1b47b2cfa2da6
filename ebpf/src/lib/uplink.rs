//! What arrived on the uplink, and whether it may go straight into a local
//! pod. Shared by the XDP program (every frame, before GRO) and the TC
//! ingress program (what XDP left for GRO), so both apply the same checks.
//! Reads only, and returns offsets and facts, never pointers: the caller
//! may move the packet (`bpf_xdp_adjust_head`, `bpf_skb_adjust_room`)
//! before it rewrites what it delivers.

use aya_ebpf::maps::lpm_trie::Key;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr, vxlan::VxlanHdr};
use weft_common::{
    CONFIG_STRICT_VTEPS, Endpoint, EndpointKey, NodeConfig, PeerMode, Reason, VtepKey,
};

use crate::lib::{
    flow::netfilter_passed,
    headers::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, IPPROTO_TCP, IPPROTO_UDP, IPV4_NO_OPTIONS,
        VXLAN_OVERHEAD, is_fragment, ptr_at,
    },
    maps::{ENDPOINTS, PEERS, VTEPS},
};

/// Headers the classifier reads: outer Ethernet/IPv4/UDP/VXLAN, inner
/// Ethernet/IPv4 and the inner transport header (ports, TCP flags). TC
/// pulls this much into the skb's linear part.
pub const HEADERS_LEN: usize = VXLAN_OVERHEAD + EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN;

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
}

impl Delivery {
    /// Whether it came through the VXLAN tunnel (else host-gw).
    #[inline(always)]
    pub fn is_vxlan(&self) -> bool {
        self.strip != 0
    }
}

use Reason::PassTruncated as Truncated;

/// Checks a frame of `frame_len` bytes that starts at `data` (Ethernet)
/// against this node's config and maps: a delivery, or the reason it is
/// left to the kernel (`Pass*`) or dropped (`Drop*`). With
/// `bulk_left_to_gro` (XDP with `--bulk-tcp-via-gro`), a full-size TCP
/// segment skips netfilter's verdict: it goes to the kernel either way, and
/// `tc_uplink` checks the verdict once per coalesced packet.
#[inline(always)]
pub fn classify(
    data: usize,
    end: usize,
    frame_len: usize,
    config: &NodeConfig,
    bulk_left_to_gro: bool,
) -> Result<Delivery, Reason> {
    let eth = ptr_at::<EthHdr>(data, end, 0).ok_or(Truncated)?;
    // SAFETY: every pointer below comes from ptr_at, inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Reason::PassVlan);
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
    })
}
