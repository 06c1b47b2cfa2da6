//! The `STATS` map and the one function that bumps it.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use weft_common::{CounterId, PacketCounter, STATS_MAX_ENTRIES};

/// Per-CPU so the hot path never contends on a cache line; the agent sums
/// the CPUs when it reads.
#[btf_map]
static STATS: PerCpuArray<PacketCounter, { STATS_MAX_ENTRIES as usize }> = PerCpuArray::new();

/// Adds one packet of `bytes` bytes to counter `id` on this CPU.
#[inline(always)]
pub fn count(id: CounterId, bytes: u64) {
    if let Some(slot) = STATS.get_ptr_mut(id as u32) {
        // SAFETY: the slot belongs to this CPU and BPF programs are not
        // preempted by another program on the same CPU while they run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}
