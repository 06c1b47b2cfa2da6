//! The forwarding maps, written by the agent, read per packet. BTF-typed so
//! `bpftool map dump` prints field names.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, RingBuf},
    macros::btf_map,
};
use weft_common::{
    CT_LIBERAL_BYTES, Endpoint, EndpointKey, EndpointKey6, FlowKey, FlowKey6, FlowVerdict,
    MAX_ENDPOINTS, MAX_FLOWS, MAX_PEERS, NodeConfig, Peer, Peer6, PeerAddr, PeerAddr6, Vtep,
    VtepKey,
};

/// Remote pod subnet -> how to reach it.
#[btf_map]
pub static PEERS: LpmTrie<PeerAddr, Peer, { MAX_PEERS as usize }> = LpmTrie::new();

/// Local pod IPv4 -> its veth and MAC.
#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Remote IPv6 pod subnet -> how to reach it (host-gw on the fast path).
#[btf_map]
pub static PEERS6: LpmTrie<PeerAddr6, Peer6, { MAX_PEERS as usize }> = LpmTrie::new();

/// Local pod IPv6 -> its veth and MAC.
#[btf_map]
pub static ENDPOINTS6: HashMap<EndpointKey6, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// Accepted outer source addresses (every VXLAN peer's PublicIP) -> the
/// subnet its frames may carry as inner source.
#[btf_map]
pub static VTEPS: HashMap<VtepKey, Vtep, { MAX_PEERS as usize }> = HashMap::new();

/// Flow directions this node's netfilter passed unchanged, written by
/// `tc_verdict`, read by every program that forwards or delivers.
#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, FlowVerdict, { MAX_FLOWS as usize }> = LruHashMap::new();

/// The same for IPv6 flow directions.
#[btf_map]
pub static FLOWS6: LruHashMap<FlowKey6, FlowVerdict, { MAX_FLOWS as usize }> = LruHashMap::new();

/// TCP flows whose verdict `tc_verdict` recorded pending: the agent makes
/// each one's conntrack entry liberal, then confirms the verdict in FLOWS
/// (a 16-byte `FlowKey` record) or FLOWS6 (a 40-byte `FlowKey6`).
#[btf_map]
pub static CT_LIBERAL: RingBuf<FlowKey, { CT_LIBERAL_BYTES as usize }> = RingBuf::new();

/// When the last probe was sent (lib/probe.rs), on the verdict clock:
/// `tc_verdict` looks for probes among packets netfilter left unmarked
/// only within a TTL of it. Not pinned: a restarted agent starts afresh.
#[btf_map]
pub static PROBE_CLOCK: Array<u64, 1> = Array::new();

/// `CONFIG[0]`: this node; all zero until the agent has written it.
#[btf_map]
pub static CONFIG: Array<NodeConfig, 1> = Array::new();

/// This node's config, once the agent has written it.
#[inline(always)]
pub fn node_config() -> Option<&'static NodeConfig> {
    CONFIG.get(0).filter(|config| config.uplink_ifindex != 0)
}
