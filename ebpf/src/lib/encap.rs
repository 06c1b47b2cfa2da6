//! VXLAN encapsulation in place, as flannel's vxlan device sends it.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_get_prandom_u32},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use weft_common::{NodeConfig, Peer};

use crate::lib::{
    headers::{ENCAP_LEN, ETH_P_IPV4, IPPROTO_UDP, IPV4_NO_OPTIONS, VXLAN_OVERHEAD, ptr_at},
    l3::ipv4_header_checksum,
};

/// What `bpf_skb_adjust_room` must know to make GSO packets segment as
/// VXLAN: an IPv4/UDP tunnel whose inner packet starts with a 14-byte
/// Ethernet header. FIXED_GSO keeps the pod's segment size: the pod MTU
/// already leaves room for the 50 bytes.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | ((EthHdr::LEN as u64) << 56);

/// The kernel's default ephemeral range, which vxlan's udp_flow_src_port
/// maps flow hashes into.
const SPORT_MIN: u32 = 32768;
const SPORT_MAX: u32 = 60999;
const OUTER_TTL: u8 = 64;

/// Wraps the frame for `peer`: opens 50 bytes behind the Ethernet header
/// and writes outer Ethernet/IPv4/UDP/VXLAN and the inner Ethernet header
/// there. `inner_tos` is the inner IPv4 TOS (its ECN bits are copied).
/// `None` if the skb could not be grown or written.
#[inline(always)]
pub fn encapsulate(
    ctx: &mut TcContext,
    config: &NodeConfig,
    peer: &Peer,
    inner_tos: u8,
) -> Option<()> {
    let inner_len = ctx.len() as usize - EthHdr::LEN;
    ctx.adjust_room(ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .ok()?;
    write_outer_headers(ctx, config, peer, inner_len, inner_tos)
}

/// Writes outer Ethernet/IPv4/UDP/VXLAN and the inner Ethernet header into
/// the 50 bytes `adjust_room` opened after the original Ethernet header.
#[inline(always)]
fn write_outer_headers(
    ctx: &TcContext,
    config: &NodeConfig,
    peer: &Peer,
    inner_len: usize,
    inner_tos: u8,
) -> Option<()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let outer_eth = ptr_at::<EthHdr>(data, end, 0)?;
    let outer_ip = ptr_at::<Ipv4Hdr>(data, end, EthHdr::LEN)?;
    let udp = ptr_at::<UdpHdr>(data, end, EthHdr::LEN + Ipv4Hdr::LEN)?;
    let vxlan = ptr_at::<VxlanHdr>(data, end, EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN)?;
    let inner_eth = ptr_at::<EthHdr>(data, end, VXLAN_OVERHEAD)?;
    // The outer IPv4 length: everything after the outer Ethernet header.
    let outer_len = (inner_len + ENCAP_LEN) as u16;
    // Spread flows over the underlay's ECMP paths as the kernel's vxlan does.
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let sport =
        (((u64::from(hash) * u64::from(SPORT_MAX - SPORT_MIN)) >> 32) as u32 + SPORT_MIN) as u16;
    // SAFETY: every pointer comes from ptr_at, inside the packet.
    unsafe {
        *inner_eth = EthHdr {
            dst_addr: peer.vtep_mac,
            src_addr: config.vtep_mac,
            ether_type: ETH_P_IPV4,
        };
        // The I flag and our VNI.
        *vxlan = VxlanHdr::new(config.vni);
        *udp = UdpHdr {
            src: sport.to_be_bytes(),
            dst: config.vxlan_port_be.to_ne_bytes(),
            len: (outer_len - Ipv4Hdr::LEN as u16).to_be_bytes(),
            // Zero: no UDP checksum over IPv4, as flannel's vxlan sends.
            check: [0, 0],
        };
        let mut header = Ipv4Hdr {
            vihl: IPV4_NO_OPTIONS,
            // The kernel's vxlan (tos 0) copies only the ECN bits.
            tos: inner_tos & 0x03,
            tot_len: outer_len.to_be_bytes(),
            id: (bpf_get_prandom_u32() as u16).to_be_bytes(),
            // flannel's vxlan device leaves df unset: the outer DF is clear.
            frags: [0, 0],
            ttl: OUTER_TTL,
            proto: IPPROTO_UDP,
            check: [0, 0],
            src_addr: config.node_ip,
            dst_addr: peer.public_ip,
        };
        header.check = ipv4_header_checksum(&header);
        *outer_ip = header;
        (*outer_eth).dst_addr = peer.nexthop_mac;
        (*outer_eth).src_addr = config.uplink_mac;
        (*outer_eth).ether_type = ETH_P_IPV4;
    }
    Some(())
}
