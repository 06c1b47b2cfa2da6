//! Dataplane writers.

pub mod ebpf;
pub mod kernel;
