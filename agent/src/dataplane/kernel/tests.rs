use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAttribute, RouteMessage, RouteProtocol},
};
use rtnetlink::RouteMessageBuilder;

use super::{entries::*, stable_vtep_mac, stable_vtep_v6_mac};
use crate::{desired::PeerRoute, lease::MacAddr};

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

#[test]
fn peer_routes_are_weft_shaped_routes_into_the_pod_network() {
    const VXLAN: u32 = 7;
    const UPLINK: u32 = 2;
    let network: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let subnet: Ipv4Net = "10.244.2.0/24".parse().unwrap();
    let peer_ip = Ipv4Addr::new(192, 168, 77, 2);
    let vxlan = route_message(subnet, subnet.network(), VXLAN, true);
    let host_gw = route_message(subnet, peer_ip, UPLINK, false);
    assert!(is_peer_route::<Ipv4Addr>(
        &vxlan,
        &network,
        Some(VXLAN),
        UPLINK
    ));
    assert!(is_peer_route::<Ipv4Addr>(
        &host_gw,
        &network,
        Some(VXLAN),
        UPLINK
    ));
    // The local view passes no VXLAN index: only the uplink's count.
    assert!(is_peer_route::<Ipv4Addr>(&host_gw, &network, None, UPLINK));
    assert!(!is_peer_route::<Ipv4Addr>(&vxlan, &network, None, UPLINK));
    // Outside the pod network, another protocol, or on-link: not weft's.
    let underlay = route_message("192.168.78.0/24".parse().unwrap(), peer_ip, UPLINK, false);
    let [static_route, on_link] = static_and_on_link(&host_gw);
    for other in [underlay, static_route, on_link] {
        assert!(
            !is_peer_route::<Ipv4Addr>(&other, &network, Some(VXLAN), UPLINK),
            "{other:?}"
        );
    }
}

/// `route` under another protocol, and without its gateway (on-link):
/// neither is a route weft wrote.
fn static_and_on_link(route: &RouteMessage) -> [RouteMessage; 2] {
    let mut static_route = route.clone();
    static_route.header.protocol = RouteProtocol::Static;
    let mut on_link = route.clone();
    on_link
        .attributes
        .retain(|attr| !matches!(attr, RouteAttribute::Gateway(_)));
    [static_route, on_link]
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

#[test]
fn flannel_v6_macs_come_from_the_ipv4_address_or_ipv6_only_a_hash_of_the_ipv6_one() {
    let ip = Ipv4Addr::new(192, 168, 77, 1);
    let local: std::net::Ipv6Addr = "fd00:77::1".parse().unwrap();
    // Dual-stack: as before IPv6-only existed (leases keep their MAC).
    assert_eq!(
        stable_vtep_v6_mac(Some(ip), local, 1).to_string(),
        "1e:01:c0:a8:4d:01"
    );
    // IPv6-only: FNV-1a of the address (0xdd218aaa, as Python computes it),
    // pinned so it never changes.
    let mac = stable_vtep_v6_mac(None, local, 1);
    assert_eq!(mac, stable_vtep_v6_mac(None, local, 1));
    assert_eq!(mac.to_string(), "2e:01:dd:21:8a:aa");
    // Addresses that share their last bytes get different MACs.
    let other: std::net::Ipv6Addr = "fd00:78::1".parse().unwrap();
    assert_ne!(mac, stable_vtep_v6_mac(None, other, 1));
    for mac in [mac, stable_vtep_v6_mac(None, other, 7)] {
        assert_eq!(mac.0[0] & 0x01, 0, "multicast bit set");
        assert_eq!(mac.0[0] & 0x02, 0x02, "not locally administered");
    }
}

#[test]
fn former_ipv6_peer_routes_are_one_subnet_long_via_a_gateway_on_the_uplink() {
    use std::net::Ipv6Addr;

    use ipnet::Ipv6Net;
    const UPLINK: u32 = 2;
    const OTHER: u32 = 3;
    let former: Ipv6Net = "fd00:12::/48".parse().unwrap();
    let peer_subnet: Ipv6Net = "fd00:12:0:200::/56".parse().unwrap();
    let peer_ip: Ipv6Addr = "fd00:77::2".parse().unwrap();
    let host_gw = route_message(peer_subnet, peer_ip, UPLINK, false);
    assert!(is_former_uplink_peer_route::<Ipv6Addr>(
        &host_gw, &former, 56, UPLINK
    ));
    // Another length (someone's aggregate), another device, another
    // protocol, no gateway, or outside the former network: not a peer's.
    let aggregate = route_message("fd00:12::/52".parse().unwrap(), peer_ip, UPLINK, false);
    let elsewhere = route_message(peer_subnet, peer_ip, OTHER, false);
    let [static_route, on_link] = static_and_on_link(&host_gw);
    let outside = route_message(
        "fd00:13:0:200::/56".parse().unwrap(),
        peer_ip,
        UPLINK,
        false,
    );
    for other in [aggregate, elsewhere, static_route, on_link, outside] {
        assert!(
            !is_former_uplink_peer_route::<Ipv6Addr>(&other, &former, 56, UPLINK),
            "{other:?}"
        );
    }
}
