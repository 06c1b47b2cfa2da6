//! Local discovery from the kernel, with no change to the CNI setup: the
//! pod veths plugged into the CNI bridge (the pods behind them are read
//! from their own namespaces: dataplane/pods.rs), and the uplink's
//! neighbours (the underlay next hops the fast path writes into outer
//! headers), and tc's configuration on the interfaces the fast path
//! bypasses (tc.rs). Re-read on every link, neighbour, route or tc event,
//! and every 5 s. weft's own peer routes are left out: they are the kernel
//! sink's output, and a view that changed with them would make every write
//! of the sink come back as a new input (one more apply per batch of
//! writes).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_route::{
    AddressFamily,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourMessage, NeighbourState},
};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::{
    Handle,
    constants::{RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_TC},
};
use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    dataplane::kernel::{neighbour_ip_of, uplink_route},
    lease::MacAddr,
    net::{self, mac_of, name_of, neighbour_ip, neighbour_mac},
    tc::{self, TcHooks, TcView},
};

/// A port of the bridge: the host side of a pod's veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPort {
    pub name: String,
    /// Where the pod-side end lives: its namespace's nsid (as seen from
    /// here) and its ifindex there.
    pub peer_netnsid: Option<i32>,
    pub peer_index: Option<u32>,
}

/// The bridge's ports by ifindex.
pub type BridgePorts = BTreeMap<u32, PodPort>;

/// What the kernel says about this node's pods and uplink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalView {
    pub ports: BridgePorts,
    /// The bridge's ifindex and MAC (the pods' gateway).
    pub bridge_index: Option<u32>,
    pub gateway_mac: Option<MacAddr>,
    /// Resolved neighbours on the uplink: IPv4 -> MAC.
    pub uplink_neighbours: BTreeMap<Ipv4Addr, MacAddr>,
    /// The same for IPv6, as NDP resolved them (read in a dual-stack
    /// network only): PEERS6's next hops.
    pub uplink_neighbours_v6: BTreeMap<Ipv6Addr, MacAddr>,
    /// Main-table routes out of the uplink: destination -> gateway (None:
    /// on-link), to find the underlay next hop of a peer node.
    pub uplink_routes: BTreeMap<Ipv4Net, Option<Ipv4Addr>>,
    /// The same for IPv6 (read in a dual-stack network only): which peers'
    /// PublicIPv6 are on-link (host-gw, DirectRouting).
    pub uplink_routes_v6: BTreeMap<Ipv6Net, Option<Ipv6Addr>>,
    /// tc on the uplink, the bridge, flannel.<VNI> and the bridge's ports.
    pub tc: TcView,
}

impl LocalView {
    /// The gateway of the uplink route `address` takes, by longest prefix
    /// match: `Some(None)` when it is on-link, `None` when no route out of
    /// the uplink covers it.
    fn route_to(&self, address: Ipv4Addr) -> Option<Option<Ipv4Addr>> {
        self.uplink_routes
            .iter()
            .filter(|(destination, _)| destination.contains(&address))
            .max_by_key(|(destination, _)| destination.prefix_len())
            .map(|(_, gateway)| *gateway)
    }

    /// `address` is reached out of the uplink without a gateway (as
    /// flanneld's DirectRouting asks the kernel: the route to it has no
    /// gateway), so a plain route via it works. Follows the live routes: an
    /// address or route added or removed on the uplink changes the answer.
    pub fn on_link(&self, address: Ipv4Addr) -> bool {
        self.route_to(address) == Some(None)
    }

    /// [`Self::on_link`] for an IPv6 underlay address.
    pub fn on_link_v6(&self, address: Ipv6Addr) -> bool {
        self.uplink_routes_v6
            .iter()
            .filter(|(destination, _)| destination.contains(&address))
            .max_by_key(|(destination, _)| destination.prefix_len())
            .is_some_and(|(_, gateway)| gateway.is_none())
    }

    /// The underlay MAC that frames for `address` go to: the address's own
    /// if it is on-link, else its gateway's, by longest prefix match over
    /// the uplink's routes; None while unrouted or unresolved.
    pub fn next_hop_mac(&self, address: Ipv4Addr) -> Option<MacAddr> {
        let gateway = self.route_to(address)?;
        self.uplink_neighbours
            .get(&gateway.unwrap_or(address))
            .copied()
    }
}

/// How often the view is re-read even without events: multicast netlink
/// events can be lost (socket buffer overruns), and a missed new veth would
/// otherwise stay off the fast path.
const RESYNC: Duration = Duration::from_secs(5);

/// Sends the view at start and whenever it changes, until the receiver is
/// gone. A failed dump or a closed event socket is logged and the watch
/// starts over: it must outlive any one netlink hiccup.
pub async fn watch(
    bridge: String,
    uplink: u32,
    vteps: Vec<String>,
    pod_network: Option<Ipv4Net>,
    pod_network_v6: Option<Ipv6Net>,
    views: mpsc::Sender<LocalView>,
) {
    loop {
        let networks = PodNetworks {
            v4: pod_network,
            v6: pod_network_v6,
        };
        match follow(&bridge, uplink, &vteps, &networks, &views).await {
            Ok(()) => return,
            Err(error) => {
                warn!("following pods and neighbours: {error:#}; starting over");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One watch session; Ok when the receiver is gone.
async fn follow(
    bridge: &str,
    uplink: u32,
    vteps: &[String],
    networks: &PodNetworks,
    views: &mpsc::Sender<LocalView>,
) -> Result<()> {
    let (mut connection, handle, mut events) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    // Subscribe before the first dump so no change between the two is missed.
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_TC,
        ))
        .context("cannot subscribe to link, neighbour, route and tc events")?;
    tokio::spawn(connection);

    let mut last_sent: Option<LocalView> = None;
    loop {
        let mut current = read_view(&handle, bridge, uplink, vteps, networks.v4.as_ref()).await?;
        if let Some(network_v6) = &networks.v6 {
            current.uplink_routes_v6 = read_uplink_routes_v6(&handle, uplink, network_v6).await?;
            current.uplink_neighbours_v6 = read_uplink_neighbours_v6(&handle, uplink).await?;
        }
        if last_sent.as_ref() != Some(&current) {
            if views.send(current.clone()).await.is_err() {
                return Ok(());
            }
            last_sent = Some(current);
        }
        if let Ok(None) = tokio::time::timeout(RESYNC, events.next()).await {
            bail!("the kernel link/neighbour event stream closed");
        }
        // A pod coming up is a burst of events; read the kernel once the
        // burst is over rather than once per event.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), events.next()).await
        {
        }
    }
}

/// The pod networks whose weft-written routes the view leaves out.
struct PodNetworks {
    /// Unless the network is IPv6-only.
    v4: Option<Ipv4Net>,
    /// With IPv6 only (dual-stack, IPv6-only): the IPv6 routes are read then.
    v6: Option<Ipv6Net>,
}

/// The main table's IPv6 routes out of the uplink, without weft's own
/// host-gw and DirectRouting routes into `pod_network_v6`.
pub async fn read_uplink_routes_v6(
    handle: &Handle,
    uplink: u32,
    pod_network_v6: &Ipv6Net,
) -> Result<BTreeMap<Ipv6Net, Option<Ipv6Addr>>> {
    let routes = net::main_routes_v6(handle).await?;
    Ok(routes
        .iter()
        .filter_map(|route| uplink_route::<Ipv6Addr>(route, uplink, Some(pod_network_v6)))
        .collect())
}

/// The uplink's resolved IPv6 neighbours (NDP's answers): the MACs of the
/// peers PEERS6 routes to directly.
pub async fn read_uplink_neighbours_v6(
    handle: &Handle,
    uplink: u32,
) -> Result<BTreeMap<Ipv6Addr, MacAddr>> {
    let neighbours = net::neighbours_on(handle, uplink, AddressFamily::Inet6).await?;
    Ok(neighbours
        .iter()
        .filter(|entry| usable(entry))
        .filter_map(|entry| Some((neighbour_ip_of::<Ipv6Addr>(entry)?, neighbour_mac(entry)?)))
        .collect())
}

/// The current view (empty pods and ports while the bridge does not exist),
/// without weft's peer routes into `pod_network` when it is given. `vteps`:
/// flannel.<VNI>'s name and, dual-stack, flannel-v6.<VNI>'s (VXLAN only).
pub async fn read_view(
    handle: &Handle,
    bridge: &str,
    uplink: u32,
    vteps: &[String],
    pod_network: Option<&Ipv4Net>,
) -> Result<LocalView> {
    let links = net::links(handle).await?;
    // The uplink's only (filtered by the kernel): flannel.<VNI> may hold
    // an entry per VXLAN peer, and the view is read at every change.
    let neighbours = net::neighbours_on(handle, uplink, AddressFamily::Inet).await?;
    let routes = net::main_routes(handle).await?;
    let mut view = LocalView {
        uplink_routes: routes
            .iter()
            .filter_map(|route| uplink_route::<Ipv4Addr>(route, uplink, pod_network))
            .collect(),
        uplink_neighbours: neighbours
            .iter()
            .filter(|entry| usable(entry))
            .filter_map(|entry| Some((neighbour_ip(entry)?, neighbour_mac(entry)?)))
            .collect(),
        ..LocalView::default()
    };
    let Some(bridge_link) = links.iter().find(|link| name_of(link) == Some(bridge)) else {
        view.tc = read_tc(handle, &links, &view, uplink, vteps).await;
        return Ok(view);
    };
    let bridge_index = bridge_link.header.index;
    view.bridge_index = Some(bridge_index);
    view.gateway_mac = mac_of(bridge_link);
    view.ports = links
        .iter()
        .filter(|link| {
            link.attributes.iter().any(
                |attr| matches!(attr, LinkAttribute::Controller(index) if *index == bridge_index),
            )
        })
        .filter_map(|link| {
            let port = PodPort {
                name: name_of(link)?.to_owned(),
                peer_netnsid: link.attributes.iter().find_map(|attr| match attr {
                    LinkAttribute::LinkNetNsId(id) => Some(*id),
                    _ => None,
                }),
                peer_index: link.attributes.iter().find_map(|attr| match attr {
                    LinkAttribute::Link(index) => Some(*index),
                    _ => None,
                }),
            };
            Some((link.header.index, port))
        })
        .collect();
    view.tc = read_tc(handle, &links, &view, uplink, vteps).await;
    Ok(view)
}

/// tc on the uplink, the bridge, the VXLAN devices and the bridge's ports;
/// marked unreadable (never an error: routes must not wait for it) when
/// the kernel does not answer.
async fn read_tc(
    handle: &Handle,
    links: &[LinkMessage],
    view: &LocalView,
    uplink: u32,
    vteps: &[String],
) -> TcView {
    let index_of = |name: &str| {
        links
            .iter()
            .find(|link| name_of(link) == Some(name))
            .map(|link| link.header.index)
    };
    let name_at = |index: u32| {
        links
            .iter()
            .find(|link| link.header.index == index)
            .and_then(|link| name_of(link))
    };
    let vtep_indexes: Vec<u32> = vteps.iter().filter_map(|name| index_of(name)).collect();
    let mut wanted: Vec<(u32, &str)> = view
        .ports
        .iter()
        .map(|(index, port)| (*index, port.name.as_str()))
        .collect();
    for index in [Some(uplink), view.bridge_index]
        .into_iter()
        .flatten()
        .chain(vtep_indexes.iter().copied())
    {
        if let Some(name) = name_at(index) {
            wanted.push((index, name));
        }
    }
    let mut hooks = match tc::read(handle, &wanted).await {
        Ok(hooks) => hooks,
        Err(error) => {
            // Routes and neighbours still count; only the fast path stops.
            warn!(
                "{error:#}; the fast path leaves all traffic to the kernel path until tc can be read"
            );
            return TcView {
                unreadable: true,
                ..TcView::default()
            };
        }
    };
    let mut take = |index: Option<u32>| {
        index
            .and_then(|index| hooks.remove(&index))
            .unwrap_or_default()
    };
    let uplink = take(Some(uplink));
    let bridge = take(view.bridge_index);
    let vtep = vtep_indexes.iter().fold(TcHooks::default(), |vtep, index| {
        vtep.merged(take(Some(*index)))
    });
    TcView {
        uplink,
        bridge,
        vtep,
        ports: hooks,
        unreadable: false,
    }
}

/// A neighbour entry whose MAC can be used (not failed or unresolved).
fn usable(entry: &NeighbourMessage) -> bool {
    !matches!(
        entry.header.state,
        NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None
    )
}
