//! XDP on the uplink: VXLAN for a local pod is decapsulated and redirected
//! straight into the pod's veth; everything else goes to the kernel path
//! (`XDP_PASS`), counted by reason.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, maps::lpm_trie::Key, programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use weft_common::{CONFIG_STRICT_VTEPS, CounterId, EndpointKey, NodeConfig, PeerMode, VtepKey};

use crate::{
    counters::count,
    csum::decrement_ttl,
    maps::{ENDPOINTS, PEERS, VTEPS, node_config},
    parse::{
        ETH_LEN, ETH_P_8021AD_BE, ETH_P_8021Q_BE, ETH_P_IPV4_BE, IP_MF_OFFSET_MASK, IPPROTO_UDP,
        IPV4_LEN, UDP_LEN, VXLAN_FLAG_I, VXLAN_OVERHEAD, ptr_at,
    },
};

/// The verdict and the counter that explains it.
struct Verdict(u32, CounterId);

const fn pass(why: CounterId) -> Verdict {
    Verdict(xdp_action::XDP_PASS, why)
}

#[inline(always)]
pub fn xdp_uplink(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(CounterId::UplinkRx, len);
    let Verdict(action, why) = decide(ctx);
    count(why, len);
    action
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> Verdict {
    let Some(config) = node_config() else {
        return pass(CounterId::XdpPassNoConfig);
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = ptr_at::<EthHdr>(data, end, 0) else {
        return pass(CounterId::XdpPassTruncated);
    };
    // SAFETY: every pointer below comes from ptr_at, inside the packet, and
    // no two references to the same header are alive at once.
    let eth = unsafe { &mut *eth };
    let ether_type = eth.ether_type;
    if ether_type == ETH_P_8021Q_BE || ether_type == ETH_P_8021AD_BE {
        return pass(CounterId::XdpPassVlan);
    }
    if ether_type != ETH_P_IPV4_BE {
        return pass(CounterId::XdpPassNotIpv4);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, ETH_LEN) else {
        return pass(CounterId::XdpPassTruncated);
    };
    let ip = unsafe { &mut *ip };
    if ip.vihl >> 4 != 4 {
        return pass(CounterId::XdpPassNotIpv4);
    }
    if ip.vihl != 0x45 {
        return pass(CounterId::XdpPassIpOptions);
    }
    if u16::from_be_bytes(ip.frags) & IP_MF_OFFSET_MASK != 0 {
        return pass(CounterId::XdpPassFragment);
    }
    if ip.dst_addr != config.node_ip {
        // Not for this node: maybe a plain (host-gw) packet for one of its pods.
        return deliver_plain(eth, ip, config);
    }
    if ip.proto != IPPROTO_UDP {
        return pass(CounterId::XdpPassNotVxlan);
    }
    let Some(udp) = ptr_at::<UdpHdr>(data, end, ETH_LEN + IPV4_LEN) else {
        return pass(CounterId::XdpPassTruncated);
    };
    if unsafe { (*udp).dst } != config.vxlan_port_be.to_ne_bytes() {
        return pass(CounterId::XdpPassNotVxlan);
    }
    let Some(vxlan) = ptr_at::<VxlanHdr>(data, end, ETH_LEN + IPV4_LEN + UDP_LEN) else {
        return pass(CounterId::XdpPassTruncated);
    };
    let vxlan = unsafe { &*vxlan };
    let [a, b, c] = vxlan.vni;
    let vni = u32::from_be_bytes([0, a, b, c]);
    if vxlan.flags & VXLAN_FLAG_I == 0 || vni != config.vni {
        return pass(CounterId::XdpPassWrongVni);
    }
    if VTEPS.get_ptr(VtepKey { addr: ip.src_addr }).is_none() {
        return if config.flags & CONFIG_STRICT_VTEPS != 0 {
            Verdict(xdp_action::XDP_DROP, CounterId::XdpDropUnknownVtep)
        } else {
            pass(CounterId::XdpPassUnknownVtep)
        };
    }
    let Some(inner_eth) = ptr_at::<EthHdr>(data, end, VXLAN_OVERHEAD) else {
        return pass(CounterId::XdpPassTruncated);
    };
    if unsafe { (*inner_eth).ether_type } != ETH_P_IPV4_BE {
        return pass(CounterId::XdpPassInnerNotIpv4);
    }
    let Some(inner_ip) = ptr_at::<Ipv4Hdr>(data, end, VXLAN_OVERHEAD + ETH_LEN) else {
        return pass(CounterId::XdpPassTruncated);
    };
    let inner_ip = unsafe { &mut *inner_ip };
    let Some(endpoint) = ENDPOINTS.get_ptr(EndpointKey {
        addr: inner_ip.dst_addr,
    }) else {
        return pass(CounterId::XdpPassNoEndpoint);
    };
    let endpoint = unsafe { *endpoint };
    // The kernel path routes the inner packet once on this node; so do we.
    // An expiring TTL is the kernel's to answer with ICMP.
    if inner_ip.ttl <= 1 {
        return pass(CounterId::XdpPassTtlExpired);
    }
    decrement_ttl(inner_ip);
    unsafe {
        (*inner_eth).dst_addr = endpoint.mac;
        (*inner_eth).src_addr = config.gateway_mac;
    }
    // SAFETY: ctx.ctx is the xdp_md the kernel handed us.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, VXLAN_OVERHEAD as i32) } != 0 {
        return pass(CounterId::XdpPassTruncated);
    }
    let action = unsafe { aya_ebpf::helpers::bpf_redirect(endpoint.ifindex, 0) } as u32;
    Verdict(action, CounterId::XdpDecap)
}

/// host-gw (and DirectRouting) delivery: a plain IPv4 packet routed to this
/// node for one of its pods goes straight into the pod, as the kernel would
/// route it (TTL - 1, from the gateway's MAC), but only when it comes from
/// the peer node that owns its source subnet: the frame's source MAC must be
/// that node's, as the agent resolved it. Anything else is the kernel's.
#[inline(always)]
fn deliver_plain(eth: &mut EthHdr, ip: &mut Ipv4Hdr, config: &NodeConfig) -> Verdict {
    let Some(endpoint) = ENDPOINTS.get_ptr(EndpointKey { addr: ip.dst_addr }) else {
        return pass(CounterId::XdpPassNotForNode);
    };
    // SAFETY: a map value pointer from a successful lookup.
    let endpoint = unsafe { *endpoint };
    let Some(peer) = PEERS.get(&Key::new(32, ip.src_addr)) else {
        return pass(CounterId::XdpPassUnknownSource);
    };
    if peer.mode != PeerMode::HostGw as u8 || peer.nexthop_mac != eth.src_addr {
        return pass(CounterId::XdpPassUnknownSource);
    }
    if ip.ttl <= 1 {
        return pass(CounterId::XdpPassTtlExpired);
    }
    decrement_ttl(ip);
    eth.dst_addr = endpoint.mac;
    eth.src_addr = config.gateway_mac;
    let action = unsafe { aya_ebpf::helpers::bpf_redirect(endpoint.ifindex, 0) } as u32;
    Verdict(action, CounterId::XdpHostGw)
}
