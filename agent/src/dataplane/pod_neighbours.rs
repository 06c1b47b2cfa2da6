//! The pods' neighbour entries on the CNI bridge: the sink for
//! [`Desired::pod_neighbours`](crate::desired::Desired::pod_neighbours),
//! pinned from owned state, in both families.
//!
//! The kernel fills cni0's neighbour tables from whatever ARP and NDP
//! arrive, and a pod has CAP_NET_RAW by default: one that claims a
//! neighbour pod's address (a forged ARP request or reply; a forged
//! Neighbour Advertisement with the Override flag, or a Neighbour
//! Solicitation whose source link-layer option names its own MAC) receives
//! that pod's kernel-path traffic (on stock flannel as well). Each local
//! pod's IPv4 address, and in a dual-stack network its IPv6 address (the
//! same ones as ENDPOINTS6), is pinned here to the MAC of its own veth end
//! as a permanent entry, which received ARP or NDP cannot change. Only
//! permanent entries inside our own subnets (the IPv4 lease, and the IPv6
//! one when there is one) on the bridge are weft's to touch: the CNI
//! plugins install none, the kernel's learned ones are never permanent.
//! In an IPv4-only network no IPv6 entry is touched.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use netlink_packet_route::{
    AddressFamily,
    neighbour::{NeighbourMessage, NeighbourState},
};
use rtnetlink::Handle;

use crate::{
    config::NetworkConfig,
    desired::PodNeighbours,
    lease::MacAddr,
    net::{self, neighbour_addr, neighbour_mac},
    subnet_env::SubnetEnv,
};

/// The node's own subnets, whose permanent entries on the bridge are
/// weft's: the IPv4 one (none in an IPv6-only network), and the IPv6 one
/// in a network with IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnSubnets {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl OwnSubnets {
    /// Whether `ip` is inside one of them (an address never is without a
    /// subnet of its family).
    pub fn contain(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.is_some_and(|v4| v4.contains(&ip)),
            IpAddr::V6(ip) => self.v6.is_some_and(|v6| v6.contains(&ip)),
        }
    }
}

impl From<&PodNeighbours> for OwnSubnets {
    fn from(wanted: &PodNeighbours) -> Self {
        Self {
            v4: wanted.subnet,
            v6: wanted.subnet_v6,
        }
    }
}

/// What to change on the bridge: entries to remove (stale or wrong MAC) and
/// entries to add or replace, in both families.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NeighbourPlan {
    pub remove: Vec<IpAddr>,
    pub pin: Vec<(IpAddr, MacAddr)>,
}

/// Compares the bridge's permanent entries inside the node's subnets with
/// the entries the pods should have.
pub fn plan(permanent: &BTreeMap<IpAddr, MacAddr>, wanted: &PodNeighbours) -> NeighbourPlan {
    let own = OwnSubnets::from(wanted);
    NeighbourPlan {
        remove: permanent
            .iter()
            .filter(|(ip, mac)| own.contain(**ip) && wanted.pinned.get(ip) != Some(*mac))
            .map(|(ip, _)| *ip)
            .collect(),
        pin: wanted
            .pinned
            .iter()
            .filter(|(ip, mac)| own.contain(**ip) && permanent.get(ip) != Some(*mac))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
    }
}

/// The permanent entries (both families) on bridge `bridge`.
async fn permanent_on(handle: &Handle, bridge: u32) -> Result<Vec<NeighbourMessage>> {
    // The bridge's entries only (filtered by the kernel): this runs at
    // every sync, and flannel.<VNI> may hold an entry per VXLAN peer.
    let mut entries = net::neighbours_on(handle, bridge, AddressFamily::Inet).await?;
    entries.extend(net::neighbours_on(handle, bridge, AddressFamily::Inet6).await?);
    Ok(entries
        .into_iter()
        .filter(|entry| entry.header.state == NeighbourState::Permanent)
        .collect())
}

/// Removes the entries among `entries` whose address is in `remove`.
async fn remove_entries(
    handle: &Handle,
    entries: &[NeighbourMessage],
    remove: &[IpAddr],
) -> Result<usize> {
    let mut removed = 0;
    for entry in entries {
        if let Some(ip) = neighbour_addr(entry).filter(|ip| remove.contains(ip)) {
            handle
                .neighbours()
                .del(entry.clone())
                .execute()
                .await
                .with_context(|| format!("cannot remove the pod neighbour entry for {ip}"))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Brings the permanent entries on the bridge in line with `wanted`.
pub async fn sync(handle: &Handle, wanted: &PodNeighbours) -> Result<()> {
    let on_bridge_permanent = permanent_on(handle, wanted.bridge).await?;
    let permanent: BTreeMap<IpAddr, MacAddr> = on_bridge_permanent
        .iter()
        .filter_map(|entry| Some((neighbour_addr(entry)?, neighbour_mac(entry)?)))
        .collect();
    let plan = plan(&permanent, wanted);
    remove_entries(handle, &on_bridge_permanent, &plan.remove).await?;
    for (ip, mac) in plan.pin {
        handle
            .neighbours()
            .add(wanted.bridge, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot pin neighbour {ip} -> {mac} on the bridge"))?;
    }
    Ok(())
}

/// Removes every pinned entry (permanent, inside `own`, on bridge
/// `bridge`, either family): on a clean stop, and by `weft cleanup`. The
/// kernel learns the pods' addresses again from ARP and NDP, as it does
/// under flanneld. Returns how many were removed.
pub async fn unpin_all(handle: &Handle, bridge: u32, own: OwnSubnets) -> Result<usize> {
    let entries = permanent_on(handle, bridge).await?;
    let pinned: Vec<IpAddr> = entries
        .iter()
        .filter_map(neighbour_addr)
        .filter(|ip| own.contain(*ip))
        .collect();
    remove_entries(handle, &entries, &pinned).await
}

/// The subnets of the families `previous` (the node's previous
/// `subnet.env`) has and `config` no longer runs: a previous run's pins
/// there are nobody's now. A /0 is never one (it would cover every entry
/// of its family).
pub fn dropped_families(config: &NetworkConfig, previous: &SubnetEnv) -> OwnSubnets {
    OwnSubnets {
        v4: previous
            .ipv4
            .filter(|_| config.ipv4.is_none())
            .map(|ipv4| ipv4.subnet.trunc())
            .filter(|subnet| subnet.prefix_len() > 0),
        v6: previous
            .ipv6
            .filter(|_| config.ipv6.is_none())
            .map(|ipv6| ipv6.subnet.trunc())
            .filter(|subnet| subnet.prefix_len() > 0),
    }
}

/// Removes a previous run's pins of the families the network no longer
/// runs ([`dropped_families`]): a clean stop removes every pin, but after a
/// crash they would stay, since the sink looks only inside the subnets the
/// network runs. Returns how many were removed (none without a bridge).
pub async fn unpin_dropped_families(
    handle: &Handle,
    bridge: &str,
    config: &NetworkConfig,
    previous: &SubnetEnv,
) -> Result<usize> {
    let dropped = dropped_families(config, previous);
    if dropped.v4.is_none() && dropped.v6.is_none() {
        return Ok(0);
    }
    let Some(link) = net::link_by_name(handle, bridge).await? else {
        return Ok(0);
    };
    unpin_all(handle, link.header.index, dropped).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dropped_familys_previous_subnet_is_unpinned() {
        let env = |text: &str| crate::subnet_env::parse(text, "subnet.env").unwrap();
        let dual = env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
        );
        let config = |json: &str| NetworkConfig::parse(json).unwrap();
        let v4_only = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let v6_only = config(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        );
        let dual_config = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(
            dropped_families(&v4_only, &dual),
            OwnSubnets {
                v4: None,
                v6: Some("fd00:10:244:3::/64".parse().unwrap()),
            }
        );
        assert_eq!(
            dropped_families(&v6_only, &dual),
            OwnSubnets {
                v4: Some("10.244.3.0/24".parse().unwrap()),
                v6: None,
            }
        );
        let none = OwnSubnets { v4: None, v6: None };
        assert_eq!(dropped_families(&dual_config, &dual), none);
        // A /0 in the file would name every entry of its family: never.
        let wide = env(
            "FLANNEL_NETWORK=0.0.0.0/0\nFLANNEL_SUBNET=0.0.0.1/0\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        );
        assert_eq!(dropped_families(&v6_only, &wide), none);
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, last])
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn pins_pods_and_removes_only_stale_permanent_entries_inside_the_lease() {
        let permanent = BTreeMap::from([
            (ip("10.244.1.2"), mac(1)),  // correct: kept
            (ip("10.244.1.3"), mac(9)),  // wrong MAC
            (ip("10.244.1.9"), mac(4)),  // pod gone
            (ip("192.168.5.5"), mac(5)), // not ours
        ]);
        let wanted = PodNeighbours {
            bridge: 5,
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            subnet_v6: None,
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
            [(ip("10.244.1.3"), mac(3)), (ip("10.244.1.4"), mac(4))]
        );
    }

    #[test]
    fn in_a_dual_stack_network_the_pods_ipv6_addresses_are_pinned_the_same_way() {
        let permanent = BTreeMap::from([
            (ip("10.244.1.2"), mac(1)),         // correct: kept
            (ip("10.244.1.9"), mac(4)),         // pod gone
            (ip("fd00:10:244:1::2"), mac(1)),   // correct: kept
            (ip("fd00:10:244:1::3"), mac(9)),   // wrong MAC (set by hand)
            (ip("fd00:10:244:1::9"), mac(4)),   // pod gone
            (ip("fd00:10:244:2::5"), mac(5)),   // another node's subnet
            (ip("fe80::1"), mac(6)),            // link-local: not ours
            (ip("fd00:192:168:77::2"), mac(7)), // not ours
        ]);
        let wanted = PodNeighbours {
            bridge: 5,
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            subnet_v6: Some("fd00:10:244:1::/64".parse().unwrap()),
            pinned: BTreeMap::from([
                (ip("10.244.1.2"), mac(1)),
                (ip("10.244.1.3"), mac(3)),
                (ip("fd00:10:244:1::2"), mac(1)),
                (ip("fd00:10:244:1::3"), mac(3)),
                (ip("fd00:10:244:1::4"), mac(4)),
            ]),
        };
        let plan = plan(&permanent, &wanted);
        assert_eq!(
            plan.remove,
            [
                ip("10.244.1.9"),
                ip("fd00:10:244:1::3"),
                ip("fd00:10:244:1::9")
            ]
        );
        assert_eq!(
            plan.pin,
            [
                (ip("10.244.1.3"), mac(3)),
                (ip("fd00:10:244:1::3"), mac(3)),
                (ip("fd00:10:244:1::4"), mac(4)),
            ]
        );
    }

    #[test]
    fn without_an_ipv6_subnet_no_ipv6_entry_is_touched() {
        let permanent = BTreeMap::from([
            (ip("10.244.1.2"), mac(1)),
            (ip("fd00:10:244:1::9"), mac(4)),
            (ip("fe80::1"), mac(6)),
        ]);
        let wanted = PodNeighbours {
            bridge: 5,
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            subnet_v6: None,
            // Never so from `compute` (no ENDPOINTS6 without an IPv6
            // subnet); the plan does not pin outside the subnets anyway.
            pinned: BTreeMap::from([(ip("10.244.1.2"), mac(1)), (ip("fd00:10:244:1::2"), mac(1))]),
        };
        assert_eq!(plan(&permanent, &wanted), NeighbourPlan::default());
        let own = OwnSubnets::from(&wanted);
        assert!(own.contain(ip("10.244.1.200")));
        assert!(!own.contain(ip("fd00:10:244:1::2")));
        assert!(!own.contain(ip("::")));
    }
}
