//! Building test frames byte by byte, the way they appear on the wire, and
//! checking IPv4 header checksums independently of the code under test.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Options for [`ipv4`] beyond addresses and protocol.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Options {
    pub ttl: u8,
    pub tos: u8,
    /// The 16-bit flags + fragment offset field.
    pub frag: u16,
    pub id: u16,
    /// Extra option bytes (a multiple of 4).
    pub options: &'static [u8],
}

impl Default for Ipv4Options {
    fn default() -> Self {
        Self {
            ttl: 64,
            tos: 0,
            frag: 0x4000,
            id: 0x1234,
            options: &[],
        }
    }
}

/// An IPv4 packet with a correct header checksum.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8], opts: Ipv4Options) -> Vec<u8> {
    let header_len = 20 + opts.options.len();
    let total = header_len + payload.len();
    let mut packet = Vec::with_capacity(total);
    packet.push(0x40 | (header_len / 4) as u8);
    packet.push(opts.tos);
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&opts.id.to_be_bytes());
    packet.extend_from_slice(&opts.frag.to_be_bytes());
    packet.push(opts.ttl);
    packet.push(proto);
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    packet.extend_from_slice(opts.options);
    let check = checksum(&packet[..header_len]);
    packet[10..12].copy_from_slice(&check.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&sport.to_be_bytes());
    datagram.extend_from_slice(&dport.to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// An IPv6 packet (hop limit 64, no extension headers) carrying a UDP
/// datagram from `sport` to `dport` with a correct checksum (which IPv6
/// requires: a receiver drops a datagram with checksum 0).
pub fn ipv6_udp(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut datagram = udp(sport, dport, payload);
    let check = match pseudo_header_checksum(src, dst, 17, &datagram) {
        0 => 0xffff,
        check => check,
    };
    datagram[6..8].copy_from_slice(&check.to_be_bytes());
    ipv6(src, dst, 17, &datagram, 64)
}

/// An IPv6 packet with hop limit `hop_limit` whose payload (behind the
/// fixed header: a transport header, or extension headers) is of type
/// `next_header`. The payload's own checksums are the caller's.
pub fn ipv6(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next_header: u8,
    payload: &[u8],
    hop_limit: u8,
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(40 + payload.len());
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    packet.push(next_header);
    packet.push(hop_limit);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(payload);
    packet
}

/// An ICMPv6 echo request (identifier 0x1234, sequence 1) with `len`
/// bytes of payload; its checksum (over the IPv6 pseudo-header) is left
/// zero.
pub fn icmpv6_echo(len: usize) -> Vec<u8> {
    let mut message = vec![128, 0, 0, 0, 0x12, 0x34, 0, 1];
    message.extend((0..len).map(|i| i as u8));
    message
}

/// An ICMPv6 neighbour solicitation for `target` (no options); its
/// checksum is left zero.
pub fn icmpv6_neighbour_solicitation(target: std::net::Ipv6Addr) -> Vec<u8> {
    let mut message = vec![135, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&target.octets());
    message
}

/// The checksum of an upper-layer message over IPv6 (UDP, ICMPv6): the
/// IPv6 pseudo-header (RFC 8200 8.1) and `message`, whose checksum field
/// must be zero.
pub fn pseudo_header_checksum(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next_header: u8,
    message: &[u8],
) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    pseudo.extend_from_slice(message);
    checksum(&pseudo)
}

pub const IPPROTO_ICMPV6: u8 = 58;
/// Neighbour Advertisement flags (RFC 4861 4.4), in the first flags byte.
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

/// The Ethernet destination of IPv6 multicast `group` (RFC 2464 7).
pub fn ipv6_multicast_mac(group: std::net::Ipv6Addr) -> [u8; 6] {
    let octets = group.octets();
    [0x33, 0x33, octets[12], octets[13], octets[14], octets[15]]
}

/// An ICMPv6 NDP packet (hop limit 255, as RFC 4861 requires, or the
/// receiver drops it) from `src` to `dst`: `icmp_type`, four bytes of
/// flags/reserved, `target`, and one link-layer address option
/// (`option`: 1 source, 2 target) naming `mac`, checksummed.
fn ndp(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    icmp_type: u8,
    flags: u8,
    target: std::net::Ipv6Addr,
    option: u8,
    mac: [u8; 6],
) -> Vec<u8> {
    let mut message = vec![icmp_type, 0, 0, 0, flags, 0, 0, 0];
    message.extend_from_slice(&target.octets());
    message.extend_from_slice(&[option, 1]);
    message.extend_from_slice(&mac);
    let check = pseudo_header_checksum(src, dst, IPPROTO_ICMPV6, &message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    ipv6(src, dst, IPPROTO_ICMPV6, &message, 255)
}

/// A Neighbour Advertisement (RFC 4861 4.4) as an IPv6 packet: "`target`
/// is at `mac`", with `flags` ([`NA_OVERRIDE`] and the rest) and a target
/// link-layer address option (what a pod forging a neighbour entry sends).
pub fn neighbour_advertisement(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    flags: u8,
    target: std::net::Ipv6Addr,
    mac: [u8; 6],
) -> Vec<u8> {
    ndp(src, dst, 136, flags, target, 2, mac)
}

/// A Neighbour Solicitation (RFC 4861 4.3) as an IPv6 packet: "who has
/// `target`? I am `src` at `mac`" (a source link-layer address option;
/// the receiver takes `src` -> `mac` into its neighbour table when
/// `target` is its own).
pub fn neighbour_solicitation(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
    mac: [u8; 6],
) -> Vec<u8> {
    ndp(src, dst, 135, 0, target, 1, mac)
}

/// A VXLAN header (I flag, `vni`) followed by the inner frame.
pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x08, 0, 0, 0];
    packet.extend_from_slice(&(vni << 8).to_be_bytes());
    packet.extend_from_slice(inner);
    packet
}

/// An ICMP echo request with `len` bytes of payload.
pub fn icmp_echo(len: usize) -> Vec<u8> {
    let mut message = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    message.extend((0..len).map(|i| i as u8));
    let check = checksum(&message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    message
}

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the IPv4 header starting at `at` in `frame` has a valid checksum
/// (recomputed here, not trusted from the program).
pub fn ipv4_checksum_ok(frame: &[u8], at: usize) -> bool {
    let header_len = usize::from(frame[at] & 0x0f) * 4;
    checksum(&frame[at..at + header_len]) == 0
}

pub const ETH_P_ARP: u16 = 0x0806;
/// LLDP: a frame no program parses past its Ethernet type.
pub const ETH_P_LLDP: u16 = 0x88cc;

/// An ARP request as Ethernet payload: "who has `target`? tell `sender_ip`
/// at `sender_mac`" (what a pod forging a neighbour entry sends).
pub fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender_ip);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target);
    arp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_advertisement_checks_out() {
        let (src, dst, target): (std::net::Ipv6Addr, std::net::Ipv6Addr, std::net::Ipv6Addr) = (
            "fd00:10:244:1::3".parse().unwrap(),
            "ff02::1".parse().unwrap(),
            "fd00:10:244:1::2".parse().unwrap(),
        );
        let packet = neighbour_advertisement(src, dst, NA_OVERRIDE, target, [2, 0, 0, 0, 0, 3]);
        assert_eq!(packet.len(), 40 + 32);
        assert_eq!((packet[6], packet[7]), (IPPROTO_ICMPV6, 255));
        assert_eq!(u16::from_be_bytes([packet[4], packet[5]]), 32);
        let message = &packet[40..];
        assert_eq!((message[0], message[1], message[4]), (136, 0, 0x20));
        assert_eq!(&message[8..24], &target.octets());
        assert_eq!(&message[24..32], &[2, 1, 2, 0, 0, 0, 0, 3]);
        // Summing the message with its checksum in place gives 0.
        assert_eq!(pseudo_header_checksum(src, dst, IPPROTO_ICMPV6, message), 0);
        assert_eq!(ipv6_multicast_mac(dst), [0x33, 0x33, 0, 0, 0, 1]);
    }

    #[test]
    fn a_neighbour_solicitation_carries_a_source_link_layer_option() {
        let (src, dst): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
            "fd00:10:244:1::2".parse().unwrap(),
            "fd00:10:244:1::1".parse().unwrap(),
        );
        let packet = neighbour_solicitation(src, dst, dst, [2, 0, 0, 0, 0, 3]);
        let message = &packet[40..];
        assert_eq!(message[0], 135);
        assert_eq!(&message[24..32], &[1, 1, 2, 0, 0, 0, 0, 3]);
        assert_eq!(pseudo_header_checksum(src, dst, IPPROTO_ICMPV6, message), 0);
    }
}
