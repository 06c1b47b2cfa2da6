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
//! identification its verdict records, not by a mark. Where the fast path
//! sends the probe's original out of this device too (host-gw, out of the
//! uplink; IPv6 to `flannel-v6.<VNI>`), the original gets here first, unmarked, and passes
//! (`probe_original`): of the two copies, one leaves, whatever the order.

use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_SHOT},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use weft_common::{
    EndpointKey6, FLOW_CONFIRMED, FLOW_PENDING, FlowKey6, FlowVerdict, Hook, NodeConfig,
    PROBE_ORIGINAL_AHEAD, PROBE_OUTSTANDING, PeerMode, Reason,
};

use crate::lib::{
    counters::count,
    flow::{
        Flow, Flow6, Verdicts, end_verdict_in, flow_of, flow_of6, probe_identity, probe_identity6,
        verdict_clock,
    },
    headers::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, plain_headers_len, ptr_at, pull_headers},
    maps::{CT_LIBERAL, ENDPOINTS6, FLOWS, FLOWS6, PEERS6, node_config},
    probe,
    tc::TCX_NEXT,
};

const HOOK: Hook = Hook::TcVerdict;

#[inline(always)]
pub fn run(ctx: &mut TcContext) -> i32 {
    let Some(config) = node_config() else {
        return TCX_NEXT;
    };
    // The fast path's own packet (lib/probe.rs): never marked by netfilter,
    // never a probe. Every packet the fast path carries out of this device
    // comes by here; this spares it the search for a probe in FLOWS.
    if probe::take_sent_by_fast_path(ctx) {
        return TCX_NEXT;
    }
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if config.accept_mark == 0 {
        return TCX_NEXT;
    }
    let len = u64::from(ctx.len());
    if mark & config.accept_mark == 0 {
        // Only while probes are about: the look-up costs the kernel path.
        if probe::recently_sent(config) {
            match unmarked_probe_copy(ctx) {
                Some(Reason::ProbeUnjudged) => {
                    count(HOOK, Reason::ProbeUnjudged, len);
                    return TC_ACT_SHOT;
                }
                Some(original) => count(HOOK, original, len),
                None => {}
            }
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

/// What `tc_verdict` learns from: an IPv4 or IPv6 flow, with its header
/// and the packet's end (for the probe identity).
enum Parsed {
    V4(Flow, *const Ipv4Hdr, usize),
    V6(Flow6, *const Ipv6Hdr, usize),
}

/// The flow of the IP packet in `ctx`.
#[inline(always)]
fn parse(ctx: &mut TcContext) -> Option<Parsed> {
    // Only what is missing, and only as far as the family needs (with the
    // TCP timestamp an IPv6 probe's identity reads, lib/flow.rs): every
    // packet the fast path sends out of this device passes here too.
    pull_headers(ctx, plain_headers_len(ctx.data(), ctx.data_end()));
    let (data, end) = (ctx.data(), ctx.data_end());
    let eth = ptr_at::<EthHdr>(data, end, 0)?;
    // SAFETY: pointers from ptr_at are inside the packet.
    match unsafe { (*eth).ether_type } {
        ETH_P_IPV4 => {
            let ip = ptr_at::<Ipv4Hdr>(data, end, EthHdr::LEN)?;
            Some(Parsed::V4(flow_of(ip, end)?, ip, end))
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<Ipv6Hdr>(data, end, EthHdr::LEN)?;
            if unsafe { (*ip).version() } != 6 {
                return None;
            }
            Some(Parsed::V6(flow_of6(ip, end)?, ip, end))
        }
        _ => None,
    }
}

/// Whether the unmarked packet in `ctx` carries its flow's outstanding
/// probe's identification, and which copy it is: `ProbeUnjudged`, the
/// probe (no longer outstanding; to be dropped), or `ProbeOriginal`, the
/// packet the probe was cloned from, which the fast path sent out of this
/// device ahead of the probe (to pass; the probe is still outstanding).
#[inline(always)]
fn unmarked_probe_copy(ctx: &mut TcContext) -> Option<Reason> {
    match parse(ctx)? {
        Parsed::V4(flow, ip, end) if flow.key.proto == IPPROTO_TCP => {
            probe_copy_in(&FLOWS, flow.key, probe_identity(ip, end)?)
        }
        Parsed::V6(flow, ip, end) if flow.key.proto == IPPROTO_TCP => {
            probe_copy_in(&FLOWS6, flow.key, probe_identity6(ip, end)?)
        }
        _ => None,
    }
}

/// [`unmarked_probe_copy`] for the flow `key` in `verdicts`, by the
/// packet's probe identity.
#[inline(always)]
fn probe_copy_in<K>(
    verdicts: &Verdicts<K>,
    key: K,
    (id, seq): ([u8; 2], [u8; 4]),
) -> Option<Reason> {
    let recorded = verdicts.get_ptr_mut(&key)?;
    // SAFETY: a pointer into the map's value, valid for this program run.
    let recorded = unsafe { &mut *recorded };
    if !recorded.is_probe(id, seq) {
        return None;
    }
    if recorded.probe_state == PROBE_ORIGINAL_AHEAD {
        recorded.probe_state = PROBE_OUTSTANDING;
        return Some(Reason::ProbeOriginal);
    }
    recorded.probe_state = 0;
    Some(Reason::ProbeUnjudged)
}

/// Records the verdict for the packet's flow direction; the counter says
/// what happened, and the flag whether the packet is the flow's
/// outstanding probe (to be dropped).
#[inline(always)]
fn learn(ctx: &mut TcContext, config: &NodeConfig) -> (Reason, bool) {
    match parse(ctx) {
        Some(Parsed::V4(flow, ip, end)) => {
            let identity = if flow.key.proto == IPPROTO_TCP {
                probe_identity(ip, end)
            } else {
                None
            };
            let tcp = flow.key.proto == IPPROTO_TCP;
            record(
                &FLOWS,
                flow.key,
                tcp,
                flow.tcp_control,
                identity,
                config,
                |key| CT_LIBERAL.output(key, 0),
            )
        }
        Some(Parsed::V6(flow, ip, end)) => {
            if !carried_ipv6(&flow.key, config) {
                return (Reason::PassIpv6Vxlan, false);
            }
            let tcp = flow.key.proto == IPPROTO_TCP;
            let identity = if tcp { probe_identity6(ip, end) } else { None };
            record(
                &FLOWS6,
                flow.key,
                tcp,
                flow.tcp_control,
                identity,
                config,
                |key| {
                    // The record's length (40 bytes) tells the agent it is IPv6.
                    CT_LIBERAL.output_untyped::<FlowKey6>(key, 0)
                },
            )
        }
        None => (Reason::Unparsed, false),
    }
}

/// Whether the fast path may ever carry the IPv6 flow direction `key`:
/// from a local pod (to another, or to a host-gw peer), from a host-gw
/// peer's pod, or from a VXLAN peer's pod where this node decapsulates
/// VXLAN over IPv6 (`CONFIG.node_ip6`). Other IPv6 is never carried, so
/// its verdict is not recorded: nothing would read it, and its conntrack
/// entry stays strictly tracked.
#[inline(always)]
fn carried_ipv6(key: &FlowKey6, config: &NodeConfig) -> bool {
    ENDPOINTS6
        .get_ptr(EndpointKey6 { addr: key.saddr })
        .is_some()
        || PEERS6
            .get(&Key::new(128, key.saddr))
            .is_some_and(|peer| peer.mode == PeerMode::HostGw as u8 || config.node_ip6 != [0; 16])
}

/// Records in `verdicts` that netfilter passed the flow direction `key`
/// (`tcp`: a TCP flow; `identity`: the packet's probe identity, TCP only), asking the
/// agent (`notify`) to make a new TCP verdict's conntrack entry liberal.
#[inline(always)]
fn record<K: Copy>(
    verdicts: &Verdicts<K>,
    key: K,
    tcp: bool,
    tcp_control: bool,
    identity: Option<([u8; 2], [u8; 4])>,
    config: &NodeConfig,
    notify: impl FnOnce(K) -> Result<(), i32>,
) -> (Reason, bool) {
    if tcp_control {
        // SYN, FIN and RST always take the kernel path; a closing
        // connection's verdict ends with it.
        end_verdict_in(verdicts, key);
        return (Reason::TcpControl, false);
    }
    let now = verdict_clock();
    // Kept across a re-learned verdict: a probe still on its way is
    // recognised whatever happened to the verdict meanwhile.
    let mut probe_state = FlowVerdict::default();
    let mut was_probe = false;
    if let Some(recorded) = verdicts.get_ptr_mut(key) {
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
    if verdicts.insert(key, verdict, u64::from(BPF_ANY)).is_err() {
        return (Reason::UpdateFailed, was_probe);
    }
    if !tcp {
        return (Reason::Learned, was_probe);
    }
    // Recorded before the agent is asked, so its confirmation finds it.
    if notify(key).is_err() {
        // Nobody will confirm it: forget it, so the next marked packet
        // asks again.
        end_verdict_in(verdicts, key);
        return (Reason::NotifyFailed, was_probe);
    }
    (Reason::LearnedPending, was_probe)
}
