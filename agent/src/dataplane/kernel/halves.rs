//! The pieces of a sync both address families share, written once over
//! [`FamilyPeer`]: which applied peers stay and which go, what the kernel
//! holds, which of its entries are a peer's own or no peer's, and the
//! adds, kept in flight together. What differs between the halves (how
//! removals are grouped and reported, log wording) stays in `kernel.rs`
//! and `v6.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
};

use anyhow::{Context as _, Result, anyhow};
use futures::StreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    route::RouteMessage,
};
use tracing::warn;

use super::{
    Doomed, Failure, FailureKind, IN_FLIGHT, KernelDataplane, KernelReport, VxlanDevice,
    entries::{
        is_installed_fdb, is_installed_neighbour, is_installed_route, is_peer_route, neighbour_ip,
        route_destination, route_message,
    },
    family::{Family, FamilyPeer},
};
use crate::{lease::MacAddr, net::neighbour_mac};

/// A peer's subnet type (`Ipv4Net`, `Ipv6Net`).
pub type Subnet<P> = <<P as FamilyPeer>::Addr as Family>::Net;

/// A family's peers keyed by subnet, as `Desired` holds them.
pub type Peers<P> = BTreeMap<Subnet<P>, P>;

/// What the kernel holds where one family's halves are written: the main
/// table's routes of the family, and the VXLAN device's neighbours and fdb
/// entries. Read once per sync that removes anything, however many peers
/// go.
pub struct Snapshot {
    pub routes: Vec<RouteMessage>,
    pub neighbours: Vec<NeighbourMessage>,
    pub fdb: Vec<NeighbourMessage>,
}

/// Splits the peers applied last into those still wanted unchanged (kept
/// as they are) and those that go: gone, or changed and re-added after.
pub fn stay_or_go<'a, P: FamilyPeer>(
    applied: &'a Peers<P>,
    desired: &Peers<P>,
) -> (Peers<P>, Vec<&'a P>) {
    let mut now = BTreeMap::new();
    let mut going = Vec::new();
    for (subnet, old) in applied {
        if desired.get(subnet) == Some(old) {
            now.insert(*subnet, old.clone());
        } else {
            going.push(old);
        }
    }
    (now, going)
}

/// Reports the kernel could not be read: the reconcile (if this sync is
/// one) and every peer going failed, all for the same cause.
pub fn report_unreadable<P: FamilyPeer>(
    report: &mut KernelReport,
    error: &anyhow::Error,
    reconcile: bool,
    network: IpNet,
    going: &[&P],
) {
    let error = format!("{error:#}");
    if reconcile {
        report.failed.push(Failure {
            what: FailureKind::Reconcile,
            subnet: network,
            error: error.clone(),
        });
    }
    for peer in going {
        report.failed.push(Failure {
            what: FailureKind::RemovePeer,
            subnet: peer.subnet().into(),
            error: error.clone(),
        });
    }
}

/// The VXLAN fdb entries `desired` still uses: a going peer's entry stays
/// when another peer shares its VTEP MAC and node address.
pub fn fdb_kept<P: FamilyPeer>(desired: &Peers<P>) -> BTreeSet<(MacAddr, P::Addr)> {
    desired
        .values()
        .filter_map(|peer| Some((peer.vtep_mac()?, peer.public_ip())))
        .collect()
}

/// The entries `add_peer` wrote for `peer`, as found in `snapshot`: its
/// routes, then its neighbour and fdb entry (not one in `fdb_kept`). Only
/// exactly those: a route to the same destination on another device or
/// via another gateway (the node's connected underlay route, an
/// operator's route) stays.
pub fn installed<P: FamilyPeer>(
    snapshot: &Snapshot,
    peer: &P,
    fdb_kept: &BTreeSet<(MacAddr, P::Addr)>,
    vxlan_index: Option<u32>,
    uplink_index: u32,
) -> (Vec<Doomed>, Vec<Doomed>) {
    let routes = snapshot
        .routes
        .iter()
        .filter(|route| is_installed_route(route, peer, vxlan_index, uplink_index))
        .cloned()
        .map(Doomed::Route)
        .collect();
    let mut entries = Vec::new();
    if let Some(vtep_mac) = peer.vtep_mac() {
        let gateway = P::Addr::network(&peer.subnet());
        let public_ip = peer.public_ip();
        let neighbours = snapshot
            .neighbours
            .iter()
            .filter(|entry| is_installed_neighbour(entry, gateway, vtep_mac));
        let fdb = snapshot.fdb.iter().filter(|entry| {
            is_installed_fdb(entry, vtep_mac, public_ip)
                && !fdb_kept.contains(&(vtep_mac, public_ip))
        });
        entries.extend(neighbours.chain(fdb).cloned().map(Doomed::Neighbour));
    }
    (routes, entries)
}

/// What no peer in `peers` explains (peers that went while the agent was
/// down): weft-shaped routes into the pod `network`, then the VXLAN
/// device's neighbours and fdb entries.
pub fn stale<P: FamilyPeer>(
    snapshot: &Snapshot,
    network: &Subnet<P>,
    peers: &Peers<P>,
    vxlan_index: Option<u32>,
    uplink_index: u32,
) -> (Vec<Doomed>, Vec<Doomed>) {
    let routes = snapshot.routes.iter().filter(|route| {
        is_peer_route::<P::Addr>(route, network, vxlan_index, uplink_index)
            && route_destination::<P::Addr>(route).is_some_and(|to| !peers.contains_key(&to))
    });
    let mut gateways = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for peer in peers.values() {
        if let Some(vtep_mac) = peer.vtep_mac() {
            gateways.insert(P::Addr::network(&peer.subnet()));
            macs.insert(vtep_mac);
        }
    }
    let neighbours = snapshot
        .neighbours
        .iter()
        .filter(|entry| neighbour_ip::<P::Addr>(entry).is_some_and(|ip| !gateways.contains(&ip)));
    let fdb = snapshot
        .fdb
        .iter()
        .filter(|entry| neighbour_mac(entry).is_some_and(|mac| !macs.contains(&mac)));
    let routes = routes.cloned().map(Doomed::Route).collect();
    let entries = neighbours
        .chain(fdb)
        .cloned()
        .map(Doomed::Neighbour)
        .collect();
    (routes, entries)
}

impl KernelDataplane {
    /// One read of the kernel for a family: `routes` (the main table's
    /// routes of the family), then `device`'s neighbours of `family` and
    /// its fdb entries (none without the device).
    pub(super) async fn snapshot(
        &self,
        routes: impl Future<Output = Result<Vec<RouteMessage>>>,
        device: Option<VxlanDevice>,
        family: AddressFamily,
    ) -> Result<Snapshot> {
        let routes = routes.await?;
        let (neighbours, fdb) = match device {
            Some(device) => (
                self.neighbours(device.index, family).await?,
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

    /// Programs every peer in `desired` not in `now` and records it there;
    /// what fails is reported (and tried again at the next sync). Peers are
    /// independent: their netlink requests are kept in flight together (a
    /// listing of 20,000 leases is 60,000 requests, and one at a time they
    /// cost a round trip each).
    pub(super) async fn add_missing<P: FamilyPeer>(
        &self,
        desired: &Peers<P>,
        now: &mut Peers<P>,
        device: Option<VxlanDevice>,
        no_device: &'static str,
        reconcile: bool,
        report: &mut KernelReport,
    ) {
        let to_add: Vec<(&Subnet<P>, &P)> = desired
            .iter()
            .filter(|(subnet, _)| !now.contains_key(*subnet))
            .collect();
        let added: Vec<(&Subnet<P>, &P, Result<()>)> = futures::stream::iter(to_add)
            .map(|(subnet, peer)| async move {
                (subnet, peer, self.add_peer(peer, device, no_device).await)
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        for (subnet, peer, result) in added {
            // One peer that cannot be programmed must not hold up the others.
            match result {
                Ok(()) => {
                    if !reconcile {
                        P::Addr::log_programmed(subnet, peer.public_ip());
                    }
                    now.insert(*subnet, peer.clone());
                }
                Err(error) => {
                    warn!(%subnet, "{error:#}");
                    report.failed.push(Failure {
                        what: FailureKind::AddPeer,
                        subnet: (*subnet).into(),
                        error: format!("{error:#}"),
                    });
                }
            }
        }
    }

    /// Programs one peer (idempotent: every write is a replace), as
    /// flanneld does: over VXLAN the neighbour, the fdb entry and the
    /// onlink route through `device`; directly, the route on the uplink.
    async fn add_peer<P: FamilyPeer>(
        &self,
        peer: &P,
        device: Option<VxlanDevice>,
        no_device: &'static str,
    ) -> Result<()> {
        let subnet = peer.subnet();
        let public_ip = peer.public_ip();
        let route = match peer.vtep_mac() {
            Some(vtep_mac) => {
                let device = device.ok_or_else(|| anyhow!(no_device))?;
                let gateway = P::Addr::network(&subnet);
                self.handle
                    .neighbours()
                    .add(device.index, gateway.into())
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
                    .push(NeighbourAttribute::Destination(
                        public_ip.neighbour_address(),
                    ));
                fdb.execute()
                    .await
                    .with_context(|| format!("cannot add fdb {vtep_mac} -> {public_ip}"))?;
                route_message(subnet, gateway, device.index, true)
            }
            None => route_message(subnet, public_ip, self.uplink_index, false),
        };
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot route {subnet}"))
    }
}
