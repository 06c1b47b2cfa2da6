//! TC ingress on the uplink: delivery after GRO. With XDP attached, it
//! delivers what XDP left for GRO; without (`--xdp-mode off`, and `auto` on
//! a veth uplink), it delivers everything and counts as XDP would.
//!
//! XDP sees every wire frame before GRO, so delivering bulk TCP there costs
//! a redirect, a ring slot and an skb per 1.5 KB frame. Instead, XDP passes
//! full-size TCP segments for local pods; the uplink's GRO (UDP-tunnel aware
//! through flannel.<VNI>'s socket) coalesces them into ~64 KB packets, and
//! this program strips the VXLAN headers once per coalesced packet and hands
//! it to the pod with `bpf_redirect_peer`: no vxlan device, no routing, no
//! bridge, no backlog queue. It applies the same checks as XDP (uplink.rs),
//! so anything XDP would not deliver, this does not either.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_redirect_peer,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use weft_common::{CONFIG_UPLINK_XDP, CounterId, NodeConfig};

use crate::{
    counters::count,
    csum::decrement_ttl,
    maps::node_config,
    parse::{ETH_LEN, ptr_at},
    uplink::{HEADERS_LEN, Refusal, classify},
};

/// Strip the 50 bytes behind the outer Ethernet header (outer IPv4, UDP,
/// VXLAN, inner Ethernet): the outer Ethernet header stays, in front of the
/// inner IPv4 header. FIXED_GSO keeps GRO's segment size, which is the
/// inner TCP's MSS already.
const DECAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64;

#[inline(always)]
pub fn tc_uplink(ctx: &mut TcContext) -> i32 {
    let Some(config) = node_config() else {
        return TC_ACT_OK;
    };
    let len = u64::from(ctx.len());
    // With XDP attached, XDP already counted the frame and, if it passed
    // it, why; a refusal here is then the same refusal, not counted twice.
    let xdp_counted = config.flags & CONFIG_UPLINK_XDP != 0;
    if !xdp_counted {
        count(CounterId::UplinkRx, len);
    }
    let (action, why) = decide(ctx, config);
    if action != TC_ACT_OK || !xdp_counted {
        count(why, len);
    }
    action
}

/// The verdict, and the counter that explains it.
#[inline(always)]
fn decide(ctx: &mut TcContext, config: &NodeConfig) -> (i32, CounterId) {
    // GRO leaves the headers in the linear part; a frame from elsewhere
    // may not have them there.
    if ctx.data() + HEADERS_LEN > ctx.data_end() && ctx.len() as usize >= HEADERS_LEN {
        let _ = ctx.pull_data(HEADERS_LEN as u32);
    }
    let delivery = match classify(ctx.data(), ctx.data_end(), ctx.len() as usize, config) {
        Ok(delivery) => delivery,
        Err(Refusal::Pass(why)) => return (TC_ACT_OK, why),
        // Only without XDP: with it, XDP dropped these already.
        Err(Refusal::Drop(why)) => return (TC_ACT_SHOT, why),
    };
    let endpoint = delivery.endpoint;
    let why = if delivery.is_vxlan() {
        if ctx
            .adjust_room(-(delivery.strip as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
            .is_err()
        {
            // Rare (the skb could not be unshared); nothing was changed.
            return (TC_ACT_OK, CounterId::TcUplinkPassDecapFailed);
        }
        CounterId::TcUplinkDecap
    } else {
        CounterId::TcUplinkHostGw
    };
    // Now a plain frame either way: the pod's Ethernet and IPv4 headers.
    let (data, end) = (ctx.data(), ctx.data_end());
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv4Hdr>(data, end, ETH_LEN),
    ) else {
        // Cannot happen (classify saw both); the kernel routes what is left.
        return (TC_ACT_OK, CounterId::TcUplinkPassDecapFailed);
    };
    // SAFETY: both pointers are inside the packet, re-read after the
    // adjustment. A GRO packet's IPv4 header stands for all its segments,
    // which GRO merged only when their TTLs were equal.
    unsafe {
        decrement_ttl(&mut *ip);
        (*eth).dst_addr = endpoint.mac;
        (*eth).src_addr = config.gateway_mac;
    }
    // Into the pod's namespace directly: no bridge, no backlog queue.
    let action = unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } as i32;
    (action, why)
}
