//! Reading the `STATS` counters from a pin directory, and showing them flat
//! (one row per counter) or as reason x hook.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Map, PerCpuArray};
use serde::Serialize;
use weft_common::{COUNTERS, HOOKS, PacketCounter, Reason, map_names};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterValue {
    /// The flat name (`xdp_pass_no_verdict`).
    pub name: &'static str,
    /// The program that counted (`xdp_uplink`).
    pub hook: &'static str,
    /// What it did and why (`pass_no_verdict`).
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Every known counter, summed over CPUs, from `<pin_dir>/STATS`.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<CounterValue>> {
    let path = pin_dir.join(map_names::STATS);
    let data = crate::bpffs::open_pinned_map(pin_dir, map_names::STATS)?;
    let stats: PerCpuArray<_, PacketCounter> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .with_context(|| format!("{} is not weft's STATS map", path.display()))?;
    COUNTERS
        .iter()
        .map(|(id, name)| {
            let per_cpu = stats
                .get(&id.slot(), 0)
                .with_context(|| format!("cannot read counter {name} from {}", path.display()))?;
            Ok(CounterValue {
                name,
                hook: id.hook.name(),
                reason: id.reason.name(),
                packets: per_cpu.iter().map(|slot| slot.packets).sum(),
                bytes: per_cpu.iter().map(|slot| slot.bytes).sum(),
            })
        })
        .collect()
}

/// One row per counter.
pub fn render_table(stats: &[CounterValue]) -> String {
    let mut out = format!("{:<36} {:>14} {:>16}\n", "COUNTER", "PACKETS", "BYTES");
    for counter in stats {
        out += &format!(
            "{:<36} {:>14} {:>16}\n",
            counter.name, counter.packets, counter.bytes
        );
    }
    out
}

/// Packets by reason (rows, in reason order) and hook (columns); `-` where
/// a hook never counts that reason.
pub fn render_by_hook(stats: &[CounterValue]) -> String {
    let width = HOOKS
        .iter()
        .map(|hook| hook.name().len())
        .max()
        .unwrap_or(0)
        + 2;
    let mut out = format!("{:<26}", "REASON \\ HOOK (packets)");
    for hook in HOOKS {
        out += &format!("{:>width$}", hook.name());
    }
    out.push('\n');
    let mut reasons: Vec<Reason> = COUNTERS.iter().map(|(id, _)| id.reason).collect();
    reasons.sort();
    reasons.dedup();
    for reason in reasons {
        out += &format!("{:<26}", reason.name());
        for hook in HOOKS {
            let cell = stats
                .iter()
                .find(|counter| counter.hook == hook.name() && counter.reason == reason.name())
                .map_or_else(|| "-".to_owned(), |counter| counter.packets.to_string());
            out += &format!("{cell:>width$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_counter_once() -> Vec<CounterValue> {
        COUNTERS
            .iter()
            .map(|(id, name)| CounterValue {
                name,
                hook: id.hook.name(),
                reason: id.reason.name(),
                packets: 1,
                bytes: 100,
            })
            .collect()
    }

    #[test]
    fn the_reason_by_hook_view_has_one_row_per_reason_and_marks_pairs_no_hook_counts() {
        let view = render_by_hook(&every_counter_once());
        let header = view.lines().next().unwrap();
        for hook in HOOKS {
            assert!(header.contains(hook.name()), "{header}");
        }
        let row = |reason: &str| {
            view.lines()
                .find(|line| line.split_whitespace().next() == Some(reason))
                .unwrap_or_else(|| panic!("no row {reason} in\n{view}"))
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
        };
        // xdp_uplink, tc_uplink, tc_pod_egress, tc_verdict.
        assert_eq!(row("pass_no_verdict"), ["1", "1", "1", "-"]);
        assert_eq!(row("pass_bulk_tcp"), ["1", "-", "-", "-"]);
        assert_eq!(row("learned"), ["-", "-", "-", "1"]);
        assert_eq!(row("host_gw"), ["1", "1", "1", "-"]);
    }
}
