//! [`Agent`]: one handler per input (lease events, renewal, masquerade
//! check, local view, pod retry, map audit, ruleset change, stop). Handlers
//! that change what the datapath should hold update their input and call
//! [`Agent::apply`]: inputs -> `desired::compute` -> both sinks. Each
//! handler returns what it did, so callers can count outcomes.

use std::collections::BTreeSet;

use anyhow::Result;
use tracing::{info, warn};
use weft_common::{
    CONFIG_TC_BRIDGE, CONFIG_TC_UPLINK, CONFIG_TC_VTEP, ENDPOINT_TC_RECEIVES, ENDPOINT_TC_SENDS,
};

use super::{
    mark_check::{CheckResult, MarkChecks},
    own_lease::{OwnLease, Renewal},
};
use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    dataplane::{
        fastpath::FastPath,
        guard::OverlayGuard,
        kernel::{KernelDataplane, KernelReport},
        maps::MapReport,
    },
    desired::{self, Desired, Inputs, NodeFacts, PeerRoute},
    endpoints::LocalView,
    http::Readiness,
    lease::{peers::PeerTable, watch::LeaseEvent},
    masq, metrics,
    verdicts::{self, Marks},
};

/// Says where tc starts or stops holding traffic to the kernel path (the
/// counters then say how much).
fn log_tc_changes(before: &LocalView, after: &LocalView, own: &BTreeSet<u32>) {
    for (index, port) in &after.ports {
        let was = desired::port_tc_flags(before.tc.ports.get(index), own);
        let now = desired::port_tc_flags(after.tc.ports.get(index), own);
        if was != now {
            info!(
                veth = %port.name,
                sends = now & ENDPOINT_TC_SENDS != 0,
                receives = now & ENDPOINT_TC_RECEIVES != 0,
                "tc on a pod's veth changed: what it acts on takes the kernel path"
            );
        }
    }
    let was = desired::node_tc_flags(&before.tc, own);
    let now = desired::node_tc_flags(&after.tc, own);
    if was != now {
        info!(
            uplink_ingress = now & CONFIG_TC_UPLINK != 0,
            vtep = now & CONFIG_TC_VTEP != 0,
            bridge = now & CONFIG_TC_BRIDGE != 0,
            "tc on the node's interfaces changed: what it acts on takes the kernel path"
        );
    }
}

/// What one [`Agent::apply`] did: the sinks' reports (the map sink's only
/// with the fast path running).
#[derive(Debug, Default)]
pub struct Applied {
    pub unroutable: usize,
    pub kernel: Option<KernelReport>,
    pub maps: Option<MapReport>,
}

/// What one batch of lease events did.
#[derive(Debug, Default)]
pub struct LeaseOutcome {
    /// Changes to the accepted peer set.
    pub peer_changes: usize,
    /// Our own lease was lost and acquired again.
    pub reacquired: bool,
    pub applied: Applied,
}

/// The running agent: its inputs, the desired-state inputs, and the sinks.
pub struct Agent {
    pub(super) args: Box<AgentArgs>,
    pub(super) config: NetworkConfig,
    pub(super) facts: NodeFacts,
    pub(super) mtu: u32,
    pub(super) own: OwnLease,
    pub(super) peers: PeerTable,
    pub(super) kernel: KernelDataplane,
    /// Who may send to the VXLAN port (VXLAN backend, either dataplane).
    pub(super) guard: Option<OverlayGuard>,
    pub(super) fast_path: Option<FastPath>,
    /// The verdict chain's bits, and the looks for other rules using the
    /// accept bit (with the fast path).
    pub(super) marks: Option<(Marks, MarkChecks)>,
    /// Another rule uses the accept bit: the verdict chain is removed and
    /// CONFIG names no accept bit until it is gone.
    pub(super) verdicts_suspended: bool,
    pub(super) view: LocalView,
    pub(super) ruleset_generation: u32,
    /// A listing has been applied, and a local view has arrived: until both
    /// have, no route is planned and the kernel sink is left alone (its
    /// first sync removes what no lease explains), and CONFIG stays dormant.
    pub(super) listed: bool,
    pub(super) viewed: bool,
    pub(super) readiness: Readiness,
}

impl Agent {
    /// Computes the desired state from the current inputs and makes both
    /// sinks hold it. The one update path, for listings and events alike.
    async fn apply(&mut self) -> Applied {
        let pods = self
            .fast_path
            .as_ref()
            .map(FastPath::pods)
            .unwrap_or_default();
        let desired: Desired = desired::compute(&Inputs {
            node: &self.facts,
            peers: self.peers.peers(),
            view: &self.view,
            pods: &pods,
            ruleset_generation: self.ruleset_generation,
            verdicts_suspended: self.verdicts_suspended,
            listed: self.listed,
            viewed: self.viewed,
        });
        for (subnet, why) in &desired.unroutable {
            warn!(%subnet, "{why}; not programming it");
        }
        let mut applied = Applied {
            unroutable: desired.unroutable.len(),
            ..Applied::default()
        };
        if let Some(guard) = self.guard.as_mut() {
            guard.sync(&desired).await;
        }
        if desired.planned {
            applied.kernel = Some(self.kernel.sync(&desired).await);
            let vxlan = desired
                .routes
                .values()
                .filter(|route| matches!(route, PeerRoute::Vxlan { .. }))
                .count();
            metrics::global().set_peers(vxlan, desired.routes.len());
        }
        if let Some(fast_path) = self.fast_path.as_mut() {
            applied.maps = Some(fast_path.sync(&desired).await);
        }
        // Ready once the first listing has been planned against a local
        // view and applied, whichever of the two came last.
        if desired.planned && !self.readiness.get() {
            info!(
                peers = desired.routes.len(),
                rejected = %rejection_summary(&self.peers),
                "datapath programmed; ready"
            );
            self.readiness.set(true);
        }
        applied
    }

    /// A batch of lease events (a listing of thousands is one batch, so it
    /// costs one apply).
    pub async fn on_lease_events(&mut self, events: Vec<LeaseEvent>) -> Result<LeaseOutcome> {
        metrics::global().synced();
        let mut outcome = LeaseOutcome::default();
        let mut lost = false;
        let mut listed = false;
        for event in &events {
            lost |= self.own.is_lost_by(event);
            if self.own.is_own(event) {
                continue;
            }
            let own = Some(self.own.subnet);
            outcome.peer_changes += match event {
                LeaseEvent::Listing(leases) => {
                    listed = true;
                    metrics::global().leases_listed();
                    self.peers.resync(leases, own).len()
                }
                LeaseEvent::Put {
                    key,
                    value,
                    create_revision,
                } => self.peers.put(key, value, *create_revision, own).len(),
                LeaseEvent::Delete { key } => self.peers.delete(key).len(),
            };
        }
        if listed {
            // A listing replaces all the agent knew: check the kernel again.
            self.kernel.reread_next_sync();
            self.listed = true;
        }
        if listed || outcome.peer_changes > 0 {
            outcome.applied = self.apply().await;
        }
        if lost {
            outcome.reacquired = true;
            if self.own.reacquire(&self.config).await {
                self.take_subnet().await?;
            }
        }
        Ok(outcome)
    }

    /// The lease is due for renewal.
    pub async fn on_renew_due(&mut self) -> Renewal {
        let renewal = self.own.renew().await;
        metrics::global().lease_renewed(renewal == Renewal::Renewed);
        renewal
    }

    /// Makes the own subnet the node's, and the local pods the ones in it.
    pub(super) async fn take_subnet(&mut self) -> Result<()> {
        self.own
            .take(&self.kernel, &self.args, &self.config, self.mtu)
            .await?;
        if let Some(fast_path) = self.fast_path.as_mut() {
            fast_path.set_own_subnet(self.own.subnet);
            self.apply().await;
        }
        Ok(())
    }

    /// `--ip-masq`: checks the rules and restores them if they changed;
    /// returns whether they were (re)applied.
    pub fn on_masq_check(&mut self) -> bool {
        let subnet = self.own.subnet;
        match masq::is_current(&self.config.network, &subnet) {
            Ok(true) => false,
            Ok(false) => match masq::apply(&self.config.network, &subnet) {
                Ok(()) => {
                    info!(table = masq::TABLE, "masquerade rules (re)applied");
                    true
                }
                Err(error) => {
                    warn!("{error:#}");
                    false
                }
            },
            Err(error) => {
                warn!("{error:#}");
                false
            }
        }
    }

    /// The kernel's view of pods, ports, uplink neighbours and routes.
    pub async fn on_view(&mut self, view: LocalView) -> Applied {
        if let Some(fast_path) = self.fast_path.as_mut() {
            fast_path.on_view(&view).await;
            log_tc_changes(&self.view, &view, &self.facts.own_tc_programs);
        }
        self.view = view;
        self.viewed = true;
        self.apply().await
    }

    /// Pods not complete yet are read again; the maps follow if they
    /// changed, and the pods' pinned neighbours are checked either way.
    pub async fn on_pod_retry(&mut self) -> Option<Applied> {
        let fast_path = self.fast_path.as_mut()?;
        if fast_path.retry_pods(&self.view).await {
            return Some(self.apply().await);
        }
        fast_path.pin_pod_neighbours().await;
        None
    }

    /// Every pod's side is read again, complete or not: a MAC or address
    /// changed inside a pod reaches ENDPOINTS and the pinned neighbour entry.
    pub async fn on_pod_reread(&mut self) -> Option<Applied> {
        let fast_path = self.fast_path.as_mut()?;
        if fast_path.reread_pods(&self.view).await {
            return Some(self.apply().await);
        }
        None
    }

    /// Reads the maps back and repairs whatever differs.
    pub async fn on_map_audit(&mut self) -> Option<Applied> {
        let fast_path = self.fast_path.as_mut()?;
        if let Err(error) = fast_path.reread_maps() {
            warn!("cannot read the maps back: {error:#}");
            return None;
        }
        Some(self.apply().await)
    }

    /// The node's nftables ruleset changed: every verdict recorded so far
    /// is void until netfilter passes the flow again under the new rules.
    pub async fn on_ruleset_changed(&mut self) -> Applied {
        self.ruleset_generation = self.ruleset_generation.wrapping_add(1);
        tracing::debug!(
            generation = self.ruleset_generation,
            "nftables ruleset changed; fast-path verdicts voided"
        );
        if let Some((_, checks)) = self.marks.as_mut() {
            checks.request();
        }
        self.apply().await
    }

    /// A look for other rules using the accept bit finished: while any
    /// exists, weft leaves the bit alone (verdict chain removed) and the
    /// fast path takes no flow; once none is left, both come back.
    pub async fn on_mark_check(&mut self, conflicts: CheckResult) -> Option<Applied> {
        let (marks, checks) = self.marks.as_mut()?;
        checks.finished();
        let marks = *marks;
        metrics::global().set_accept_mark_conflicts(conflicts.len());
        let suspend = !conflicts.is_empty();
        if suspend == self.verdicts_suspended {
            return None;
        }
        if suspend {
            super::mark_check::warn_conflicts(marks, &conflicts);
            self.verdicts_suspended = true;
            let applied = self.apply().await;
            off_runtime(verdicts::remove).await;
            Some(applied)
        } else {
            info!(
                mark = format_args!("{:#x}", marks.accept),
                "no other rule uses the accept bit now: the fast path takes flows again"
            );
            // Without the chain no verdict could be recorded: stay
            // suspended, and try again at the next ruleset change.
            if !off_runtime(move || verdicts::install(marks)).await {
                return None;
            }
            self.verdicts_suspended = false;
            Some(self.apply().await)
        }
    }

    /// SIGTERM/SIGINT: detach the programs; the kernel datapath stays
    /// programmed, as flanneld leaves it, so pods keep talking while the
    /// agent restarts, and so does the overlay guard, so the node stays
    /// closed to injected VXLAN meanwhile. The pods' pinned neighbour
    /// entries go: nothing would follow a pod's MAC while the agent is away.
    pub async fn on_stop(self, signal: &str) {
        info!("{signal}: detaching");
        self.readiness.set(false);
        if let Some(mut fast_path) = self.fast_path {
            let detached = fast_path.programs.detach_all();
            info!(
                attachments = detached,
                "detached; maps stay pinned in {}",
                self.args.bpf_pin_dir.display()
            );
            // Nothing clears the accept mark without tc_verdict.
            if let Err(error) = verdicts::remove() {
                warn!("{error:#}");
            }
            match fast_path.unpin_pod_neighbours().await {
                Ok(removed) => info!(removed, "pods' pinned neighbour entries removed"),
                Err(error) => warn!("{error:#}"),
            }
        }
    }
}

/// Runs blocking work (nft) off the agent's runtime; a failure is logged.
/// Returns whether it succeeded.
async fn off_runtime(work: impl FnOnce() -> Result<()> + Send + 'static) -> bool {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            warn!("{error:#}");
            false
        }
        Err(error) => {
            warn!("blocking work did not run: {error}");
            false
        }
    }
}

/// `rule=count` for every rule that rejected a lease, for the log.
fn rejection_summary(peers: &PeerTable) -> String {
    let counts: Vec<String> = peers
        .rejections()
        .iter()
        .map(|(rule, count)| format!("{rule}={count}"))
        .collect();
    if counts.is_empty() {
        "none".to_owned()
    } else {
        counts.join(",")
    }
}
