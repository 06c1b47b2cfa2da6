//! The weft agent: everything behind the `weft` binary.
//!
//! The flow is one-way: inputs feed the desired state (`desired.rs`), which
//! the sinks apply. Inputs: the command line, `subnet.env`, the subnet
//! manager (`subnet_manager/`: the network config, this node's subnet and
//! the other nodes' claims, from etcd leases or Kubernetes Nodes), the
//! kernel's local view (links, the CNI bridge's ports, the uplink's
//! neighbours and routes: `endpoints.rs`), the local pods read in their
//! own namespaces (`pods.rs`), the nftables ruleset (its changes, and
//! other users of the accept bit) and the pinned maps read back. Sinks
//! (`dataplane/`): the kernel datapath (VXLAN device, routes, neighbours,
//! fdb), the eBPF maps, the pods' pinned neighbour entries on the bridge,
//! the overlay guard's peer set; besides them the masquerade rules,
//! `subnet.env` and the metrics.

pub mod bpffs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod ct_liberal;
pub mod dataplane;
pub mod desired;
pub mod endpoints;
pub mod http;
pub mod kubernetes;
pub mod lease;
pub mod logging;
pub mod mark_conflicts;
pub mod masq;
pub mod metrics;
pub mod net;
pub mod nft;
pub mod overlay_guard;
pub mod pod_veth;
pub mod pods;
pub mod stats;
pub mod subnet_env;
pub mod subnet_manager;
pub mod tc;
pub mod verdict_clock;
pub mod verdicts;
pub mod weft_table;
