//! The clock of FLOWS' verdict times. The programs read
//! `bpf_ktime_get_coarse_ns` (the time of the last timekeeping update: no
//! clock source read per packet), which is user space's
//! CLOCK_MONOTONIC_COARSE. Timekeeping accumulates whole tick intervals at
//! each tick, so the coarse time lags the real time by less than two ticks
//! (measured here: up to 7.96 ms with 4 ms ticks, never ahead). A verdict's
//! measured age can therefore fall short of its real age by up to two
//! ticks: the TTL written to CONFIG is shortened by that much, and stays an
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

/// How far the verdict clock may lag the real time: two ticks.
pub fn lag_bound_ns() -> u64 {
    2 * resolution_ns()
}

/// The TTL the programs compare against (`NodeConfig::verdict_ttl_ns`)
/// for a configured TTL of `ttl_ms`.
pub fn ttl_on_clock_ns(ttl_ms: u64) -> u64 {
    (ttl_ms * 1_000_000).saturating_sub(lag_bound_ns())
}

/// The configured TTL, in milliseconds, behind a `verdict_ttl_ns` that
/// [`ttl_on_clock_ns`] wrote on this machine.
pub fn configured_ttl_ms(verdict_ttl_ns: u64) -> u64 {
    (verdict_ttl_ns + lag_bound_ns()).div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monotonic_ns() -> u64 {
        let now = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap();
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    }

    #[test]
    fn the_ttl_is_shortened_by_the_lag_bound_and_reads_back_as_configured() {
        let tick = resolution_ns();
        assert!(tick > 0 && tick <= 10_000_000, "tick {tick} ns");
        // The smallest --verdict-ttl-ms (10) keeps a positive TTL.
        for ttl_ms in [10, 100, 1_000, 60_000] {
            let written = ttl_on_clock_ns(ttl_ms);
            assert!(written > 0);
            assert_eq!(written, ttl_ms * 1_000_000 - 2 * tick);
            assert_eq!(configured_ttl_ms(written), ttl_ms);
        }
    }

    /// The bound the TTL relies on: the coarse clock is never ahead of
    /// CLOCK_MONOTONIC and lags it by less than two ticks (samples where
    /// this thread was preempted between the reads are skipped).
    #[test]
    fn the_clock_lags_the_monotonic_clock_by_less_than_two_ticks() {
        let mut checked = 0;
        for _ in 0..100_000 {
            let before = monotonic_ns();
            let coarse = now_ns().unwrap();
            let after = monotonic_ns();
            if after - before > 50_000 {
                continue;
            }
            assert!(coarse <= after, "coarse {coarse} ahead of {after}");
            assert!(
                before.saturating_sub(coarse) < lag_bound_ns(),
                "coarse {coarse} lags {before} by more than two ticks"
            );
            checked += 1;
        }
        assert!(checked > 1_000, "only {checked} unpreempted samples");
    }
}
