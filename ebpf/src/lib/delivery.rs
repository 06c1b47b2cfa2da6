//! Local delivery: handing a packet to a pod on this node, from the uplink
//! (after decapsulation, or host-gw) or from another pod.

use aya_ebpf::helpers::bpf_redirect_peer;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use weft_common::{Endpoint, NodeConfig};

use crate::lib::{
    headers::ptr_at,
    l3::{ipv4_l3, ipv6_l3},
};

/// Routes the frame at `offset` (IPv6 with `ipv6`, else IPv4) into
/// `endpoint` as the node's gateway would: TTL (hop limit) - 1, to the
/// pod's MAC from the gateway (`cni0`) MAC. Returns false if the frame is
/// not there (cannot happen after classification, which saw it).
#[inline(always)]
pub fn route_to_pod(
    data: usize,
    end: usize,
    offset: usize,
    endpoint: &Endpoint,
    config: &NodeConfig,
    ipv6: bool,
) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(data, end, offset) else {
        return false;
    };
    // SAFETY: the headers are inside the packet; nothing else holds them.
    let eth = unsafe { &mut *eth };
    if ipv6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(data, end, offset + EthHdr::LEN) else {
            return false;
        };
        unsafe { ipv6_l3(eth, &mut *ip, endpoint.mac, config.gateway_mac) };
        return true;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, offset + EthHdr::LEN) else {
        return false;
    };
    unsafe { ipv4_l3(eth, &mut *ip, endpoint.mac, config.gateway_mac) };
    true
}

/// Into the pod's namespace directly (TC): no bridge, no backlog queue.
#[inline(always)]
pub fn redirect_into_pod(endpoint: &Endpoint) -> i32 {
    // SAFETY: a helper taking plain values.
    unsafe { bpf_redirect_peer(endpoint.ifindex, 0) as i32 }
}
