//! What a network that dropped a family leaves in the kernel, removed at
//! the agent's start: the peer routes on the uplink (host-gw,
//! DirectRouting) into the pod network of the family it no longer runs,
//! found through the node's previous `subnet.env` (flanneld leaves them).
//! The VXLAN device of that family goes apart (`device.rs`,
//! `device_v6.rs`), and its routes with it.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use netlink_packet_route::route::RouteMessage;

use super::{Doomed, KernelDataplane, entries::is_former_uplink_peer_route, family::Family};
use crate::subnet_env::{Ipv4SubnetEnv, Ipv6SubnetEnv};

impl KernelDataplane {
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
