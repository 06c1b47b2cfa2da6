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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol},
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tracing::{info, warn};

use crate::{
    config::{BackendConfig, NetworkConfig},
    lease::{LeaseAttrs, MacAddr},
    net::{link_by_name, mac_of, neighbour_ip, neighbour_mac},
};

/// How one remote subnet is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRoute {
    /// Through flannel.<VNI>: neighbour + fdb + onlink route.
    Vxlan {
        subnet: Ipv4Net,
        vtep_mac: MacAddr,
        public_ip: Ipv4Addr,
    },
    /// Plain route via the peer's node address on the uplink.
    Direct {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
    },
}

impl PeerRoute {
    pub fn subnet(&self) -> Ipv4Net {
        match self {
            PeerRoute::Vxlan { subnet, .. } | PeerRoute::Direct { subnet, .. } => *subnet,
        }
    }
}

pub struct KernelDataplane {
    handle: Handle,
    config: NetworkConfig,
    uplink_index: u32,
    public_ip: Ipv4Addr,
    /// The uplink's own prefixes: a peer inside one is on-link.
    uplink_prefixes: Vec<Ipv4Net>,
    vxlan: Option<VxlanDevice>,
}

#[derive(Clone, Copy, Debug)]
pub struct VxlanDevice {
    pub index: u32,
    pub mac: MacAddr,
}

impl KernelDataplane {
    pub async fn new(
        handle: Handle,
        config: NetworkConfig,
        uplink_index: u32,
        public_ip: Ipv4Addr,
    ) -> Result<Self> {
        let uplink_prefixes = ipv4_prefixes(&handle, uplink_index).await?;
        Ok(Self {
            handle,
            config,
            uplink_index,
            public_ip,
            uplink_prefixes,
            vxlan: None,
        })
    }

    pub fn vxlan_name(vni: u32) -> String {
        format!("flannel.{vni}")
    }

    /// Creates (or adopts) `flannel.<VNI>` with flanneld's settings and
    /// returns its VTEP MAC. An existing device with other settings is
    /// recreated; its MAC is kept, so leases stay valid across restarts.
    pub async fn ensure_vxlan_device(&mut self, uplink_mtu: u32) -> Result<Option<VxlanDevice>> {
        let BackendConfig::Vxlan { vni, port, mtu, .. } = self.config.backend else {
            return Ok(None);
        };
        let name = Self::vxlan_name(vni);
        let mtu = mtu.unwrap_or(uplink_mtu - 50);
        let existing = link_by_name(&self.handle, &name).await?;
        let mut keep_mac = None;
        if let Some(link) = &existing {
            keep_mac = mac_of(link);
            if vxlan_settings_match(link, vni, port, self.public_ip, self.uplink_index) {
                info!(device = %name, "adopting existing VXLAN device");
            } else {
                warn!(device = %name, "existing VXLAN device has other settings; recreating it");
                self.handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .with_context(|| format!("cannot delete {name}"))?;
            }
        }
        let adopt = existing.is_some()
            && keep_mac.is_some()
            && link_by_name(&self.handle, &name).await?.is_some();
        if !adopt {
            let mac = keep_mac.unwrap_or_else(|| stable_vtep_mac(self.public_ip, vni));
            let message = LinkVxlan::new(&name, vni)
                .dev(self.uplink_index)
                .local(self.public_ip)
                .port(port)
                .learning(false)
                .mtu(mtu)
                .address(mac.0.to_vec())
                .build();
            self.handle
                .link()
                .add(message)
                .execute()
                .await
                .with_context(|| format!("cannot create {name}"))?;
        }
        let link = link_by_name(&self.handle, &name)
            .await?
            .ok_or_else(|| anyhow!("{name} vanished"))?;
        let index = link.header.index;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .with_context(|| format!("cannot set {name} up with MTU {mtu}"))?;
        let mac = mac_of(&link).ok_or_else(|| anyhow!("{name} has no MAC address"))?;
        let device = VxlanDevice { index, mac };
        self.vxlan = Some(device);
        Ok(Some(device))
    }

    /// Gives flannel.<VNI> the address `<subnet network>/32`, dropping any
    /// other address (a subnet from an earlier lease).
    pub async fn set_vxlan_address(&self, subnet: &Ipv4Net) -> Result<()> {
        let Some(device) = self.vxlan else {
            return Ok(());
        };
        let wanted = subnet.network();
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(device.index)
            .execute();
        let mut present = false;
        while let Some(message) = addresses.try_next().await? {
            let address = message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(address)) => Some(*address),
                _ => None,
            });
            match address {
                Some(address) if address == wanted && message.header.prefix_len == 32 => {
                    present = true
                }
                Some(_) => self
                    .handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .context("cannot remove a stale VXLAN address")?,
                None => {}
            }
        }
        if !present {
            self.handle
                .address()
                .add(device.index, IpAddr::V4(wanted), 32)
                .execute()
                .await
                .with_context(|| format!("cannot add {wanted}/32 to the VXLAN device"))?;
        }
        Ok(())
    }

    /// How a peer's lease is reached, or why it cannot be.
    pub fn plan(&self, subnet: Ipv4Net, attrs: &LeaseAttrs) -> Result<PeerRoute> {
        let on_link = self
            .uplink_prefixes
            .iter()
            .any(|prefix| prefix.contains(&attrs.public_ip));
        match &self.config.backend {
            BackendConfig::HostGw => {
                if !on_link {
                    bail!(
                        "host-gw peer {} for {subnet} is not on-link on the uplink",
                        attrs.public_ip
                    );
                }
                Ok(PeerRoute::Direct {
                    subnet,
                    public_ip: attrs.public_ip,
                })
            }
            BackendConfig::Vxlan {
                direct_routing,
                vni,
                ..
            } => {
                if *direct_routing && on_link {
                    return Ok(PeerRoute::Direct {
                        subnet,
                        public_ip: attrs.public_ip,
                    });
                }
                let data = attrs
                    .backend_data
                    .as_ref()
                    .filter(|_| attrs.backend_type == "vxlan")
                    .ok_or_else(|| {
                        anyhow!(
                            "peer {subnet} is a {} lease in a vxlan network",
                            attrs.backend_type
                        )
                    })?;
                if data.vni != *vni {
                    bail!(
                        "peer {subnet} uses VNI {}, this network VNI {vni}",
                        data.vni
                    );
                }
                Ok(PeerRoute::Vxlan {
                    subnet,
                    vtep_mac: data.vtep_mac,
                    public_ip: attrs.public_ip,
                })
            }
        }
    }

    /// Programs one peer (idempotent: every write is a replace).
    pub async fn add_peer(&self, peer: &PeerRoute) -> Result<()> {
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
    pub async fn remove_peer(&self, peer: &PeerRoute) -> Result<()> {
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

    /// Makes the kernel hold exactly `peers`: removes routes into the pod
    /// network via flannel.<VNI> or the uplink, neighbours and fdb entries
    /// on flannel.<VNI> that no current lease explains (peers that vanished
    /// while the agent was down), then (re)programs every peer.
    pub async fn reconcile(&self, peers: &BTreeMap<Ipv4Net, PeerRoute>) -> Result<()> {
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
        for peer in peers.values() {
            // One peer that cannot be programmed must not hold up the others.
            if let Err(error) = self.add_peer(peer).await {
                warn!(subnet = %peer.subnet(), "{error:#}");
            }
        }
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

fn route_message(subnet: Ipv4Net, gateway: Ipv4Addr, oif: u32, onlink: bool) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix_len())
        .gateway(gateway)
        .output_interface(oif)
        // What `ip route replace` writes.
        .protocol(RouteProtocol::Boot);
    if onlink {
        builder = builder.onlink();
    }
    let mut message = builder.build();
    if onlink {
        message.header.flags |= RouteFlags::Onlink;
    }
    message
}

fn route_destination(route: &RouteMessage) -> Option<Ipv4Net> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(RouteAddress::Inet(address)) => {
            Ipv4Net::new(*address, route.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

/// Whether `route` is exactly the route `add_peer` writes for `peer`:
/// destination, output device, gateway and protocol all match.
fn is_installed_route(
    route: &RouteMessage,
    peer: &PeerRoute,
    vxlan_index: Option<u32>,
    uplink_index: u32,
) -> bool {
    let (oif, gateway) = match peer {
        PeerRoute::Vxlan { subnet, .. } => match vxlan_index {
            Some(index) => (index, subnet.network()),
            None => return false,
        },
        PeerRoute::Direct { public_ip, .. } => (uplink_index, *public_ip),
    };
    let has = |wanted: &RouteAttribute| route.attributes.iter().any(|attr| attr == wanted);
    route_destination(route) == Some(peer.subnet())
        && route.header.protocol == RouteProtocol::Boot
        && has(&RouteAttribute::Oif(oif))
        && has(&RouteAttribute::Gateway(RouteAddress::Inet(gateway)))
}

/// Whether a neighbour on the VXLAN device is the one `add_peer` writes for
/// a peer: its subnet's network address at its VTEP MAC.
fn is_installed_neighbour(entry: &NeighbourMessage, gateway: Ipv4Addr, vtep_mac: MacAddr) -> bool {
    neighbour_ip(entry) == Some(gateway) && neighbour_mac(entry) == Some(vtep_mac)
}

/// Whether an fdb entry on the VXLAN device is the one `add_peer` writes:
/// the VTEP MAC towards the peer's PublicIP (two leases may carry the same
/// MAC; removing one must not take the other's entry).
fn is_installed_fdb(entry: &NeighbourMessage, vtep_mac: MacAddr, public_ip: Ipv4Addr) -> bool {
    neighbour_mac(entry) == Some(vtep_mac) && fdb_destination(entry) == Some(public_ip)
}

/// The remote IPv4 address of a VXLAN fdb entry. Entries are listed in the
/// bridge family, whose `NDA_DST` netlink-packet-route leaves as raw bytes.
fn fdb_destination(entry: &NeighbourMessage) -> Option<Ipv4Addr> {
    entry.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => Some(*address),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn has_gateway(route: &RouteMessage) -> bool {
    route
        .attributes
        .iter()
        .any(|attr| matches!(attr, RouteAttribute::Gateway(_)))
}

fn vxlan_settings_match(
    link: &LinkMessage,
    vni: u32,
    port: u16,
    local: Ipv4Addr,
    uplink: u32,
) -> bool {
    let Some(infos) = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    }) else {
        return false;
    };
    let is_vxlan = infos
        .iter()
        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Vxlan)));
    let Some(data) = infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    }) else {
        return false;
    };
    let has = |wanted: &InfoVxlan| data.iter().any(|attr| attr == wanted);
    is_vxlan
        && has(&InfoVxlan::Id(vni))
        && has(&InfoVxlan::Port(port))
        && has(&InfoVxlan::Local(local))
        && has(&InfoVxlan::Link(uplink))
        && has(&InfoVxlan::Learning(false))
}

/// A locally administered unicast MAC made of the VNI's low byte and the
/// node address: the same node gets the same VTEP MAC even when the device is
/// recreated (after a reboot), so its lease stays valid for every peer, and
/// the MAC says whose it is.
pub fn stable_vtep_mac(public_ip: Ipv4Addr, vni: u32) -> MacAddr {
    let [a, b, c, d] = public_ip.octets();
    MacAddr([0x0e, vni as u8, a, b, c, d])
}

async fn ipv4_prefixes(handle: &Handle, index: u32) -> Result<Vec<Ipv4Net>> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut prefixes = Vec::new();
    while let Some(message) = addresses
        .try_next()
        .await
        .context("cannot list uplink addresses")?
    {
        for attr in &message.attributes {
            if let AddressAttribute::Address(IpAddr::V4(address)) = attr {
                prefixes.push(Ipv4Net::new(*address, message.header.prefix_len)?.trunc());
            }
        }
    }
    Ok(prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan_peer() -> PeerRoute {
        PeerRoute::Vxlan {
            subnet: "10.244.2.0/24".parse().unwrap(),
            vtep_mac: MacAddr([0x0e, 1, 192, 168, 77, 2]),
            public_ip: Ipv4Addr::new(192, 168, 77, 2),
        }
    }

    #[test]
    fn removal_matches_routes_by_device_gateway_and_protocol_not_destination_alone() {
        const VXLAN: u32 = 7;
        const UPLINK: u32 = 2;
        let peer = vxlan_peer();
        let subnet = peer.subnet();
        let installed = route_message(subnet, subnet.network(), VXLAN, true);
        assert!(is_installed_route(&installed, &peer, Some(VXLAN), UPLINK));
        // Same destination, anything else different: not ours.
        let on_uplink = route_message(subnet, subnet.network(), UPLINK, true);
        let other_gateway = route_message(subnet, Ipv4Addr::new(10, 244, 2, 9), VXLAN, true);
        let mut connected = route_message(subnet, subnet.network(), VXLAN, true);
        connected.header.protocol = RouteProtocol::Kernel;
        let mut no_gateway = installed.clone();
        no_gateway
            .attributes
            .retain(|attr| !matches!(attr, RouteAttribute::Gateway(_)));
        for other in [on_uplink, other_gateway, connected, no_gateway] {
            assert!(
                !is_installed_route(&other, &peer, Some(VXLAN), UPLINK),
                "{other:?}"
            );
        }
        assert!(!is_installed_route(&installed, &peer, None, UPLINK));
        let direct = PeerRoute::Direct {
            subnet,
            public_ip: Ipv4Addr::new(192, 168, 77, 2),
        };
        let host_gw = route_message(subnet, Ipv4Addr::new(192, 168, 77, 2), UPLINK, false);
        assert!(is_installed_route(&host_gw, &direct, Some(VXLAN), UPLINK));
        assert!(!is_installed_route(
            &installed,
            &direct,
            Some(VXLAN),
            UPLINK
        ));
        // The attack the lease rules stop: a lease for the underlay's own
        // subnet must never take the connected route with it.
        let underlay: Ipv4Net = "192.168.77.0/24".parse().unwrap();
        let mut kernel_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(underlay.network(), 24)
            .output_interface(UPLINK)
            .build();
        kernel_route.header.protocol = RouteProtocol::Kernel;
        let hostile = PeerRoute::Vxlan {
            subnet: underlay,
            vtep_mac: MacAddr([0x0e; 6]),
            public_ip: Ipv4Addr::new(192, 168, 77, 9),
        };
        assert!(!is_installed_route(
            &kernel_route,
            &hostile,
            Some(VXLAN),
            UPLINK
        ));
    }

    fn entry(ip: Ipv4Addr, mac: MacAddr) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
            NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()),
        ];
        message
    }

    /// An fdb entry as the kernel lists it: bridge family, raw `NDA_DST`.
    fn fdb_entry(ip: Ipv4Addr, mac: MacAddr) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Other(ip.octets().to_vec())),
        ];
        message
    }

    #[test]
    fn removal_matches_neighbours_and_fdb_entries_by_address_and_mac() {
        let PeerRoute::Vxlan {
            subnet,
            vtep_mac,
            public_ip,
        } = vxlan_peer()
        else {
            unreachable!()
        };
        let gateway = subnet.network();
        let other_mac = MacAddr([0x0e, 1, 0, 0, 0, 9]);
        assert!(is_installed_neighbour(
            &entry(gateway, vtep_mac),
            gateway,
            vtep_mac
        ));
        assert!(!is_installed_neighbour(
            &entry(gateway, other_mac),
            gateway,
            vtep_mac
        ));
        assert!(!is_installed_neighbour(
            &entry(Ipv4Addr::new(10, 244, 3, 0), vtep_mac),
            gateway,
            vtep_mac
        ));
        assert!(is_installed_fdb(
            &fdb_entry(public_ip, vtep_mac),
            vtep_mac,
            public_ip
        ));
        assert!(is_installed_fdb(
            &entry(public_ip, vtep_mac),
            vtep_mac,
            public_ip
        ));
        // Another lease with the same VTEP MAC towards another node.
        assert!(!is_installed_fdb(
            &fdb_entry(Ipv4Addr::new(192, 168, 77, 3), vtep_mac),
            vtep_mac,
            public_ip
        ));
        assert!(!is_installed_fdb(
            &fdb_entry(public_ip, other_mac),
            vtep_mac,
            public_ip
        ));
    }

    #[test]
    fn vtep_macs_are_stable_unicast_and_local() {
        let ip = Ipv4Addr::new(192, 168, 77, 1);
        let mac = stable_vtep_mac(ip, 1);
        assert_eq!(mac, stable_vtep_mac(ip, 1));
        assert_eq!(mac.to_string(), "0e:01:c0:a8:4d:01");
        assert_ne!(mac, stable_vtep_mac(Ipv4Addr::new(192, 168, 77, 2), 1));
        assert_eq!(mac.0[0] & 0x01, 0, "multicast bit set");
        assert_eq!(mac.0[0] & 0x02, 0x02, "not locally administered");
    }
}
