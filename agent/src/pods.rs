//! The local pods, an input of the desired state: the pods this node's
//! fast path delivers to, from state the node owns: the IPv4 addresses
//! configured on the pod's end of each bridge port's veth (read inside the
//! pod's namespace), inside this node's subnet. Never from what a pod says
//! on the wire: cni0's neighbour table and the bridge's learned MACs take
//! whatever ARP a pod sends, and a pod with CAP_NET_RAW (the default) could
//! claim a ClusterIP or its neighbour's address and receive their traffic.
//! The subnet is the agent's (`Agent::subnet`), passed in on every read.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Result, anyhow, bail};
use ipnet::Ipv4Net;
use rtnetlink::Handle;
use tracing::{info, warn};

use crate::{
    endpoints::{BridgePorts, PodPort},
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
    /// `subnet` yet: the CNI plugin plugs the veth into the bridge before
    /// IPAM configures the pod's address, and the first read can fall in
    /// between.
    pub async fn refresh(&mut self, ports: &BridgePorts, subnet: Ipv4Net) {
        self.read_sides(ports, subnet, false).await;
    }

    /// Reads again the pods whose side could not be read or is not complete
    /// yet ([`Self::refresh`]; views arrive only when something changed).
    /// Returns whether the local pods changed.
    pub async fn retry(&mut self, ports: &BridgePorts, subnet: Ipv4Net) -> bool {
        let before = self.endpoints(subnet);
        self.refresh(ports, subnet).await;
        self.endpoints(subnet) != before
    }

    /// Reads every port's pod side again, complete or not, so a pod whose
    /// MAC or addresses changed after it was read is followed. Returns
    /// whether the local pods changed.
    pub async fn reread(&mut self, ports: &BridgePorts, subnet: Ipv4Net) -> bool {
        let before = self.endpoints(subnet);
        self.read_sides(ports, subnet, true).await;
        self.endpoints(subnet) != before
    }

    async fn read_sides(&mut self, ports: &BridgePorts, subnet: Ipv4Net, complete_too: bool) {
        self.sides.retain(|index, _| ports.contains_key(index));
        self.failing.retain(|index| ports.contains_key(index));
        let complete =
            |side: &PodSide| side.gro_on && side.addresses.iter().any(|ip| subnet.contains(ip));
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
}

/// Each address of a pod side that lies inside our subnet and is a host
/// address other than the gateway's. An address two pods both claim
/// belongs to neither.
fn endpoints_of(sides: &BTreeMap<u32, PodSide>, subnet: Ipv4Net) -> BTreeMap<Ipv4Addr, LocalPod> {
    let gateway = subnet.hosts().next();
    let mut endpoints = BTreeMap::new();
    let mut contested = BTreeSet::new();
    for (port, side) in sides {
        for address in &side.addresses {
            if !subnet.contains(address)
                || Some(*address) == gateway
                || *address == subnet.network()
                || *address == subnet.broadcast()
            {
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

    fn side(mac: u8, addresses: &[&str], gro_on: bool) -> PodSide {
        PodSide {
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            gro_on,
            gro_turned_on: false,
        }
    }

    fn lease() -> Ipv4Net {
        "10.244.1.0/24".parse().unwrap()
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
