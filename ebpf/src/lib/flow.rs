//! Netfilter stays the authority. A packet is fast-pathed only when this
//! node's netfilter has already passed its flow unchanged: established in
//! conntrack, no NAT, no helper, under the ruleset in force now, and
//! recently enough that conntrack still holds it. `tc_verdict` (programs/tc_verdict.rs)
//! records that from the mark the agent's nftables rule sets on such
//! packets; this module reads it back. A TCP verdict counts only once the
//! agent has made the flow's conntrack entry liberal and confirmed it
//! (conntrack does not see the segments the fast path carries; strict
//! window tracking would call the next one it sees INVALID). Everything
//! else takes the kernel path, where netfilter decides.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use weft_common::{
    CONFIG_VERDICT_PROBES, FLOW_PENDING, FlowKey, NodeConfig, PROBE_OUTSTANDING, Reason,
};

use crate::lib::{
    headers::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_NO_OPTIONS, is_fragment, ptr_at},
    maps::FLOWS,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// SYN, FIN and RST open and close connections: conntrack must see them, or
/// it would keep closed connections and miss new ones.
const TCP_CONTROL_FLAGS: u8 = 0x07;
/// The TCP flags byte's offset in the header.
const TCP_FLAGS_OFFSET: usize = 13;

/// A packet's flow direction, and whether it opens or closes a TCP
/// connection (SYN, FIN or RST).
pub struct Flow {
    pub key: FlowKey,
    pub tcp_control: bool,
}

/// The flow of the IPv4 packet whose header is at `ip` (bounds-checked by
/// the caller), with its transport header inside `[.., end)`; `None` if it
/// is not TCP, UDP or ICMP echo, or has IPv4 options or is fragmented.
#[inline(always)]
pub fn flow_of(ip: *const Ipv4Hdr, end: usize) -> Option<Flow> {
    // SAFETY: the caller proved the IPv4 header inside the packet.
    let header = unsafe { &*ip };
    // Options would move the transport header; fragments after the first
    // carry none. Both are rare between pods: the kernel path takes them.
    if header.vihl != IPV4_NO_OPTIONS || is_fragment(header) {
        return None;
    }
    let l4 = ip as usize + Ipv4Hdr::LEN;
    let mut tcp_control = false;
    let (mut icmp_type, mut icmp_code) = (0, 0);
    let (sport, dport) = match header.proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(l4, end, 0)?;
            // SAFETY: the whole TCP header is inside the packet; the flags
            // are one byte, read directly rather than through the bitfield.
            let flags = unsafe { *((tcp as usize + TCP_FLAGS_OFFSET) as *const u8) };
            tcp_control = flags & TCP_CONTROL_FLAGS != 0;
            unsafe { ((*tcp).source, (*tcp).dest) }
        }
        IPPROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(l4, end, 0)?;
            unsafe { ((*udp).src, (*udp).dst) }
        }
        IPPROTO_ICMP => {
            let icmp = ptr_at::<Icmpv4Hdr>(l4, end, 0)?;
            let icmp = unsafe { &*icmp };
            // Echo is a flow to conntrack (keyed by its identifier); errors
            // are RELATED to another flow and carry headers NAT may rewrite.
            if icmp.type_ != ICMP_ECHO_REQUEST && icmp.type_ != ICMP_ECHO_REPLY {
                return None;
            }
            // A request and a reply the same way are different conntrack
            // flows (A pings B; B pings A): the type keeps them apart.
            (icmp_type, icmp_code) = (icmp.type_, icmp.code);
            ([icmp.data[0], icmp.data[1]], [0, 0])
        }
        _ => return None,
    };
    Some(Flow {
        key: FlowKey {
            saddr: header.src_addr,
            daddr: header.dst_addr,
            sport,
            dport,
            proto: header.proto,
            icmp_type,
            icmp_code,
            _pad: 0,
        },
        tcp_control,
    })
}

/// The verdict clock: `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC as of the
/// last timekeeping update: no clock source read per packet). It lags the
/// real time by less than two ticks; the agent takes two ticks off the TTL
/// it writes (`NodeConfig::verdict_ttl_ns`), so a verdict never outlives
/// its TTL in real time.
#[inline(always)]
pub fn verdict_clock() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The IPv4 identification and TCP sequence number (as on the wire) of
/// the TCP packet at `ip` (bounds-checked by the caller, without options):
/// what tells a probe from the flow's other packets.
#[inline(always)]
pub fn probe_identity(ip: *const Ipv4Hdr, end: usize) -> Option<([u8; 2], [u8; 4])> {
    let tcp = ptr_at::<TcpHdr>(ip as usize + Ipv4Hdr::LEN, end, 0)?;
    // SAFETY: both headers are inside the packet.
    unsafe { Some(((*ip).id, (*tcp).seq)) }
}

/// Ends `key`'s verdict (a FIN or RST). With a probe on its way, the
/// record stays, voided (pending, seen at time 0: never current again),
/// so that `tc_verdict` still knows the probe when it arrives and drops
/// it; otherwise it is removed.
#[inline(always)]
pub fn end_verdict(key: FlowKey) {
    if let Some(verdict) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let verdict = unsafe { &mut *verdict };
        if verdict.probe_state == PROBE_OUTSTANDING {
            verdict.state = FLOW_PENDING;
            verdict.seen_ns = 0;
            return;
        }
    }
    let _ = FLOWS.remove(key);
}

/// Whether netfilter has passed the flow of the packet at `ip` unchanged,
/// under the current ruleset, within the re-check interval, and (TCP) the
/// agent has made its conntrack entry liberal; else the reason the packet
/// goes through netfilter (the same for every hook). When it has: whether
/// the (TCP) verdict is due a probe (past half its TTL, see
/// lib/probe.rs), which the caller sends if it can.
#[inline(always)]
pub fn netfilter_passed(
    ip: *const Ipv4Hdr,
    end: usize,
    config: &NodeConfig,
) -> Result<bool, Reason> {
    // No accept bit: another rule uses it, and no verdict is recorded.
    if config.accept_mark == 0 {
        return Err(Reason::PassVerdictsSuspended);
    }
    let flow = flow_of(ip, end).ok_or(Reason::PassNotAFlow)?;
    let key = flow.key;
    if flow.tcp_control {
        // A closing connection's verdict ends here: a later segment with
        // the same ports belongs to a new connection netfilter must see.
        end_verdict(key);
        return Err(Reason::PassTcpControl);
    }
    // SAFETY: a plain lookup; the value is copied out at once.
    let verdict = unsafe { FLOWS.get(key) }
        .copied()
        .ok_or(Reason::PassNoVerdict)?;
    let now = verdict_clock();
    verdict.is_current(config, || now)?;
    Ok(key.proto == IPPROTO_TCP
        && config.flags & CONFIG_VERDICT_PROBES != 0
        && verdict.probe_due(config, now))
}
