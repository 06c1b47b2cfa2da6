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

use aya_ebpf::{btf_maps::LruHashMap, helpers::bpf_ktime_get_coarse_ns};
use network_types::{
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use weft_common::{
    CONFIG_VERDICT_PROBES, FLOW_PENDING, FlowKey, FlowKey6, FlowVerdict, MAX_FLOWS, NodeConfig,
    Reason,
};

use crate::lib::{
    headers::{
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_NO_OPTIONS,
        TCP_TIMESTAMP_LEAD_LEN, is_fragment, ptr_at,
    },
    maps::{FLOWS, FLOWS6},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
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

/// The same for an IPv6 packet.
pub struct Flow6 {
    pub key: FlowKey6,
    pub tcp_control: bool,
}

/// What a flow's transport header says: its ports (for ICMP echo, the
/// identifier), the ICMP type and code (zero for TCP and UDP), and
/// whether it is a TCP SYN, FIN or RST.
struct Transport {
    sport: [u8; 2],
    dport: [u8; 2],
    icmp_type: u8,
    icmp_code: u8,
    tcp_control: bool,
}

/// ICMP as a family speaks it: its protocol number and echo types.
struct IcmpEcho {
    proto: u8,
    request: u8,
    reply: u8,
}

const ICMPV4_ECHO: IcmpEcho = IcmpEcho {
    proto: IPPROTO_ICMP,
    request: ICMP_ECHO_REQUEST,
    reply: ICMP_ECHO_REPLY,
};
const ICMPV6_ECHO: IcmpEcho = IcmpEcho {
    proto: IPPROTO_ICMPV6,
    request: ICMPV6_ECHO_REQUEST,
    reply: ICMPV6_ECHO_REPLY,
};

/// The transport header of protocol `proto` at `l4`, inside `[.., end)`:
/// TCP, UDP or the family's ICMP echo; `None` for anything else.
#[inline(always)]
fn transport_of(l4: usize, end: usize, proto: u8, icmp: &IcmpEcho) -> Option<Transport> {
    let mut transport = Transport {
        sport: [0; 2],
        dport: [0; 2],
        icmp_type: 0,
        icmp_code: 0,
        tcp_control: false,
    };
    match proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(l4, end, 0)?;
            // SAFETY: the whole TCP header is inside the packet; the flags
            // are one byte, read directly rather than through the bitfield.
            let flags = unsafe { *((tcp as usize + TCP_FLAGS_OFFSET) as *const u8) };
            transport.tcp_control = flags & TCP_CONTROL_FLAGS != 0;
            unsafe { (transport.sport, transport.dport) = ((*tcp).source, (*tcp).dest) };
        }
        IPPROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(l4, end, 0)?;
            unsafe { (transport.sport, transport.dport) = ((*udp).src, (*udp).dst) };
        }
        _ if proto == icmp.proto => {
            // ICMPv4 and ICMPv6 share the layout of the first 8 bytes.
            let header = ptr_at::<Icmpv4Hdr>(l4, end, 0)?;
            let header = unsafe { &*header };
            // Echo is a flow to conntrack (keyed by its identifier); errors
            // are RELATED to another flow and carry headers NAT may rewrite,
            // and IPv6 neighbour discovery is the kernel's.
            if header.type_ != icmp.request && header.type_ != icmp.reply {
                return None;
            }
            // A request and a reply the same way are different conntrack
            // flows (A pings B; B pings A): the type keeps them apart.
            (transport.icmp_type, transport.icmp_code) = (header.type_, header.code);
            transport.sport = [header.data[0], header.data[1]];
        }
        _ => return None,
    }
    Some(transport)
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
    let transport = transport_of(l4, end, header.proto, &ICMPV4_ECHO)?;
    Some(Flow {
        key: FlowKey {
            saddr: header.src_addr,
            daddr: header.dst_addr,
            sport: transport.sport,
            dport: transport.dport,
            proto: header.proto,
            icmp_type: transport.icmp_type,
            icmp_code: transport.icmp_code,
            _pad: 0,
        },
        tcp_control: transport.tcp_control,
    })
}

/// The flow of the IPv6 packet whose header is at `ip` (bounds-checked by
/// the caller); `None` unless the transport header follows the IPv6 header
/// directly: extension headers (fragments among them) are rare between
/// pods and the kernel path takes them.
#[inline(always)]
pub fn flow_of6(ip: *const Ipv6Hdr, end: usize) -> Option<Flow6> {
    // SAFETY: the caller proved the IPv6 header inside the packet.
    let header = unsafe { &*ip };
    let l4 = ip as usize + Ipv6Hdr::LEN;
    let transport = transport_of(l4, end, header.next_hdr, &ICMPV6_ECHO)?;
    Some(Flow6 {
        key: FlowKey6 {
            saddr: header.src_addr,
            daddr: header.dst_addr,
            sport: transport.sport,
            dport: transport.dport,
            proto: header.next_hdr,
            icmp_type: transport.icmp_type,
            icmp_code: transport.icmp_code,
            _pad: 0,
        },
        tcp_control: transport.tcp_control,
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
/// what tells a probe from the flow's other packets. Linux gives every
/// transmission a new identification, so a repeat of the segment is not
/// taken for its probe.
#[inline(always)]
pub fn probe_identity(ip: *const Ipv4Hdr, end: usize) -> Option<([u8; 2], [u8; 4])> {
    let tcp = ptr_at::<TcpHdr>(ip as usize + Ipv4Hdr::LEN, end, 0)?;
    // SAFETY: both headers are inside the packet.
    unsafe { Some(((*ip).id, (*tcp).seq)) }
}

/// [`probe_identity`] for the IPv6 TCP packet at `ip` (bounds-checked by
/// the caller; its TCP header follows it, as [`flow_of6`] requires): IPv6
/// has no identification, so the low 16 bits of the TCP timestamp (TSval)
/// stand in, where the segment leads its options with one as Linux does
/// (else zero), next to the sequence number. A repeat of the segment
/// carries a new timestamp unless sent within the same tick of the
/// sender's TCP clock (1 ms); only such a repeat, passing the kernel path
/// in the microseconds a probe is on its way, would be taken for it, and
/// lost once. `None` where the options announced are not in the linear
/// part: every caller pulls [`TCP_TIMESTAMP_LEAD_LEN`] bytes past the TCP
/// header, so the sender and `tc_verdict` read the same identity.
#[inline(always)]
pub fn probe_identity6(ip: *const Ipv6Hdr, end: usize) -> Option<([u8; 2], [u8; 4])> {
    const TIMESTAMP_LEAD: [u8; 4] = [1, 1, 8, 10];
    let tcp = ptr_at::<TcpHdr>(ip as usize + Ipv6Hdr::LEN, end, 0)?;
    // SAFETY: the TCP header is inside the packet.
    let (seq, options_len) = unsafe { ((*tcp).seq, usize::from((*tcp).doff()) * 4) };
    if options_len < TcpHdr::LEN + TCP_TIMESTAMP_LEAD_LEN {
        return Some(([0; 2], seq));
    }
    let lead = ptr_at::<[u8; TCP_TIMESTAMP_LEAD_LEN]>(tcp as usize, end, TcpHdr::LEN)?;
    // SAFETY: inside the packet.
    let lead = unsafe { &*lead };
    if lead[..4] != TIMESTAMP_LEAD {
        return Some(([0; 2], seq));
    }
    Some(([lead[6], lead[7]], seq))
}

/// A verdict map: FLOWS (IPv4) or FLOWS6 (IPv6).
pub type Verdicts<K> = LruHashMap<K, FlowVerdict, { MAX_FLOWS as usize }>;

/// Ends `key`'s verdict (a FIN or RST) in `verdicts`. With a probe on its
/// way, the record stays, voided (pending, seen at time 0: never current
/// again), so that `tc_verdict` still knows the probe when it arrives and
/// drops it; otherwise it is removed.
#[inline(always)]
pub fn end_verdict_in<K>(verdicts: &Verdicts<K>, key: K) {
    if let Some(verdict) = verdicts.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let verdict = unsafe { &mut *verdict };
        if verdict.probe_outstanding() {
            verdict.state = FLOW_PENDING;
            verdict.seen_ns = 0;
            return;
        }
    }
    let _ = verdicts.remove(&key);
}

/// The current verdict for the flow `key` in `verdicts` (a SYN, FIN or
/// RST, `tcp_control`, ends it instead), or the reason the packet goes
/// through netfilter. The caller has checked that verdicts are recorded
/// at all (an accept bit).
#[inline(always)]
fn current_verdict<K>(
    verdicts: &Verdicts<K>,
    key: K,
    tcp_control: bool,
    config: &NodeConfig,
) -> Result<(FlowVerdict, u64), Reason> {
    if tcp_control {
        // A closing connection's verdict ends here: a later segment with
        // the same ports belongs to a new connection netfilter must see.
        end_verdict_in(verdicts, key);
        return Err(Reason::PassTcpControl);
    }
    // SAFETY: a plain lookup; the value is copied out at once.
    let verdict = unsafe { verdicts.get(&key) }
        .copied()
        .ok_or(Reason::PassNoVerdict)?;
    let now = verdict_clock();
    verdict.is_current(config, || now)?;
    Ok((verdict, now))
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
    let (verdict, now) = current_verdict(&FLOWS, key, flow.tcp_control, config)?;
    Ok(key.proto == IPPROTO_TCP
        && config.flags & CONFIG_VERDICT_PROBES != 0
        && verdict.probe_due(config, now))
}

/// [`netfilter_passed`] for the IPv6 packet at `ip`, by FLOWS6.
#[inline(always)]
pub fn netfilter_passed6(
    ip: *const Ipv6Hdr,
    end: usize,
    config: &NodeConfig,
) -> Result<bool, Reason> {
    if config.accept_mark == 0 {
        return Err(Reason::PassVerdictsSuspended);
    }
    let flow = flow_of6(ip, end).ok_or(Reason::PassNotAFlow)?;
    let key = flow.key;
    let (verdict, now) = current_verdict(&FLOWS6, key, flow.tcp_control, config)?;
    Ok(key.proto == IPPROTO_TCP
        && config.flags & CONFIG_VERDICT_PROBES != 0
        && verdict.probe_due(config, now))
}
