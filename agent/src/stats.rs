//! Reading the `STATS` counters from a pin directory.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use serde::Serialize;
use weft_common::{COUNTERS, PacketCounter, map_names};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterValue {
    pub name: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Every known counter, summed over CPUs, from `<pin_dir>/STATS`.
pub fn read_pinned(pin_dir: &Path) -> Result<Vec<CounterValue>> {
    let path = pin_dir.join(map_names::STATS);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open pinned map {} (is an agent using this --bpf-pin-dir?)",
            path.display()
        )
    })?;
    let stats: PerCpuArray<_, PacketCounter> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .with_context(|| format!("{} is not weft's STATS map", path.display()))?;
    COUNTERS
        .iter()
        .map(|(id, name)| {
            let per_cpu = stats
                .get(&(*id as u32), 0)
                .with_context(|| format!("cannot read counter {name} from {}", path.display()))?;
            Ok(CounterValue {
                name,
                packets: per_cpu.iter().map(|slot| slot.packets).sum(),
                bytes: per_cpu.iter().map(|slot| slot.bytes).sum(),
            })
        })
        .collect()
}

pub fn render_table(stats: &[CounterValue]) -> String {
    let mut out = format!("{:<24} {:>14} {:>16}\n", "COUNTER", "PACKETS", "BYTES");
    for counter in stats {
        out += &format!(
            "{:<24} {:>14} {:>16}\n",
            counter.name, counter.packets, counter.bytes
        );
    }
    out
}
