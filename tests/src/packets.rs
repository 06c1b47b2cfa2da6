//! Building test frames byte by byte, the way they appear on the wire, and
//! checking IPv4 header checksums independently of the code under test.

pub const ETH_P_IPV4: u16 = 0x0800;

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
