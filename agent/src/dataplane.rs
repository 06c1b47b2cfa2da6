//! Dataplane writers.

pub mod ebpf;
pub mod fastpath;
pub mod kernel;
