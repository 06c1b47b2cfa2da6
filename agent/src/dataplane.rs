//! Dataplane writers.

pub mod ebpf;
