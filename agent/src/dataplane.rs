//! Dataplane writers.

pub mod ebpf;
pub mod fastpath;
pub mod guard;
pub mod kernel;
pub mod maps;
pub mod pod_neighbours;
