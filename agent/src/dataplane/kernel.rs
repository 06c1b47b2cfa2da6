//! The kernel datapath: exactly what flanneld programs. It is the whole
//! datapath with `--dataplane kernel`, and the slow path under the eBPF fast
//! path: whatever the fast path does not handle still forwards.
//!
//! VXLAN: device `flannel.<VNI>` (vxlan id VNI, local = node IP, dev =
//! uplink, dstport, nolearning, MTU = uplink - 50, address `<subnet>/32`, a
//! stable VTEP MAC), and per remote lease, in flanneld's order:
//! `ip neigh replace <peer net> lladdr <VtepMAC> dev flannel.1 nud permanent`,
//! `bridge fdb replace <VtepMAC> dev flannel.1 dst <PublicIP> self permanent`,
//! `ip route replace <peer subnet> via <peer net> dev flannel.1 onlink`.
//! host-gw (and DirectRouting for on-link peers):
//! `ip route replace <peer subnet> via <PublicIP> dev <uplink>`.

mod device;
mod device_v6;
mod entries;
pub mod family;
mod halves;
mod left_over;
mod v6;
mod vxlan_link;

pub use device::{stable_vtep_mac, stable_vtep_v6_mac};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_route::{AddressFamily, neighbour::NeighbourMessage, route::RouteMessage};
use rtnetlink::Handle;
use tracing::{info, warn};

pub use self::entries::{neighbour_ip as neighbour_ip_of, uplink_route};
use self::{
    entries::route_destination,
    halves::{Snapshot, fdb_kept, installed, report_unreadable, stale, stay_or_go},
};
use crate::{
    config::NetworkConfig,
    desired::{Desired, PeerRoute, PeerRouteV6},
    lease::MacAddr,
};

/// How many peers' netlink requests a sync keeps in flight at once (adds
/// and removals alike).
const IN_FLIGHT: usize = 64;

pub struct KernelDataplane {
    handle: Handle,
    config: NetworkConfig,
    uplink_index: u32,
    /// The node's IPv4 underlay address: none in an IPv6-only network.
    public_ip: Option<Ipv4Addr>,
    vxlan: Option<VxlanDevice>,
    /// The routes last applied successfully (what the kernel holds as far
    /// as this agent knows); `None` until a sync has read the kernel, and
    /// again after [`KernelDataplane::reread_next_sync`].
    applied: Option<BTreeMap<Ipv4Net, PeerRoute>>,
    /// Dual-stack VXLAN: `flannel-v6.<VNI>` (`v6.rs`).
    vxlan_v6: Option<VxlanDevice>,
    /// [`Self::applied`] for the IPv6 routes (dual-stack).
    applied_v6: Option<BTreeMap<Ipv6Net, PeerRouteV6>>,
}

/// What one [`KernelDataplane::sync`] could not do (counted in the metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReport {
    /// The kernel was read and stale flannel-shaped entries removed (start-up
    /// and every listing).
    pub reconciled: bool,
    /// What failed, with the cause; retried at the next sync.
    pub failed: Vec<Failure>,
}

impl KernelReport {
    /// Every [`FailureKind`]'s label, for metrics that show each from the start.
    pub const FAILURE_KINDS: [&'static str; 3] = ["add_peer", "remove_peer", "reconcile"];
}

/// One write a sync could not make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub what: FailureKind,
    /// The peer's subnet, IPv4 or IPv6 (the network for the reconcile).
    pub subnet: IpNet,
    pub error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    AddPeer,
    RemovePeer,
    /// Reading the kernel, or removing an entry no lease explains.
    Reconcile,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::AddPeer => "add_peer",
            Self::RemovePeer => "remove_peer",
            Self::Reconcile => "reconcile",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct VxlanDevice {
    pub index: u32,
    pub mac: MacAddr,
}

/// A kernel entry to delete.
enum Doomed {
    Route(RouteMessage),
    Neighbour(NeighbourMessage),
}

impl KernelDataplane {
    pub fn new(
        handle: Handle,
        config: NetworkConfig,
        uplink_index: u32,
        public_ip: Option<Ipv4Addr>,
    ) -> Self {
        Self {
            handle,
            config,
            uplink_index,
            public_ip,
            vxlan: None,
            applied: None,
            vxlan_v6: None,
            applied_v6: None,
        }
    }

    /// The next sync reads the kernel again and removes what no lease
    /// explains, as at start-up: a listing replaces everything the agent
    /// knew, so the kernel is checked against it.
    pub fn reread_next_sync(&mut self) {
        self.applied = None;
        self.applied_v6 = None;
    }

    /// Makes the kernel hold `desired.routes`. After start-up or a listing
    /// ([`Self::reread_next_sync`]) that is a full reconcile; otherwise only
    /// the routes that differ from the last applied ones are touched, so a
    /// single lease event costs a few netlink calls however many peers
    /// there are. The kernel is read at most once per sync (when anything
    /// goes), and removals, like adds, are kept in flight together. What
    /// fails is reported and tried again at the next sync.
    pub async fn sync(&mut self, desired: &Desired) -> KernelReport {
        // Both families are read again together (`reread_next_sync`).
        let mut report = KernelReport {
            reconciled: match self.config.ipv4 {
                Some(_) => self.applied.is_none(),
                None => self.applied_v6.is_none(),
            },
            failed: Vec::new(),
        };
        self.sync_v4(desired, &mut report).await;
        // The IPv6 halves, the same way (nothing in an IPv4-only network).
        self.sync_v6(desired, &mut report).await;
        report
    }

    /// The IPv4 routes (nothing in an IPv6-only network).
    async fn sync_v4(&mut self, desired: &Desired, report: &mut KernelReport) {
        let Some(network) = self.config.ipv4.as_ref().map(|ipv4| ipv4.network) else {
            return;
        };
        let applied = self.applied.take().unwrap_or_default();
        let (mut now, going) = stay_or_go(&applied, &desired.routes);
        if report.reconciled || !going.is_empty() {
            let routes = crate::net::main_routes(&self.handle);
            match self.snapshot(routes, self.vxlan, AddressFamily::Inet).await {
                Ok(snapshot) if report.reconciled => {
                    self.remove_stale(&snapshot, &network, &desired.routes, report)
                        .await
                }
                Ok(snapshot) => {
                    self.remove_peers(&snapshot, &going, &desired.routes, report)
                        .await
                }
                Err(error) => {
                    warn!("cannot read the kernel datapath: {error:#}");
                    let reconciled = report.reconciled;
                    report_unreadable(report, &error, reconciled, network.into(), &going);
                }
            }
        }
        let reconciled = report.reconciled;
        self.add_missing(
            &desired.routes,
            &mut now,
            self.vxlan,
            "no VXLAN device",
            reconciled,
            report,
        )
        .await;
        self.applied = Some(now);
    }

    /// Removes the peers in `going` (gone, or changed and re-added after):
    /// each one's route, neighbour and fdb entry as found in `snapshot`, and
    /// only entries exactly as `add_peer` wrote them: a route to the same
    /// destination on another device or via another gateway (the node's
    /// connected underlay route, an operator's route) stays, and so does an
    /// fdb entry a peer in `desired` still uses.
    async fn remove_peers(
        &self,
        snapshot: &Snapshot,
        going: &[&PeerRoute],
        desired: &BTreeMap<Ipv4Net, PeerRoute>,
        report: &mut KernelReport,
    ) {
        let vxlan_index = self.vxlan.map(|device| device.index);
        let fdb_kept = fdb_kept(desired);
        let removals = going.iter().map(|peer| {
            let (mut doomed, entries) =
                installed(snapshot, *peer, &fdb_kept, vxlan_index, self.uplink_index);
            doomed.extend(entries);
            async move {
                // Route first, then neighbour and fdb entry.
                for entry in doomed {
                    self.delete(entry).await?;
                }
                anyhow::Ok(())
            }
        });
        let results: Vec<Result<()>> = futures::stream::iter(removals)
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        for (peer, result) in going.iter().zip(results) {
            let subnet = peer.subnet();
            match result {
                Ok(()) => {
                    if !desired.contains_key(&subnet) {
                        info!(%subnet, "peer removed");
                    }
                }
                Err(error) => {
                    warn!(%subnet, "{error:#}");
                    report.failed.push(Failure {
                        what: FailureKind::RemovePeer,
                        subnet: subnet.into(),
                        error: format!("{error:#}"),
                    });
                }
            }
        }
    }

    /// Removes routes into the pod network via flannel.<VNI> or the uplink,
    /// neighbours and fdb entries on flannel.<VNI> that no route in `peers`
    /// explains (peers that vanished while the agent was down); `sync` then
    /// (re)programs every peer.
    async fn remove_stale(
        &self,
        snapshot: &Snapshot,
        network: &Ipv4Net,
        peers: &BTreeMap<Ipv4Net, PeerRoute>,
        report: &mut KernelReport,
    ) {
        let vxlan_index = self.vxlan.map(|device| device.index);
        let (routes, entries) = stale(snapshot, network, peers, vxlan_index, self.uplink_index);
        // Routes first, then the neighbours and fdb entries they used.
        let mut results: Vec<Result<()>> = Vec::new();
        for batch in [routes, entries] {
            results.extend(
                futures::stream::iter(batch)
                    .map(|entry| self.delete(entry))
                    .buffered(IN_FLIGHT)
                    .collect::<Vec<_>>()
                    .await,
            );
        }
        for error in results.into_iter().filter_map(Result::err) {
            warn!("cannot reconcile the kernel datapath: {error:#}");
            report.failed.push(Failure {
                what: FailureKind::Reconcile,
                subnet: (*network).into(),
                error: format!("{error:#}"),
            });
        }
    }

    /// Deletes one entry; one already gone (since the snapshot) is fine.
    async fn delete(&self, entry: Doomed) -> Result<()> {
        let result = match entry {
            Doomed::Route(route) => {
                // The IPv4 destination (an IPv6 route logs `None`).
                let destination = route_destination::<Ipv4Addr>(&route);
                info!(?destination, "removing route");
                self.handle.route().del(route).execute().await
            }
            Doomed::Neighbour(entry) => self.handle.neighbours().del(entry).execute().await,
        };
        match result {
            Err(rtnetlink::Error::NetlinkError(message))
                if matches!(-message.raw_code(), libc::ENOENT | libc::ESRCH) =>
            {
                Ok(())
            }
            result => result.context("cannot remove a route, neighbour or fdb entry"),
        }
    }

    /// The underlay addresses an existing `flannel.<VNI>`'s fdb sends to:
    /// the peers whoever programmed the device last (flanneld, or a
    /// previous agent) accepted. Read by name, before the device is adopted
    /// or recreated, so the overlay guard can start with them before any
    /// VXLAN socket of this agent's opens; empty without the device (or
    /// the VXLAN backend).
    pub async fn fdb_destinations(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let Some(index) = self
            .existing_device(self.config.backend.vni().map(Self::vxlan_name))
            .await?
        else {
            return Ok(BTreeSet::new());
        };
        let fdb = self.neighbours(index, AddressFamily::Bridge).await?;
        Ok(fdb
            .iter()
            .filter_map(entries::fdb_destination::<Ipv4Addr>)
            .filter(|ip| !ip.is_unspecified() && Some(*ip) != self.public_ip)
            .collect())
    }

    /// The ifindex of the device `name` names, if it exists.
    async fn existing_device(&self, name: Option<String>) -> Result<Option<u32>> {
        let Some(name) = name else {
            return Ok(None);
        };
        Ok(crate::net::link_by_name(&self.handle, &name)
            .await?
            .map(|link| link.header.index))
    }

    /// `index`'s entries of `family` (its neighbours, or with
    /// `AddressFamily::Bridge` its fdb), filtered by the kernel: the other
    /// VXLAN device holds as many entries, one per peer.
    async fn neighbours(&self, index: u32, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        crate::net::neighbours_on(&self.handle, index, family).await
    }
}

#[cfg(test)]
mod tests;
