//! [`Agent`]: one handler per input (the subnet manager's updates, local
//! view, pod retry and re-read, map audit, ruleset change, accept-bit
//! check, stop). Handlers that change what the datapath should hold update
//! their input (the accepted peers, the own subnet, the local view, the
//! local pods, the ruleset generation) and call [`Agent::apply`]: inputs ->
//! `desired::compute` -> the sinks (kernel, overlay guard, fast path: maps
//! and the pods' pinned neighbours), whose reports go to the metrics. No
//! handler waits on anything unbounded: acquiring a lost lease again is a
//! task of its own (`subnet_manager/etcd/own_lease.rs`), nft runs off the
//! runtime (`masq::Keeper`, [`off_runtime`]).

use std::collections::BTreeSet;

use anyhow::Result;
use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{info, warn};
use weft_common::{
    CONFIG_TC_BRIDGE, CONFIG_TC_UPLINK, CONFIG_TC_VTEP, ENDPOINT_TC_RECEIVES, ENDPOINT_TC_SENDS,
};

use super::{
    MASQ_RECHECK,
    mark_check::{CheckResult, MarkChecks},
};
use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    dataplane::{fastpath::FastPath, guard::OverlayGuard, kernel::KernelDataplane},
    desired::{self, Desired, Inputs, NodeFacts, PeerRoute},
    endpoints::LocalView,
    http::Readiness,
    lease::{claim::ClaimEvent, peers::PeerTable, validate::OwnSubnets},
    masq, metrics,
    pods::LocalPods,
    subnet_env::{self, SubnetEnv},
    subnet_manager::{SubnetManager, Update},
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

/// The running agent: its inputs, the desired-state inputs, and the sinks.
pub struct Agent {
    pub(super) args: Box<AgentArgs>,
    pub(super) config: NetworkConfig,
    pub(super) facts: NodeFacts,
    pub(super) mtu: u32,
    /// This node's subnets: their one owner (the subnet manager reports
    /// new ones after a lost lease was taken again). One of each family the
    /// network runs, taken together, in the same lease or from the same
    /// Node.
    pub(super) subnets: OwnSubnets,
    /// Where the subnet and the peers' claims come from (etcd or the
    /// Kubernetes API).
    pub(super) manager: SubnetManager,
    /// `--ip-masq`: keeps the rules for the own subnet (from the first
    /// time the subnet is taken).
    pub(super) masq: Option<masq::Keeper>,
    pub(super) peers: PeerTable,
    pub(super) kernel: KernelDataplane,
    /// Who may send to the VXLAN port (VXLAN backend, either dataplane).
    pub(super) guard: Option<OverlayGuard>,
    pub(super) fast_path: Option<FastPath>,
    /// The local pods (with the fast path: the kernel datapath needs none),
    /// read inside [`Self::subnet`].
    pub(super) pods: Option<LocalPods>,
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
    /// Computes the desired state from the current inputs and makes every
    /// sink hold it. The one update path, for listings and events alike.
    /// What the sinks could not do is logged by them and counted here.
    async fn apply(&mut self) {
        let pods = self
            .pods
            .as_ref()
            .zip(self.subnets.v4)
            .map(|(pods, subnet)| pods.endpoints(subnet))
            .unwrap_or_default();
        let pods_v6 = self
            .pods
            .as_ref()
            .zip(self.subnets.v6)
            .map(|(pods, subnet_v6)| pods.endpoints6(subnet_v6))
            .unwrap_or_default();
        let desired: Desired = desired::compute(&Inputs {
            node: &self.facts,
            subnet: self.subnets.v4,
            subnet_v6: self.subnets.v6,
            peers: self.peers.peers(),
            view: &self.view,
            pods: &pods,
            pods_v6: &pods_v6,
            ruleset_generation: self.ruleset_generation,
            verdicts_suspended: self.verdicts_suspended,
            listed: self.listed,
            viewed: self.viewed,
        });
        for (subnet, why) in &desired.unroutable {
            warn!(%subnet, "{why}; not programming it");
        }
        for (subnet, why) in &desired.unroutable_v6 {
            warn!(%subnet, "{why}; not programming it");
        }
        if let Some(guard) = self.guard.as_mut() {
            guard.sync(&desired).await;
        }
        if desired.planned {
            let report = self.kernel.sync(&desired).await;
            metrics::global().kernel_synced(&report);
            let vxlan = desired
                .routes
                .values()
                .filter(|route| matches!(route, PeerRoute::Vxlan { .. }))
                .count();
            metrics::global().set_peers(vxlan, desired.routes.len());
        }
        if let Some(fast_path) = self.fast_path.as_mut() {
            let report = fast_path.sync(&desired).await;
            metrics::global().maps_synced(&report.failed);
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
            self.manager.datapath_ready();
        }
    }

    /// What the subnet manager reports: the other nodes' claims changed,
    /// or this node's subnet was taken again after it was lost.
    pub async fn on_update(&mut self, update: Update) -> Result<()> {
        match update {
            Update::Claims(events) => self.on_claims(events).await,
            Update::Subnet(subnets) => {
                self.set_subnets(subnets);
                self.take_subnet().await?;
            }
        }
        Ok(())
    }

    /// A batch of claim events (a listing of thousands is one batch, so it
    /// costs one apply).
    async fn on_claims(&mut self, events: Vec<ClaimEvent>) {
        metrics::global().synced();
        let own = self.subnets;
        let mut peer_changes = 0;
        let mut listed = false;
        for event in &events {
            peer_changes += match event {
                ClaimEvent::Listing(claims) => {
                    listed = true;
                    metrics::global().leases_listed();
                    self.peers.resync(claims, own).len()
                }
                ClaimEvent::Put(claim) => self.peers.put(claim, own).len(),
                ClaimEvent::Delete { id } => self.peers.delete(id).len(),
            };
        }
        if listed {
            // A listing replaces all the agent knew: check the kernel again.
            self.kernel.reread_next_sync();
            self.listed = true;
        }
        if listed || peer_changes > 0 {
            self.apply().await;
        }
    }

    /// The subnets the subnet manager gave this node become its own.
    pub(super) fn set_subnets(&mut self, subnets: OwnSubnets) {
        self.subnets = subnets;
    }

    /// Makes the own subnet the node's (VXLAN device address, masquerade
    /// rules, subnet.env, in that order), and the local pods the ones in it.
    pub(super) async fn take_subnet(&mut self) -> Result<()> {
        if let Some(subnet) = &self.subnets.v4 {
            self.kernel.set_vxlan_address(subnet).await?;
        }
        if let Some(subnet_v6) = &self.subnets.v6 {
            self.kernel.set_vxlan_v6_address(subnet_v6).await?;
        }
        let subnets = masq::Subnets {
            v4: self
                .config
                .ipv4
                .as_ref()
                .zip(self.subnets.v4)
                .map(|(ipv4, subnet)| (ipv4.network, subnet)),
            v6: self
                .config
                .ipv6
                .as_ref()
                .zip(self.subnets.v6)
                .map(|(ipv6, subnet)| (ipv6.network, subnet)),
        };
        match &self.masq {
            Some(keeper) => keeper.follow(subnets),
            None if self.args.ip_masq => {
                self.masq = Some(masq::Keeper::start(subnets, MASQ_RECHECK).await?);
            }
            None => {}
        }
        self.write_subnet_env()?;
        if self.pods.is_some() {
            self.apply().await;
        }
        Ok(())
    }

    /// Writes subnet.env for the subnet (the last step of taking it: the
    /// CNI plugin reads it).
    fn write_subnet_env(&self) -> Result<()> {
        // flanneld writes each family's pair only with its `Enable*`, the
        // subnet addressed by its first host address (the bridge's).
        let ipv4 = match (&self.config.ipv4, self.subnets.v4) {
            (Some(ipv4), Some(subnet)) => Some(subnet_env::Ipv4SubnetEnv {
                network: ipv4.network,
                subnet: Ipv4Net::new(
                    subnet_env::gateway_of(subnet).unwrap_or(subnet.network()),
                    subnet.prefix_len(),
                )?,
            }),
            _ => None,
        };
        let ipv6 = match (&self.config.ipv6, self.subnets.v6) {
            (Some(ipv6), Some(subnet_v6)) => Some(subnet_env::Ipv6SubnetEnv {
                network: ipv6.network,
                // flanneld's `IncrementIP` (ipnet's `hosts()` of an IPv6
                // net starts at the network address itself).
                subnet: Ipv6Net::new(
                    std::net::Ipv6Addr::from(u128::from(subnet_v6.network()) + 1),
                    subnet_v6.prefix_len(),
                )?,
            }),
            _ => None,
        };
        let env = SubnetEnv {
            ipv4,
            ipv6,
            mtu: self.mtu,
            ipmasq: self.args.ip_masq,
        };
        subnet_env::write_atomic(&self.args.subnet_file, &env)?;
        info!(
            file = %self.args.subnet_file.display(),
            subnet = ?ipv4.map(|ipv4| ipv4.subnet.to_string()),
            subnet_v6 = ?ipv6.map(|ipv6| ipv6.subnet.to_string()),
            "subnet.env written"
        );
        Ok(())
    }

    /// The kernel's view of pods, ports, uplink neighbours and routes.
    pub async fn on_view(&mut self, view: LocalView) {
        let subnets = self.subnets;
        if let Some(pods) = self.pods.as_mut() {
            pods.refresh(&view.ports, subnets).await;
        }
        if let Some(fast_path) = self.fast_path.as_mut() {
            fast_path.on_view(&view);
            log_tc_changes(&self.view, &view, &self.facts.own_tc_programs);
        }
        self.view = view;
        self.viewed = true;
        self.apply().await;
    }

    /// Pods not complete yet are read again; the maps and the pinned
    /// neighbours follow if they changed, else the pinned neighbours are
    /// repaired (to the last desired state).
    pub async fn on_pod_retry(&mut self) {
        let subnets = self.subnets;
        let (Some(pods), Some(fast_path)) = (self.pods.as_mut(), self.fast_path.as_ref()) else {
            return;
        };
        if pods.retry(&self.view.ports, subnets).await {
            return self.apply().await;
        }
        fast_path.pin_pod_neighbours().await;
    }

    /// Every pod's side is read again, complete or not: a MAC or address
    /// changed inside a pod reaches ENDPOINTS and the pinned neighbour entry.
    pub async fn on_pod_reread(&mut self) {
        let subnets = self.subnets;
        let Some(pods) = self.pods.as_mut() else {
            return;
        };
        if pods.reread(&self.view.ports, subnets).await {
            self.apply().await;
        }
    }

    /// Reads the maps back and repairs whatever differs.
    pub async fn on_map_audit(&mut self) {
        let Some(fast_path) = self.fast_path.as_mut() else {
            return;
        };
        if let Err(error) = fast_path.reread_maps() {
            warn!("cannot read the maps back: {error:#}");
            return;
        }
        self.apply().await;
    }

    /// The node's nftables ruleset changed: every verdict recorded so far
    /// is void until netfilter passes the flow again under the new rules.
    pub async fn on_ruleset_changed(&mut self) {
        self.ruleset_generation = self.ruleset_generation.wrapping_add(1);
        tracing::debug!(
            generation = self.ruleset_generation,
            "nftables ruleset changed; fast-path verdicts voided"
        );
        if let Some((_, checks)) = self.marks.as_mut() {
            checks.request();
        }
        self.apply().await;
    }

    /// A look for other rules using the accept bit finished: while any
    /// exists, weft leaves the bit alone (verdict chain removed) and the
    /// fast path takes no flow; once none is left, both come back.
    pub async fn on_mark_check(&mut self, conflicts: CheckResult) {
        let Some((marks, checks)) = self.marks.as_mut() else {
            return;
        };
        checks.finished();
        let marks = *marks;
        metrics::global().set_accept_mark_conflicts(conflicts.len());
        let suspend = !conflicts.is_empty();
        if suspend == self.verdicts_suspended {
            return;
        }
        if suspend {
            super::mark_check::warn_conflicts(marks, &conflicts);
            self.verdicts_suspended = true;
            self.apply().await;
            off_runtime(verdicts::remove).await;
        } else {
            info!(
                mark = format_args!("{:#x}", marks.accept),
                "no other rule uses the accept bit now: the fast path takes flows again"
            );
            // Without the chain no verdict could be recorded: stay
            // suspended, and try again at the next ruleset change.
            if !off_runtime(move || verdicts::install(marks)).await {
                return;
            }
            self.verdicts_suspended = false;
            self.apply().await;
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
            off_runtime(verdicts::remove).await;
            match fast_path.unpin_pod_neighbours().await {
                Ok(removed) => info!(removed, "pods' pinned neighbour entries removed"),
                Err(error) => warn!("{error:#}"),
            }
        }
    }
}

/// Runs blocking work (nft) off the agent's runtime (the other tasks, the
/// health endpoint among them, go on meanwhile); a failure is logged.
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
