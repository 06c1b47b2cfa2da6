//! The IPv6 halves of dual-stack peers, as flanneld v0.20.2 programs them
//! (`backend/vxlan/vxlan_network.go`'s v6 branch, `backend/hostgw`), next
//! to the IPv4 ones and on the same rules:
//!
//! VXLAN, per remote lease with a v6 half, on `flannel-v6.<VNI>`:
//! `ip -6 neigh replace <v6 subnet net> lladdr <v6 VtepMAC> dev flannel-v6.1 nud permanent`,
//! `bridge fdb replace <v6 VtepMAC> dev flannel-v6.1 dst <PublicIPv6> self permanent`,
//! `ip -6 route replace <v6 subnet> via <v6 subnet net> dev flannel-v6.1 onlink`.
//! host-gw (and DirectRouting for an on-link PublicIPv6):
//! `ip -6 route replace <v6 subnet> via <PublicIPv6> dev <uplink>`.
//!
//! Tracked apart from the IPv4 routes (the desired state keys them by their
//! IPv6 subnet), so a peer that loses its IPv6 half loses exactly these.

use std::{collections::BTreeSet, net::Ipv6Addr};

use anyhow::Result;
use ipnet::Ipv6Net;
use netlink_packet_route::AddressFamily;
use tracing::{info, warn};

use super::{
    Doomed, Failure, FailureKind, KernelDataplane, KernelReport,
    entries::fdb_destination,
    halves::{Peers, Snapshot, fdb_kept, installed, report_unreadable, stale, stay_or_go},
};
use crate::desired::{Desired, PeerRouteV6};

impl KernelDataplane {
    /// Makes the kernel hold `desired.routes_v6`, as [`Self::sync`] does
    /// for the IPv4 routes: a full reconcile after start-up or a listing,
    /// else only what changed. Nothing outside a dual-stack network.
    pub(super) async fn sync_v6(&mut self, desired: &Desired, report: &mut KernelReport) {
        let Some(network) = self.config.ipv6.as_ref().map(|ipv6| ipv6.network) else {
            return;
        };
        let applied = self.applied_v6.take();
        let reconcile = applied.is_none();
        let applied = applied.unwrap_or_default();
        let (mut now, going) = stay_or_go(&applied, &desired.routes_v6);
        if reconcile || !going.is_empty() {
            let routes = crate::net::main_routes_v6(&self.handle);
            match self
                .snapshot(routes, self.vxlan_v6, AddressFamily::Inet6)
                .await
            {
                Ok(snapshot) => {
                    let doomed = if reconcile {
                        self.stale_v6(&snapshot, &network, &desired.routes_v6)
                    } else {
                        self.installed_v6(&snapshot, &going, &desired.routes_v6)
                    };
                    self.delete_all(doomed, reconcile, &network, &going, report)
                        .await;
                }
                Err(error) => {
                    warn!("cannot read the kernel's IPv6 datapath: {error:#}");
                    report_unreadable(report, &error, reconcile, network.into(), &going);
                }
            }
        }
        self.add_missing(
            &desired.routes_v6,
            &mut now,
            self.vxlan_v6,
            "no flannel-v6 device",
            reconcile,
            report,
        )
        .await;
        self.applied_v6 = Some(now);
    }

    /// The entries `add_peer` wrote for the halves in `going`, as found
    /// in `snapshot`: every half's routes first, then the neighbours and
    /// fdb entries (no fdb entry a half in `desired` still uses).
    fn installed_v6(
        &self,
        snapshot: &Snapshot,
        going: &[&PeerRouteV6],
        desired: &Peers<PeerRouteV6>,
    ) -> Vec<Doomed> {
        let vxlan_index = self.vxlan_v6.map(|device| device.index);
        let fdb_kept = fdb_kept(desired);
        let mut routes = Vec::new();
        let mut entries = Vec::new();
        for peer in going {
            let (peer_routes, peer_entries) =
                installed(snapshot, *peer, &fdb_kept, vxlan_index, self.uplink_index);
            routes.extend(peer_routes);
            entries.extend(peer_entries);
        }
        routes.extend(entries);
        routes
    }

    /// What no IPv6 half in `peers` explains (halves that went while the
    /// agent was down): weft-shaped routes into the IPv6 pod network, then
    /// flannel-v6's neighbours and fdb entries.
    fn stale_v6(
        &self,
        snapshot: &Snapshot,
        network: &Ipv6Net,
        peers: &Peers<PeerRouteV6>,
    ) -> Vec<Doomed> {
        let vxlan_index = self.vxlan_v6.map(|device| device.index);
        let (mut routes, entries) = stale(snapshot, network, peers, vxlan_index, self.uplink_index);
        routes.extend(entries);
        routes
    }

    /// Deletes `doomed` in order (routes before the entries they use), and
    /// reports what failed: as a reconcile failure, or against the halves
    /// going.
    async fn delete_all(
        &self,
        doomed: Vec<Doomed>,
        reconcile: bool,
        network: &Ipv6Net,
        going: &[&PeerRouteV6],
        report: &mut KernelReport,
    ) {
        let mut errors = Vec::new();
        for entry in doomed {
            if let Err(error) = self.delete(entry).await {
                errors.push(format!("{error:#}"));
            }
        }
        for error in errors {
            warn!("cannot remove an IPv6 peer's entry: {error}");
            if reconcile {
                report.failed.push(Failure {
                    what: FailureKind::Reconcile,
                    subnet: (*network).into(),
                    error,
                });
            } else {
                for peer in going {
                    report.failed.push(Failure {
                        what: FailureKind::RemovePeer,
                        subnet: peer.subnet().into(),
                        error: error.clone(),
                    });
                }
            }
        }
        if !reconcile {
            for peer in going {
                info!(subnet = %peer.subnet(), "IPv6 peer entries removed");
            }
        }
    }

    /// The IPv6 underlay addresses an existing flannel-v6's fdb sends to
    /// (as flanneld or a previous agent left it), for the overlay guard's
    /// first set: read by name, before the device is adopted or recreated,
    /// as [`KernelDataplane::fdb_destinations`].
    pub async fn fdb_destinations_v6(&self) -> Result<BTreeSet<Ipv6Addr>> {
        let name = self.config.backend.vni().map(Self::vxlan_v6_name);
        let Some(index) = self.existing_device(name).await? else {
            return Ok(BTreeSet::new());
        };
        let fdb = self.neighbours(index, AddressFamily::Bridge).await?;
        Ok(fdb
            .iter()
            .filter_map(fdb_destination::<Ipv6Addr>)
            .filter(|ip| !ip.is_unspecified())
            .collect())
    }
}
