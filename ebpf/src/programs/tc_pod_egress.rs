//! `tc_pod_egress`: TC ingress on the host side of every pod veth (traffic
//! leaving a pod). To a local pod -> straight into its veth; to a host-gw
//! peer -> routed to the peer node's MAC out of the uplink; to a VXLAN peer
//! -> encapsulated and redirected to the uplink (IPv4; IPv6 is handed
//! straight to `flannel-v6.<VNI>`, which encapsulates it); anything else
//! -> the kernel path (`TCX_NEXT`: the next TCX program, the classic
//! filters),
//! counted by reason. Where tc acts on the pod's traffic (lib/tc.rs), it
//! is handed on untouched. Dropped, counted: VXLAN from the pod, and ARP
//! in which it claims the gateway's or another local pod's address.
//!
//! It also sends the probes that renew the verdicts of the flows it
//! forwards (lib/probe.rs): a clone back into the pod veth's ingress,
//! which comes back through here and is handed to the kernel path.

use aya_ebpf::{
    bindings::TC_ACT_SHOT, helpers::bpf_redirect, maps::lpm_trie::Key, programs::TcContext,
};
use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use weft_common::{Endpoint, EndpointKey, EndpointKey6, Hook, NodeConfig, Peer6, PeerMode, Reason};

use crate::lib::{
    counters::{Verdict, count},
    delivery::redirect_into_pod,
    encap::encapsulate,
    flow::{netfilter_passed, netfilter_passed6},
    headers::{
        ENCAP_LEN, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, PLAIN_HEADERS_LEN_IPV4,
        PLAIN_HEADERS_LEN_IPV6, VXLAN6_ENCAP_LEN, ptr_at, pull_headers,
    },
    l3::{decrement_ttl, ipv4_l3, ipv6_l3},
    maps::{ENDPOINTS, ENDPOINTS6, PEERS, PEERS6, node_config},
    mtu::fits,
    probe,
    tc::{TCX_NEXT, encap_allowed, receiving_allowed, sending_allowed},
};

const HOOK: Hook = Hook::TcPodEgress;

const fn pass(reason: Reason) -> Verdict<i32> {
    Verdict {
        action: TCX_NEXT,
        reason,
    }
}

#[inline(always)]
pub fn run(ctx: &mut TcContext) -> i32 {
    let len = u64::from(ctx.len());
    count(HOOK, Reason::Seen, len);
    let Some(config) = node_config() else {
        count(HOOK, Reason::PassNoConfig, len);
        return TCX_NEXT;
    };
    if probe::returning(ctx, config) {
        count(HOOK, Reason::ProbeReturned, len);
        return TCX_NEXT;
    }
    let mut verdict = decide(ctx, config, true);
    let probe_sent = verdict.reason == Reason::ProbeSent;
    if probe_sent {
        // Claimed: the clone goes first, untouched; then this packet is
        // forwarded as it would have been (its verdict is still current).
        count(HOOK, probe::send(ctx, config), len);
        verdict = decide(ctx, config, false);
    }
    let Verdict { action, reason } = verdict;
    // Out of a device where tc_verdict runs: tell it this is no probe,
    // except for the original of the probe just sent, which must meet
    // tc_verdict's probe logic there.
    if !probe_sent
        && matches!(
            reason,
            Reason::HostGw | Reason::Encap | Reason::HostGwIpv6 | Reason::EncapIpv6
        )
    {
        probe::mark_sent_by_fast_path(ctx);
    }
    count(HOOK, reason, len);
    action
}

/// What to do with the packet in `ctx`, and why. With `may_probe`, a
/// packet whose verdict is due a probe and that won the claim returns
/// `ProbeSent` (`TCX_NEXT`) untouched, for the caller to send the probe
/// and decide again without.
#[inline(always)]
fn decide(ctx: &mut TcContext, config: &NodeConfig, may_probe: bool) -> Verdict<i32> {
    // The headers may sit in a non-linear part of the skb; pull them in
    // (with the transport header: the flow's ports and TCP flags) if so.
    pull_headers(ctx, PLAIN_HEADERS_LEN_IPV4);
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = ptr_at::<EthHdr>(data, end, 0) else {
        return pass(Reason::PassTruncated);
    };
    // SAFETY: every pointer comes from ptr_at, inside the packet.
    let eth = unsafe { &mut *eth };
    if eth.ether_type == ETH_P_IPV6 {
        return decide_ipv6(ctx, config, may_probe);
    }
    if eth.ether_type != ETH_P_IPV4 {
        // Inside the branch IPv4 never takes: not a compare more per packet.
        if eth.ether_type == ETH_P_ARP {
            return arp_claim(ctx, data, end, config);
        }
        return pass(Reason::PassNotIpv4);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, EthHdr::LEN) else {
        return pass(Reason::PassTruncated);
    };
    let ip = unsafe { &mut *ip };
    if ip.version() != 4 {
        return pass(Reason::PassNotIpv4);
    }
    let destination = ip.dst_addr;
    // First, before anything hands the packet to the kernel: a pod has no
    // business speaking VXLAN, whatever address it sends to or from.
    if is_vxlan(ctx, ip, config) {
        return DROP_VXLAN_FROM_POD;
    }
    let sender = ENDPOINTS.get_ptr(EndpointKey { addr: ip.src_addr });
    if let Err(reason) = sent_as_itself(ctx, sender, eth.src_addr, config) {
        return pass(reason);
    }

    if let Some(endpoint) = ENDPOINTS.get_ptr(EndpointKey { addr: destination }) {
        let endpoint = unsafe { *endpoint };
        if let Err(reason) = receiving_allowed(&endpoint) {
            return pass(reason);
        }
        // Same node: the bridge's netfilter (br_netfilter) or the forward
        // path decides, as for any other flow.
        match netfilter_passed(ip, end, config) {
            Err(reason) => return pass(reason),
            // Into the pod with `bpf_redirect_peer`: no egress on the way.
            Ok(probe_due) if may_probe && probe_due && probe::claim(ip, end, config, false) => {
                return pass(Reason::ProbeSent);
            }
            Ok(_) => {}
        }
        // Sent to the gateway, the kernel would route it (TTL - 1, from the
        // gateway's MAC); sent to the pod's own MAC, the bridge would switch
        // it untouched. Do the same.
        if eth.dst_addr == config.gateway_mac {
            if ip.ttl <= 1 {
                return pass(Reason::PassTtlExpired);
            }
            ipv4_l3(eth, ip, endpoint.mac, config.gateway_mac);
        }
        return Verdict {
            action: redirect_into_pod(&endpoint),
            reason: Reason::LocalRedirect,
        };
    }

    let Some(peer) = PEERS.get(&Key::new(32, destination)).copied() else {
        return pass(Reason::PassNoRoute);
    };
    if peer.nexthop_mac == [0; 6] {
        // The agent has not resolved the underlay neighbour yet; the kernel
        // path resolves it meanwhile.
        return pass(Reason::PassNoNeighbour);
    }
    if ip.ttl <= 1 {
        return pass(Reason::PassTtlExpired);
    }
    // host-gw sends the packet itself out of the uplink, whose egress runs
    // tc_verdict, ahead of the probe; encapsulated, it is VXLAN there.
    let original_meets_verdict = peer.mode == PeerMode::HostGw as u8;
    match netfilter_passed(ip, end, config) {
        Err(reason) => return pass(reason),
        Ok(probe_due)
            if may_probe && probe_due && probe::claim(ip, end, config, original_meets_verdict) =>
        {
            return pass(Reason::ProbeSent);
        }
        Ok(_) => {}
    }
    let header_len = usize::from(ip.ihl());
    let protocol = ip.proto;
    if peer.mode == PeerMode::HostGw as u8 {
        // host-gw / DirectRouting: routed as is, to the peer node's MAC.
        if !fits(ctx, config, 0, header_len, protocol) {
            return pass(Reason::PassTooBig);
        }
        ipv4_l3(eth, ip, peer.nexthop_mac, config.uplink_mac);
        return to_uplink(config, Reason::HostGw);
    }
    if let Err(reason) = encap_allowed(config) {
        return pass(reason);
    }
    if !fits(ctx, config, ENCAP_LEN, header_len, protocol) {
        // The kernel path fragments it or answers ICMP "fragmentation needed".
        return pass(Reason::PassTooBig);
    }
    let inner_tos = ip.tos;
    decrement_ttl(ip);
    if encapsulate(ctx, config, &peer, inner_tos).is_none() {
        return pass(Reason::PassEncapFailed);
    }
    to_uplink(config, Reason::Encap)
}

/// [`decide`] for an IPv6 packet: the same checks, by the IPv6 maps, to a
/// local pod, a host-gw peer or (through `flannel-v6.<VNI>`, see
/// [`to_vxlan6`]) a VXLAN peer, probes included.
#[inline(always)]
fn decide_ipv6(ctx: &mut TcContext, config: &NodeConfig, may_probe: bool) -> Verdict<i32> {
    // With the timestamp option a probe's identity reads (lib/flow.rs).
    pull_headers(ctx, PLAIN_HEADERS_LEN_IPV6);
    let (data, end) = (ctx.data(), ctx.data_end());
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(data, end, 0),
        ptr_at::<Ipv6Hdr>(data, end, EthHdr::LEN),
    ) else {
        return pass(Reason::PassTruncated);
    };
    // SAFETY: both pointers come from ptr_at, inside the packet.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    if ip.version() != 6 {
        return pass(Reason::PassNotIpv4);
    }
    if is_vxlan_ipv6(ctx, ip, config) {
        return DROP_VXLAN_FROM_POD;
    }
    // Its link-local address (neighbour discovery among what it sends
    // from there) is in no map: the kernel's.
    let sender = ENDPOINTS6.get_ptr(EndpointKey6 { addr: ip.src_addr });
    if let Err(reason) = sent_as_itself(ctx, sender, eth.src_addr, config) {
        return pass(reason);
    }
    let destination = ip.dst_addr;
    if let Some(endpoint) = ENDPOINTS6.get_ptr(EndpointKey6 { addr: destination }) {
        let endpoint = unsafe { *endpoint };
        if let Err(reason) = receiving_allowed(&endpoint) {
            return pass(reason);
        }
        match netfilter_passed6(ip, end, config) {
            Err(reason) => return pass(reason),
            // Into the pod with `bpf_redirect_peer`: no egress on the way.
            Ok(probe_due) if may_probe && probe_due && probe::claim6(ip, end, config, false) => {
                return pass(Reason::ProbeSent);
            }
            Ok(_) => {}
        }
        // Routed by the gateway (hop limit - 1) or switched by the bridge
        // (untouched), as the kernel path would.
        if eth.dst_addr == config.gateway_mac {
            if ip.hop_limit <= 1 {
                return pass(Reason::PassTtlExpired);
            }
            ipv6_l3(eth, ip, endpoint.mac, config.gateway_mac);
        }
        return Verdict {
            action: redirect_into_pod(&endpoint),
            reason: Reason::LocalRedirectIpv6,
        };
    }
    let Some(peer) = PEERS6.get(&Key::new(128, destination)).copied() else {
        return pass(Reason::PassNoRoute);
    };
    if peer.mode != PeerMode::HostGw as u8 {
        return to_vxlan6(ctx, config, eth, ip, &peer, end, may_probe);
    }
    if peer.nexthop_mac == [0; 6] {
        return pass(Reason::PassNoNeighbour);
    }
    if ip.hop_limit <= 1 {
        return pass(Reason::PassTtlExpired);
    }
    match netfilter_passed6(ip, end, config) {
        Err(reason) => return pass(reason),
        // Out of the uplink, whose egress runs tc_verdict, ahead of the probe.
        Ok(probe_due) if may_probe && probe_due && probe::claim6(ip, end, config, true) => {
            return pass(Reason::ProbeSent);
        }
        Ok(_) => {}
    }
    if !fits(ctx, config, 0, Ipv6Hdr::LEN, ip.next_hdr) {
        // The kernel path answers ICMPv6 "packet too big".
        return pass(Reason::PassTooBig);
    }
    ipv6_l3(eth, ip, peer.nexthop_mac, config.uplink_mac);
    to_uplink(config, Reason::HostGwIpv6)
}

/// An IPv6 packet to a VXLAN peer's pod: routed one hop, as the kernel
/// would route it to `flannel-v6.<VNI>` (hop limit - 1, to the peer's IPv6
/// VTEP MAC from flannel-v6's), and handed straight to that device, which
/// encapsulates it: its fdb names the peer's PublicIPv6, and it fills the
/// outer UDP checksum IPv6 requires, per segment for a GSO packet (which
/// `bpf_skb_adjust_room` cannot ask of the kernel's UDP tunnel
/// segmentation). What is skipped is the bridge and the routing table;
/// the outer packet takes the node's output path, as on the kernel path.
#[inline(always)]
fn to_vxlan6(
    ctx: &TcContext,
    config: &NodeConfig,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    peer: &Peer6,
    end: usize,
    may_probe: bool,
) -> Verdict<i32> {
    if config.vtep6_ifindex == 0 {
        return pass(Reason::PassIpv6Vxlan);
    }
    if ip.hop_limit <= 1 {
        return pass(Reason::PassTtlExpired);
    }
    match netfilter_passed6(ip, end, config) {
        Err(reason) => return pass(reason),
        // To flannel-v6's egress, which runs tc_verdict, ahead of the probe.
        Ok(probe_due) if may_probe && probe_due && probe::claim6(ip, end, config, true) => {
            return pass(Reason::ProbeSent);
        }
        Ok(_) => {}
    }
    if let Err(reason) = encap_allowed(config) {
        return pass(reason);
    }
    if !fits(ctx, config, VXLAN6_ENCAP_LEN, Ipv6Hdr::LEN, ip.next_hdr) {
        // The kernel path answers ICMPv6 "packet too big".
        return pass(Reason::PassTooBig);
    }
    ipv6_l3(eth, ip, peer.vtep_mac, config.vtep6_mac);
    Verdict {
        // SAFETY: a helper taking plain values.
        action: unsafe { bpf_redirect(config.vtep6_ifindex, 0) } as i32,
        reason: Reason::EncapIpv6,
    }
}

/// ARP from a pod, judged by what its sender fields claim: an address at
/// a MAC, which every pod on the bridge takes into the entry it already
/// has for that address, from any request or reply (the bridge floods
/// them to all, and the pods' kernels have no way to tell). Claiming the
/// pods' gateway would draw every neighbour's traffic off the node to the
/// claimant; claiming another local pod's address, that pod's traffic from
/// its neighbours. Both are dropped, counted. The rest is the kernel's:
/// the pod's own address (at any MAC: it fools only whoever talks to it),
/// a probe from 0.0.0.0, an address no pod here owns (its neighbours route
/// it through the gateway, never ask for it), and ARP for other protocols
/// or address sizes, which no IPv4 neighbour table takes.
#[inline(always)]
fn arp_claim(ctx: &TcContext, data: usize, end: usize, config: &NodeConfig) -> Verdict<i32> {
    let Some(arp) = ptr_at::<ArpHdr>(data, end, EthHdr::LEN) else {
        return pass(Reason::PassTruncated);
    };
    // SAFETY: inside the packet (ptr_at).
    let arp = unsafe { &*arp };
    // Any hardware type: the kernel takes Ethernet's and IEEE 802's alike.
    if arp.ptype != ETH_P_IPV4.to_ne_bytes() || arp.hlen != 6 || arp.plen != 4 {
        return pass(Reason::PassNotIpv4);
    }
    let claimed = arp.spa;
    if claimed == [0; 4] {
        return pass(Reason::PassNotIpv4);
    }
    if claimed == config.gateway_ip {
        return DROP_FORGED_ARP;
    }
    match ENDPOINTS.get_ptr(EndpointKey { addr: claimed }) {
        // SAFETY: a map value pointer from a successful lookup; ctx.skb.skb
        // is the __sk_buff the kernel handed us.
        Some(owner) if unsafe { (*owner).ifindex != (*ctx.skb.skb).ifindex } => DROP_FORGED_ARP,
        _ => pass(Reason::PassNotIpv4),
    }
}

/// A pod's forged ARP: dropped (see [`arp_claim`]).
const DROP_FORGED_ARP: Verdict<i32> = Verdict {
    action: TC_ACT_SHOT,
    reason: Reason::DropForgedArp,
};

/// A pod's VXLAN: dropped (see [`is_vxlan`]).
const DROP_VXLAN_FROM_POD: Verdict<i32> = Verdict {
    action: TC_ACT_SHOT,
    reason: Reason::DropVxlanFromPod,
};

/// Only what the pod sends as itself goes on the fast path: its own
/// address (`sender`: the endpoint its source address names, in either
/// family) from its own veth and MAC, and only where tc does not act on
/// what it sends. Anything else is the kernel's (rp_filter, netfilter).
#[inline(always)]
fn sent_as_itself(
    ctx: &TcContext,
    sender: Option<*const Endpoint>,
    src_mac: [u8; 6],
    config: &NodeConfig,
) -> Result<(), Reason> {
    let flags = match sender {
        // SAFETY: a map value pointer from a successful lookup; ctx.skb.skb
        // is the __sk_buff the kernel handed us.
        Some(sender)
            if unsafe {
                (*sender).ifindex == (*ctx.skb.skb).ifindex && (*sender).mac == src_mac
            } =>
        unsafe { (*sender).flags },
        _ => return Err(Reason::PassForeignSource),
    };
    sending_allowed(flags, config)
}

#[inline(always)]
fn to_uplink(config: &NodeConfig, reason: Reason) -> Verdict<i32> {
    Verdict {
        // SAFETY: a helper taking plain values.
        action: unsafe { bpf_redirect(config.uplink_ifindex, 0) } as i32,
        reason,
    }
}

/// UDP to the VXLAN port. To any node's address (this one's cni0 or
/// flannel.<VNI> address, its node IP, another node's gateway through the
/// overlay) it would be decapsulated by that node's VXLAN socket;
/// masqueraded (`--ip-masq`), it would leave with this node's address, a
/// real VTEP, and inject whatever it carries into the overlay as this node.
/// The destination is not checked: any address may be some node's.
#[inline(always)]
fn is_vxlan(ctx: &TcContext, ip: &Ipv4Hdr, config: &NodeConfig) -> bool {
    if ip.proto != IPPROTO_UDP || config.vxlan_port_be == 0 {
        return false;
    }
    // A later fragment carries no port; without its first it is nothing.
    if ip.frag_offset() != 0 {
        return false;
    }
    // The UDP destination port, behind the IPv4 header and its options.
    let Ok(port) = ctx.load::<[u8; 2]>(EthHdr::LEN + usize::from(ip.ihl()) + 2) else {
        return false;
    };
    port == config.vxlan_port_be.to_ne_bytes()
}

/// [`is_vxlan`] for IPv6: UDP right behind the IPv6 header to the VXLAN
/// port. Behind extension headers it is not looked for here: the packet
/// takes the kernel path, where the overlay guard's netfilter rules see
/// its real transport header.
#[inline(always)]
fn is_vxlan_ipv6(ctx: &TcContext, ip: &Ipv6Hdr, config: &NodeConfig) -> bool {
    if ip.next_hdr != IPPROTO_UDP || config.vxlan_port_be == 0 {
        return false;
    }
    let Ok(port) = ctx.load::<[u8; 2]>(EthHdr::LEN + Ipv6Hdr::LEN + 2) else {
        return false;
    };
    port == config.vxlan_port_be.to_ne_bytes()
}
