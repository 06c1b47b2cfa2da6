//! Header sizes and bounds-checked header access, the only way the programs
//! touch packet bytes: every pointer is proven inside [data, data_end) for
//! the verifier. Sizes, ether types and protocol numbers come from
//! `network-types`; only what it lacks is defined here.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
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

/// `ether_type` values as they sit in the header (network order).
pub const ETH_P_IPV4: u16 = EtherType::Ipv4 as u16;
pub const ETH_P_IPV6: u16 = EtherType::Ipv6 as u16;
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

/// Pulls the first `len` bytes of the skb in `ctx` into its linear part,
/// or all of it when it is shorter: the helper refuses a length past the
/// packet's end, and a short packet's headers must still be readable.
#[inline(always)]
pub fn pull_headers(ctx: &mut TcContext, len: usize) {
    let len = core::cmp::min(len as u32, ctx.len());
    let _ = ctx.pull_data(len);
}

/// A `T` at `offset` from `data`, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *mut T)
}
