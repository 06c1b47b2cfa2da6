//! Choosing the uplink and the node's public address, as flanneld does:
//! `--iface` (first that exists), else `--iface-regex`, else the interface
//! of the default route; `--public-ip`, else the uplink's first IPv4 address.
//! In a dual-stack network also the uplink's IPv6 address ([`uplink_ipv6`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
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
    /// The IPv4 address this node announces as `PublicIP` (`--public-ip`,
    /// else the uplink's first IPv4 address): none on an uplink without
    /// IPv4, which only an IPv6-only network can use ([`Uplink::ipv4`]).
    pub public_ip: Option<Ipv4Addr>,
    /// Dual-stack only ([`uplink_ipv6`]): the uplink's own IPv6 address,
    /// the local end of `flannel-v6.<VNI>` (flanneld's `IfaceV6Addr`)...
    pub ipv6: Option<Ipv6Addr>,
    /// ...and the one this node announces as `PublicIPv6` (`--public-ipv6`,
    /// else the same; flanneld's `ExtV6Addr`).
    pub public_ipv6: Option<Ipv6Addr>,
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
        // The network config (which families it runs) is read later: an
        // address of either family qualifies here, and the families the
        // network needs are checked then (`Uplink::ipv4`, `uplink_ipv6`).
        let mut matching = Vec::new();
        for link in &links {
            if name_of(link).is_some_and(|name| regex.is_match(name))
                && (first_ipv4(handle, link.header.index).await?.is_some()
                    || addresses_v6(handle, link.header.index)
                        .await?
                        .into_iter()
                        .any(is_global_unicast))
            {
                matching.push(link);
            }
        }
        matching.first().copied().ok_or_else(|| {
            anyhow!(
                "--iface-regex {pattern:?}: no interface with an IPv4 or a global IPv6 address matches"
            )
        })?
    } else {
        // The IPv4 default route's interface, else (an IPv6-only node) the
        // IPv6 one's.
        let index = match default_route_interface(main_routes(handle).await?) {
            Some(index) => Some(index),
            None => default_route_interface(main_routes_v6(handle).await?),
        };
        let index = index.ok_or_else(|| {
            anyhow!("no --iface given and no default route to pick the uplink from")
        })?;
        links
            .iter()
            .find(|link| link.header.index == index)
            .ok_or_else(|| anyhow!("the default route's interface (index {index}) vanished"))?
    };
    let name = name_of(link).unwrap_or_default().to_owned();
    let public_ip = match public_ip {
        Some(ip) => Some(ip),
        None => first_ipv4(handle, link.header.index).await?,
    };
    Ok(Uplink {
        index: link.header.index,
        mtu: mtu_of(link).unwrap_or(1500),
        mac: mac_of(link).unwrap_or(MacAddr([0; 6])),
        public_ip,
        ipv6: None,
        public_ipv6: None,
        is_veth: is_veth(link),
        name,
    })
}

impl Uplink {
    /// The `PublicIP` a network with IPv4 needs: an error naming the
    /// uplink when it has none.
    pub fn ipv4(&self) -> Result<Ipv4Addr> {
        self.public_ip.ok_or_else(|| {
            anyhow!(
                "uplink {} has no IPv4 address; give one to it or set --public-ip (or run an IPv6-only network: EnableIPv4 false)",
                self.name
            )
        })
    }
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

/// The uplink's IPv6 side, for a dual-stack network: its first global
/// unicast IPv6 address (as flanneld's `LookupExtIface` picks it) and the
/// `PublicIPv6` to announce (`--public-ipv6`, else that address). flanneld
/// falls back to a link-local address when there is no global one; weft
/// refuses instead: a link-local VTEP is unreachable from a peer on another
/// link and ambiguous without its scope.
pub async fn uplink_ipv6(
    handle: &Handle,
    uplink: &Uplink,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<(Ipv6Addr, Ipv6Addr)> {
    let addresses = addresses_v6(handle, uplink.index).await?;
    let own = addresses
        .into_iter()
        .find(|address| is_global_unicast(*address))
        .ok_or_else(|| {
            anyhow!(
                "the network is dual-stack (EnableIPv6) but uplink {} has no global unicast IPv6 address; give it one (flannel-v6.<VNI> sends from it)",
                uplink.name
            )
        })?;
    if let Some(public) = public_ipv6
        && !is_global_unicast(public)
    {
        bail!("--public-ipv6 {public} is not a global unicast IPv6 address");
    }
    Ok((own, public_ipv6.unwrap_or(own)))
}

/// Go's `net.IP.IsGlobalUnicast` for IPv6, which flanneld uses: anything
/// but unspecified, loopback, multicast and link-local unicast (unique
/// local `fc00::/7` counts, as it does for flanneld).
pub fn is_global_unicast(address: Ipv6Addr) -> bool {
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        || address.is_unicast_link_local())
}

/// The IPv6 addresses on link `index`, in the kernel's order.
async fn addresses_v6(handle: &Handle, index: u32) -> Result<Vec<Ipv6Addr>> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut found = Vec::new();
    while let Some(message) = addresses
        .try_next()
        .await
        .context("cannot list addresses")?
    {
        for attr in &message.attributes {
            if let AddressAttribute::Address(IpAddr::V6(address)) = attr {
                found.push(*address);
            }
        }
    }
    Ok(found)
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

/// The IPv6 routes of the main table.
pub async fn main_routes_v6(handle: &Handle) -> Result<Vec<RouteMessage>> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .context("cannot list IPv6 routes")?;
    Ok(routes
        .into_iter()
        .filter(|route| route.header.table == RouteHeader::RT_TABLE_MAIN)
        .collect())
}

fn default_route_interface(routes: Vec<RouteMessage>) -> Option<u32> {
    routes
        .iter()
        .filter(|route| route.header.destination_prefix_length == 0)
        .find_map(|route| {
            route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
        })
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

/// The `family` (IPv4 or IPv6) neighbour entries of device `ifindex`. The
/// kernel filters the dump by device (`NDA_IFINDEX`, Linux 4.16+), so a
/// node with tens of thousands of VXLAN peers' entries on `flannel.<VNI>`
/// does not send (and the agent does not parse) all of them each time it
/// reads the bridge's or the uplink's few; the device is checked here too,
/// for a kernel that ignores the filter.
pub async fn neighbours_on(
    handle: &Handle,
    ifindex: u32,
    family: AddressFamily,
) -> Result<Vec<NeighbourMessage>> {
    let mut request = NeighbourMessage::default();
    request.header.family = family;
    request
        .attributes
        .push(NeighbourAttribute::IfIndex(ifindex));
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(request));
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut responses = handle
        .clone()
        .request(message)
        .context("cannot list neighbours")?;
    let mut entries = Vec::new();
    while let Some(response) = responses.next().await {
        match response.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(entry))
                if entry.header.ifindex == ifindex =>
            {
                entries.push(entry);
            }
            NetlinkPayload::Error(error) => {
                return Err(rtnetlink::Error::NetlinkError(error))
                    .context("cannot list neighbours");
            }
            _ => {}
        }
    }
    Ok(entries)
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

/// The neighbour's address in either family.
pub fn neighbour_addr(neighbour: &NeighbourMessage) -> Option<IpAddr> {
    neighbour.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => {
            Some(IpAddr::V4(*address))
        }
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(address)) => {
            Some(IpAddr::V6(*address))
        }
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
