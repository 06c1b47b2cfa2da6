//! How the kernel entries `KernelDataplane` writes are recognised: the
//! route message it builds, and which listed routes, neighbours and fdb
//! entries are exactly its own (so removal never takes someone else's).

use std::net::IpAddr;

use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAttribute, RouteFlags, RouteMessage, RouteProtocol},
};

use super::family::{Family, FamilyPeer};
use crate::{lease::MacAddr, net::neighbour_mac};

pub fn route_message<A: Family>(
    subnet: A::Net,
    gateway: A,
    oif: u32,
    onlink: bool,
) -> RouteMessage {
    let mut builder = A::route_builder(subnet, gateway)
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

/// The route's destination, if it is of family `A`.
pub fn route_destination<A: Family>(route: &RouteMessage) -> Option<A::Net> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(address) => A::from_route_address(address)
            .and_then(|address| A::net(address, route.header.destination_prefix_length)),
        _ => None,
    })
}

/// Whether `route` is exactly the route `add_peer` writes for `peer`:
/// destination, output device, gateway and protocol all match.
pub fn is_installed_route<P: FamilyPeer>(
    route: &RouteMessage,
    peer: &P,
    vxlan_index: Option<u32>,
    uplink_index: u32,
) -> bool {
    let (oif, gateway) = match peer.vtep_mac() {
        Some(_) => match vxlan_index {
            Some(index) => (index, P::Addr::network(&peer.subnet())),
            None => return false,
        },
        None => (uplink_index, peer.public_ip()),
    };
    let has = |wanted: &RouteAttribute| route.attributes.iter().any(|attr| attr == wanted);
    route_destination::<P::Addr>(route) == Some(peer.subnet())
        && route.header.protocol == RouteProtocol::Boot
        && has(&RouteAttribute::Oif(oif))
        && has(&RouteAttribute::Gateway(gateway.route_address()))
}

/// The address a neighbour entry is for, if it is of family `A`.
pub fn neighbour_ip<A: Family>(entry: &NeighbourMessage) -> Option<A> {
    entry.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(address) => A::from_neighbour_address(address),
        _ => None,
    })
}

/// Whether a neighbour on the VXLAN device is the one `add_peer` writes for
/// a peer: its subnet's network address at its VTEP MAC.
pub fn is_installed_neighbour<A: Family>(
    entry: &NeighbourMessage,
    gateway: A,
    vtep_mac: MacAddr,
) -> bool {
    neighbour_ip(entry) == Some(gateway) && neighbour_mac(entry) == Some(vtep_mac)
}

/// Whether an fdb entry on the VXLAN device is the one `add_peer` writes:
/// the VTEP MAC towards the peer's PublicIP (two leases may carry the same
/// MAC; removing one must not take the other's entry).
pub fn is_installed_fdb<A: Family>(
    entry: &NeighbourMessage,
    vtep_mac: MacAddr,
    public_ip: A,
) -> bool {
    neighbour_mac(entry) == Some(vtep_mac) && fdb_destination(entry) == Some(public_ip)
}

/// The remote address of a VXLAN fdb entry. Entries are listed in the
/// bridge family, whose `NDA_DST` netlink-packet-route leaves as raw bytes.
pub fn fdb_destination<A: Family>(entry: &NeighbourMessage) -> Option<A> {
    entry.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => A::from_bytes(bytes),
        NeighbourAttribute::Destination(address) => A::from_neighbour_address(address),
        _ => None,
    })
}

/// Whether `route` is one flanneld (and so weft) owns: into the pod
/// `network`, with the protocol `add_peer` writes, through the VXLAN device
/// or via a gateway on the uplink (host-gw, DirectRouting). The reconcile
/// removes those no lease explains; the local view leaves them out (they
/// are the sink's output, not an input).
pub fn is_peer_route<A: Family>(
    route: &RouteMessage,
    network: &A::Net,
    vxlan_index: Option<u32>,
    uplink_index: u32,
) -> bool {
    let Some(destination) = route_destination::<A>(route) else {
        return false;
    };
    let oif = route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    });
    route.header.protocol == RouteProtocol::Boot
        && ((oif.is_some() && oif == vxlan_index)
            || (oif == Some(uplink_index) && has_gateway(route)))
        && A::net_contains(network, &destination)
}

/// Whether `route` is a peer route on the uplink (host-gw, DirectRouting)
/// into a pod `network` that is no longer the network's: weft-shaped
/// ([`is_peer_route`], through a gateway on `uplink_index`) and exactly one
/// subnet (`subnet_len`) long, as `add_peer` wrote it for a peer's lease.
pub fn is_former_uplink_peer_route<A: Family>(
    route: &RouteMessage,
    network: &A::Net,
    subnet_len: u8,
    uplink_index: u32,
) -> bool {
    is_peer_route::<A>(route, network, None, uplink_index)
        && route.header.destination_prefix_length == subnet_len
}

/// A main-table route of family `A` out of `uplink`, as the local view
/// records it (destination, gateway if any; a route without a destination
/// is the default route), unless it is weft's own host-gw or
/// DirectRouting route into `pod_network` (the sink's output, not an
/// input).
pub fn uplink_route<A: Family>(
    route: &RouteMessage,
    uplink: u32,
    pod_network: Option<&A::Net>,
) -> Option<(A::Net, Option<A>)> {
    let out_of_uplink = route
        .attributes
        .iter()
        .any(|attr| matches!(attr, RouteAttribute::Oif(index) if *index == uplink));
    let ours = pod_network.is_some_and(|network| is_peer_route::<A>(route, network, None, uplink));
    if !out_of_uplink || ours {
        return None;
    }
    let destination = route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Destination(address) => A::from_route_address(address),
            _ => None,
        })
        .unwrap_or(A::UNSPECIFIED);
    let gateway = route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Gateway(address) => A::from_route_address(address),
        _ => None,
    });
    Some((
        A::net(destination, route.header.destination_prefix_length)?,
        gateway,
    ))
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
    local: IpAddr,
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
        && match local {
            IpAddr::V4(local) => has(&InfoVxlan::Local(local)),
            IpAddr::V6(local) => has(&InfoVxlan::Local6(local)),
        }
        && has(&InfoVxlan::Link(uplink))
        && has(&InfoVxlan::Learning(false))
}
