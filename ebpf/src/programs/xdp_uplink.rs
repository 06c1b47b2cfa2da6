//! `xdp_uplink`: XDP on the uplink, every wire frame. VXLAN (or a plain
//! host-gw packet) for a local pod is decapsulated and redirected straight
//! into the pod's veth; everything else goes to the kernel path
//! (`XDP_PASS`), counted by reason. Full-size TCP segments for a pod are
//! passed on purpose: GRO coalesces them and `tc_uplink` delivers the
//! result (see tc_uplink.rs).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use weft_common::{CONFIG_BULK_TCP_VIA_GRO, ENDPOINT_XDP_READY, Hook, Reason};

use crate::lib::{
    counters::{Verdict, count},
    delivery::route_to_pod,
    maps::node_config,
    tc::uplink_delivery_allowed,
    uplink::classify,
};

const HOOK: Hook = Hook::XdpUplink;

const fn pass(reason: Reason) -> Verdict<u32> {
    Verdict {
        action: XDP_PASS,
        reason,
    }
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(HOOK, Reason::Seen, len);
    let Verdict { action, reason } = decide(ctx);
    count(HOOK, reason, len);
    action
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> Verdict<u32> {
    let Some(config) = node_config() else {
        return pass(Reason::PassNoConfig);
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    let bulk_left_to_gro = config.flags & CONFIG_BULK_TCP_VIA_GRO != 0;
    let delivery = match classify(data, end, end - data, config, bulk_left_to_gro, false) {
        Ok(delivery) => delivery,
        Err(reason) if reason.drops() => {
            return Verdict {
                action: XDP_DROP,
                reason,
            };
        }
        Err(reason) => return pass(reason),
    };
    // Before the bulk hand-off, so a refusal is counted here, where XDP
    // counts every frame (tc_uplink does not count it again).
    if let Err(reason) = uplink_delivery_allowed(&delivery.endpoint, config, delivery.is_vxlan()) {
        return pass(reason);
    }
    if bulk_left_to_gro && delivery.bulk_tcp {
        return pass(Reason::PassBulkTcp);
    }
    // XDP cannot clone: tc_uplink, next on this packet's way, delivers it
    // on the fast path and sends the probe (lib/probe.rs).
    if delivery.probe_due {
        return pass(Reason::ProbeDue);
    }
    if delivery.endpoint.flags & ENDPOINT_XDP_READY == 0 {
        return pass(Reason::PassPodNotReady);
    }
    if !route_to_pod(
        data,
        end,
        delivery.strip,
        &delivery.endpoint,
        config,
        delivery.ipv6,
    ) {
        return pass(Reason::PassTruncated);
    }
    // SAFETY: ctx.ctx is the xdp_md the kernel handed us.
    if delivery.is_vxlan() && unsafe { bpf_xdp_adjust_head(ctx.ctx, delivery.strip as i32) } != 0 {
        return pass(Reason::PassTruncated);
    }
    Verdict {
        // SAFETY: a helper taking plain values.
        action: unsafe { bpf_redirect(delivery.endpoint.ifindex, 0) } as u32,
        reason: delivery.reason(),
    }
}
