//! The clock of FLOWS' verdict times. The programs read
//! `bpf_ktime_get_coarse_ns` (the last tick's CLOCK_MONOTONIC: no clock
//! source read per packet), which is user space's CLOCK_MONOTONIC_COARSE.
//! Both lag the real time by less than the clock's resolution (a tick), so
//! a verdict's measured age can fall short of its real age by up to one
//! tick: the TTL written to CONFIG is shortened by that much, and stays an
//! upper bound in real time.

use anyhow::Result;
use nix::time::{ClockId, clock_getres, clock_gettime};

const CLOCK: ClockId = ClockId::CLOCK_MONOTONIC_COARSE;

/// Now, on the verdict clock, in nanoseconds.
pub fn now_ns() -> Result<u64> {
    let now = clock_gettime(CLOCK)?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// The verdict clock's resolution (one tick), in nanoseconds.
pub fn resolution_ns() -> u64 {
    clock_getres(CLOCK)
        .map(|res| res.tv_sec() as u64 * 1_000_000_000 + res.tv_nsec() as u64)
        // Unknown: assume the coarsest tick Linux has (HZ=100).
        .unwrap_or(10_000_000)
}

/// The TTL the programs compare against (`NodeConfig::verdict_ttl_ns`)
/// for a configured TTL of `ttl_ms`.
pub fn ttl_on_clock_ns(ttl_ms: u64) -> u64 {
    (ttl_ms * 1_000_000).saturating_sub(resolution_ns())
}

/// The configured TTL, in milliseconds, behind a `verdict_ttl_ns` that
/// [`ttl_on_clock_ns`] wrote on this machine.
pub fn configured_ttl_ms(verdict_ttl_ns: u64) -> u64 {
    (verdict_ttl_ns + resolution_ns()).div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_is_shortened_by_one_tick_and_reads_back_as_configured() {
        let tick = resolution_ns();
        assert!(tick > 0 && tick <= 10_000_000, "tick {tick} ns");
        for ttl_ms in [10, 100, 1_000, 60_000] {
            let written = ttl_on_clock_ns(ttl_ms);
            assert_eq!(written, ttl_ms * 1_000_000 - tick);
            assert_eq!(configured_ttl_ms(written), ttl_ms);
        }
    }

    #[test]
    fn the_clock_lags_the_monotonic_clock_by_less_than_a_tick() {
        let coarse = now_ns().unwrap();
        let fine = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap();
        let fine = fine.tv_sec() as u64 * 1_000_000_000 + fine.tv_nsec() as u64;
        // Read in this order, the coarse time is never ahead; allow 1 ms
        // between the two reads on a loaded machine.
        assert!(coarse <= fine);
        assert!(fine - coarse < resolution_ns() + 1_000_000);
    }
}
