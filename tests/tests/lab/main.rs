//! The tests that need root and a lab (nodes and pods in network
//! namespaces, real etcd, a real kube-apiserver, the real CNI plugins, stock
//! flanneld) or the built package and image: one module per topic, each
//! module's doc comment says what it checks. Privileged tests take the
//! host-wide lab lock (`privileged!`), so they run one at a time.

// One test binary sees every dependency of the package; the lint is for
// the library.
#![allow(unused_crate_dependencies)]

mod accept_mark;
mod agent;
mod conntrack_liberal;
mod control_plane;
mod control_plane_failures;
mod dual_stack;
mod dual_stack_kernel;
mod fast_path;
mod fast_path_resilience;
mod host_gw;
mod hostile_leases;
mod hostile_leases_scale;
mod image;
mod kube_api;
mod kube_dual_stack;
mod kube_failures;
mod kube_ipv6_only;
mod kube_manifests;
mod kube_subnet_manager;
mod metrics;
mod mixed_cluster;
mod monitoring;
mod netfilter;
mod node_traces;
mod overlay_guard;
mod packaging;
mod the_lab;
mod trust;
mod verdict_renewal;
