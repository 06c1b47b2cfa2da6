//! The kernel's side of the metrics: the `STATS` counters and the fill of
//! the maps that fill up, read from the pinned maps at each scrape so a
//! scrape always shows the programs' own numbers.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use weft_common::map_names;

use super::map_count;

use crate::stats::{self, CounterValue};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatLabels {
    hook: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

/// Labels of a `STATS` counter: which program counted it (`hook`) and
/// what it did and why (`reason`), straight from its id.
fn stat_labels(counter: &CounterValue) -> StatLabels {
    StatLabels {
        hook: counter.hook,
        reason: counter.reason,
    }
}

/// What the kernel holds, read at scrape time from the pinned maps.
#[derive(Debug, Default)]
pub(super) struct KernelCollector {
    /// Where the fast path pinned its maps; `None` until it starts.
    pub(super) pin_dir: Mutex<Option<PathBuf>>,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pin_dir = self
            .pin_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stats = pin_dir.as_deref().map(stats::read_pinned);
        encode_active(&mut encoder, matches!(stats, Some(Ok(_))))?;
        let (Some(pin_dir), Some(stats)) = (pin_dir, stats) else {
            return Ok(());
        };
        match stats {
            Ok(stats) => encode_stats(&mut encoder, &stats)?,
            Err(error) => tracing::warn!("metrics: {error:#}"),
        }
        encode_map_fill(&mut encoder, &read_map_fill(&pin_dir))
    }
}

/// The families [`KernelCollector`] serves while the fast path runs, through
/// the same encoders but without samples: their names without a pinned map
/// to read ([`super::family_names`]).
#[derive(Debug)]
pub(super) struct KernelFamilies;

impl Collector for KernelFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_active(&mut encoder, true)?;
        encode_stats(&mut encoder, &[])?;
        encode_map_fill(&mut encoder, &[])
    }
}

fn encode_active(encoder: &mut DescriptorEncoder, readable: bool) -> Result<(), std::fmt::Error> {
    ConstGauge::new(i64::from(readable)).encode(encoder.encode_descriptor(
        "weft_fastpath_active",
        "1 while the eBPF fast path runs and its pinned maps can be read",
        None,
        MetricType::Gauge,
    )?)
}

/// One counter family drawn from `STATS`: which counters belong to it, with
/// which labels and value.
struct StatsFamily {
    name: &'static str,
    help: &'static str,
    sample: fn(&CounterValue) -> Option<(StatLabels, u64)>,
}

const STATS_FAMILIES: [StatsFamily; 4] = [
    StatsFamily {
        name: "weft_fastpath_packets",
        help: "Packets each eBPF program counted, by hook (program) and reason (outcome), summed over CPUs",
        sample: |counter| Some((stat_labels(counter), counter.packets)),
    },
    StatsFamily {
        name: "weft_fastpath_bytes",
        help: "Bytes each eBPF program counted, by hook (program) and reason (outcome), summed over CPUs",
        sample: |counter| Some((stat_labels(counter), counter.bytes)),
    },
    StatsFamily {
        name: "weft_kernel_path_fallbacks",
        help: "Packets the eBPF programs handed to the kernel path, by hook and reason",
        sample: |counter| {
            let reason = fallback_reason(counter.reason)?;
            let hook = counter.hook;
            Some((StatLabels { hook, reason }, counter.packets))
        },
    },
    StatsFamily {
        name: "weft_fastpath_drops",
        help: "Packets the eBPF programs dropped, by hook and reason",
        sample: |counter| {
            let reason = drop_reason(counter.reason)?;
            let hook = counter.hook;
            Some((StatLabels { hook, reason }, counter.packets))
        },
    },
];

fn encode_stats(
    encoder: &mut DescriptorEncoder,
    stats: &[CounterValue],
) -> Result<(), std::fmt::Error> {
    for family in &STATS_FAMILIES {
        let mut metric =
            encoder.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
        for (labels, value) in stats.iter().filter_map(family.sample) {
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Why a "handed to the kernel path" counter (reason `pass_<why>`) passed.
fn fallback_reason(reason: &'static str) -> Option<&'static str> {
    reason.strip_prefix("pass_")
}

/// Why a "dropped" counter (reason `drop_<why>`) dropped.
fn drop_reason(reason: &'static str) -> Option<&'static str> {
    reason.strip_prefix("drop_")
}

/// (map, entries, capacity) of the maps that fill up (the arrays are always
/// full); a map that cannot be read is left out, with a warning.
fn read_map_fill(pin_dir: &Path) -> Vec<(&'static str, u64, u64)> {
    [
        map_names::PEERS,
        map_names::PEERS6,
        map_names::ENDPOINTS,
        map_names::ENDPOINTS6,
        map_names::VTEPS,
        map_names::FLOWS,
        map_names::FLOWS6,
    ]
    .into_iter()
    .filter_map(|map| match map_fill(pin_dir, map) {
        Ok((entries, capacity)) => Some((map, entries, capacity)),
        Err(error) => {
            tracing::warn!("metrics: {error:#}");
            None
        }
    })
    .collect()
}

/// Entries and capacity of the maps `fills` lists.
fn encode_map_fill(
    encoder: &mut DescriptorEncoder,
    fills: &[(&'static str, u64, u64)],
) -> Result<(), std::fmt::Error> {
    let mut entries = encoder.encode_descriptor(
        "weft_map_entries",
        "Entries in each pinned eBPF map",
        None,
        MetricType::Gauge,
    )?;
    for (map, count, _) in fills {
        ConstGauge::new(*count as i64).encode(entries.encode_family(&MapLabel { map })?)?;
    }
    let mut capacity = encoder.encode_descriptor(
        "weft_map_capacity",
        "Capacity (max entries) of each pinned eBPF map",
        None,
        MetricType::Gauge,
    )?;
    for (map, _, max) in fills {
        ConstGauge::new(*max as i64).encode(capacity.encode_family(&MapLabel { map })?)?;
    }
    Ok(())
}

/// (entries, capacity) of `<pin_dir>/<map>`, counted in batches: at most
/// capacity / [`map_count::BATCH`] syscalls however full the map is.
fn map_fill(pin_dir: &Path, map: &'static str) -> anyhow::Result<(u64, u64)> {
    use anyhow::Context as _;
    let path = pin_dir.join(map);
    let data = crate::bpffs::open_pinned_map(pin_dir, map)?;
    let info = data
        .info()
        .with_context(|| format!("cannot read the info of {}", path.display()))?;
    let count = map_count::count_entries(
        data.fd().as_fd(),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    )
    .with_context(|| format!("cannot count the entries of {}", path.display()))?;
    Ok((count.entries, u64::from(info.max_entries())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_and_drops_are_named_by_their_cause() {
        let reason = |id: weft_common::CounterId| id.reason.name();
        use weft_common::{Hook, Reason};
        assert_eq!(
            fallback_reason(reason(Hook::XdpUplink.counter(Reason::PassNoVerdict))),
            Some("no_verdict")
        );
        assert_eq!(
            drop_reason(reason(Hook::TcPodEgress.counter(Reason::DropVxlanFromPod))),
            Some("vxlan_from_pod")
        );
        assert_eq!(
            fallback_reason(reason(Hook::TcUplink.counter(Reason::Decap))),
            None
        );
    }
}
