//! The eBPF fast path as one unit: the attached programs and the maps they
//! read, kept in line with the kernel routes (peers), the local view (pods,
//! next hops, pod veths) and the node's nftables ruleset.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use tracing::{debug, info, warn};
use weft_common::{CONFIG_STRICT_VTEPS, NodeConfig, Peer, PeerMode};

use super::{kernel::PeerRoute, maps::FastPathMaps, pods::LocalPods};
use crate::endpoints::LocalView;

/// The PEERS entries for the programmed kernel routes: the same decision
/// (VXLAN or direct) the kernel path made, plus the underlay next hop's MAC
/// (zero while unresolved: the programs leave those packets to the kernel).
pub fn desired_peers(
    routes: &BTreeMap<Ipv4Net, PeerRoute>,
    vni: u32,
    view: &LocalView,
) -> BTreeMap<Ipv4Net, Peer> {
    routes
        .iter()
        .map(|(subnet, route)| {
            let (public_ip, vtep_mac, mode) = match route {
                PeerRoute::Vxlan {
                    vtep_mac,
                    public_ip,
                    ..
                } => (*public_ip, vtep_mac.0, PeerMode::Vxlan),
                PeerRoute::Direct { public_ip, .. } => (*public_ip, [0; 6], PeerMode::HostGw),
            };
            let nexthop_mac = view
                .next_hop_mac(public_ip)
                .map(|mac| mac.0)
                .unwrap_or_default();
            let peer = Peer {
                public_ip: public_ip.octets(),
                vni,
                vtep_mac,
                nexthop_mac,
                mode: mode as u8,
                _pad: [0; 3],
            };
            (*subnet, peer)
        })
        .collect()
}

/// The eBPF dataplane: the attached programs plus the maps they read, kept
/// in line with the kernel routes (peers) and the local view (pods, next
/// hops, pod veths).
pub struct FastPath {
    pub programs: super::ebpf::EbpfDataplane,
    pub maps: FastPathMaps,
    pods: LocalPods,
    handle: rtnetlink::Handle,
    view: LocalView,
    routes: BTreeMap<Ipv4Net, PeerRoute>,
    /// `--strict-vteps` as asked for; CONFIG's flag follows it only while
    /// VTEPS holds every VXLAN peer.
    strict_vteps: bool,
    /// CONFIG as the programs should see it once the fast path is live.
    config: NodeConfig,
    /// The first lease listing and the first local view have been applied
    /// to the maps. Until then CONFIG is dormant (no uplink): pinned maps
    /// may hold a previous run's stale entries, and the programs leave
    /// every packet to the kernel.
    synced_routes: bool,
    synced_view: bool,
}

impl FastPath {
    /// Takes over with `config` as what CONFIG will hold once live; writes
    /// it dormant meanwhile.
    pub fn new(
        programs: super::ebpf::EbpfDataplane,
        maps: FastPathMaps,
        handle: rtnetlink::Handle,
        config: NodeConfig,
    ) -> Self {
        let mut fast_path = Self {
            programs,
            maps,
            pods: LocalPods::new(handle.clone()),
            handle,
            view: Default::default(),
            routes: BTreeMap::new(),
            strict_vteps: config.flags & CONFIG_STRICT_VTEPS != 0,
            config,
            synced_routes: false,
            synced_view: false,
        };
        fast_path.write_config();
        fast_path
    }

    fn is_live(&self) -> bool {
        self.synced_routes && self.synced_view
    }

    /// Writes CONFIG: as configured once live, else dormant (no uplink, so
    /// the programs act on nothing) but with the ruleset generation, which
    /// must never go back.
    fn write_config(&mut self) {
        let config = if self.is_live() {
            self.config
        } else {
            NodeConfig {
                ruleset_generation: self.config.ruleset_generation,
                ..NodeConfig::default()
            }
        };
        let was_live = self.maps.cached_config().uplink_ifindex != 0;
        match self.maps.set_config(config) {
            Ok(()) if !was_live && config.uplink_ifindex != 0 => {
                info!("maps synced with the leases and the pods: the fast path is live")
            }
            Ok(()) => {}
            Err(error) => warn!("{error:#}"),
        }
    }

    /// The kernel path's peers changed.
    pub fn on_routes(&mut self, routes: &BTreeMap<Ipv4Net, PeerRoute>) {
        self.routes.clone_from(routes);
        self.sync_peers();
        self.synced_routes = true;
        self.write_config();
    }

    /// The kernel's view of pods, ports and neighbours changed.
    pub async fn on_view(&mut self, view: LocalView) {
        self.pods.refresh(&view.ports).await;
        self.programs.reconcile_pod_ports(&view.ports);
        self.config.gateway_mac = view.gateway_mac.map(|mac| mac.0).unwrap_or_default();
        let neighbours_changed = view.uplink_neighbours != self.view.uplink_neighbours
            || view.uplink_routes != self.view.uplink_routes;
        self.view = view;
        self.sync_local_pods().await;
        if neighbours_changed {
            self.sync_peers();
        }
        self.synced_view = true;
        self.write_config();
    }

    /// ENDPOINTS, and the pods' pinned neighbour entries on the bridge,
    /// from the pods' own addresses.
    async fn sync_local_pods(&mut self) {
        let pods = self.pods.endpoints();
        self.maps.sync_endpoints(&pods);
        if let (Some(bridge), Some(subnet)) = (self.view.bridge_index, self.pods.own_subnet())
            && let Err(error) =
                super::pod_neighbours::sync(&self.handle, bridge, &pods, subnet).await
        {
            warn!("{error:#}");
        }
    }

    /// Our lease: local pods are the addresses inside it.
    pub async fn set_own_subnet(&mut self, subnet: Ipv4Net) {
        self.pods.set_own_subnet(subnet);
        self.sync_local_pods().await;
    }

    /// Reads again the pods whose side could not be read or whose GRO is
    /// not confirmed yet (views arrive only when something changed).
    pub async fn retry_pods(&mut self) {
        self.pods.refresh(&self.view.ports).await;
        self.sync_local_pods().await;
    }

    /// Reads the maps back and rewrites whatever differs from what they
    /// should hold: an entry deleted or changed behind the agent's back
    /// (by hand with bpftool, say) comes back.
    pub async fn audit_maps(&mut self) {
        if let Err(error) = self.maps.reload() {
            warn!("cannot read the maps back: {error:#}");
            return;
        }
        self.sync_peers();
        self.sync_local_pods().await;
        self.write_config();
    }

    /// The node's nftables ruleset changed: every verdict recorded so far
    /// is void until netfilter passes the flow again under the new rules.
    pub fn on_ruleset_changed(&mut self) {
        self.config.ruleset_generation = self.config.ruleset_generation.wrapping_add(1);
        self.write_config();
        debug!(
            generation = self.config.ruleset_generation,
            "nftables ruleset changed; fast-path verdicts voided"
        );
    }

    fn sync_peers(&mut self) {
        let vni = self.config.vni;
        let desired = desired_peers(&self.routes, vni, &self.view);
        let vteps_complete = self.maps.sync_peers(&desired);
        // A VTEPS that cannot hold every VXLAN peer would make the strict
        // check drop real peers' traffic; the kernel's vxlan device (all
        // flanneld has) accepts any source, so the check is suspended
        // until every peer fits again.
        let strict = self.strict_vteps && vteps_complete;
        if (self.config.flags & CONFIG_STRICT_VTEPS != 0) != strict {
            self.config.flags ^= CONFIG_STRICT_VTEPS;
            self.write_config();
            if strict {
                info!("every VXLAN peer is in VTEPS: strict VTEP check on again");
            } else {
                warn!(
                    "VTEPS cannot hold every VXLAN peer: strict VTEP check suspended, VXLAN from any source goes to the kernel path"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lease::MacAddr;

    #[test]
    fn desired_peers_carry_mode_vtep_and_resolved_next_hop() {
        let vxlan_subnet: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let direct_subnet: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let routes = BTreeMap::from([
            (
                vxlan_subnet,
                PeerRoute::Vxlan {
                    subnet: vxlan_subnet,
                    vtep_mac: MacAddr([0x0e, 1, 2, 3, 4, 5]),
                    public_ip: Ipv4Addr::new(192, 168, 77, 2),
                },
            ),
            (
                direct_subnet,
                PeerRoute::Direct {
                    subnet: direct_subnet,
                    public_ip: Ipv4Addr::new(192, 168, 77, 3),
                },
            ),
        ]);
        let view = LocalView {
            uplink_neighbours: BTreeMap::from([(
                Ipv4Addr::new(192, 168, 77, 2),
                MacAddr([0xaa; 6]),
            )]),
            uplink_routes: BTreeMap::from([("192.168.77.0/24".parse().unwrap(), None)]),
            ..LocalView::default()
        };
        let peers = desired_peers(&routes, 1, &view);
        let vxlan = peers[&vxlan_subnet];
        assert_eq!(
            (vxlan.mode, vxlan.vni, vxlan.vtep_mac, vxlan.nexthop_mac),
            (PeerMode::Vxlan as u8, 1, [0x0e, 1, 2, 3, 4, 5], [0xaa; 6])
        );
        assert_eq!(vxlan.public_ip, [192, 168, 77, 2]);
        let direct = peers[&direct_subnet];
        assert_eq!(
            (direct.mode, direct.nexthop_mac),
            (PeerMode::HostGw as u8, [0; 6]),
            "unresolved next hop must stay zero"
        );
    }
}

#[cfg(test)]
mod next_hop_tests {
    use std::net::Ipv4Addr;

    use super::LocalView;
    use crate::lease::MacAddr;

    #[test]
    fn off_link_peers_are_reached_through_their_gateways_mac() {
        let router = Ipv4Addr::new(192, 168, 77, 254);
        let view = LocalView {
            uplink_routes: [
                ("192.168.77.0/24".parse().unwrap(), None),
                ("0.0.0.0/0".parse().unwrap(), Some(router)),
            ]
            .into(),
            uplink_neighbours: [
                (router, MacAddr([0xee; 6])),
                (Ipv4Addr::new(192, 168, 77, 2), MacAddr([0x22; 6])),
            ]
            .into(),
            ..LocalView::default()
        };
        assert_eq!(
            view.next_hop_mac(Ipv4Addr::new(192, 168, 77, 2)),
            Some(MacAddr([0x22; 6])),
            "on-link: its own MAC"
        );
        assert_eq!(
            view.next_hop_mac(Ipv4Addr::new(192, 168, 78, 3)),
            Some(MacAddr([0xee; 6])),
            "off-link: the router's"
        );
        assert_eq!(
            view.next_hop_mac(Ipv4Addr::new(192, 168, 77, 9)),
            None,
            "unresolved"
        );
    }
}
