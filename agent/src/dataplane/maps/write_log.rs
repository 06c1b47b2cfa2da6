//! Failed map writes, logged with the entry and counted per map.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::MapError;
use tracing::{info, warn};

/// Failed map writes: logged with the entry and counted per map; a full map
/// is said once (until an entry leaves it) instead of once per entry.
#[derive(Debug, Default)]
pub struct WriteLog {
    failures: BTreeMap<&'static str, u64>,
    full: BTreeSet<&'static str>,
}

impl WriteLog {
    /// Whether the insert of `entry` into `map` (which holds `capacity`
    /// entries) went through.
    pub fn inserted(
        &mut self,
        map: &'static str,
        capacity: u32,
        entry: &dyn std::fmt::Display,
        result: Result<(), MapError>,
    ) -> bool {
        let Err(error) = result else {
            return true;
        };
        *self.failures.entry(map).or_default() += 1;
        if errno(&error).is_some_and(|errno| errno == libc::E2BIG || errno == libc::ENOSPC) {
            if self.full.insert(map) {
                warn!(
                    map,
                    "{map} is full ({capacity} entries): {entry} and what follows stay on the kernel path"
                );
            }
        } else {
            warn!(map, "cannot write {entry} to {map}: {error:#}");
        }
        false
    }

    /// Whether `entry` is no longer in `map` (it was not there: also fine).
    pub fn removed(
        &mut self,
        map: &'static str,
        entry: &dyn std::fmt::Display,
        result: Result<(), MapError>,
    ) -> bool {
        match result {
            Ok(()) => {
                if self.full.remove(map) {
                    info!(map, "{map} has room again");
                }
                true
            }
            Err(error) if errno(&error) == Some(libc::ENOENT) => true,
            Err(error) => {
                *self.failures.entry(map).or_default() += 1;
                warn!(map, "cannot remove {entry} from {map}: {error:#}");
                false
            }
        }
    }

    /// Failed writes per map since start.
    pub fn failures(&self) -> &BTreeMap<&'static str, u64> {
        &self.failures
    }
}

fn errno(error: &MapError) -> Option<i32> {
    match error {
        MapError::SyscallError(error) => error.io_error.raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod write_log_tests {
    use aya::{maps::MapError, sys::SyscallError};

    use super::WriteLog;

    fn failed(errno: i32) -> Result<(), MapError> {
        Err(MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        }))
    }

    #[test]
    fn a_missing_entry_is_already_removed_and_other_failures_are_counted() {
        let mut log = WriteLog::default();
        assert!(log.removed("PEERS", &"10.244.2.0/24", Ok(())));
        assert!(log.removed("PEERS", &"10.244.2.0/24", failed(libc::ENOENT)));
        assert!(log.failures().is_empty());
        assert!(!log.removed("PEERS", &"10.244.2.0/24", failed(libc::EPERM)));
        assert!(!log.inserted("VTEPS", 16_384, &"192.168.77.2", failed(libc::EINVAL)));
        assert!(log.inserted("VTEPS", 16_384, &"192.168.77.3", Ok(())));
        assert_eq!(log.failures()["PEERS"], 1);
        assert_eq!(log.failures()["VTEPS"], 1);
    }

    #[test]
    fn a_full_map_is_noted_once_until_an_entry_leaves() {
        let mut log = WriteLog::default();
        for errno in [libc::ENOSPC, libc::E2BIG, libc::ENOSPC] {
            assert!(!log.inserted("PEERS", 16_384, &"10.1.0.0/24", failed(errno)));
        }
        assert!(log.full.contains("PEERS"));
        assert_eq!(log.failures()["PEERS"], 3);
        assert!(log.removed("PEERS", &"10.1.0.0/24", Ok(())));
        assert!(
            !log.full.contains("PEERS"),
            "room again: the next full is news"
        );
    }
}
