//! Renewing a live TCP verdict without taking its flow off the fast path.
//!
//! A verdict lapses at its TTL; the flow's next packet then goes through
//! netfilter and (TCP) waits for the agent to confirm the re-learned
//! verdict, while the packets after it overtake it once the fast path
//! resumes: the receiver sees reordering. Instead, once a confirmed TCP
//! verdict is past half its TTL, the program that forwards a packet of the
//! flow sends a *clone* of it (the probe) through the kernel path and
//! forwards the packet itself on the fast path. Netfilter judges the probe
//! as it would the packet (conntrack sees it and stays fresh); if it
//! passes unchanged, `tc_verdict` renews the verdict in place, then drops
//! the probe, so no duplicate reaches a pod or the wire. A probe
//! netfilter drops or changes renews nothing: the verdict expires at its
//! TTL, as without probes.
//!
//! How the probe is told apart:
//! - Coming back into the hook that cloned it (the clone is injected into
//!   the same device's ingress), by the accept bit: no packet from a pod
//!   (the veth scrubs the mark) or from the wire carries a mark, so it can
//!   only be the probe. The bit is cleared before the kernel path sees it.
//! - At `tc_verdict`, by what `FLOWS` (`FLOWS6`) records: the flow's
//!   outstanding probe's IPv4 identification (IPv6: the low bits of its
//!   TCP timestamp) and TCP sequence number. No mark, which netfilter
//!   rules may rewrite. A real packet of the flow matching both would be a
//!   byte-for-byte repeat of the segment whose original already took the
//!   fast path (Linux gives every transmission a new IP ID, and a new
//!   timestamp unless within the same millisecond); at most one is taken
//!   per probe, and only while one is outstanding.
//! - At `tc_verdict` again, the fast path's own packets are known without
//!   that look-up: `tc_pod_egress` writes [`FAST_PATH_SENT`] into the skb's
//!   control block of each packet it sends out of a device where
//!   `tc_verdict` runs, except the one whose clone it just sent as a probe
//!   (that original must meet `tc_verdict`'s probe logic). A probe is
//!   cloned before the word is written and goes through the kernel path,
//!   whose IPv4, IPv6 and bridge layers overwrite those bytes with values
//!   that cannot spell it, so no probe carries it.
//!
//! UDP and ICMP are not probed: a probe that escaped would hand the
//! application a duplicate datagram, while their verdicts re-learn
//! without the agent (only the one packet that finds the verdict expired
//! takes the kernel path).

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg};

use aya_ebpf::{bindings::BPF_F_INGRESS, programs::TcContext};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use weft_common::{FAST_PATH_SENT, NodeConfig, PROBE_ORIGINAL_AHEAD, PROBE_OUTSTANDING, Reason};

use crate::lib::{
    flow::{Verdicts, flow_of, flow_of6, probe_identity, probe_identity6, verdict_clock},
    headers::IPPROTO_TCP,
    maps::{FLOWS, FLOWS6, PROBE_CLOCK},
};

/// Whether the packet in `ctx` is a probe coming back into the hook that
/// cloned it (it carries the accept bit); if so, the bit is cleared, and
/// the kernel path takes it from here.
#[inline(always)]
pub fn returning(ctx: &TcContext, config: &NodeConfig) -> bool {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if config.accept_mark == 0 || mark & config.accept_mark == 0 {
        return false;
    }
    ctx.set_mark(mark & !config.accept_mark);
    true
}

/// Claims the probe for the flow of the TCP packet at `ip` (bounds-checked
/// by the caller) if its verdict is current and due one: records the
/// packet's identification as the outstanding probe. One CPU wins the
/// claim (compare-and-swap on the probe time); `true` means the caller
/// must now send the probe with [`send`]. `original_meets_verdict`: the
/// packet itself will leave through a device where `tc_verdict` runs
/// (host-gw, out of the uplink; to `flannel-v6.<VNI>`), ahead of the
/// probe, and must pass there ([`PROBE_ORIGINAL_AHEAD`]).
#[inline(always)]
pub fn claim(
    ip: *const Ipv4Hdr,
    end: usize,
    config: &NodeConfig,
    original_meets_verdict: bool,
) -> bool {
    let Some(flow) = flow_of(ip, end) else {
        return false;
    };
    if flow.key.proto != IPPROTO_TCP || flow.tcp_control {
        return false;
    }
    let Some(identity) = probe_identity(ip, end) else {
        return false;
    };
    claim_in(&FLOWS, flow.key, identity, config, original_meets_verdict)
}

/// [`claim`] for the IPv6 packet at `ip`, by FLOWS6 and
/// [`probe_identity6`].
#[inline(always)]
pub fn claim6(
    ip: *const Ipv6Hdr,
    end: usize,
    config: &NodeConfig,
    original_meets_verdict: bool,
) -> bool {
    let Some(flow) = flow_of6(ip, end) else {
        return false;
    };
    if flow.key.proto != IPPROTO_TCP || flow.tcp_control {
        return false;
    }
    let Some(identity) = probe_identity6(ip, end) else {
        return false;
    };
    claim_in(&FLOWS6, flow.key, identity, config, original_meets_verdict)
}

/// Claims the probe for the flow `key` in `verdicts`, recording the
/// packet's `(id, seq)` identity (see [`claim`]).
#[inline(always)]
fn claim_in<K>(
    verdicts: &Verdicts<K>,
    key: K,
    (id, seq): ([u8; 2], [u8; 4]),
    config: &NodeConfig,
    original_meets_verdict: bool,
) -> bool {
    let Some(verdict) = verdicts.get_ptr_mut(&key) else {
        return false;
    };
    let now = verdict_clock();
    // SAFETY: a pointer into the map's value, valid for this program run;
    // the probe time is a naturally aligned u64 (the value is 8-aligned).
    let verdict = unsafe { &mut *verdict };
    if verdict.is_current(config, || now).is_err() || !verdict.probe_due(config, now) {
        return false;
    }
    let sent_before = verdict.probe_ns;
    // The target has no `AtomicU64::compare_exchange` (Rust assumes eBPF
    // without CAS); the kernel's BPF_CMPXCHG is what this compiles to.
    // SAFETY: an aligned u64 in the map value.
    let (_, claimed) = unsafe {
        atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(&raw mut verdict.probe_ns, sent_before, now)
    };
    if !claimed {
        // Another CPU is sending this flow's probe.
        return false;
    }
    verdict.probe_id = id;
    verdict.probe_seq = seq;
    verdict.probe_state = if original_meets_verdict {
        PROBE_ORIGINAL_AHEAD
    } else {
        PROBE_OUTSTANDING
    };
    // Opens tc_verdict's look-out for probes netfilter passed unmarked.
    if let Some(clock) = PROBE_CLOCK.get_ptr_mut(0) {
        // SAFETY: one u64 slot; a racing writer writes a time as recent.
        unsafe { *clock = now };
    }
    true
}

/// Sends the probe claimed for the packet in `ctx`: a clone into the
/// ingress of the device the packet arrived on, carrying the accept bit
/// so that the program there hands it to the kernel path ([`returning`]).
/// The packet's own headers are then made private again (the clone shares
/// its data), so the fast path's rewrites do not reach the probe. The
/// reason: `ProbeSent`, or `ProbeFailed`.
#[inline(always)]
pub fn send(ctx: &mut TcContext, config: &NodeConfig) -> Reason {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let (mark, ifindex) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ifindex) };
    ctx.set_mark(mark | config.accept_mark);
    let sent = ctx.clone_redirect(ifindex, u64::from(BPF_F_INGRESS));
    ctx.set_mark(mark);
    // Unclones the linear part (skb_ensure_writable): the direct writes
    // that follow (MACs, TTL) must not change the probe's headers.
    let _ = ctx.pull_data(0);
    if sent.is_ok() {
        Reason::ProbeSent
    } else {
        Reason::ProbeFailed
    }
}

/// Writes [`FAST_PATH_SENT`] into the packet in `ctx`: sent by the fast
/// path.
#[inline(always)]
pub fn mark_sent_by_fast_path(ctx: &TcContext) {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us; cb is
    // writable from TC.
    unsafe {
        (*ctx.skb.skb).cb[0] = FAST_PATH_SENT[0];
        (*ctx.skb.skb).cb[1] = FAST_PATH_SENT[1];
    }
}

/// Whether the packet in `ctx` carries [`FAST_PATH_SENT`]; if so, the word
/// is cleared, so that it never outlives this device's egress.
#[inline(always)]
pub fn take_sent_by_fast_path(ctx: &TcContext) -> bool {
    // SAFETY: as in mark_sent_by_fast_path.
    unsafe {
        let skb = ctx.skb.skb;
        if (*skb).cb[0] != FAST_PATH_SENT[0] || (*skb).cb[1] != FAST_PATH_SENT[1] {
            return false;
        }
        (*skb).cb[0] = 0;
        (*skb).cb[1] = 0;
    }
    true
}

/// Whether some probe was sent within the last TTL: only then does
/// `tc_verdict` look for probes among unmarked packets.
#[inline(always)]
pub fn recently_sent(config: &NodeConfig) -> bool {
    PROBE_CLOCK.get(0).is_some_and(|sent| {
        *sent != 0 && verdict_clock().wrapping_sub(*sent) <= config.verdict_ttl_ns
    })
}
