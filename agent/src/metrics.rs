//! Prometheus metrics, served on `/metrics` (OpenMetrics text, by the
//! `prometheus-client` crate).
//!
//! Two kinds: what the agent sees happen (leases, peers, etcd, renewals),
//! counted as it happens through [`global()`], and what the kernel holds
//! (the `STATS` counters, map fill), read from the pinned maps at scrape time
//! so a scrape always shows the programs' own numbers.
//!
//! One registry per process: the call sites are single lines
//! (`metrics::global().lease_renewed(true)`), with nothing to thread through
//! the agent's state.

use std::{
    path::{Path, PathBuf},
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapInfo};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
        gauge::Gauge, info::Info,
    },
    registry::{Registry, Unit},
};
use weft_common::{EndpointKey, FlowKey, FlowVerdict, Peer, PeerAddr, VtepKey, map_names};

use crate::stats::{self, CounterValue};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatLabels {
    hook: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

/// The process's metrics: the agent's event counters and the scrape-time
/// readers of the pinned maps.
pub struct Metrics {
    registry: Registry,
    leases_seen: Counter,
    leases_accepted: Counter,
    leases_rejected: Family<RuleLabel, Counter>,
    peers: Family<ModeLabel, Gauge>,
    etcd_connected: Gauge,
    etcd_errors: Counter,
    watch_resyncs: Counter,
    listed_once: AtomicBool,
    renewals: Counter,
    renewal_failures: Counter,
    last_sync: Gauge<f64, AtomicU64>,
    ready: Gauge,
    kernel: std::sync::Arc<KernelCollector>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            leases_seen: Counter::default(),
            leases_accepted: Counter::default(),
            leases_rejected: Family::default(),
            peers: Family::default(),
            etcd_connected: Gauge::default(),
            etcd_errors: Counter::default(),
            watch_resyncs: Counter::default(),
            listed_once: AtomicBool::new(false),
            renewals: Counter::default(),
            renewal_failures: Counter::default(),
            last_sync: Gauge::default(),
            ready: Gauge::default(),
            kernel: std::sync::Arc::new(KernelCollector::default()),
            registry: Registry::default(),
        };
        registry.register(
            "weft_build",
            "The running weft's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "weft_ready",
            "1 once the lease is held, the datapath programmed and subnet.env written (/readyz)",
            metrics.ready.clone(),
        );
        registry.register(
            "weft_leases_seen",
            "Lease values from etcd judged (listings and watch events; this node's own included)",
            metrics.leases_seen.clone(),
        );
        registry.register(
            "weft_leases_accepted",
            "Lease values that passed every lease rule",
            metrics.leases_accepted.clone(),
        );
        registry.register(
            "weft_leases_rejected",
            "Lease values rejected, by the rule they broke (once per key, value and rule)",
            metrics.leases_rejected.clone(),
        );
        registry.register(
            "weft_peers",
            "Peer subnets programmed into the kernel datapath, by mode (vxlan, host-gw)",
            metrics.peers.clone(),
        );
        registry.register(
            "weft_etcd_connected",
            "1 while the agent reads etcd (config read, leases listed and watched), 0 after an error until it recovers",
            metrics.etcd_connected.clone(),
        );
        registry.register(
            "weft_etcd_errors",
            "Failed etcd connections, reads and watches",
            metrics.etcd_errors.clone(),
        );
        registry.register(
            "weft_lease_watch_resyncs",
            "Full listings of the leases after the first (after a compaction, a cancelled watch or an etcd outage)",
            metrics.watch_resyncs.clone(),
        );
        registry.register(
            "weft_lease_renewals",
            "Successful renewals of this node's lease",
            metrics.renewals.clone(),
        );
        registry.register(
            "weft_lease_renewal_failures",
            "Failed renewals of this node's lease (retried every minute)",
            metrics.renewal_failures.clone(),
        );
        registry.register_with_unit(
            "weft_last_sync_timestamp",
            "Unix time the agent last applied etcd's state (a listing, a watch batch or a lease renewal)",
            Unit::Seconds,
            metrics.last_sync.clone(),
        );
        registry.register_collector(Box::new(metrics.kernel.clone()));
        Self {
            registry,
            ..metrics
        }
    }

    /// One lease value judged.
    pub fn lease_seen(&self) {
        self.leases_seen.inc();
    }

    /// One lease value passed every rule.
    pub fn lease_accepted(&self) {
        self.leases_accepted.inc();
    }

    /// One lease value rejected by `rule` (a `validate::Rule` name).
    pub fn lease_rejected(&self, rule: &'static str) {
        self.leases_rejected
            .get_or_create(&RuleLabel { rule })
            .inc();
    }

    /// The programmed peers: `vxlan` of `total` go through flannel.<VNI>,
    /// the others are plain routes (host-gw, DirectRouting).
    pub fn set_peers(&self, vxlan: usize, total: usize) {
        let set = |mode, count: usize| {
            self.peers
                .get_or_create(&ModeLabel { mode })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        };
        set("vxlan", vxlan);
        set("host-gw", total.saturating_sub(vxlan));
    }

    /// etcd answered (`true`) or failed (`false`, also counted as an error).
    pub fn etcd_connected(&self, connected: bool) {
        self.etcd_connected.set(i64::from(connected));
        if !connected {
            self.etcd_errors.inc();
        }
    }

    /// A full listing of the leases arrived; every one after the first is a
    /// resync. Also a sync.
    pub fn leases_listed(&self) {
        if self.listed_once.swap(true, Ordering::Relaxed) {
            self.watch_resyncs.inc();
        }
        self.etcd_connected(true);
        self.synced();
    }

    /// A renewal of this node's lease succeeded (a sync too) or failed.
    pub fn lease_renewed(&self, ok: bool) {
        if ok {
            self.renewals.inc();
            self.synced();
        } else {
            self.renewal_failures.inc();
        }
    }

    /// The agent applied state it just read from etcd.
    pub fn synced(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or_default();
        self.last_sync.set(now);
    }

    /// The fast path runs with its maps in `pin_dir`: scrapes read them.
    pub fn fast_path_started(&self, pin_dir: &Path) {
        *self
            .kernel
            .pin_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(pin_dir.into());
    }

    /// The metrics in OpenMetrics text ([`CONTENT_TYPE`]), with `ready` as
    /// the readiness.
    pub fn render(&self, ready: bool) -> String {
        self.ready.set(i64::from(ready));
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode the metrics: {error}");
        }
        out
    }
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
struct KernelCollector {
    pin_dir: Mutex<Option<PathBuf>>,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pin_dir = self
            .pin_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stats = pin_dir.as_deref().map(stats::read_pinned);
        let readable = matches!(stats, Some(Ok(_)));
        ConstGauge::new(i64::from(readable)).encode(encoder.encode_descriptor(
            "weft_fastpath_active",
            "1 while the eBPF fast path runs and its pinned maps can be read",
            None,
            MetricType::Gauge,
        )?)?;
        let (Some(pin_dir), Some(stats)) = (pin_dir, stats) else {
            return Ok(());
        };
        match stats {
            Ok(stats) => encode_stats(&mut encoder, &stats)?,
            Err(error) => tracing::warn!("metrics: {error:#}"),
        }
        encode_map_fill(&mut encoder, &pin_dir)
    }
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

/// Entries and capacity of the maps that fill up (the arrays are always full).
fn encode_map_fill(encoder: &mut DescriptorEncoder, pin_dir: &Path) -> Result<(), std::fmt::Error> {
    let fills: Vec<(&'static str, u64, u64)> = [
        map_names::PEERS,
        map_names::ENDPOINTS,
        map_names::VTEPS,
        map_names::FLOWS,
    ]
    .into_iter()
    .filter_map(|map| match map_fill(pin_dir, map) {
        Ok((entries, capacity)) => Some((map, entries, capacity)),
        Err(error) => {
            tracing::warn!("metrics: {error:#}");
            None
        }
    })
    .collect();
    let mut entries = encoder.encode_descriptor(
        "weft_map_entries",
        "Entries in each pinned eBPF map",
        None,
        MetricType::Gauge,
    )?;
    for (map, count, _) in &fills {
        ConstGauge::new(*count as i64).encode(entries.encode_family(&MapLabel { map })?)?;
    }
    let mut capacity = encoder.encode_descriptor(
        "weft_map_capacity",
        "Capacity (max entries) of each pinned eBPF map",
        None,
        MetricType::Gauge,
    )?;
    for (map, _, max) in &fills {
        ConstGauge::new(*max as i64).encode(capacity.encode_family(&MapLabel { map })?)?;
    }
    Ok(())
}

/// (entries, capacity) of `<pin_dir>/<map>`. The count stops at the
/// capacity: keys that churn while being walked cannot make it loop.
fn map_fill(pin_dir: &Path, map: &'static str) -> anyhow::Result<(u64, u64)> {
    use anyhow::Context as _;
    let path = pin_dir.join(map);
    let capacity = MapInfo::from_pin(&path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .max_entries();
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let limit = capacity as usize;
    let entries = match map {
        map_names::PEERS => LpmTrie::<_, PeerAddr, Peer>::try_from(Map::LpmTrie(data))?
            .keys()
            .take(limit)
            .count(),
        map_names::ENDPOINTS => {
            HashMap::<_, EndpointKey, weft_common::Endpoint>::try_from(Map::HashMap(data))?
                .keys()
                .take(limit)
                .count()
        }
        map_names::VTEPS => HashMap::<_, VtepKey, u8>::try_from(Map::HashMap(data))?
            .keys()
            .take(limit)
            .count(),
        _ => HashMap::<_, FlowKey, FlowVerdict>::try_from(Map::LruHashMap(data))?
            .keys()
            .take(limit)
            .count(),
    };
    Ok((entries as u64, u64::from(capacity)))
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
            drop_reason(reason(Hook::TcPodEgress.counter(Reason::DropVxlanToNode))),
            Some("vxlan_to_node")
        );
        assert_eq!(
            fallback_reason(reason(Hook::TcUplink.counter(Reason::Decap))),
            None
        );
    }

    #[test]
    fn the_event_metrics_render_with_prometheus_names() {
        let metrics = Metrics::new();
        metrics.lease_rejected("vni_mismatch");
        metrics.lease_renewed(false);
        metrics.set_peers(2, 3);
        metrics.leases_listed();
        metrics.leases_listed();
        let text = metrics.render(true);
        let build_info = format!(
            "weft_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for line in [
            build_info.as_str(),
            "weft_ready 1",
            "weft_leases_rejected_total{rule=\"vni_mismatch\"} 1",
            "weft_lease_renewal_failures_total 1",
            "weft_peers{mode=\"vxlan\"} 2",
            "weft_peers{mode=\"host-gw\"} 1",
            "weft_lease_watch_resyncs_total 1",
            "weft_etcd_connected 1",
            "weft_fastpath_active 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(text.contains("weft_last_sync_timestamp_seconds "), "{text}");
    }
}
