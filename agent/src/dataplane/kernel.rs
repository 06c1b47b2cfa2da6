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
mod entries;

pub use device::stable_vtep_mac;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, anyhow};
use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::Ipv4Net;
use netlink_packet_route::{
    AddressFamily,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::RouteMessage,
};
use rtnetlink::Handle;
use tracing::{info, warn};

pub use self::entries::is_peer_route;
use self::entries::{
    is_installed_fdb, is_installed_neighbour, is_installed_route, route_destination, route_message,
};
use crate::{
    config::NetworkConfig,
    desired::{Desired, PeerRoute},
    lease::MacAddr,
    net::{neighbour_ip, neighbour_mac},
};

/// How many peers' netlink requests a sync keeps in flight at once (adds
/// and removals alike).
const IN_FLIGHT: usize = 64;

pub struct KernelDataplane {
    handle: Handle,
    config: NetworkConfig,
    uplink_index: u32,
    public_ip: Ipv4Addr,
    vxlan: Option<VxlanDevice>,
    /// The routes last applied successfully (what the kernel holds as far
    /// as this agent knows); `None` until a sync has read the kernel, and
    /// again after [`KernelDataplane::reread_next_sync`].
    applied: Option<BTreeMap<Ipv4Net, PeerRoute>>,
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
    /// The peer's subnet (the network for the reconcile).
    pub subnet: Ipv4Net,
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

/// What the kernel holds where weft writes: the main table's IPv4 routes,
/// and the VXLAN device's neighbours and fdb entries. Read once per sync
/// that removes anything, however many peers go.
struct Snapshot {
    routes: Vec<RouteMessage>,
    neighbours: Vec<NeighbourMessage>,
    fdb: Vec<NeighbourMessage>,
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
        public_ip: Ipv4Addr,
    ) -> Self {
        Self {
            handle,
            config,
            uplink_index,
            public_ip,
            vxlan: None,
            applied: None,
        }
    }

    /// The next sync reads the kernel again and removes what no lease
    /// explains, as at start-up: a listing replaces everything the agent
    /// knew, so the kernel is checked against it.
    pub fn reread_next_sync(&mut self) {
        self.applied = None;
    }

    /// Makes the kernel hold `desired.routes`. After start-up or a listing
    /// ([`Self::reread_next_sync`]) that is a full reconcile; otherwise only
    /// the routes that differ from the last applied ones are touched, so a
    /// single lease event costs a few netlink calls however many peers
    /// there are. The kernel is read at most once per sync (when anything
    /// goes), and removals, like adds, are kept in flight together. What
    /// fails is reported and tried again at the next sync.
    pub async fn sync(&mut self, desired: &Desired) -> KernelReport {
        let mut report = KernelReport::default();
        let applied = self.applied.take();
        report.reconciled = applied.is_none();
        let applied = applied.unwrap_or_default();
        let mut now = BTreeMap::new();
        let mut going = Vec::new();
        for (subnet, old) in &applied {
            if desired.routes.get(subnet) == Some(old) {
                now.insert(*subnet, old.clone());
            } else {
                going.push(old);
            }
        }
        if report.reconciled || !going.is_empty() {
            match self.snapshot().await {
                Ok(snapshot) if report.reconciled => {
                    self.remove_stale(&snapshot, &desired.routes, &mut report)
                        .await
                }
                Ok(snapshot) => {
                    self.remove_peers(&snapshot, &going, &desired.routes, &mut report)
                        .await
                }
                Err(error) => {
                    warn!("cannot read the kernel datapath: {error:#}");
                    let error = format!("{error:#}");
                    if report.reconciled {
                        report.failed.push(Failure {
                            what: FailureKind::Reconcile,
                            subnet: self.config.network,
                            error: error.clone(),
                        });
                    }
                    for peer in &going {
                        report.failed.push(Failure {
                            what: FailureKind::RemovePeer,
                            subnet: peer.subnet(),
                            error: error.clone(),
                        });
                    }
                }
            }
        }
        // Peers are independent: their netlink requests are kept in flight
        // together (a listing of 20,000 leases is 60,000 requests, and one
        // at a time they cost a round trip each).
        let to_add: Vec<(&Ipv4Net, &PeerRoute)> = desired
            .routes
            .iter()
            .filter(|(subnet, _)| !now.contains_key(*subnet))
            .collect();
        let this = &*self;
        let added: Vec<(&Ipv4Net, &PeerRoute, Result<()>)> = futures::stream::iter(to_add)
            .map(|(subnet, route)| async move { (subnet, route, this.add_peer(route).await) })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        for (subnet, route, result) in added {
            // One peer that cannot be programmed must not hold up the others.
            match result {
                Ok(()) => {
                    if !report.reconciled {
                        info!(%subnet, public_ip = %route.public_ip(), "peer programmed");
                    }
                    now.insert(*subnet, route.clone());
                }
                Err(error) => {
                    warn!(%subnet, "{error:#}");
                    report.failed.push(Failure {
                        what: FailureKind::AddPeer,
                        subnet: *subnet,
                        error: format!("{error:#}"),
                    });
                }
            }
        }
        self.applied = Some(now);
        report
    }

    /// Programs one peer (idempotent: every write is a replace).
    async fn add_peer(&self, peer: &PeerRoute) -> Result<()> {
        match peer {
            PeerRoute::Vxlan {
                subnet,
                vtep_mac,
                public_ip,
            } => {
                let device = self.vxlan.ok_or_else(|| anyhow!("no VXLAN device"))?;
                let gateway = subnet.network();
                self.handle
                    .neighbours()
                    .add(device.index, IpAddr::V4(gateway))
                    .link_layer_address(&vtep_mac.0)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .with_context(|| format!("cannot add neighbour {gateway} -> {vtep_mac}"))?;
                let mut fdb = self
                    .handle
                    .neighbours()
                    .add_bridge(device.index, &vtep_mac.0)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace();
                fdb.message_mut()
                    .attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        *public_ip,
                    )));
                fdb.execute()
                    .await
                    .with_context(|| format!("cannot add fdb {vtep_mac} -> {public_ip}"))?;
                let route = route_message(*subnet, gateway, device.index, true);
                self.handle
                    .route()
                    .add(route)
                    .replace()
                    .execute()
                    .await
                    .with_context(|| format!("cannot route {subnet}"))?;
            }
            PeerRoute::Direct { subnet, public_ip } => {
                let route = route_message(*subnet, *public_ip, self.uplink_index, false);
                self.handle
                    .route()
                    .add(route)
                    .replace()
                    .execute()
                    .await
                    .with_context(|| format!("cannot route {subnet}"))?;
            }
        }
        Ok(())
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
        let fdb_kept: BTreeSet<(MacAddr, Ipv4Addr)> = desired
            .values()
            .filter_map(|peer| match peer {
                PeerRoute::Vxlan {
                    vtep_mac,
                    public_ip,
                    ..
                } => Some((*vtep_mac, *public_ip)),
                PeerRoute::Direct { .. } => None,
            })
            .collect();
        let removals = going.iter().map(|peer| {
            let mut doomed: Vec<Doomed> = snapshot
                .routes
                .iter()
                .filter(|route| is_installed_route(route, peer, vxlan_index, self.uplink_index))
                .cloned()
                .map(Doomed::Route)
                .collect();
            if let PeerRoute::Vxlan {
                subnet,
                vtep_mac,
                public_ip,
            } = peer
            {
                let neighbours = snapshot
                    .neighbours
                    .iter()
                    .filter(|entry| is_installed_neighbour(entry, subnet.network(), *vtep_mac));
                let fdb = snapshot.fdb.iter().filter(|entry| {
                    is_installed_fdb(entry, *vtep_mac, *public_ip)
                        && !fdb_kept.contains(&(*vtep_mac, *public_ip))
                });
                doomed.extend(neighbours.chain(fdb).cloned().map(Doomed::Neighbour));
            }
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
                        subnet,
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
        peers: &BTreeMap<Ipv4Net, PeerRoute>,
        report: &mut KernelReport,
    ) {
        let vxlan_index = self.vxlan.map(|device| device.index);
        let routes = snapshot.routes.iter().filter(|route| {
            is_peer_route(route, &self.config.network, vxlan_index, self.uplink_index)
                && route_destination(route).is_some_and(|to| !peers.contains_key(&to))
        });
        let mut gateways = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for peer in peers.values() {
            if let PeerRoute::Vxlan {
                subnet, vtep_mac, ..
            } = peer
            {
                gateways.insert(subnet.network());
                macs.insert(*vtep_mac);
            }
        }
        let neighbours = snapshot
            .neighbours
            .iter()
            .filter(|entry| neighbour_ip(entry).is_some_and(|ip| !gateways.contains(&ip)));
        let fdb = snapshot
            .fdb
            .iter()
            .filter(|entry| neighbour_mac(entry).is_some_and(|mac| !macs.contains(&mac)));
        let routes: Vec<Doomed> = routes.cloned().map(Doomed::Route).collect();
        let entries: Vec<Doomed> = neighbours
            .chain(fdb)
            .cloned()
            .map(Doomed::Neighbour)
            .collect();
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
                subnet: self.config.network,
                error: format!("{error:#}"),
            });
        }
    }

    /// Deletes one entry; one already gone (since the snapshot) is fine.
    async fn delete(&self, entry: Doomed) -> Result<()> {
        let result = match entry {
            Doomed::Route(route) => {
                let destination = route_destination(&route);
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

    /// The underlay addresses the VXLAN device's fdb sends to: the peers
    /// whoever programmed the device last (flanneld, or a previous agent)
    /// accepted. Empty without the device.
    pub async fn fdb_destinations(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let Some(device) = self.vxlan else {
            return Ok(BTreeSet::new());
        };
        let fdb = self.neighbours(device.index, AddressFamily::Bridge).await?;
        Ok(fdb
            .iter()
            .filter_map(entries::fdb_destination)
            .filter(|ip| !ip.is_unspecified() && *ip != self.public_ip)
            .collect())
    }

    /// One read of the kernel: routes, and the VXLAN device's neighbours
    /// and fdb entries (none without the device).
    async fn snapshot(&self) -> Result<Snapshot> {
        let routes = crate::net::main_routes(&self.handle).await?;
        let (neighbours, fdb) = match self.vxlan {
            Some(device) => (
                self.neighbours(device.index, AddressFamily::Inet).await?,
                self.neighbours(device.index, AddressFamily::Bridge).await?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        Ok(Snapshot {
            routes,
            neighbours,
            fdb,
        })
    }

    async fn neighbours(&self, index: u32, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        let neighbours: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .context("cannot list neighbours")?;
        Ok(neighbours
            .into_iter()
            .filter(|neighbour| neighbour.header.ifindex == index)
            .collect())
    }
}

#[cfg(test)]
mod tests;
