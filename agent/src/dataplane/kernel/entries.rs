//! How the kernel entries `KernelDataplane` writes are recognised: the
//! route message it builds, and which listed routes, neighbours and fdb
//! entries are exactly its own (so removal never takes someone else's).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol},
};
use rtnetlink::RouteMessageBuilder;

use crate::{
    desired::PeerRoute,
    lease::MacAddr,
    net::{neighbour_ip, neighbour_mac},
};

pub fn route_message(subnet: Ipv4Net, gateway: Ipv4Addr, oif: u32, onlink: bool) -> RouteMessage {
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

pub fn route_destination(route: &RouteMessage) -> Option<Ipv4Net> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(RouteAddress::Inet(address)) => {
            Ipv4Net::new(*address, route.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

/// Whether `route` is exactly the route `add_peer` writes for `peer`:
/// destination, output device, gateway and protocol all match.
pub fn is_installed_route(
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
pub fn is_installed_neighbour(
    entry: &NeighbourMessage,
    gateway: Ipv4Addr,
    vtep_mac: MacAddr,
) -> bool {
    neighbour_ip(entry) == Some(gateway) && neighbour_mac(entry) == Some(vtep_mac)
}

/// Whether an fdb entry on the VXLAN device is the one `add_peer` writes:
/// the VTEP MAC towards the peer's PublicIP (two leases may carry the same
/// MAC; removing one must not take the other's entry).
pub fn is_installed_fdb(entry: &NeighbourMessage, vtep_mac: MacAddr, public_ip: Ipv4Addr) -> bool {
    neighbour_mac(entry) == Some(vtep_mac) && fdb_destination(entry) == Some(public_ip)
}

/// The remote IPv4 address of a VXLAN fdb entry. Entries are listed in the
/// bridge family, whose `NDA_DST` netlink-packet-route leaves as raw bytes.
pub fn fdb_destination(entry: &NeighbourMessage) -> Option<Ipv4Addr> {
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

/// Whether `route` is one flanneld (and so weft) owns: into the pod
/// `network`, with the protocol `add_peer` writes, through the VXLAN device
/// or via a gateway on the uplink (host-gw, DirectRouting). The reconcile
/// removes those no lease explains; the local view leaves them out (they
/// are the sink's output, not an input).
pub fn is_peer_route(
    route: &RouteMessage,
    network: &Ipv4Net,
    vxlan_index: Option<u32>,
    uplink_index: u32,
) -> bool {
    let Some(destination) = route_destination(route) else {
        return false;
    };
    let oif = route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    });
    route.header.protocol == RouteProtocol::Boot
        && ((oif.is_some() && oif == vxlan_index)
            || (oif == Some(uplink_index) && has_gateway(route)))
        && network.contains(&destination)
}

fn has_gateway(route: &RouteMessage) -> bool {
    route
        .attributes
        .iter()
        .any(|attr| matches!(attr, RouteAttribute::Gateway(_)))
}

pub fn vxlan_settings_match(
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
