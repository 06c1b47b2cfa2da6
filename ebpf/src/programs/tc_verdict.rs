//! `tc_verdict`, TC (TCX) egress where forwarded packets leave the node's
//! netfilter: the host side of pod veths (into pods), flannel.<VNI> (to
//! VXLAN peers) and the uplink (to host-gw peers). The agent's nftables
//! chain (postrouting, after every other chain) marks forwarded packets of
//! established flows that have no NAT and no helper, and clears the bit on
//! every other packet; a packet that got here with that mark passed every
//! netfilter hook on the way, so its flow direction is recorded in FLOWS
//! with the time and the ruleset generation. The mark is cleared so it
//! never leaves the node or reaches a pod. Never changes a verdict: always
//! `TCX_NEXT`, so classic egress filters and later TCX programs still run.
//!
//! A new TCP verdict is recorded pending and its flow sent to the agent
//! (`CT_LIBERAL`): conntrack will not see the segments the fast path
//! carries, so the agent first marks the flow's conntrack entry liberal
//! (as the kernel's flowtable does for each flow it offloads), then
//! confirms the verdict. A live confirmed verdict is refreshed in place and
//! stays confirmed; one that lapsed (expired, another ruleset generation,
//! ended by FIN or RST) starts pending again, since its conntrack entry may
//! be a new one.
//!
//! A probe (lib/probe.rs) is a clone of a packet the fast path carried:
//! whatever netfilter made of it, it never leaves here. Marked, it renews
//! (or re-learns) its flow's verdict like any marked packet, then is
//! dropped; unmarked (netfilter passed it, but not as an established flow
//! without NAT), it is dropped and renews nothing. It is recognised by the
//! identification its verdict records, not by a mark.

use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_SHOT},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};
use weft_common::{FLOW_CONFIRMED, FLOW_PENDING, FlowVerdict, Hook, NodeConfig, Reason};

use crate::lib::{
    counters::count,
    flow::{Flow, end_verdict, flow_of, probe_identity, verdict_clock},
    headers::{ETH_P_IPV4, IPPROTO_TCP, ptr_at},
    maps::{CT_LIBERAL, FLOWS, node_config},
    probe,
    tc::TCX_NEXT,
};

const HOOK: Hook = Hook::TcVerdict;

#[inline(always)]
pub fn run(ctx: &mut TcContext) -> i32 {
    let Some(config) = node_config() else {
        return TCX_NEXT;
    };
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if config.accept_mark == 0 {
        return TCX_NEXT;
    }
    let len = u64::from(ctx.len());
    if mark & config.accept_mark == 0 {
        // Only while probes are about: the look-up costs the kernel path.
        if probe::recently_sent(config) && unjudged_probe(ctx) {
            count(HOOK, Reason::ProbeUnjudged, len);
            return TC_ACT_SHOT;
        }
        return TCX_NEXT;
    }
    ctx.set_mark(mark & !config.accept_mark);
    let (reason, was_probe) = learn(ctx, config);
    count(HOOK, reason, len);
    if was_probe {
        count(HOOK, Reason::ProbeTaken, len);
        return TC_ACT_SHOT;
    }
    TCX_NEXT
}

/// The flow of the IPv4 packet in `ctx`, and its IPv4 header.
#[inline(always)]
fn parse(ctx: &mut TcContext) -> Option<(Flow, *const Ipv4Hdr, usize)> {
    let _ = ctx.pull_data((EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN) as u32);
    let (data, end) = (ctx.data(), ctx.data_end());
    let eth = ptr_at::<EthHdr>(data, end, 0)?;
    // SAFETY: pointers from ptr_at are inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IPV4 {
        return None;
    }
    let ip = ptr_at::<Ipv4Hdr>(data, end, EthHdr::LEN)?;
    Some((flow_of(ip, end)?, ip, end))
}

/// Whether the unmarked packet in `ctx` is its flow's outstanding probe
/// (then no longer outstanding).
#[inline(always)]
fn unjudged_probe(ctx: &mut TcContext) -> bool {
    let Some((flow, ip, end)) = parse(ctx) else {
        return false;
    };
    if flow.key.proto != IPPROTO_TCP {
        return false;
    }
    let Some((id, seq)) = probe_identity(ip, end) else {
        return false;
    };
    let Some(recorded) = FLOWS.get_ptr_mut(flow.key) else {
        return false;
    };
    // SAFETY: a pointer into the map's value, valid for this program run.
    let recorded = unsafe { &mut *recorded };
    if !recorded.is_probe(id, seq) {
        return false;
    }
    recorded.probe_state = 0;
    true
}

/// Records the verdict for the packet's flow direction; the counter says
/// what happened, and the flag whether the packet is the flow's
/// outstanding probe (to be dropped).
#[inline(always)]
fn learn(ctx: &mut TcContext, config: &NodeConfig) -> (Reason, bool) {
    let Some((flow, ip, end)) = parse(ctx) else {
        return (Reason::Unparsed, false);
    };
    if flow.tcp_control {
        // SYN, FIN and RST always take the kernel path; a closing
        // connection's verdict ends with it.
        end_verdict(flow.key);
        return (Reason::TcpControl, false);
    }
    let now = verdict_clock();
    let tcp = flow.key.proto == IPPROTO_TCP;
    let identity = if tcp { probe_identity(ip, end) } else { None };
    // Kept across a re-learned verdict: a probe still on its way is
    // recognised whatever happened to the verdict meanwhile.
    let mut probe_state = FlowVerdict::default();
    let mut was_probe = false;
    if let Some(recorded) = FLOWS.get_ptr_mut(flow.key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let recorded = unsafe { &mut *recorded };
        if let Some((id, seq)) = identity
            && recorded.is_probe(id, seq)
        {
            recorded.probe_state = 0;
            was_probe = true;
        }
        let live = recorded.generation == config.ruleset_generation
            && now.wrapping_sub(recorded.seen_ns) <= config.verdict_ttl_ns;
        if live && recorded.state == FLOW_CONFIRMED {
            recorded.seen_ns = now;
            return (Reason::Learned, was_probe);
        }
        if live {
            // Pending: the agent was asked when it was recorded. Not
            // refreshed, so that a request the agent never answered lapses
            // with the TTL and is asked again.
            return (Reason::AwaitingLiberal, was_probe);
        }
        probe_state = *recorded;
    }
    let verdict = FlowVerdict {
        seen_ns: now,
        generation: config.ruleset_generation,
        state: if tcp { FLOW_PENDING } else { FLOW_CONFIRMED },
        ..probe_state
    };
    if FLOWS.insert(flow.key, verdict, u64::from(BPF_ANY)).is_err() {
        return (Reason::UpdateFailed, was_probe);
    }
    if !tcp {
        return (Reason::Learned, was_probe);
    }
    // Recorded before the agent is asked, so its confirmation finds it.
    if CT_LIBERAL.output(flow.key, 0).is_err() {
        // Nobody will confirm it: forget it, so the next marked packet
        // asks again.
        end_verdict(flow.key);
        return (Reason::NotifyFailed, was_probe);
    }
    (Reason::LearnedPending, was_probe)
}
