//! XDP on the uplink: VXLAN (or a plain host-gw packet) for a local pod is
//! decapsulated and redirected straight into the pod's veth; everything
//! else goes to the kernel path (`XDP_PASS`), counted by reason. Full-size
//! TCP segments for a pod are passed on purpose: GRO coalesces them and
//! `tc_uplink` delivers the result (see gro_decap.rs).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use weft_common::{CONFIG_BULK_TCP_VIA_GRO, CounterId, ENDPOINT_XDP_READY};

use crate::{
    counters::count,
    csum::decrement_ttl,
    maps::node_config,
    uplink::{Refusal, classify},
};

#[inline(always)]
pub fn xdp_uplink(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(CounterId::UplinkRx, len);
    let (action, why) = decide(ctx);
    count(why, len);
    action
}

/// The verdict, and the counter that explains it.
#[inline(always)]
fn decide(ctx: &XdpContext) -> (u32, CounterId) {
    const PASS: u32 = xdp_action::XDP_PASS;
    let Some(config) = node_config() else {
        return (PASS, CounterId::XdpPassNoConfig);
    };
    let frame_len = ctx.data_end() - ctx.data();
    let delivery = match classify(ctx.data(), ctx.data_end(), frame_len, config) {
        Ok(delivery) => delivery,
        Err(Refusal::Pass(why)) => return (PASS, why),
        Err(Refusal::Drop(why)) => return (xdp_action::XDP_DROP, why),
    };
    if config.flags & CONFIG_BULK_TCP_VIA_GRO != 0 && delivery.is_bulk_tcp() {
        return (PASS, CounterId::XdpPassBulkTcp);
    }
    if delivery.endpoint.flags & ENDPOINT_XDP_READY == 0 {
        return (PASS, CounterId::XdpPassPodNotReady);
    }
    // SAFETY: classify bounds-checked both headers; nothing else holds them.
    unsafe {
        decrement_ttl(&mut *delivery.ip);
        (*delivery.eth).dst_addr = delivery.endpoint.mac;
        (*delivery.eth).src_addr = config.gateway_mac;
    }
    // SAFETY: ctx.ctx is the xdp_md the kernel handed us.
    if delivery.is_vxlan() && unsafe { bpf_xdp_adjust_head(ctx.ctx, delivery.strip as i32) } != 0 {
        return (PASS, CounterId::XdpPassTruncated);
    }
    let action = unsafe { aya_ebpf::helpers::bpf_redirect(delivery.endpoint.ifindex, 0) } as u32;
    let why = if delivery.is_vxlan() {
        CounterId::XdpDecap
    } else {
        CounterId::XdpHostGw
    };
    (action, why)
}
