//! The outer UDP checksum of a VXLAN frame over IPv6, checked from its
//! headers alone.
//!
//! IPv6 makes the UDP checksum mandatory, and `flannel-v6.<VNI>` (like
//! any Linux VXLAN device without `udp6zerocsumrx`) drops a frame whose
//! checksum is zero or wrong: a decision the fast path must not skip.
//! Summing the whole frame per packet would cost more than the rest of
//! the decapsulation. It need not: the inner packet is TCP, UDP or
//! ICMPv6, whose own checksum covers its segment and a pseudo-header, so
//! wherever that inner checksum holds, the inner segment sums (in one's
//! complement) to the complement of the inner pseudo-header sum. The
//! sender's stack relies on the same identity when it fills the outer
//! checksum before the inner one is computed (local checksum offload,
//! the kernel's `lco_csum`). The outer checksum then adds up iff the
//! outer pseudo-header, the 70 bytes from the UDP header to the end of
//! the inner IPv6 header, and that complement sum to all ones. The inner
//! checksum itself is checked where it always is, by the receiving pod's
//! stack; a frame with a bad inner checksum is dropped there, as the
//! kernel path would drop it (at the outer checksum or in the pod).

use network_types::ip::Ipv6Hdr;

use crate::lib::headers::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Bytes from the outer UDP header to the end of the inner IPv6 header:
/// UDP 8, VXLAN 8, inner Ethernet 14, inner IPv6 40.
pub const SUMMED_LEN: usize = 70;

/// One's-complement sum (not folded) of `N` big-endian 16-bit words.
#[inline(always)]
fn sum_words<const N: usize>(words: &[[u8; 2]; N]) -> u32 {
    let first = words.as_ptr().cast::<u16>();
    let mut sum = 0u32;
    for index in 0..N {
        // SAFETY: `index < N`, inside `words`; read unaligned (packet data).
        sum += u32::from(u16::from_be(unsafe { first.add(index).read_unaligned() }));
    }
    sum
}

/// `sum` folded to 16 bits, carries added back.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The pseudo-header sum of an IPv6 header's addresses, `length` and
/// `next_header`.
#[inline(always)]
fn pseudo_header(ip: &Ipv6Hdr, length: u16, next_header: u8) -> u32 {
    // SAFETY: each address is 16 bytes of plain data, read as 8 words.
    let (source, destination): (&[[u8; 2]; 8], &[[u8; 2]; 8]) =
        unsafe { (&*ip.src_addr.as_ptr().cast(), &*ip.dst_addr.as_ptr().cast()) };
    sum_words(source) + sum_words(destination) + u32::from(length) + u32::from(next_header)
}

/// Whether the outer UDP checksum of a VXLAN-over-IPv6 frame adds up:
/// `outer` its IPv6 header, `summed` the [`SUMMED_LEN`] bytes from its UDP
/// header (checksum field as sent) on, `inner` the inner IPv6 header
/// (inside `summed`), `udp_len` the UDP length. False for an inner packet
/// without a checksum of its own to rely on. A zero checksum (none) is the
/// caller's to refuse first: it is refused in GSO packets too, which this
/// cannot check.
#[inline(always)]
pub fn outer_udp6_adds_up(
    outer: &Ipv6Hdr,
    summed: &[[u8; 2]; SUMMED_LEN / 2],
    inner: &Ipv6Hdr,
    udp_len: u16,
) -> bool {
    if !matches!(inner.next_hdr, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
        return false;
    }
    let inner_segment = !fold(pseudo_header(inner, inner.payload_len(), inner.next_hdr));
    let total =
        pseudo_header(outer, udp_len, IPPROTO_UDP) + sum_words(summed) + u32::from(inner_segment);
    fold(total) == 0xffff
}
