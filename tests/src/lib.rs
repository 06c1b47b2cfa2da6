//! The weft cluster lab: one machine, several "nodes", each a network
//! namespace, with the real etcd server and the real CNI plugins, as
//! docs/architecture.md (The lab) describes; and the helpers the integration tests
//! share.

// The weft-lab binary's argument parser; cargo cannot scope a dependency to
// one target, and the lint checks the library too.
use clap as _;
// The integration tests' dev-dependencies; the library's unit tests see them too.
#[cfg(test)]
use {
    k8s_openapi as _, prometheus_parse as _, proptest as _, pulldown_cmark as _, rtnetlink as _,
    serde_yaml_ng as _,
};

pub mod bandwidth;
pub mod cni;
pub mod containerd;
pub mod echo;
pub mod etcd;
pub mod flannel;
pub mod flannel_dual_stack;
pub mod host;
pub mod inspect;
pub mod kube;
pub mod kube_proxy;
pub mod lab;
pub mod leases;
pub mod netns;
pub mod packets;
pub mod privileged;
pub mod process;
pub mod programs;
pub mod prometheus;
pub mod scrapes;
pub mod settings;
pub mod traffic;

pub use lab::{Backend, Dataplane, Lab, LabSpec, NodeId, SubnetManager};
pub use privileged::privileged_test;
