//! Prometheus metrics, served on `/metrics` (OpenMetrics text, by the
//! `prometheus-client` crate).
//!
//! Two kinds: what the agent sees happen (leases, peers, etcd, renewals,
//! what the kernel and map writers could not do), counted as it happens through [`global()`], and what the kernel holds
//! (the `STATS` counters, map fill), read from the pinned maps at scrape time
//! so a scrape always shows the programs' own numbers.
//!
//! One registry per process: the call sites are single lines
//! (`metrics::global().lease_renewed(true)`), with nothing to thread through
//! the agent's state.

mod guard;
mod kernel;
mod kube_api;
mod map_count;
pub mod single_flight;

use std::{
    path::Path,
    sync::{
        LazyLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Metric, Registry, Unit},
};

use guard::GuardCollector;
use kernel::KernelCollector;
pub use kube_api::{KubeApiMetrics, KubeOperation};
use single_flight::Served;

use crate::{dataplane::kernel::KernelReport, http::listener::Refusal};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServedLabel {
    served: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubnetLabel {
    subnet: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

/// A registry that also keeps the name of every family registered in it:
/// the registry renders a labelled family only once it has a sample, and
/// [`family_names`] needs them all.
#[derive(Default)]
struct Families {
    registry: Registry,
    /// As the `# TYPE` line gives them (with the unit's suffix).
    names: Vec<String>,
}

impl Families {
    fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.names.push(name.to_owned());
        self.registry.register(name, help, metric);
    }

    fn register_with_unit(&mut self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.names.push(format!("{name}_{}", unit.as_str()));
        self.registry.register_with_unit(name, help, unit, metric);
    }
}

/// The process's metrics: the agent's event counters and the scrape-time
/// readers of the pinned maps.
pub struct Metrics {
    registry: Registry,
    /// What [`Families`] registered.
    registered: Vec<String>,
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
    lease_held: Gauge,
    lease_losses: Counter,
    reacquisitions: Family<SubnetLabel, Counter>,
    kernel_sync_failures: Family<WhatLabel, Counter>,
    map_write_failures: Family<MapLabel, Counter>,
    last_sync: Gauge<f64, AtomicU64>,
    ready: Gauge,
    accept_mark_conflicts: Gauge,
    scrapes: Family<ServedLabel, Counter>,
    http_refusals: Family<CauseLabel, Counter>,
    ct_liberal: Family<OutcomeLabel, Counter>,
    kernel: std::sync::Arc<KernelCollector>,
    guard: std::sync::Arc<GuardCollector>,
    kube_api: KubeApiMetrics,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Every metric family the agent serves, by the name its `# TYPE` line
/// gives (a counter's without `_total`, the build info's without `_info`),
/// sorted: those registered (shown from their first sample on) and those the
/// scrape-time readers add once the fast path runs and the overlay guard is
/// installed, named by rendering the readers' own encoders without samples.
/// The docs' test compares it with docs/operating.md.
pub fn family_names() -> Vec<String> {
    let metrics = Metrics::new();
    let mut readers = Registry::default();
    readers.register_collector(Box::new(kernel::KernelFamilies));
    readers.register_collector(Box::new(guard::GuardFamilies));
    let mut rendered = String::new();
    prometheus_client::encoding::text::encode(&mut rendered, &readers)
        .expect("encoding into a String cannot fail");
    let mut names: Vec<String> = rendered
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .map(str::to_owned)
        .chain(metrics.registered)
        .collect();
    names.sort();
    names.dedup();
    names
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Families::default();
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
            lease_held: Gauge::default(),
            lease_losses: Counter::default(),
            reacquisitions: Family::default(),
            kernel_sync_failures: Family::default(),
            map_write_failures: Family::default(),
            last_sync: Gauge::default(),
            ready: Gauge::default(),
            accept_mark_conflicts: Gauge::default(),
            scrapes: Family::default(),
            http_refusals: Family::default(),
            ct_liberal: Family::default(),
            kernel: std::sync::Arc::new(KernelCollector::default()),
            guard: std::sync::Arc::new(GuardCollector::default()),
            kube_api: KubeApiMetrics::default(),
            registry: Registry::default(),
            registered: Vec::new(),
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
        registry.register(
            "weft_lease_held",
            "1 while this node holds its lease, 0 before the first acquisition and while a lost lease is acquired again",
            metrics.lease_held.clone(),
        );
        registry.register(
            "weft_lease_losses",
            "Times this node's lease was deleted or overwritten in etcd (it is acquired again)",
            metrics.lease_losses.clone(),
        );
        registry.register(
            "weft_lease_reacquisitions",
            "Lost leases acquired again, by subnet: same (the subnet held before) or new (pods on the old one need restarting)",
            metrics.reacquisitions.clone(),
        );
        for subnet in ["same", "new"] {
            drop(
                metrics
                    .reacquisitions
                    .get_or_create(&SubnetLabel { subnet }),
            );
        }
        registry.register(
            "weft_kernel_sync_failures",
            "Kernel datapath writes that failed (each retried at the next sync), by what: add_peer, remove_peer, reconcile (reading the kernel and removing what no lease explains)",
            metrics.kernel_sync_failures.clone(),
        );
        for what in KernelReport::FAILURE_KINDS {
            drop(
                metrics
                    .kernel_sync_failures
                    .get_or_create(&WhatLabel { what }),
            );
        }
        registry.register(
            "weft_map_write_failures",
            "eBPF map entries the agent failed to write or remove (each retried at the next sync), by map",
            metrics.map_write_failures.clone(),
        );
        registry.register_with_unit(
            "weft_last_sync_timestamp",
            "Unix time the agent last applied etcd's state (a listing, a watch batch or a lease renewal)",
            Unit::Seconds,
            metrics.last_sync.clone(),
        );
        registry.register(
            "weft_accept_mark_conflicting_rules",
            "Rules in the node's ruleset, other than weft's, that set or test weft's accept bit; while above 0 the fast path takes no flow",
            metrics.accept_mark_conflicts.clone(),
        );
        registry.register(
            "weft_metrics_scrapes",
            "Scrapes of /metrics, by how they were answered: computed (this scrape read the maps), recent (the last result, under 1 s old), in_flight (the last result, while another scrape computed)",
            metrics.scrapes.clone(),
        );
        // Every way of answering shows from the start, at 0.
        for served in Served::ALL {
            drop(metrics.scrapes.get_or_create(&ServedLabel {
                served: served.label(),
            }));
        }
        registry.register(
            "weft_http_refusals",
            "Connections to the health and metrics endpoint refused or cut, by cause: per_source_limit (16 open from that address), from_elsewhere_limit (128 open from other hosts and pods; this node itself is not limited), lifetime_over (open over 10 s)",
            metrics.http_refusals.clone(),
        );
        for refusal in Refusal::ALL {
            drop(metrics.http_refusals.get_or_create(&CauseLabel {
                cause: refusal.label(),
            }));
        }
        registry.register(
            "weft_ct_liberal",
            "TCP flows tc_verdict asked to have made liberal in conntrack, by outcome (confirmed, lapsed, no_conntrack_entry, refused, malformed)",
            metrics.ct_liberal.clone(),
        );
        metrics.kube_api.register(&mut registry);
        let Families {
            mut registry,
            names,
        } = registry;
        registry.register_collector(Box::new(metrics.kernel.clone()));
        registry.register_collector(Box::new(metrics.guard.clone()));
        Self {
            registry,
            registered: names,
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

    /// This node's lease is held (first acquired at start-up).
    pub fn lease_acquired(&self) {
        self.lease_held.set(1);
    }

    /// This node's lease was deleted or overwritten: not held until it is
    /// acquired again.
    pub fn lease_lost(&self) {
        self.lease_held.set(0);
        self.lease_losses.inc();
    }

    /// A lost lease was acquired again; `new_subnet` if not the one held.
    pub fn lease_reacquired(&self, new_subnet: bool) {
        self.lease_held.set(1);
        let subnet = if new_subnet { "new" } else { "same" };
        self.reacquisitions
            .get_or_create(&SubnetLabel { subnet })
            .inc();
    }

    /// One kernel sync's failures, counted by what failed.
    pub fn kernel_synced(&self, report: &KernelReport) {
        for failure in &report.failed {
            self.kernel_sync_failures
                .get_or_create(&WhatLabel {
                    what: failure.what.label(),
                })
                .inc();
        }
    }

    /// One map sync's failed writes, by map.
    pub fn maps_synced(&self, failed: &std::collections::BTreeMap<&'static str, u64>) {
        for (&map, &count) in failed {
            self.map_write_failures
                .get_or_create(&MapLabel { map })
                .inc_by(count);
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

    /// One scrape of /metrics answered as `served`.
    pub fn scrape_served(&self, served: Served) {
        self.scrapes
            .get_or_create(&ServedLabel {
                served: served.label(),
            })
            .inc();
    }

    /// A connection to the health endpoint refused or cut.
    pub fn http_refused(&self, refusal: Refusal) {
        self.http_refusals
            .get_or_create(&CauseLabel {
                cause: refusal.label(),
            })
            .inc();
    }

    /// One flow's conntrack entry handled (a `ct_liberal::Outcome` name).
    pub fn ct_liberal(&self, outcome: &'static str) {
        self.ct_liberal
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The fast path runs with its maps in `pin_dir`: scrapes read them.
    pub fn fast_path_started(&self, pin_dir: &Path) {
        *self
            .kernel
            .pin_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(pin_dir.into());
    }

    /// The overlay guard is installed: scrapes read its counters.
    pub fn guard_installed(&self) {
        self.guard.installed.store(true, Ordering::Relaxed);
    }

    /// How many other rules use the accept bit (0: the bit is weft's).
    pub fn set_accept_mark_conflicts(&self, rules: usize) {
        self.accept_mark_conflicts
            .set(i64::try_from(rules).unwrap_or(i64::MAX));
    }

    /// The Kubernetes API's metrics (the kube subnet manager).
    pub fn kube_api(&self) -> &KubeApiMetrics {
        &self.kube_api
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_metrics_render_with_prometheus_names() {
        let metrics = Metrics::new();
        metrics.lease_rejected("vni_mismatch");
        metrics.lease_renewed(false);
        metrics.set_peers(2, 3);
        metrics.leases_listed();
        metrics.leases_listed();
        metrics.lease_acquired();
        metrics.lease_lost();
        metrics.lease_reacquired(true);
        metrics.kernel_synced(&KernelReport {
            failed: vec![crate::dataplane::kernel::Failure {
                what: crate::dataplane::kernel::FailureKind::RemovePeer,
                subnet: "10.244.3.0/24".parse().unwrap(),
                error: "gone".to_owned(),
            }],
            ..KernelReport::default()
        });
        metrics.maps_synced(&[("PEERS", 2)].into_iter().collect());
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
            "weft_lease_held 1",
            "weft_lease_losses_total 1",
            "weft_lease_reacquisitions_total{subnet=\"new\"} 1",
            "weft_lease_reacquisitions_total{subnet=\"same\"} 0",
            "weft_kernel_sync_failures_total{what=\"remove_peer\"} 1",
            "weft_kernel_sync_failures_total{what=\"add_peer\"} 0",
            "weft_map_write_failures_total{map=\"PEERS\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(text.contains("weft_last_sync_timestamp_seconds "), "{text}");
    }

    #[test]
    fn the_family_names_include_the_scrape_time_readers() {
        let names = family_names();
        for name in [
            "weft_build",
            "weft_leases_rejected",
            "weft_last_sync_timestamp_seconds",
            "weft_fastpath_active",
            "weft_fastpath_packets",
            "weft_map_capacity",
            "weft_overlay_refused_packets",
            "weft_kube_api_errors",
            "weft_ct_liberal",
        ] {
            assert!(names.iter().any(|n| n == name), "no {name} in {names:?}");
        }
    }
}
