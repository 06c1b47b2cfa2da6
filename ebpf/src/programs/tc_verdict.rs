//! `tc_verdict`, TC (TCX) egress where forwarded packets leave the node's
//! netfilter: the host side of pod veths (into pods), flannel.<VNI> (to
//! VXLAN peers) and the uplink (to host-gw peers). The agent's nftables
//! rule (forward hook) marks packets of established flows that have no
//! NAT and no helper; a packet that got here with that mark passed every
//! netfilter hook on the way, so its flow direction is recorded in FLOWS
//! with the time and the ruleset generation. The mark is cleared so it
//! never leaves the node or reaches a pod. Never changes a verdict: always
//! `TCX_NEXT`, so classic egress filters and later TCX programs still run.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns, programs::TcContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};
use weft_common::{FlowVerdict, Hook, Reason};

use crate::lib::{
    counters::count,
    flow::flow_of,
    headers::{ETH_P_IPV4, ptr_at},
    maps::{FLOWS, node_config},
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
    let reason = learn(ctx, config.ruleset_generation);
    count(HOOK, reason, len);
    TCX_NEXT
}

/// Records the verdict for the packet's flow direction; the counter says
/// what happened.
#[inline(always)]
fn learn(ctx: &mut TcContext, generation: u32) -> Reason {
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
    let verdict = FlowVerdict {
        // SAFETY: a helper without arguments.
        seen_ns: unsafe { bpf_ktime_get_ns() },
        generation,
        _pad: 0,
    };
    match FLOWS.insert(flow.key, verdict, u64::from(BPF_ANY)) {
        Ok(()) => Reason::Learned,
        Err(_) => Reason::UpdateFailed,
    }
}
