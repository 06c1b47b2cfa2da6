//! The `STATS` map, the one function that bumps it, and the one verdict
//! shape every program returns.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use weft_common::{CounterId, Hook, PacketCounter, Reason, STATS_MAX_ENTRIES};

/// Per-CPU so the hot path never contends on a cache line; the agent sums
/// the CPUs when it reads.
#[btf_map]
static STATS: PerCpuArray<PacketCounter, { STATS_MAX_ENTRIES as usize }> = PerCpuArray::new();

/// What a program does with a packet (`XDP_*` as `u32`, `TC_ACT_*` as
/// `i32`), and the reason it is counted under.
pub struct Verdict<A> {
    pub action: A,
    pub reason: Reason,
}

/// Adds one packet of `bytes` bytes to `reason` as counted by `hook`, on
/// this CPU. `hook` is a constant in every caller, so the slot is one add.
#[inline(always)]
pub fn count(hook: Hook, reason: Reason, bytes: u64) {
    if let Some(slot) = STATS.get_ptr_mut(CounterId::new(hook, reason).slot()) {
        // SAFETY: the slot belongs to this CPU and BPF programs are not
        // preempted by another program on the same CPU while they run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}
