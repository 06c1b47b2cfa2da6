//! The L3 rewrite (one routing hop) and IPv4 header checksums.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// Routes an IPv4 packet one hop, as the kernel's forward path would: the
/// TTL one lower and the Ethernet header from `src_mac` to `dst_mac`. The
/// caller has checked the TTL is above 1.
#[inline(always)]
pub fn ipv4_l3(eth: &mut EthHdr, ip: &mut Ipv4Hdr, dst_mac: [u8; 6], src_mac: [u8; 6]) {
    decrement_ttl(ip);
    eth.dst_addr = dst_mac;
    eth.src_addr = src_mac;
}

/// Routes an IPv6 packet one hop, as the kernel's ip6_forward would: the
/// hop limit one lower (IPv6 has no header checksum) and the Ethernet
/// header from `src_mac` to `dst_mac`. The caller has checked the hop
/// limit is above 1.
#[inline(always)]
pub fn ipv6_l3(eth: &mut EthHdr, ip: &mut Ipv6Hdr, dst_mac: [u8; 6], src_mac: [u8; 6]) {
    ip.hop_limit -= 1;
    eth.dst_addr = dst_mac;
    eth.src_addr = src_mac;
}

/// Decrements the TTL and patches the header checksum incrementally (RFC
/// 1624), as the kernel's ip_decrease_ttl does: the TTL/protocol word drops
/// by 0x0100, so the one's-complement checksum rises by 0x0100.
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) {
    let mut check = u32::from(u16::from_be_bytes(ip.check)) + 0x0100;
    check += u32::from(check >= 0xffff);
    ip.check = (check as u16).to_be_bytes();
    ip.ttl -= 1;
}

/// The checksum of a 20-byte IPv4 header (its `check` field must be zero).
#[inline(always)]
pub fn ipv4_header_checksum(ip: &Ipv4Hdr) -> [u8; 2] {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data; read it as 10 words.
    let words: &[[u8; 2]; 10] = unsafe { &*(ip as *const Ipv4Hdr).cast() };
    let mut sum = 0u32;
    for word in words {
        sum += u32::from(u16::from_be_bytes(*word));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
