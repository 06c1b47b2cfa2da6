//! Netfilter stays the authority. A packet is fast-pathed only when this
//! node's netfilter has already passed its flow unchanged: established in
//! conntrack, no NAT, no helper, under the ruleset in force now, and
//! recently enough that conntrack still holds it. `tc_verdict` (verdict.rs)
//! records that from the mark the agent's nftables rule sets on such
//! packets; this module reads it back. Everything else takes the kernel
//! path, where netfilter decides.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use weft_common::{FlowKey, NodeConfig};

use crate::{
    maps::FLOWS,
    parse::{IP_MF_OFFSET_MASK, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN, ptr_at},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// SYN, FIN and RST open and close connections: conntrack must see them, or
/// it would keep closed connections and miss new ones.
const TCP_CONTROL_FLAGS: u8 = 0x07;
/// The TCP flags byte's offset in the header.
const TCP_FLAGS_OFFSET: usize = 13;

/// Why netfilter's word does not cover a packet.
#[derive(Clone, Copy)]
pub enum Unverified {
    /// No verdict recorded for this flow direction.
    NoVerdict,
    /// Recorded under a ruleset that has changed since.
    RulesetChanged,
    /// Recorded longer ago than the re-check interval.
    Recheck,
    /// TCP SYN, FIN or RST.
    TcpControl,
    /// Not TCP, UDP or ICMP echo; or IPv4 options or a fragment.
    NotAFlow,
}

/// A packet's flow direction, and whether it opens or closes a TCP
/// connection (SYN, FIN or RST).
pub struct Flow {
    pub key: FlowKey,
    pub tcp_control: bool,
}

/// The flow of the IPv4 packet whose header is at `ip` (bounds-checked by
/// the caller), with its transport header inside `[.., end)`.
#[inline(always)]
pub fn flow_of(ip: *const Ipv4Hdr, end: usize) -> Result<Flow, Unverified> {
    // SAFETY: the caller proved the IPv4 header inside the packet.
    let header = unsafe { &*ip };
    // Options would move the transport header; fragments after the first
    // carry none. Both are rare between pods: the kernel path takes them.
    if header.vihl != 0x45 || u16::from_be_bytes(header.frags) & IP_MF_OFFSET_MASK != 0 {
        return Err(Unverified::NotAFlow);
    }
    let l4 = ip as usize + IPV4_LEN;
    let mut tcp_control = false;
    let (sport, dport) = match header.proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(l4, end, 0).ok_or(Unverified::NotAFlow)?;
            // SAFETY: the whole TCP header is inside the packet; the flags
            // are one byte, read directly rather than through the bitfield.
            let flags = unsafe { *((tcp as usize + TCP_FLAGS_OFFSET) as *const u8) };
            tcp_control = flags & TCP_CONTROL_FLAGS != 0;
            unsafe { ((*tcp).source, (*tcp).dest) }
        }
        IPPROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(l4, end, 0).ok_or(Unverified::NotAFlow)?;
            unsafe { ((*udp).src, (*udp).dst) }
        }
        IPPROTO_ICMP => {
            let icmp = ptr_at::<Icmpv4Hdr>(l4, end, 0).ok_or(Unverified::NotAFlow)?;
            let icmp = unsafe { &*icmp };
            // Echo is a flow to conntrack (keyed by its identifier); errors
            // are RELATED to another flow and carry headers NAT may rewrite.
            if icmp.type_ != ICMP_ECHO_REQUEST && icmp.type_ != ICMP_ECHO_REPLY {
                return Err(Unverified::NotAFlow);
            }
            ([icmp.data[0], icmp.data[1]], [0, 0])
        }
        _ => return Err(Unverified::NotAFlow),
    };
    Ok(Flow {
        key: FlowKey {
            saddr: header.src_addr,
            daddr: header.dst_addr,
            sport,
            dport,
            proto: header.proto,
            _pad: [0; 3],
        },
        tcp_control,
    })
}

/// Whether netfilter has passed the flow of the packet at `ip` unchanged,
/// under the current ruleset, within the re-check interval.
#[inline(always)]
pub fn netfilter_passed(
    ip: *const Ipv4Hdr,
    end: usize,
    config: &NodeConfig,
) -> Result<(), Unverified> {
    let flow = flow_of(ip, end)?;
    let key = flow.key;
    if flow.tcp_control {
        // A closing connection's verdict ends here: a later segment with
        // the same ports belongs to a new connection netfilter must see.
        let _ = FLOWS.remove(key);
        return Err(Unverified::TcpControl);
    }
    // SAFETY: a plain lookup; the value is copied out at once.
    let verdict = unsafe { FLOWS.get(key) }
        .copied()
        .ok_or(Unverified::NoVerdict)?;
    if verdict.generation != config.ruleset_generation {
        return Err(Unverified::RulesetChanged);
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(verdict.seen_ns) > config.verdict_ttl_ns {
        return Err(Unverified::Recheck);
    }
    Ok(())
}
