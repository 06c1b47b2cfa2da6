//! Choosing the uplink and the node's public address, as flanneld does:
//! `--iface` (first that exists), else `--iface-regex`, else the interface
//! of the default route; `--public-ip`, else the uplink's first IPv4 address.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage},
};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::lease::MacAddr;

#[derive(Clone, Debug)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub mac: MacAddr,
    pub public_ip: Ipv4Addr,
    /// A veth (containers-in-containers, the lab), not a NIC.
    pub is_veth: bool,
}

pub async fn select_uplink(
    handle: &Handle,
    ifaces: &[String],
    iface_regex: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> Result<Uplink> {
    let links = links(handle).await?;
    let by_name = |wanted: &str| links.iter().find(|link| name_of(link) == Some(wanted));
    let link = if !ifaces.is_empty() {
        match ifaces.iter().find_map(|name| by_name(name)) {
            Some(link) => link,
            None if ifaces.len() == 1 => {
                bail!(
                    "--iface: interface {:?} not found in this network namespace",
                    ifaces[0]
                )
            }
            None => bail!(
                "--iface: none of {} exists in this network namespace",
                ifaces.join(", ")
            ),
        }
    } else if let Some(pattern) = iface_regex {
        let regex = regex::Regex::new(pattern)
            .with_context(|| format!("--iface-regex {pattern:?} is not a valid regex"))?;
        let mut matching = Vec::new();
        for link in &links {
            if name_of(link).is_some_and(|name| regex.is_match(name))
                && first_ipv4(handle, link.header.index).await?.is_some()
            {
                matching.push(link);
            }
        }
        matching.first().copied().ok_or_else(|| {
            anyhow!("--iface-regex {pattern:?}: no interface with an IPv4 address matches")
        })?
    } else {
        let index = default_route_interface(handle).await?.ok_or_else(|| {
            anyhow!("no --iface given and no default route to pick the uplink from")
        })?;
        links
            .iter()
            .find(|link| link.header.index == index)
            .ok_or_else(|| anyhow!("the default route's interface (index {index}) vanished"))?
    };
    let name = name_of(link).unwrap_or_default().to_owned();
    let public_ip = match public_ip {
        Some(ip) => ip,
        None => first_ipv4(handle, link.header.index)
            .await?
            .ok_or_else(|| {
                anyhow!("uplink {name} has no IPv4 address; give one to it or set --public-ip")
            })?,
    };
    Ok(Uplink {
        index: link.header.index,
        mtu: mtu_of(link).unwrap_or(1500),
        mac: mac_of(link).unwrap_or(MacAddr([0; 6])),
        public_ip,
        is_veth: is_veth(link),
        name,
    })
}

async fn first_ipv4(handle: &Handle, index: u32) -> Result<Option<Ipv4Addr>> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .context("cannot list addresses")?
    {
        for attr in &message.attributes {
            if let AddressAttribute::Address(IpAddr::V4(address)) = attr {
                return Ok(Some(*address));
            }
        }
    }
    Ok(None)
}

/// The IPv4 routes of the main table.
pub async fn main_routes(handle: &Handle) -> Result<Vec<RouteMessage>> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .context("cannot list routes")?;
    Ok(routes
        .into_iter()
        .filter(|route| route.header.table == RouteHeader::RT_TABLE_MAIN)
        .collect())
}

async fn default_route_interface(handle: &Handle) -> Result<Option<u32>> {
    let routes = main_routes(handle).await?;
    Ok(routes
        .iter()
        .filter(|route| route.header.destination_prefix_length == 0)
        .find_map(|route| {
            route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
        }))
}

/// Every link in this network namespace.
pub async fn links(handle: &Handle) -> Result<Vec<LinkMessage>> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("cannot list links")
}

/// Every IPv4 neighbour entry in this namespace.
pub async fn neighbours(handle: &Handle) -> Result<Vec<NeighbourMessage>> {
    handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .context("cannot list neighbours")
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    Ok(links(handle)
        .await?
        .into_iter()
        .find(|link| name_of(link) == Some(name)))
}

pub fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

pub fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

pub fn mac_of(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

pub fn mtu_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

pub fn neighbour_ip(neighbour: &NeighbourMessage) -> Option<Ipv4Addr> {
    neighbour.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => Some(*address),
        _ => None,
    })
}

pub fn neighbour_mac(neighbour: &NeighbourMessage) -> Option<MacAddr> {
    neighbour.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::LinkLayerAddress(bytes) => {
            <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
        }
        _ => None,
    })
}
