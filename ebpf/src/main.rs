//! weft's eBPF programs.
//!
//! - `xdp_uplink`: XDP on the node's uplink.
//! - `tc_pod_egress`: TC (TCX) ingress on the host side of every pod veth,
//!   i.e. traffic leaving a pod.
//!
//! Both count what they see into `STATS` and hand every packet on to the
//! kernel; forwarding decisions come with the fast-path work.
#![no_std]
#![no_main]

mod counters;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use weft_common::CounterId;

#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    counters::count(CounterId::UplinkRx, (ctx.data_end() - ctx.data()) as u64);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn tc_pod_egress(ctx: TcContext) -> i32 {
    counters::count(CounterId::PodEgress, u64::from(ctx.len()));
    TC_ACT_OK
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
