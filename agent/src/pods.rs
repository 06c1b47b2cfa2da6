//! The local pods, an input of the desired state: the pods this node's
//! fast path delivers to, from state the node owns: the IPv4 (and, in a
//! dual-stack network, IPv6) addresses configured on the pod's end of each
//! bridge port's veth (read inside the pod's namespace), inside this
//! node's subnet (IPv6 subnet). Never from what a pod says
//! on the wire: cni0's neighbour table and the bridge's learned MACs take
//! whatever ARP a pod sends, and a pod with CAP_NET_RAW (the default) could
//! claim a ClusterIP or its neighbour's address and receive their traffic.
//! The subnets are the agent's (`Agent::subnet`, `Agent::subnet_v6`),
//! passed in on every read.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Result, anyhow, bail};
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::Handle;
use tracing::{info, warn};

use crate::{
    endpoints::{BridgePorts, PodPort},
    lease::validate::OwnSubnets,
    pod_veth::{self, PodSide},
};

pub use crate::desired::LocalPod;

pub struct LocalPods {
    handle: Handle,
    /// Pod sides read so far, by host-side ifindex.
    sides: BTreeMap<u32, PodSide>,
    /// Ports whose pod side could not be read (logged once, retried).
    failing: BTreeSet<u32>,
}

impl LocalPods {
    pub fn new(handle: Handle) -> Self {
        Self {
            handle,
            sides: BTreeMap::new(),
            failing: BTreeSet::new(),
        }
    }

    /// Forgets ports that are gone and reads the pod side of every port not
    /// read yet, whose GRO is not confirmed yet, or that had no address in
    /// `subnets.v4` yet (nor, with an IPv6 subnet, in `subnets.v6`): the
    /// CNI plugin plugs the veth into the bridge before IPAM configures the
    /// pod's addresses, and the first read can fall in between (a
    /// dual-stack pod's IPv6 address can come later still, after DAD).
    pub async fn refresh(&mut self, ports: &BridgePorts, subnets: OwnSubnets) {
        self.read_sides(ports, subnets, false).await;
    }

    /// Reads again the pods whose side could not be read or is not complete
    /// yet ([`Self::refresh`]; views arrive only when something changed).
    /// Returns whether the local pods changed.
    pub async fn retry(&mut self, ports: &BridgePorts, subnets: OwnSubnets) -> bool {
        let before = self.all_endpoints(subnets);
        self.refresh(ports, subnets).await;
        self.all_endpoints(subnets) != before
    }

    /// Reads every port's pod side again, complete or not, so a pod whose
    /// MAC or addresses changed after it was read is followed. Returns
    /// whether the local pods changed.
    pub async fn reread(&mut self, ports: &BridgePorts, subnets: OwnSubnets) -> bool {
        let before = self.all_endpoints(subnets);
        self.read_sides(ports, subnets, true).await;
        self.all_endpoints(subnets) != before
    }

    async fn read_sides(&mut self, ports: &BridgePorts, subnets: OwnSubnets, complete_too: bool) {
        self.sides.retain(|index, _| ports.contains_key(index));
        self.failing.retain(|index| ports.contains_key(index));
        let complete = |side: &PodSide| is_complete(side, subnets);
        for (index, port) in ports {
            if !complete_too && self.sides.get(index).is_some_and(complete) {
                continue;
            }
            match self.read(port).await {
                Ok(side) => {
                    if side.gro_turned_on {
                        info!(veth = %port.name, "GRO turned on at the pod's end for XDP delivery");
                    }
                    if self.failing.remove(index) {
                        info!(veth = %port.name, "pod side read");
                    }
                    self.sides.insert(*index, side);
                }
                Err(error) => {
                    if self.failing.insert(*index) {
                        warn!(veth = %port.name, ifindex = index, "the fast path will not deliver into this pod until its side can be read: {error:#}");
                    }
                }
            }
        }
    }

    async fn read(&self, port: &PodPort) -> Result<PodSide> {
        let (Some(nsid), Some(peer)) = (port.peer_netnsid, port.peer_index) else {
            bail!("its peer's namespace is unknown");
        };
        let netns = pod_veth::netns_by_id(&self.handle, nsid)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "its namespace (nsid {nsid}) is not in {}",
                    pod_veth::NETNS_DIR
                )
            })?;
        pod_veth::prepare(&netns, peer)
    }

    /// The local pods in `subnet`, the node's (see [`endpoints_of`]).
    pub fn endpoints(&self, subnet: Ipv4Net) -> BTreeMap<Ipv4Addr, LocalPod> {
        endpoints_of(&self.sides, subnet)
    }

    /// The local pods' IPv6 addresses in `subnet_v6`, the node's IPv6
    /// subnet (see [`endpoints6_of`]).
    pub fn endpoints6(&self, subnet_v6: Ipv6Net) -> BTreeMap<Ipv6Addr, LocalPod> {
        endpoints6_of(&self.sides, subnet_v6)
    }

    /// Both families' endpoints, to tell whether a read changed either.
    fn all_endpoints(
        &self,
        subnets: OwnSubnets,
    ) -> (BTreeMap<Ipv4Addr, LocalPod>, BTreeMap<Ipv6Addr, LocalPod>) {
        (
            subnets
                .v4
                .map(|subnet| self.endpoints(subnet))
                .unwrap_or_default(),
            subnets
                .v6
                .map(|subnet_v6| self.endpoints6(subnet_v6))
                .unwrap_or_default(),
        )
    }
}

/// A pod side read far enough not to be read again on every view: GRO on,
/// and an address in each subnet the node has (IPv4, IPv6, or both).
fn is_complete(side: &PodSide, subnets: OwnSubnets) -> bool {
    side.gro_on
        && subnets
            .v4
            .is_none_or(|v4| side.addresses.iter().any(|ip| v4.contains(ip)))
        && subnets
            .v6
            .is_none_or(|v6| side.addresses_v6.iter().any(|ip| v6.contains(ip)))
}

/// Each address of a pod side that lies inside our subnet and is a host
/// address other than the gateway's. An address two pods both claim
/// belongs to neither.
fn endpoints_of(sides: &BTreeMap<u32, PodSide>, subnet: Ipv4Net) -> BTreeMap<Ipv4Addr, LocalPod> {
    let gateway = crate::subnet_env::gateway_of(subnet);
    collect_endpoints(
        sides,
        |side| &side.addresses,
        |address| {
            subnet.contains(address)
                && Some(*address) != gateway
                && *address != subnet.network()
                && *address != subnet.broadcast()
        },
    )
}

/// [`endpoints_of`] for IPv6: inside our IPv6 subnet, neither its network
/// address (the subnet-router anycast address) nor the gateway's, the
/// first after it (`<net>::1`, what flannel's subnet.env gives the bridge).
fn endpoints6_of(sides: &BTreeMap<u32, PodSide>, subnet: Ipv6Net) -> BTreeMap<Ipv6Addr, LocalPod> {
    let network = subnet.network();
    let gateway = Ipv6Addr::from(u128::from(network).wrapping_add(1));
    collect_endpoints(
        sides,
        |side| &side.addresses_v6,
        |address| subnet.contains(address) && *address != network && *address != gateway,
    )
}

/// The addresses `addresses` lists of each side that pass `is_endpoint`,
/// with their pods; one that two pods both claim is left out.
fn collect_endpoints<A: Copy + Ord + Display>(
    sides: &BTreeMap<u32, PodSide>,
    addresses: impl Fn(&PodSide) -> &[A],
    is_endpoint: impl Fn(&A) -> bool,
) -> BTreeMap<A, LocalPod> {
    let mut endpoints = BTreeMap::new();
    let mut contested = BTreeSet::new();
    for (port, side) in sides {
        for address in addresses(side) {
            if !is_endpoint(address) {
                continue;
            }
            let pod = LocalPod {
                port: *port,
                mac: side.mac,
                xdp_ready: side.gro_on,
            };
            if endpoints.insert(*address, pod).is_some() {
                contested.insert(*address);
            }
        }
    }
    for address in contested {
        warn!(%address, "two pods claim this address; the fast path delivers it to neither");
        endpoints.remove(&address);
    }
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::MacAddr;

    /// A pod side with `addresses` of either family.
    fn side(mac: u8, addresses: &[&str], gro_on: bool) -> PodSide {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for address in addresses {
            match address.parse().unwrap() {
                std::net::IpAddr::V4(ip) => v4.push(ip),
                std::net::IpAddr::V6(ip) => v6.push(ip),
            }
        }
        PodSide {
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            addresses: v4,
            addresses_v6: v6,
            gro_on,
            gro_turned_on: false,
        }
    }

    fn lease() -> Ipv4Net {
        "10.244.1.0/24".parse().unwrap()
    }

    fn lease_v6() -> Ipv6Net {
        "fd00:10:244:1::/64".parse().unwrap()
    }

    fn subnets(v6: bool) -> OwnSubnets {
        OwnSubnets {
            v4: Some(lease()),
            v6: v6.then(lease_v6),
        }
    }

    #[test]
    fn only_a_pods_own_ipv6_addresses_inside_our_ipv6_subnet_are_endpoints() {
        let sides = BTreeMap::from([
            (
                7,
                side(
                    1,
                    &[
                        "10.244.1.2",
                        "fd00:10:244:1::2",
                        "fd00:10:244:2::9",
                        "fd00:96::a",
                    ],
                    true,
                ),
            ),
            (
                8,
                side(
                    2,
                    &["fd00:10:244:1::", "fd00:10:244:1::1", "fd00:10:244:1::3"],
                    false,
                ),
            ),
        ]);
        let endpoints = endpoints6_of(&sides, lease_v6());
        let addresses: Vec<String> = endpoints.keys().map(ToString::to_string).collect();
        assert_eq!(
            addresses,
            ["fd00:10:244:1::2", "fd00:10:244:1::3"],
            "not another subnet's, not the network address, not the gateway (::1)"
        );
        assert_eq!(
            endpoints[&"fd00:10:244:1::2".parse().unwrap()],
            LocalPod {
                port: 7,
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                xdp_ready: true
            }
        );
        assert!(!endpoints[&"fd00:10:244:1::3".parse().unwrap()].xdp_ready);
        // The IPv4 endpoints are the IPv4 addresses alone.
        let v4: Vec<String> = endpoints_of(&sides, lease())
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(v4, ["10.244.1.2"]);
    }

    #[test]
    fn an_ipv6_address_two_pods_claim_belongs_to_neither() {
        let sides = BTreeMap::from([
            (7, side(1, &["fd00:10:244:1::2"], true)),
            (8, side(2, &["fd00:10:244:1::2", "fd00:10:244:1::3"], true)),
        ]);
        let addresses: Vec<String> = endpoints6_of(&sides, lease_v6())
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["fd00:10:244:1::3"]);
    }

    #[test]
    fn a_dual_stack_pod_is_read_again_until_it_has_its_ipv6_address() {
        let v4_only = side(1, &["10.244.1.2"], true);
        assert!(
            is_complete(&v4_only, subnets(false)),
            "no IPv6 subnet: IPv4 is all"
        );
        assert!(
            !is_complete(&v4_only, subnets(true)),
            "IPv6 not configured yet (later CNI step, DAD)"
        );
        let elsewhere = side(1, &["10.244.1.2", "fd00:10:244:2::2"], true);
        assert!(!is_complete(&elsewhere, subnets(true)));
        let both = side(1, &["10.244.1.2", "fd00:10:244:1::2"], true);
        assert!(is_complete(&both, subnets(true)));
        let v6_only = side(1, &["fd00:10:244:1::2"], true);
        assert!(
            !is_complete(&v6_only, subnets(true)),
            "the IPv4 address still missing"
        );
        let gro_off = side(1, &["10.244.1.2", "fd00:10:244:1::2"], false);
        assert!(!is_complete(&gro_off, subnets(true)));
    }

    #[test]
    fn only_a_pods_own_addresses_inside_our_lease_are_endpoints() {
        let sides = BTreeMap::from([
            (
                7,
                side(1, &["10.244.1.2", "10.96.0.10", "10.244.2.9"], true),
            ),
            (
                8,
                side(2, &["10.244.1.1", "10.244.1.3", "10.244.1.255"], false),
            ),
        ]);
        let endpoints = endpoints_of(&sides, lease());
        let addresses: Vec<String> = endpoints.keys().map(ToString::to_string).collect();
        assert_eq!(addresses, ["10.244.1.2", "10.244.1.3"]);
        assert_eq!(
            endpoints[&"10.244.1.2".parse().unwrap()],
            LocalPod {
                port: 7,
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                xdp_ready: true
            }
        );
        assert!(!endpoints[&"10.244.1.3".parse().unwrap()].xdp_ready);
    }

    #[test]
    fn an_address_two_pods_claim_belongs_to_neither() {
        let sides = BTreeMap::from([
            (7, side(1, &["10.244.1.2"], true)),
            (8, side(2, &["10.244.1.2", "10.244.1.3"], true)),
        ]);
        let addresses: Vec<String> = endpoints_of(&sides, lease())
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["10.244.1.3"]);
    }
}
