//! What the programs share, by concern.

/// The outer UDP checksum of VXLAN over IPv6, from its headers.
pub mod checksum;
/// `STATS`, `count()` and the `Verdict` every program returns.
pub mod counters;
/// Local delivery into a pod.
pub mod delivery;
/// VXLAN encapsulation.
pub mod encap;
/// Netfilter's recorded verdicts (`FLOWS`).
pub mod flow;
/// Header sizes and constants, bounds-checked access.
pub mod headers;
/// The L3 rewrite (TTL, MACs) and IPv4 checksums.
pub mod l3;
/// The maps the agent writes.
pub mod maps;
/// The uplink MTU check.
pub mod mtu;
/// Probes: renewing a live TCP verdict without diverting its flow.
pub mod probe;
/// tc's configuration as an authority; `TCX_NEXT`.
pub mod tc;
/// Receive-side classification on the uplink.
pub mod uplink;
