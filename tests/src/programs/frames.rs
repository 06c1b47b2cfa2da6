//! The frames the program tests send: pods' packets, and VXLAN on the
//! uplink from the fixture's peers; IPv6 ones for the dual-stack fixture.

use std::net::Ipv6Addr;

use crate::packets::{
    ETH_P_IPV4, ETH_P_IPV6, Ipv4Options, eth, icmp_echo, icmpv6_echo, ipv4, ipv6, udp, vxlan,
};

use super::*;

/// A pod's frame: ICMP echo from `src` to `dst`.
pub fn pod_frame(src: [u8; 4], dst: [u8; 4], opts: Ipv4Options) -> Vec<u8> {
    eth(
        GATEWAY_MAC,
        POD_MAC,
        ETH_P_IPV4,
        &ipv4(src, dst, IPPROTO_ICMP, &icmp_echo(56), opts),
    )
}

/// The inner frame a peer node's VTEP sends for `dst`.
pub fn inner_frame(dst: [u8; 4], opts: Ipv4Options) -> Vec<u8> {
    eth(
        VTEP_MAC,
        PEER_VTEP_MAC,
        ETH_P_IPV4,
        &ipv4(REMOTE_POD, dst, IPPROTO_ICMP, &icmp_echo(56), opts),
    )
}

/// A full VXLAN frame on the uplink.
pub fn vxlan_frame(
    outer_src: [u8; 4],
    outer_dst: [u8; 4],
    port: u16,
    vni: u32,
    inner: &[u8],
    outer: Ipv4Options,
) -> Vec<u8> {
    let datagram = udp(40000, port, &vxlan(vni, inner));
    eth(
        UPLINK_MAC,
        NEXTHOP_MAC,
        ETH_P_IPV4,
        &ipv4(outer_src, outer_dst, IPPROTO_UDP, &datagram, outer),
    )
}

/// The inner frame of a TCP segment of `ip_len` bytes (IPv4 length) from
/// a remote pod to `dst`; the programs read no further than the IPv4 header.
pub fn inner_tcp_frame(dst: [u8; 4], ip_len: usize, opts: Ipv4Options) -> Vec<u8> {
    let mut segment = vec![0u8; ip_len - 20];
    segment[12] = 5 << 4; // data offset: a bare 20-byte TCP header
    eth(
        VTEP_MAC,
        PEER_VTEP_MAC,
        ETH_P_IPV4,
        &ipv4(REMOTE_POD, dst, IPPROTO_TCP, &segment, opts),
    )
}

/// Valid VXLAN carrying `inner`, from the known peer.
pub fn vxlan_carrying(inner: &[u8]) -> Vec<u8> {
    vxlan_from_carrying(PEER_IP, inner)
}

/// Valid VXLAN for the local pod, from `outer_src`.
pub fn vxlan_from(outer_src: [u8; 4]) -> Vec<u8> {
    vxlan_from_carrying(outer_src, &inner_frame(LOCAL_POD, Ipv4Options::default()))
}

/// Valid VXLAN carrying `inner`, from `outer_src`.
pub fn vxlan_from_carrying(outer_src: [u8; 4], inner: &[u8]) -> Vec<u8> {
    vxlan_frame(
        outer_src,
        NODE_IP,
        PORT,
        VNI,
        inner,
        Ipv4Options {
            frag: 0,
            ..Default::default()
        },
    )
}

/// Valid VXLAN for the local pod, from the known peer.
pub fn good_vxlan() -> Vec<u8> {
    vxlan_from(PEER_IP)
}

/// What a frame looks like once delivered to the local pod: to its MAC,
/// from the gateway's.
pub fn addressed_to_pod(frame: &mut [u8]) {
    frame[0..6].copy_from_slice(&POD_MAC);
    frame[6..12].copy_from_slice(&GATEWAY_MAC);
}

/// A plain frame from the host-gw peer node's uplink, for `dst`.
pub fn host_gw_frame(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], opts: Ipv4Options) -> Vec<u8> {
    eth(
        UPLINK_MAC,
        src_mac,
        ETH_P_IPV4,
        &ipv4(src, dst, IPPROTO_ICMP, &icmp_echo(56), opts),
    )
}

/// What `host_gw_frame` from the owning peer looks like delivered into the
/// local pod: TTL one lower, to the pod's MAC from the gateway's.
pub fn host_gw_frame_delivered() -> Vec<u8> {
    let mut expected = host_gw_frame(
        HOSTGW_NODE_MAC,
        HOSTGW_POD,
        LOCAL_POD,
        Ipv4Options {
            ttl: 63,
            ..Default::default()
        },
    );
    addressed_to_pod(&mut expected);
    expected
}

/// A pod's IPv6 frame: ICMPv6 echo from `src` to `dst` with `hop_limit`,
/// sent to the gateway.
pub fn pod_frame6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    eth(
        GATEWAY_MAC,
        POD_MAC,
        ETH_P_IPV6,
        &ipv6(src, dst, IPPROTO_ICMPV6, &icmpv6_echo(56), hop_limit),
    )
}

/// A plain IPv6 frame (ICMPv6 echo) from the host-gw peer node's uplink,
/// from `src_mac`, for `dst`.
pub fn host_gw_frame6(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    eth(
        UPLINK_MAC,
        src_mac,
        ETH_P_IPV6,
        &ipv6(src, dst, IPPROTO_ICMPV6, &icmpv6_echo(56), hop_limit),
    )
}

/// What `host_gw_frame6` from the owning peer's pod for the local pod
/// (hop limit 64) looks like delivered into it: hop limit one lower, to
/// the pod's MAC from the gateway's.
pub fn host_gw_frame6_delivered() -> Vec<u8> {
    let mut expected = host_gw_frame6(HOSTGW_NODE_MAC, HOSTGW_POD6, LOCAL_POD6, 63);
    addressed_to_pod(&mut expected);
    expected
}
