//! The weft agent: everything behind the `weft` binary.
//!
//! The flow is one-way: inputs (CLI, `subnet.env`, kernel link events) feed
//! the desired state, which the dataplane writers apply.

pub mod bpffs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod ct_liberal;
pub mod dataplane;
pub mod desired;
pub mod endpoints;
pub mod http;
pub mod lease;
pub mod logging;
pub mod mark_conflicts;
pub mod masq;
pub mod metrics;
pub mod net;
pub mod nft;
pub mod overlay_guard;
pub mod pod_veth;
pub mod stats;
pub mod subnet_env;
pub mod tc;
pub mod verdicts;
pub mod weft_table;
