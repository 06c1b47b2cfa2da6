//! The eBPF programs alone, through BPF_PROG_TEST_RUN on crafted frames, with
//! their maps filled by the agent's own code (`weft_tests::programs`): one
//! module per program or concern. Root (BPF), no lab.

// One test binary sees every dependency of the package; the lint is for
// the library.
#![allow(unused_crate_dependencies)]

mod cost_paths;
mod host_gw;
mod ipv6;
mod ipv6_probes;
mod properties;
mod tc;
mod trust;
mod verdicts;
mod vxlan_ipv6;
mod xdp;
