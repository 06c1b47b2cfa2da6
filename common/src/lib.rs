//! Types shared by the eBPF programs (kernel side) and the agent (user side).
//!
//! Everything here crosses the kernel/user boundary through BPF maps, so every
//! type is `#[repr(C)]`, made of integers and byte arrays only, with explicit
//! padding, and its size and alignment are asserted at compile time and in
//! tests: a silent layout change would make the agent and the programs
//! disagree on every map entry.
#![no_std]

pub mod maps;
pub mod stats;

pub use maps::*;
pub use stats::{
    COUNTERS, CounterId, HOOKS, Hook, PacketCounter, REASON_SLOTS, Reason, STATS_MAX_ENTRIES,
};

/// Names of the maps the programs declare, as pinned under `--bpf-pin-dir`.
pub mod map_names {
    pub const STATS: &str = "STATS";
    pub const PEERS: &str = "PEERS";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const VTEPS: &str = "VTEPS";
    pub const CONFIG: &str = "CONFIG";
    pub const FLOWS: &str = "FLOWS";
    /// The IPv6 halves of PEERS, ENDPOINTS and FLOWS.
    pub const PEERS6: &str = "PEERS6";
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    pub const FLOWS6: &str = "FLOWS6";
    /// The ring buffer of TCP flows `tc_verdict` asks the agent to make
    /// liberal in conntrack (not listed by `weft maps`: nothing to dump).
    pub const CT_LIBERAL: &str = "CT_LIBERAL";
    /// Every map, in the order `weft maps` lists them.
    pub const ALL: [&str; 9] = [
        CONFIG, PEERS, PEERS6, ENDPOINTS, ENDPOINTS6, VTEPS, FLOWS, FLOWS6, STATS,
    ];
    /// Everything the agent pins (what `weft cleanup` removes).
    pub const PINNED: [&str; 10] = [
        CONFIG, PEERS, PEERS6, ENDPOINTS, ENDPOINTS6, VTEPS, FLOWS, FLOWS6, STATS, CT_LIBERAL,
    ];
}

/// Capacities: the largest cluster and node weft is sized for.
pub const MAX_PEERS: u32 = 16_384;
pub const MAX_ENDPOINTS: u32 = 4_096;
/// Flow directions with a learned netfilter verdict. An LRU map: when it is
/// full the least recently used verdict goes, and that flow's next packet
/// takes the kernel path and is learned again.
pub const MAX_FLOWS: u32 = 65_536;

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// XDP on the node's uplink (physical NIC).
    pub const XDP_UPLINK: &str = "xdp_uplink";
    /// TC ingress on the host side of every pod veth (traffic leaving a pod).
    pub const TC_POD_EGRESS: &str = "tc_pod_egress";
    /// TC ingress on the uplink: what XDP left for GRO, after GRO.
    pub const TC_UPLINK: &str = "tc_uplink";
    /// TC egress after netfilter (pod veths, flannel.<VNI>, the uplink):
    /// records the flows netfilter passed unchanged.
    pub const TC_VERDICT: &str = "tc_verdict";

    // The kernel keeps 15 bytes of a program's name; tools that look a
    // program up by name (TCX queries, `weft status`) see only those.
    const _: () = assert!(XDP_UPLINK.len() <= 15 && TC_POD_EGRESS.len() <= 15);
    const _: () = assert!(TC_UPLINK.len() <= 15 && TC_VERDICT.len() <= 15);
}
