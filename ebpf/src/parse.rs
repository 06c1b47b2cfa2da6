//! Bounds-checked header access, the only way the programs touch packet
//! bytes: every pointer is proven inside [data, data_end) for the verifier.

use core::mem::size_of;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;
/// Outer Ethernet + IPv4 + UDP + VXLAN: where the inner frame starts.
pub const VXLAN_OVERHEAD: usize = ETH_LEN + IPV4_LEN + UDP_LEN + VXLAN_LEN;
/// What encapsulation adds to a frame, and to the IP MTU it needs: outer
/// IPv4 + UDP + VXLAN + the inner Ethernet header (the original Ethernet
/// header becomes the outer one).
pub const ENCAP_LEN: usize = IPV4_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN;

pub const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
pub const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// More-fragments flag and fragment offset bits of `frag_off` (big endian bytes).
pub const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// Fragment offset bits of `frag_off`: non-zero on every fragment but the
/// first.
pub const IP_OFFSET_MASK: u16 = 0x1fff;
/// VXLAN flags: the I bit (VNI valid).
pub const VXLAN_FLAG_I: u8 = 0x08;

/// A `T` at `offset` from `data`, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *mut T)
}
