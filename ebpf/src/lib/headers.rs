//! Header sizes and bounds-checked header access, the only way the programs
//! touch packet bytes: every pointer is proven inside [data, data_end) for
//! the verifier. Sizes, ether types and protocol numbers come from
//! `network-types`; only what it lacks is defined here.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vxlan::VxlanHdr,
};

/// Outer Ethernet + IPv4 + UDP + VXLAN: where the inner frame starts.
pub const VXLAN_OVERHEAD: usize = EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN;
/// Outer Ethernet + IPv6 + UDP + VXLAN (`flannel-v6.<VNI>`'s frames).
pub const VXLAN6_OVERHEAD: usize = EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN;
/// What encapsulation adds to a frame, and to the IP MTU it needs: outer
/// IPv4 + UDP + VXLAN + the inner Ethernet header (the original Ethernet
/// header becomes the outer one).
pub const ENCAP_LEN: usize = Ipv4Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN + EthHdr::LEN;
/// The same over IPv6 (`flannel-v6.<VNI>`): 70 bytes.
pub const VXLAN6_ENCAP_LEN: usize = Ipv6Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN + EthHdr::LEN;
/// The TCP options Linux writes first on every segment of a connection
/// with timestamps (NOP, NOP, kind 8, length 10, TSval, TSecr): what an
/// IPv6 probe's identity reads after the TCP header (lib/flow.rs).
pub const TCP_TIMESTAMP_LEAD_LEN: usize = 12;
/// What the programs read of a plain (not encapsulated) IPv4 packet:
/// Ethernet, IPv4 without options and the transport header (TCP's is the
/// longest they read).
pub const PLAIN_HEADERS_LEN_IPV4: usize = EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN;
/// The same for IPv6, with the TCP timestamp a probe's identity reads.
pub const PLAIN_HEADERS_LEN_IPV6: usize =
    EthHdr::LEN + Ipv6Hdr::LEN + TcpHdr::LEN + TCP_TIMESTAMP_LEAD_LEN;

/// `ether_type` values as they sit in the header (network order).
pub const ETH_P_IPV4: u16 = EtherType::Ipv4 as u16;
pub const ETH_P_IPV6: u16 = EtherType::Ipv6 as u16;
pub const ETH_P_ARP: u16 = EtherType::Arp as u16;
pub const ETH_P_8021Q: u16 = EtherType::Ieee8021q as u16;
pub const ETH_P_8021AD: u16 = EtherType::Ieee8021ad as u16;

/// Protocol numbers as `Ipv4Hdr::proto` holds them, usable as patterns.
pub const IPPROTO_ICMP: u8 = IpProto::Icmp as u8;
pub const IPPROTO_TCP: u8 = IpProto::Tcp as u8;
pub const IPPROTO_UDP: u8 = IpProto::Udp as u8;
pub const IPPROTO_ICMPV6: u8 = IpProto::Ipv6Icmp as u8;

/// IPv4 version 4 with a 20-byte header: no options.
pub const IPV4_NO_OPTIONS: u8 = 0x45;
/// The more-fragments bit of `Ipv4Hdr::frag_flags`.
const IP_MF: u8 = 0x1;

/// A fragment: more fragments follow, or an offset (any but the first).
#[inline(always)]
pub fn is_fragment(ip: &Ipv4Hdr) -> bool {
    ip.frag_flags() & IP_MF != 0 || ip.frag_offset() != 0
}

/// Makes the first `len` bytes of the skb in `ctx` (or all of it, when it
/// is shorter: the helper refuses a length past the packet's end) readable
/// in its linear part, pulling them in only when they are not there yet.
/// A pull is not free even then: `bpf_skb_pull_data` unshares what it
/// covers, and a TCP segment is always a clone (TCP keeps the original for
/// retransmission) whose linear part ends with its headers, so pulling
/// past them reallocates the head and copies payload into it, for every
/// packet. Writes need no pull: the verifier unclones a cloned skb's
/// headers before a program that writes packet data runs.
#[inline(always)]
pub fn pull_headers(ctx: &mut TcContext, len: usize) {
    let len = core::cmp::min(len as u32, ctx.len());
    if ctx.data() + len as usize > ctx.data_end() {
        let _ = ctx.pull_data(len);
    }
}

/// How much of the frame in `[data, end)` a program reads to judge a plain
/// IP packet ([`PLAIN_HEADERS_LEN_IPV4`] or `_IPV6`, by its Ethernet type;
/// the IPv6 length when the Ethernet header itself is not linear).
#[inline(always)]
pub fn plain_headers_len(data: usize, end: usize) -> usize {
    match ptr_at::<EthHdr>(data, end, 0) {
        // SAFETY: inside the packet.
        Some(eth) if unsafe { (*eth).ether_type } == ETH_P_IPV4 => PLAIN_HEADERS_LEN_IPV4,
        _ => PLAIN_HEADERS_LEN_IPV6,
    }
}

/// A `T` at `offset` from `data`, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *mut T)
}
