//! What a network that dropped a family leaves in the kernel, removed at
//! the agent's start (flanneld leaves it): that family's VXLAN device, and
//! with it its routes, neighbour and fdb entries; and the peer routes on
//! the uplink (host-gw, DirectRouting) into the pod network of that
//! family, found through the node's previous `subnet.env`.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use netlink_packet_route::route::RouteMessage;

use super::{Doomed, KernelDataplane, entries::is_former_uplink_peer_route, family::Family};
use crate::{
    config::BackendConfig,
    net::link_by_name,
    subnet_env::{Ipv4SubnetEnv, Ipv6SubnetEnv},
};

impl KernelDataplane {
    /// In an IPv4-only VXLAN network, removes a `flannel-v6.<VNI>` left
    /// from dual stack: its socket would go on taking VXLAN over IPv6 on
    /// every local address (the overlay guard refuses all of it), and its
    /// routes would lead to IPv6 subnets no lease holds now. Its name, if
    /// there was one.
    pub async fn remove_left_over_vxlan_v6_device(&self) -> Result<Option<String>> {
        let dropped = self.config.ipv6.is_none();
        self.remove_left_over_device(Self::vxlan_v6_name, dropped)
            .await
    }

    /// The same for `flannel.<VNI>` in an IPv6-only network.
    pub async fn remove_left_over_vxlan_device(&self) -> Result<Option<String>> {
        let dropped = self.config.ipv4.is_none();
        self.remove_left_over_device(Self::vxlan_name, dropped)
            .await
    }

    /// Deletes the VXLAN device `name_of(VNI)` names when its family is
    /// `dropped` (and the backend is VXLAN) and it exists; its name then.
    async fn remove_left_over_device(
        &self,
        name_of: fn(u32) -> String,
        dropped: bool,
    ) -> Result<Option<String>> {
        let BackendConfig::Vxlan { vni, .. } = self.config.backend else {
            return Ok(None);
        };
        if !dropped {
            return Ok(None);
        }
        let name = name_of(vni);
        let Some(link) = link_by_name(&self.handle, &name).await? else {
            return Ok(None);
        };
        self.delete_link(&name, &link).await?;
        Ok(Some(name))
    }

    /// In an IPv4-only network, removes the IPv6 routes to peers on the
    /// uplink (host-gw, DirectRouting) left from when the network was
    /// dual-stack (flanneld leaves them): weft-shaped routes into the IPv6
    /// network `former` names (the `FLANNEL_IPV6_NETWORK` and
    /// `FLANNEL_IPV6_SUBNET` of the node's previous `subnet.env`), each one
    /// subnet long. No lease explains them any more, and the reconcile
    /// looks only inside the network's current pod networks.
    /// `flannel-v6.<VNI>`'s routes go with the device. Returns how many
    /// were removed; every one is tried, the first failure reported.
    pub async fn remove_left_over_ipv6_routes(&self, former: &Ipv6SubnetEnv) -> Result<usize> {
        if self.config.ipv6.is_some() {
            return Ok(0);
        }
        let routes = crate::net::main_routes_v6(&self.handle).await?;
        let subnet_len = former.subnet.prefix_len();
        self.remove_former_uplink_routes::<Ipv6Addr>(routes, &former.network, subnet_len)
            .await
    }

    /// [`Self::remove_left_over_ipv6_routes`] for an IPv6-only network: the
    /// IPv4 routes to peers on the uplink left from dual stack, into the
    /// network the previous `subnet.env`'s `FLANNEL_NETWORK` and
    /// `FLANNEL_SUBNET` name (`flannel.<VNI>`'s go with that device).
    pub async fn remove_left_over_ipv4_routes(&self, former: &Ipv4SubnetEnv) -> Result<usize> {
        if self.config.ipv4.is_some() {
            return Ok(0);
        }
        let routes = crate::net::main_routes(&self.handle).await?;
        let subnet_len = former.subnet.prefix_len();
        self.remove_former_uplink_routes::<Ipv4Addr>(routes, &former.network, subnet_len)
            .await
    }

    /// Removes each of `routes` that is a weft-shaped peer route on the
    /// uplink into `network`, `subnet_len` long; every one is tried,
    /// the first failure reported.
    async fn remove_former_uplink_routes<A: Family>(
        &self,
        routes: Vec<RouteMessage>,
        network: &A::Net,
        subnet_len: u8,
    ) -> Result<usize> {
        let left_over: Vec<_> = routes
            .into_iter()
            .filter(|route| {
                is_former_uplink_peer_route::<A>(route, network, subnet_len, self.uplink_index)
            })
            .collect();
        let found = left_over.len();
        let mut first_error = None;
        for route in left_over {
            if let Err(error) = self.delete(Doomed::Route(route)).await {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            None => Ok(found),
            Some(error) => Err(error.context(format!(
                "cannot remove every route left in {network} ({found} found)"
            ))),
        }
    }
}
