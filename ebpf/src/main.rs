//! weft's eBPF programs.
//!
//! - `xdp_uplink` (decap.rs): XDP on the node's uplink, every frame.
//! - `tc_uplink` (gro_decap.rs): TC (TCX) ingress on the uplink,
//!   the bulk TCP that XDP left for GRO.
//! - `tc_pod_egress` (encap.rs): TC (TCX) ingress on the host side of every
//!   pod veth, i.e. traffic leaving a pod.
//! - `tc_verdict` (verdict.rs): TC (TCX) egress after netfilter (pod veths,
//!   flannel.<VNI>, the uplink): records the flows netfilter passed
//!   unchanged; the three programs above fast-path only those (flow.rs).
#![no_std]
#![no_main]
// A typo in a match pattern silently becomes a catch-all binding; in code
// that runs per packet, fail the build instead.
#![deny(unused, unreachable_patterns)]

mod counters;
mod csum;
mod decap;
mod encap;
mod flow;
mod gro_decap;
mod maps;
mod parse;
mod uplink;
mod verdict;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    decap::xdp_uplink(&ctx)
}

#[classifier]
pub fn tc_uplink(mut ctx: TcContext) -> i32 {
    gro_decap::tc_uplink(&mut ctx)
}

#[classifier]
pub fn tc_pod_egress(mut ctx: TcContext) -> i32 {
    encap::tc_pod_egress(&mut ctx)
}

#[classifier]
pub fn tc_verdict(mut ctx: TcContext) -> i32 {
    verdict::tc_verdict(&mut ctx)
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
