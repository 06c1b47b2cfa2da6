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
    route::{RouteAttribute, RouteMessage, RouteProtocol},
};
use rtnetlink::Handle;
use tracing::{info, warn};

use self::entries::{
    has_gateway, is_installed_fdb, is_installed_neighbour, is_installed_route, route_destination,
    route_message,
};
use crate::{
    config::NetworkConfig,
    desired::{Desired, PeerRoute},
    lease::MacAddr,
    net::{neighbour_ip, neighbour_mac},
};

/// How many peers' netlink requests a sync keeps in flight at once.
const ADDS_IN_FLIGHT: usize = 64;

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

/// What one [`KernelDataplane::sync`] did and could not do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReport {
    /// The kernel was read and stale flannel-shaped entries removed (start-up
    /// and every listing).
    pub reconciled: bool,
    pub added: usize,
    pub removed: usize,
    /// Peers (or the clean-up, keyed by the network) that failed, with the
    /// cause; retried at the next sync.
    pub failed: Vec<(Ipv4Net, String)>,
}

#[derive(Clone, Copy, Debug)]
pub struct VxlanDevice {
    pub index: u32,
    pub mac: MacAddr,
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
    /// there are. What fails is reported and tried again at the next sync.
    pub async fn sync(&mut self, desired: &Desired) -> KernelReport {
        let mut report = KernelReport::default();
        let applied = match self.applied.take() {
            Some(applied) => applied,
            None => {
                report.reconciled = true;
                if let Err(error) = self.remove_stale(&desired.routes).await {
                    warn!("cannot reconcile the kernel datapath: {error:#}");
                    report
                        .failed
                        .push((self.config.network, format!("{error:#}")));
                }
                BTreeMap::new()
            }
        };
        let mut now = BTreeMap::new();
        for (subnet, old) in &applied {
            if desired.routes.get(subnet) == Some(old) {
                now.insert(*subnet, old.clone());
                continue;
            }
            match self.remove_peer(old).await {
                Ok(()) => {
                    report.removed += 1;
                    if !desired.routes.contains_key(subnet) {
                        info!(%subnet, "peer removed");
                    }
                }
                Err(error) => {
                    warn!(%subnet, "{error:#}");
                    report.failed.push((*subnet, format!("{error:#}")));
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
            .buffered(ADDS_IN_FLIGHT)
            .collect()
            .await;
        for (subnet, route, result) in added {
            // One peer that cannot be programmed must not hold up the others.
            match result {
                Ok(()) => {
                    report.added += 1;
                    if !report.reconciled {
                        info!(%subnet, public_ip = %route.public_ip(), "peer programmed");
                    }
                    now.insert(*subnet, route.clone());
                }
                Err(error) => {
                    warn!(%subnet, "{error:#}");
                    report.failed.push((*subnet, format!("{error:#}")));
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

    /// Removes one peer's route, neighbour and fdb entry (what exists of
    /// them), and only entries exactly as `add_peer` wrote them: a route to
    /// the same destination on another device or via another gateway (the
    /// node's connected underlay route, an operator's route) stays.
    async fn remove_peer(&self, peer: &PeerRoute) -> Result<()> {
        let vxlan_index = self.vxlan.map(|device| device.index);
        self.delete_routes(|route| is_installed_route(route, peer, vxlan_index, self.uplink_index))
            .await?;
        if let PeerRoute::Vxlan {
            subnet,
            vtep_mac,
            public_ip,
        } = peer
        {
            self.delete_vxlan_entries(
                |entry| is_installed_neighbour(entry, subnet.network(), *vtep_mac),
                |entry| is_installed_fdb(entry, *vtep_mac, *public_ip),
            )
            .await?;
        }
        Ok(())
    }

    /// Removes routes into the pod network via flannel.<VNI> or the uplink,
    /// neighbours and fdb entries on flannel.<VNI> that no route in `peers`
    /// explains (peers that vanished while the agent was down); `sync` then
    /// (re)programs every peer.
    async fn remove_stale(&self, peers: &BTreeMap<Ipv4Net, PeerRoute>) -> Result<()> {
        let vxlan_index = self.vxlan.map(|device| device.index);
        self.delete_routes(|route| {
            let Some(destination) = route_destination(route) else {
                return false;
            };
            let oif = route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            // Routes through the VXLAN device, or via a gateway on the uplink
            // (host-gw / DirectRouting), with the protocol add_peer writes,
            // are the ones flanneld would own.
            let ours = route.header.protocol == RouteProtocol::Boot
                && ((oif.is_some() && oif == vxlan_index)
                    || (oif == Some(self.uplink_index) && has_gateway(route)));
            ours && self.config.network.contains(&destination) && !peers.contains_key(&destination)
        })
        .await?;
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
        self.delete_vxlan_entries(
            |entry| neighbour_ip(entry).is_some_and(|ip| !gateways.contains(&ip)),
            |entry| neighbour_mac(entry).is_some_and(|mac| !macs.contains(&mac)),
        )
        .await?;
        Ok(())
    }

    /// Deletes the main-table IPv4 routes `doomed` picks.
    async fn delete_routes(&self, doomed: impl Fn(&RouteMessage) -> bool) -> Result<()> {
        for route in self
            .routes()
            .await?
            .into_iter()
            .filter(|route| doomed(route))
        {
            let destination = route_destination(&route);
            info!(?destination, "removing route");
            self.handle
                .route()
                .del(route)
                .execute()
                .await
                .context("cannot remove a route")?;
        }
        Ok(())
    }

    /// Deletes the neighbours and fdb entries on the VXLAN device that
    /// `doomed_neighbour` and `doomed_fdb` pick.
    async fn delete_vxlan_entries(
        &self,
        doomed_neighbour: impl Fn(&NeighbourMessage) -> bool,
        doomed_fdb: impl Fn(&NeighbourMessage) -> bool,
    ) -> Result<()> {
        let Some(device) = self.vxlan else {
            return Ok(());
        };
        let neighbours = self.neighbours(device.index, AddressFamily::Inet).await?;
        let fdb = self.neighbours(device.index, AddressFamily::Bridge).await?;
        let doomed = neighbours
            .into_iter()
            .filter(|entry| doomed_neighbour(entry))
            .chain(fdb.into_iter().filter(|entry| doomed_fdb(entry)));
        for entry in doomed {
            self.handle
                .neighbours()
                .del(entry)
                .execute()
                .await
                .context("cannot remove a neighbour or fdb entry")?;
        }
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<RouteMessage>> {
        crate::net::main_routes(&self.handle).await
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
