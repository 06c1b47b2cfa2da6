//! weft's eBPF programs, one file each in `programs/`, over the shared
//! pieces in `lib/`.
//!
//! - `xdp_uplink`: XDP on the node's uplink, every frame.
//! - `tc_uplink`: TC (TCX) ingress on the uplink, the bulk TCP that XDP
//!   left for GRO (everything, when XDP is off).
//! - `tc_pod_egress`: TC (TCX) ingress on the host side of every pod veth,
//!   i.e. traffic leaving a pod.
//! - `tc_verdict`: TC (TCX) egress after netfilter (pod veths,
//!   flannel.<VNI>, the uplink): records the flows netfilter passed
//!   unchanged; the three programs above fast-path only those
//!   (lib/flow.rs).
#![no_std]
#![no_main]
// `atomic_cxchg`: the probe claim's compare-and-swap (lib/probe.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// A typo in a match pattern silently becomes a catch-all binding; in code
// that runs per packet, fail the build instead.
#![deny(unused, unreachable_patterns)]
// `lib/` holds what the programs share; this crate has no library target,
// so the module's name cannot be mistaken for one.
#![allow(special_module_name)]

mod lib;
mod programs;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    programs::xdp_uplink::run(&ctx)
}

#[classifier]
pub fn tc_uplink(mut ctx: TcContext) -> i32 {
    programs::tc_uplink::run(&mut ctx)
}

#[classifier]
pub fn tc_pod_egress(mut ctx: TcContext) -> i32 {
    programs::tc_pod_egress::run(&mut ctx)
}

#[classifier]
pub fn tc_verdict(mut ctx: TcContext) -> i32 {
    programs::tc_verdict::run(&mut ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: bpf_redirect_peer and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
