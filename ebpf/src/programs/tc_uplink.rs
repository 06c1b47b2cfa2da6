//! `tc_uplink`: TC ingress on the uplink, delivery after GRO. With XDP
//! attached, it delivers what XDP left for GRO; without (`--xdp-mode off`,
//! and `auto` on a veth uplink), it delivers everything and counts every
//! frame and reason itself, under its own hook.
//!
//! XDP sees every wire frame before GRO, so delivering bulk TCP there costs
//! a redirect, a ring slot and an skb per 1.5 KB frame. Instead, XDP passes
//! full-size TCP segments for local pods; the uplink's GRO (UDP-tunnel aware
//! through flannel.<VNI>'s socket) coalesces them into ~64 KB packets, and
//! this program strips the VXLAN headers once per coalesced packet and hands
//! it to the pod with `bpf_redirect_peer`: no vxlan device, no routing, no
//! bridge, no backlog queue. It applies the same checks as XDP
//! (lib/uplink.rs), so anything XDP would not deliver, this does not either.
//!
//! It also sends the probes that renew the verdicts of the flows it
//! delivers, and those XDP left to it for that (lib/probe.rs): a clone
//! back into the uplink's ingress, which comes back through here and is
//! handed to the kernel path.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use weft_common::{CONFIG_UPLINK_XDP, Hook, NodeConfig, Reason};

use crate::lib::{
    counters::{Verdict, count},
    delivery::{redirect_into_pod, route_to_pod},
    headers::{ptr_at, pull_headers},
    maps::node_config,
    probe,
    tc::{TCX_NEXT, uplink_delivery_allowed},
    uplink::{Delivery, classify, headers_len},
};

const HOOK: Hook = Hook::TcUplink;

/// Strip the 50 bytes behind the outer Ethernet header (outer IPv4, UDP,
/// VXLAN, inner Ethernet): the outer Ethernet header stays, in front of the
/// inner IPv4 header. FIXED_GSO keeps GRO's segment size, which is the
/// inner TCP's MSS already.
const DECAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64;
/// The same over IPv6: 70 bytes (outer IPv6, UDP, VXLAN, inner Ethernet),
/// in front of the inner IPv6 header.
const DECAP_FLAGS_IPV6: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV6) as u64;

const fn pass(reason: Reason) -> Verdict<i32> {
    Verdict {
        action: TCX_NEXT,
        reason,
    }
}

#[inline(always)]
pub fn run(ctx: &mut TcContext) -> i32 {
    let Some(config) = node_config() else {
        return TCX_NEXT;
    };
    let len = u64::from(ctx.len());
    // With XDP attached, XDP already counted the frame and, if it passed
    // it, why; a refusal here is then the same refusal, not counted twice.
    let xdp_counted = config.flags & CONFIG_UPLINK_XDP != 0;
    if !xdp_counted {
        count(HOOK, Reason::Seen, len);
    }
    if probe::returning(ctx, config) {
        // XDP never saw the clone: counted here either way.
        count(HOOK, Reason::ProbeReturned, len);
        return TCX_NEXT;
    }
    let mut verdict = decide(ctx, config, true);
    if verdict.reason == Reason::ProbeSent {
        // Claimed: the clone goes first, untouched; then this packet is
        // delivered as it would have been (its verdict is still current).
        count(HOOK, probe::send(ctx, config), len);
        verdict = decide(ctx, config, false);
    }
    let Verdict { action, reason } = verdict;
    if action != TCX_NEXT || !xdp_counted {
        count(HOOK, reason, len);
    }
    action
}

/// The delivery of the packet in `ctx`, or the reason it is left to the
/// kernel. With `may_probe`, a packet whose verdict is due a probe and
/// that won the claim returns `ProbeSent` (`TCX_NEXT`) untouched, for
/// the caller to send the probe and decide again without.
#[inline(always)]
fn decide(ctx: &mut TcContext, config: &NodeConfig, may_probe: bool) -> Verdict<i32> {
    // GRO leaves the headers in the linear part; a frame from elsewhere
    // may not have them there. Pulled only then, and only as far as the
    // frame's kind needs (lib/headers.rs: pulling past the headers copies
    // payload, reallocating a TCP segment's head).
    pull_headers(ctx, headers_len(ctx.data(), ctx.data_end()));
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let delivery = match classify(
        ctx.data(),
        ctx.data_end(),
        ctx.len() as usize,
        config,
        false,
        gso,
    ) {
        Ok(delivery) => delivery,
        // Only without XDP: with it, XDP dropped these already.
        Err(reason) if reason.drops() => {
            return Verdict {
                action: TC_ACT_SHOT,
                reason,
            };
        }
        Err(reason) => return pass(reason),
    };
    if let Err(reason) = uplink_delivery_allowed(&delivery.endpoint, config, delivery.is_vxlan()) {
        return pass(reason);
    }
    if may_probe && delivery.probe_due && claim_probe(ctx, &delivery, config) {
        return pass(Reason::ProbeSent);
    }
    if delivery.is_vxlan() {
        let flags = if delivery.ipv6 {
            DECAP_FLAGS_IPV6
        } else {
            DECAP_FLAGS
        };
        if ctx
            .adjust_room(-(delivery.strip as i32), BPF_ADJ_ROOM_MAC, flags)
            .is_err()
        {
            // Rare (the skb could not be unshared); nothing was changed.
            return pass(Reason::PassDecapFailed);
        }
    }
    let reason = delivery.reason();
    // Now a plain frame either way: the pod's Ethernet and IP headers,
    // found again after the adjustment. A GRO packet's IP header stands
    // for all its segments, which GRO merged only when their TTLs (hop
    // limits) were equal.
    if !route_to_pod(
        ctx.data(),
        ctx.data_end(),
        0,
        &delivery.endpoint,
        config,
        delivery.ipv6,
    ) {
        // Cannot happen (classify saw both); the kernel routes what is left.
        return pass(Reason::PassDecapFailed);
    }
    Verdict {
        action: redirect_into_pod(&delivery.endpoint),
        reason,
    }
}

/// Claims the probe due for the pod's packet `delivery` describes (its IP
/// header `strip` bytes and an Ethernet header into the frame). Delivered
/// with `bpf_redirect_peer`, the packet itself meets no egress on the way.
#[inline(always)]
fn claim_probe(ctx: &TcContext, delivery: &Delivery, config: &NodeConfig) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    let at = delivery.strip + EthHdr::LEN;
    if delivery.ipv6 {
        ptr_at::<Ipv6Hdr>(data, end, at).is_some_and(|ip| probe::claim6(ip, end, config, false))
    } else {
        ptr_at::<Ipv4Hdr>(data, end, at).is_some_and(|ip| probe::claim(ip, end, config, false))
    }
}
