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

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns, programs::TcContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};
use weft_common::{FLOW_CONFIRMED, FLOW_PENDING, FlowVerdict, Hook, NodeConfig, Reason};

use crate::lib::{
    counters::count,
    flow::flow_of,
    headers::{ETH_P_IPV4, IPPROTO_TCP, ptr_at},
    maps::{CT_LIBERAL, FLOWS, node_config},
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
    if config.accept_mark == 0 || mark & config.accept_mark == 0 {
        return TCX_NEXT;
    }
    ctx.set_mark(mark & !config.accept_mark);
    let len = u64::from(ctx.len());
    let reason = learn(ctx, config);
    count(HOOK, reason, len);
    TCX_NEXT
}

/// Records the verdict for the packet's flow direction; the counter says
/// what happened.
#[inline(always)]
fn learn(ctx: &mut TcContext, config: &NodeConfig) -> Reason {
    let _ = ctx.pull_data((EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN) as u32);
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = ptr_at::<EthHdr>(data, end, 0) else {
        return Reason::Unparsed;
    };
    // SAFETY: pointers from ptr_at are inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IPV4 {
        return Reason::Unparsed;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, EthHdr::LEN) else {
        return Reason::Unparsed;
    };
    let Some(flow) = flow_of(ip, end) else {
        return Reason::Unparsed;
    };
    if flow.tcp_control {
        // SYN, FIN and RST always take the kernel path; a closing
        // connection's verdict ends with it.
        let _ = FLOWS.remove(flow.key);
        return Reason::TcpControl;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(recorded) = FLOWS.get_ptr_mut(flow.key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let recorded = unsafe { &mut *recorded };
        let live = recorded.generation == config.ruleset_generation
            && now.wrapping_sub(recorded.seen_ns) <= config.verdict_ttl_ns;
        if live && recorded.state == FLOW_CONFIRMED {
            recorded.seen_ns = now;
            return Reason::Learned;
        }
        if live {
            // Pending: the agent was asked when it was recorded. Not
            // refreshed, so that a request the agent never answered lapses
            // with the TTL and is asked again.
            return Reason::AwaitingLiberal;
        }
    }
    let tcp = flow.key.proto == IPPROTO_TCP;
    let verdict = FlowVerdict {
        seen_ns: now,
        generation: config.ruleset_generation,
        state: if tcp { FLOW_PENDING } else { FLOW_CONFIRMED },
    };
    if FLOWS.insert(flow.key, verdict, u64::from(BPF_ANY)).is_err() {
        return Reason::UpdateFailed;
    }
    if !tcp {
        return Reason::Learned;
    }
    // Recorded before the agent is asked, so its confirmation finds it.
    if CT_LIBERAL.output(flow.key, 0).is_err() {
        // Nobody will confirm it: forget it, so the next marked packet
        // asks again.
        let _ = FLOWS.remove(flow.key);
        return Reason::NotifyFailed;
    }
    Reason::LearnedPending
}
