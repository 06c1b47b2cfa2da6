//! One file per program: what it counts, in what order it decides, and
//! what it does with the packet. The checks and rewrites live in `lib/`.

pub mod tc_pod_egress;
pub mod tc_uplink;
pub mod tc_verdict;
pub mod xdp_uplink;
