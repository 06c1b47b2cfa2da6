//! The pods' neighbour entries on the CNI bridge: the sink for
//! [`Desired::pod_neighbours`](crate::desired::Desired::pod_neighbours),
//! pinned from owned state.
//!
//! The kernel fills cni0's neighbour table from whatever ARP arrives, and a
//! pod has CAP_NET_RAW by default: one that claims a neighbour pod's
//! address receives that pod's kernel-path traffic (on stock flannel as
//! well). Each local pod's address is pinned here to the MAC of its own
//! veth end as a permanent entry, which received ARP cannot change. Only
//! permanent entries inside our lease on the bridge are weft's to touch:
//! the CNI plugins install none, the kernel's learned ones are never
//! permanent.

use std::{collections::BTreeMap, net::IpAddr, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::Handle;

use crate::{
    desired::PodNeighbours,
    lease::MacAddr,
    net::{self, neighbour_ip, neighbour_mac},
};

/// What to change on the bridge: entries to remove (stale or wrong MAC) and
/// entries to add or replace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NeighbourPlan {
    pub remove: Vec<Ipv4Addr>,
    pub pin: Vec<(Ipv4Addr, MacAddr)>,
}

/// Compares the bridge's permanent entries inside the node's subnet with
/// the entries the pods should have.
pub fn plan(permanent: &BTreeMap<Ipv4Addr, MacAddr>, wanted: &PodNeighbours) -> NeighbourPlan {
    NeighbourPlan {
        remove: permanent
            .iter()
            .filter(|(ip, mac)| wanted.subnet.contains(*ip) && wanted.pinned.get(ip) != Some(*mac))
            .map(|(ip, _)| *ip)
            .collect(),
        pin: wanted
            .pinned
            .iter()
            .filter(|(ip, mac)| permanent.get(ip) != Some(*mac))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
    }
}

/// The permanent entries on bridge `bridge`.
async fn permanent_on(handle: &Handle, bridge: u32) -> Result<Vec<NeighbourMessage>> {
    Ok(net::neighbours(handle)
        .await?
        .into_iter()
        .filter(|entry| {
            entry.header.ifindex == bridge && entry.header.state == NeighbourState::Permanent
        })
        .collect())
}

/// Removes the entries among `entries` whose address is in `remove`.
async fn remove_entries(
    handle: &Handle,
    entries: &[NeighbourMessage],
    remove: &[Ipv4Addr],
) -> Result<usize> {
    let mut removed = 0;
    for entry in entries {
        if neighbour_ip(entry).is_some_and(|ip| remove.contains(&ip)) {
            handle
                .neighbours()
                .del(entry.clone())
                .execute()
                .await
                .context("cannot remove a pod's neighbour entry")?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Brings the permanent entries on the bridge in line with `wanted`.
pub async fn sync(handle: &Handle, wanted: &PodNeighbours) -> Result<()> {
    let on_bridge_permanent = permanent_on(handle, wanted.bridge).await?;
    let permanent: BTreeMap<Ipv4Addr, MacAddr> = on_bridge_permanent
        .iter()
        .filter_map(|entry| Some((neighbour_ip(entry)?, neighbour_mac(entry)?)))
        .collect();
    let plan = plan(&permanent, wanted);
    remove_entries(handle, &on_bridge_permanent, &plan.remove).await?;
    for (ip, mac) in plan.pin {
        handle
            .neighbours()
            .add(wanted.bridge, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot pin neighbour {ip} -> {mac} on the bridge"))?;
    }
    Ok(())
}

/// Removes every pinned entry (permanent, inside `own_subnet`, on bridge
/// `bridge`): on a clean stop, and by `weft cleanup`. The kernel learns the
/// pods' addresses again from ARP, as it does under flanneld. Returns how
/// many were removed.
pub async fn unpin_all(handle: &Handle, bridge: u32, own_subnet: Ipv4Net) -> Result<usize> {
    let entries = permanent_on(handle, bridge).await?;
    let pinned: Vec<Ipv4Addr> = entries
        .iter()
        .filter_map(neighbour_ip)
        .filter(|ip| own_subnet.contains(ip))
        .collect();
    remove_entries(handle, &entries, &pinned).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, last])
    }

    #[test]
    fn pins_pods_and_removes_only_stale_permanent_entries_inside_the_lease() {
        let ip = |text: &str| text.parse::<Ipv4Addr>().unwrap();
        let permanent = BTreeMap::from([
            (ip("10.244.1.2"), MacAddr([2, 0, 0, 0, 0, 1])), // correct: kept
            (ip("10.244.1.3"), MacAddr([2, 0, 0, 0, 0, 9])), // wrong MAC
            (ip("10.244.1.9"), MacAddr([2, 0, 0, 0, 0, 4])), // pod gone
            (ip("192.168.5.5"), MacAddr([2, 0, 0, 0, 0, 5])), // not ours
        ]);
        let wanted = PodNeighbours {
            bridge: 5,
            subnet: "10.244.1.0/24".parse().unwrap(),
            pinned: BTreeMap::from([
                (ip("10.244.1.2"), mac(1)),
                (ip("10.244.1.3"), mac(3)),
                (ip("10.244.1.4"), mac(4)),
            ]),
        };
        let plan = plan(&permanent, &wanted);
        assert_eq!(plan.remove, [ip("10.244.1.3"), ip("10.244.1.9")]);
        assert_eq!(
            plan.pin,
            [
                (ip("10.244.1.3"), MacAddr([2, 0, 0, 0, 0, 3])),
                (ip("10.244.1.4"), MacAddr([2, 0, 0, 0, 0, 4]))
            ]
        );
    }
}
