//! How many entries a pinned map holds, in a number of syscalls fixed by
//! the map's capacity rather than by its fill: `BPF_MAP_LOOKUP_BATCH`
//! copies up to [`BATCH`] entries per call (aya 0.14 has no batched
//! lookup for hash maps). Walking keys one `BPF_MAP_GET_NEXT_KEY` at a
//! time would cost one syscall per entry, and `FLOWS` is filled by whoever
//! opens connections: 65,536 syscalls a scrape.
//!
//! The kernel keeps no element count it reports to user space
//! (`bpf_map_info` has none; `bpf_map_sum_elem_count` is a kfunc for BPF
//! iterator programs only), and the programs cannot keep one for `FLOWS`:
//! an LRU map evicts without telling them.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// Entries copied per syscall: `FLOWS` (65,536 entries of 32 bytes) is 16
/// calls and 2 MiB copied at most.
pub(super) const BATCH: u32 = 4_096;

/// `BPF_MAP_LOOKUP_BATCH` from include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What one count cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Count {
    pub entries: u64,
    pub syscalls: u32,
}

/// The entries of `map` (with these key and value sizes and capacity),
/// [`BATCH`] at a time. The count stops at `capacity`, so keys that churn
/// while being read cannot make it run on. Not for per-CPU maps (their
/// values are larger than `value_size`).
pub(super) fn count_entries(
    map: BorrowedFd<'_>,
    key_size: u32,
    value_size: u32,
    capacity: u32,
) -> io::Result<Count> {
    let mut batch = BATCH.min(capacity.max(1));
    let mut keys = vec![0u8; key_size as usize * batch as usize];
    let mut values = vec![0u8; value_size as usize * batch as usize];
    // The position to go on from: a bucket index for hash maps, a key for
    // the others (the kernel's generic batch ops); room for either.
    let token_words = (key_size as usize).div_ceil(8).max(1);
    let mut position = vec![0u64; token_words];
    let mut next = vec![0u64; token_words];
    let mut count = Count::default();
    let mut first = true;
    while count.entries < u64::from(capacity) {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's layout of the batch command; every
        // buffer it points to outlives the call and holds `batch` keys and
        // values, and the position tokens have room for a key.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        count.syscalls += 1;
        let outcome = if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) => {
                count.entries += u64::from(attr.count);
                std::mem::swap(&mut position, &mut next);
                first = false;
            }
            // The last batch: the map holds no more.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                count.entries += u64::from(attr.count);
                break;
            }
            // One hash bucket holds more than a batch: retry it with room.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) && batch < capacity => {
                batch = (batch * 2).min(capacity);
                keys.resize(key_size as usize * batch as usize, 0);
                values.resize(value_size as usize * batch as usize, 0);
            }
            Err(error) => return Err(error),
        }
    }
    count.entries = count.entries.min(u64::from(capacity));
    Ok(count)
}
