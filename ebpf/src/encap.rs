//! TC ingress on the host side of every pod veth (traffic leaving a pod):
//! to a local pod -> straight into its veth (`bpf_redirect_peer`); to a
//! VXLAN peer -> encapsulated and redirected to the uplink; anything else ->
//! the kernel path (`TC_ACT_OK`), counted by reason.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_redirect, bpf_redirect_peer},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr, vxlan::VxlanHdr};
use weft_common::{CounterId, EndpointKey, NodeConfig, Peer, PeerMode, VtepKey};

use crate::{
    counters::count,
    csum::{decrement_ttl, ipv4_header_checksum},
    flow::{Unverified, netfilter_passed},
    maps::{ENDPOINTS, PEERS, VTEPS, node_config},
    parse::{
        ENCAP_LEN, ETH_LEN, ETH_P_IPV4_BE, IP_OFFSET_MASK, IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN,
        UDP_LEN, VXLAN_FLAG_I, VXLAN_OVERHEAD, ptr_at,
    },
};

/// What `bpf_skb_adjust_room` must know to make GSO packets segment as
/// VXLAN: an IPv4/UDP tunnel whose inner packet starts with a 14-byte
/// Ethernet header. FIXED_GSO keeps the pod's segment size: the pod MTU
/// already leaves room for the 50 bytes.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | ((ETH_LEN as u64) << 56);

/// The kernel's default ephemeral range, which vxlan's udp_flow_src_port
/// maps flow hashes into.
const SPORT_MIN: u32 = 32768;
const SPORT_MAX: u32 = 60999;
const OUTER_TTL: u8 = 64;

struct Verdict(i32, CounterId);

const fn pass(why: CounterId) -> Verdict {
    Verdict(TC_ACT_OK, why)
}

#[inline(always)]
pub fn tc_pod_egress(ctx: &mut TcContext) -> i32 {
    let len = u64::from(ctx.len());
    count(CounterId::PodEgress, len);
    let Verdict(action, why) = decide(ctx);
    count(why, len);
    action
}

#[inline(always)]
fn decide(ctx: &mut TcContext) -> Verdict {
    let Some(config) = node_config() else {
        return pass(CounterId::TcPassNoConfig);
    };
    // The headers may sit in a non-linear part of the skb; pull them in
    // (with the transport header: the flow's ports and TCP flags).
    let _ = ctx.pull_data((ETH_LEN + IPV4_LEN + TcpHdr::LEN) as u32);
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = ptr_at::<EthHdr>(data, end, 0) else {
        return pass(CounterId::TcPassTruncated);
    };
    // SAFETY: every pointer comes from ptr_at, inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IPV4_BE {
        return pass(CounterId::TcPassNotIpv4);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, ETH_LEN) else {
        return pass(CounterId::TcPassTruncated);
    };
    let ip = unsafe { &mut *ip };
    if ip.vihl >> 4 != 4 {
        return pass(CounterId::TcPassNotIpv4);
    }
    let destination = ip.dst_addr;
    // Only what the pod sends as itself: its own address from its own veth
    // and MAC. Anything else is the kernel's (rp_filter, netfilter).
    match ENDPOINTS.get_ptr(EndpointKey { addr: ip.src_addr }) {
        // SAFETY: a map value pointer from a successful lookup; ctx.skb.skb
        // is the __sk_buff the kernel handed us.
        Some(sender)
            if unsafe {
                (*sender).ifindex == (*ctx.skb.skb).ifindex && (*sender).mac == (*eth).src_addr
            } => {}
        _ => return pass(CounterId::TcPassForeignSource),
    }
    if is_vxlan_to_a_node(ctx, ip, config) {
        return Verdict(TC_ACT_SHOT, CounterId::TcDropVxlanToNode);
    }

    if let Some(endpoint) = ENDPOINTS.get_ptr(EndpointKey { addr: destination }) {
        let endpoint = unsafe { *endpoint };
        // Same node: the bridge's netfilter (br_netfilter) or the forward
        // path decides, as for any other flow.
        if let Err(why) = netfilter_passed(ip, end, config) {
            return pass(unverified(why));
        }
        // Sent to the gateway, the kernel would route it (TTL - 1, from the
        // gateway's MAC); sent to the pod's own MAC, the bridge would switch
        // it untouched. Do the same.
        if unsafe { (*eth).dst_addr } == config.gateway_mac {
            if ip.ttl <= 1 {
                return pass(CounterId::TcPassTtlExpired);
            }
            decrement_ttl(ip);
            unsafe {
                (*eth).dst_addr = endpoint.mac;
                (*eth).src_addr = config.gateway_mac;
            }
        }
        // Into the peer pod's namespace directly: no bridge, no backlog.
        let action = unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } as i32;
        return Verdict(action, CounterId::TcLocalRedirect);
    }

    let Some(peer) = PEERS.get(&Key::new(32, destination)).copied() else {
        return pass(CounterId::TcPassNoRoute);
    };
    if peer.nexthop_mac == [0; 6] {
        // The agent has not resolved the underlay neighbour yet; the kernel
        // path resolves it meanwhile.
        return pass(CounterId::TcPassNoNeighbour);
    }
    if ip.ttl <= 1 {
        return pass(CounterId::TcPassTtlExpired);
    }
    if let Err(why) = netfilter_passed(ip, end, config) {
        return pass(unverified(why));
    }
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let protocol = ip.proto;
    if peer.mode == PeerMode::HostGw as u8 {
        // host-gw / DirectRouting: routed as is, to the peer node's MAC.
        if !fits(ctx, config, 0, header_len, protocol) {
            return pass(CounterId::TcPassTooBig);
        }
        decrement_ttl(ip);
        unsafe {
            (*eth).dst_addr = peer.nexthop_mac;
            (*eth).src_addr = config.uplink_mac;
        }
        let action = unsafe { bpf_redirect(config.uplink_ifindex, 0) } as i32;
        return Verdict(action, CounterId::TcHostGw);
    }
    if !fits(ctx, config, ENCAP_LEN, header_len, protocol) {
        // The kernel path fragments it or answers ICMP "fragmentation needed".
        return pass(CounterId::TcPassTooBig);
    }
    let inner_tos = ip.tos;
    decrement_ttl(ip);
    let inner_len = ctx.len() as usize - ETH_LEN;
    if ctx
        .adjust_room(ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .is_err()
    {
        return pass(CounterId::TcPassEncapFailed);
    }
    if write_outer_headers(ctx, config, &peer, inner_len, inner_tos).is_none() {
        return pass(CounterId::TcPassEncapFailed);
    }
    let action = unsafe { bpf_redirect(config.uplink_ifindex, 0) } as i32;
    Verdict(action, CounterId::TcEncap)
}

/// A pod's UDP to a node's VXLAN port. Masqueraded (`--ip-masq`), it
/// would leave with this node's address, a real VTEP, and inject whatever
/// it carries into the overlay as this node; to this node it would be
/// decapsulated here. Pods have no business speaking VXLAN to nodes.
#[inline(always)]
fn is_vxlan_to_a_node(ctx: &TcContext, ip: &Ipv4Hdr, config: &NodeConfig) -> bool {
    if ip.proto != IPPROTO_UDP || config.vxlan_port_be == 0 {
        return false;
    }
    // A later fragment carries no port; without its first it is nothing.
    if u16::from_be_bytes(ip.frags) & IP_OFFSET_MASK != 0 {
        return false;
    }
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let Ok(port) = ctx.load::<[u8; 2]>(ETH_LEN + header_len + 2) else {
        return false;
    };
    port == config.vxlan_port_be.to_ne_bytes()
        && (ip.dst_addr == config.node_ip || VTEPS.get_ptr(VtepKey { addr: ip.dst_addr }).is_some())
}

/// The send-side counter for a packet netfilter has not passed yet.
#[inline(always)]
fn unverified(why: Unverified) -> CounterId {
    match why {
        Unverified::NoVerdict => CounterId::TcPassNoVerdict,
        Unverified::RulesetChanged => CounterId::TcPassRulesetChanged,
        Unverified::Recheck => CounterId::TcPassRecheck,
        Unverified::TcpControl => CounterId::TcPassTcpControl,
        Unverified::NotAFlow => CounterId::TcPassNotAFlow,
    }
}

/// Whether the packet (or each GSO segment) fits the uplink MTU with
/// `overhead` more bytes in front of it.
#[inline(always)]
fn fits(
    ctx: &TcContext,
    config: &NodeConfig,
    overhead: usize,
    ip_header_len: usize,
    protocol: u8,
) -> bool {
    let room = config.uplink_mtu as usize - overhead;
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size } as usize;
    if gso_size == 0 {
        return ctx.len() as usize - ETH_LEN <= room;
    }
    // Each segment carries gso_size bytes of payload behind the IPv4 and
    // transport headers.
    let transport_len = match protocol {
        IPPROTO_TCP => {
            let Ok(offset_byte) = ctx.load::<u8>(ETH_LEN + ip_header_len + 12) else {
                return false;
            };
            usize::from(offset_byte >> 4) * 4
        }
        IPPROTO_UDP => UDP_LEN,
        _ => return false,
    };
    gso_size + ip_header_len + transport_len <= room
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
    let outer_ip = ptr_at::<Ipv4Hdr>(data, end, ETH_LEN)?;
    let udp = ptr_at::<UdpHdr>(data, end, ETH_LEN + IPV4_LEN)?;
    let vxlan = ptr_at::<VxlanHdr>(data, end, ETH_LEN + IPV4_LEN + UDP_LEN)?;
    let inner_eth = ptr_at::<EthHdr>(data, end, VXLAN_OVERHEAD)?;
    // The outer IPv4 length: everything after the outer Ethernet header.
    let outer_len = (inner_len + ENCAP_LEN) as u16;
    // Spread flows over the underlay's ECMP paths as the kernel's vxlan does.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let sport =
        (((u64::from(hash) * u64::from(SPORT_MAX - SPORT_MIN)) >> 32) as u32 + SPORT_MIN) as u16;
    unsafe {
        *inner_eth = EthHdr {
            dst_addr: peer.vtep_mac,
            src_addr: config.vtep_mac,
            ether_type: ETH_P_IPV4_BE,
        };
        *vxlan = VxlanHdr::new(config.vni);
        (*vxlan).flags = VXLAN_FLAG_I;
        *udp = UdpHdr {
            src: sport.to_be_bytes(),
            dst: config.vxlan_port_be.to_ne_bytes(),
            len: (outer_len - IPV4_LEN as u16).to_be_bytes(),
            // Zero: no UDP checksum over IPv4, as flannel's vxlan sends.
            check: [0, 0],
        };
        let mut header = Ipv4Hdr {
            vihl: 0x45,
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
        (*outer_eth).ether_type = ETH_P_IPV4_BE;
    }
    Some(())
}
