//! What differs between the IPv4 and the IPv6 halves of the kernel
//! datapath, and nothing else: how an address of the family is spelled in
//! netlink, and how a peer of the family is shaped. The entries, the adds
//! and the reconcile are written once over [`Family`] and [`FamilyPeer`],
//! so the two halves cannot drift apart.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_route::{neighbour::NeighbourAddress, route::RouteAddress};
use rtnetlink::RouteMessageBuilder;
use tracing::info;

use crate::{
    desired::{PeerRoute, PeerRouteV6},
    lease::MacAddr,
};

/// An address family's address type (`Ipv4Addr`, `Ipv6Addr`) with its
/// network type and the netlink spellings of both.
pub trait Family:
    Copy + Ord + fmt::Display + fmt::Debug + Into<IpAddr> + Send + Sync + 'static
{
    type Net: Copy + Ord + fmt::Display + fmt::Debug + Into<IpNet> + Send + Sync + 'static;

    const UNSPECIFIED: Self;

    fn network(net: &Self::Net) -> Self;
    fn net_contains(outer: &Self::Net, inner: &Self::Net) -> bool;
    fn net(address: Self, prefix_len: u8) -> Option<Self::Net>;
    fn route_address(self) -> RouteAddress;
    fn neighbour_address(self) -> NeighbourAddress;
    /// The address a route attribute carries, if it is of this family.
    fn from_route_address(address: &RouteAddress) -> Option<Self>;
    /// The address a neighbour attribute carries, if it is of this family.
    fn from_neighbour_address(address: &NeighbourAddress) -> Option<Self>;
    /// The address in raw `NDA_DST` bytes (how netlink-packet-route leaves
    /// the bridge family's fdb destinations).
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
    /// A route builder already holding the destination and gateway (the
    /// typed builders differ per family; the rest is shared).
    fn route_builder(subnet: Self::Net, gateway: Self) -> RouteMessageBuilder<Self>;
    /// Logs a peer programmed outside a reconcile, in the family's own
    /// words (operators grep for them).
    fn log_programmed(subnet: &Self::Net, public_ip: Self);
}

impl Family for Ipv4Addr {
    type Net = Ipv4Net;

    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;

    fn network(net: &Ipv4Net) -> Self {
        net.network()
    }

    fn net_contains(outer: &Ipv4Net, inner: &Ipv4Net) -> bool {
        outer.contains(inner)
    }

    fn net(address: Self, prefix_len: u8) -> Option<Ipv4Net> {
        Ipv4Net::new(address, prefix_len).ok()
    }

    fn route_address(self) -> RouteAddress {
        RouteAddress::Inet(self)
    }

    fn neighbour_address(self) -> NeighbourAddress {
        NeighbourAddress::Inet(self)
    }

    fn from_route_address(address: &RouteAddress) -> Option<Self> {
        match address {
            RouteAddress::Inet(address) => Some(*address),
            _ => None,
        }
    }

    fn from_neighbour_address(address: &NeighbourAddress) -> Option<Self> {
        match address {
            NeighbourAddress::Inet(address) => Some(*address),
            _ => None,
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 4]>::try_from(bytes).ok().map(Self::from)
    }

    fn route_builder(subnet: Ipv4Net, gateway: Self) -> RouteMessageBuilder<Self> {
        RouteMessageBuilder::<Self>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(gateway)
    }

    fn log_programmed(subnet: &Ipv4Net, public_ip: Self) {
        info!(%subnet, %public_ip, "peer programmed");
    }
}

impl Family for Ipv6Addr {
    type Net = Ipv6Net;

    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;

    fn network(net: &Ipv6Net) -> Self {
        net.network()
    }

    fn net_contains(outer: &Ipv6Net, inner: &Ipv6Net) -> bool {
        outer.contains(inner)
    }

    fn net(address: Self, prefix_len: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(address, prefix_len).ok()
    }

    fn route_address(self) -> RouteAddress {
        RouteAddress::Inet6(self)
    }

    fn neighbour_address(self) -> NeighbourAddress {
        NeighbourAddress::Inet6(self)
    }

    fn from_route_address(address: &RouteAddress) -> Option<Self> {
        match address {
            RouteAddress::Inet6(address) => Some(*address),
            _ => None,
        }
    }

    fn from_neighbour_address(address: &NeighbourAddress) -> Option<Self> {
        match address {
            NeighbourAddress::Inet6(address) => Some(*address),
            _ => None,
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(Self::from)
    }

    fn route_builder(subnet: Ipv6Net, gateway: Self) -> RouteMessageBuilder<Self> {
        RouteMessageBuilder::<Self>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(gateway)
    }

    fn log_programmed(subnet: &Ipv6Net, public_ip: Self) {
        info!(%subnet, public_ipv6 = %public_ip, "IPv6 peer programmed");
    }
}

/// A peer's half in one family ([`PeerRoute`], [`PeerRouteV6`]): its
/// subnet, its node address, and its VTEP MAC when it goes over VXLAN.
pub trait FamilyPeer: Clone + PartialEq + Send + Sync {
    type Addr: Family;

    fn subnet(&self) -> <Self::Addr as Family>::Net;
    fn public_ip(&self) -> Self::Addr;
    /// `Some` for a peer through the VXLAN device, `None` for a direct
    /// route on the uplink.
    fn vtep_mac(&self) -> Option<MacAddr>;
}

impl FamilyPeer for PeerRoute {
    type Addr = Ipv4Addr;

    fn subnet(&self) -> Ipv4Net {
        PeerRoute::subnet(self)
    }

    fn public_ip(&self) -> Ipv4Addr {
        PeerRoute::public_ip(self)
    }

    fn vtep_mac(&self) -> Option<MacAddr> {
        match self {
            PeerRoute::Vxlan { vtep_mac, .. } => Some(*vtep_mac),
            PeerRoute::Direct { .. } => None,
        }
    }
}

impl FamilyPeer for PeerRouteV6 {
    type Addr = Ipv6Addr;

    fn subnet(&self) -> Ipv6Net {
        PeerRouteV6::subnet(self)
    }

    fn public_ip(&self) -> Ipv6Addr {
        PeerRouteV6::public_ip(self)
    }

    fn vtep_mac(&self) -> Option<MacAddr> {
        match self {
            PeerRouteV6::Vxlan { vtep_mac, .. } => Some(*vtep_mac),
            PeerRouteV6::Direct { .. } => None,
        }
    }
}
