//! Taking a subnet lease, in flanneld's order: (1) an existing lease whose
//! PublicIP is ours and that still fits the config (both halves, in a
//! dual-stack network), (2) the subnets recorded in our subnet.env, if
//! free, (3) a random pick among the first 100 free subnets from SubnetMin
//! (and, dual-stack, among the first 100 free IPv6 subnets from
//! IPv6SubnetMin). Creation is a transaction that keeps the IPv4 subnet
//! unique across every key; a creation whose IPv6 subnet an older lease
//! also names is given up (flanneld v0.20.2 keeps both). Where flanneld
//! gives up on a lost race, weft looks again.
//!
//! Two differences from flanneld v0.20.2's `local_manager.go`, both so a
//! node keeps its pods' IPv4 subnet when a network turns dual-stack: a
//! lease of ours that no longer fits (an IPv4-only one, say) is deleted as
//! flanneld deletes it, and its IPv4 subnet is then the previous one if
//! subnet.env names none; and the previous IPv4 subnet is reused with a
//! free IPv6 subnet when subnet.env names no usable IPv6 one (flanneld
//! would pick both anew).

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{info, warn};

use super::{
    LeaseAttrs, LeaseSubnets, registry::Registry, subnets_of_key, validate::overlapping_net,
};
use crate::config::{Ipv4Network, NetworkConfig};

/// flanneld's lease TTL.
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lost races in a row before acquisition reports an error (and is retried
/// by the caller later).
const MAX_LOST_RACES: usize = 20;
/// flanneld picks among this many free subnets.
const RANDOM_POOL: usize = 100;

/// Why a subnet was chosen, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    OwnExistingLease,
    PreviousSubnet,
    RandomFreeSubnet,
}

/// The subnets other leases hold, read from their keys.
#[derive(Default)]
struct Taken {
    v4: BTreeSet<Ipv4Net>,
    /// Keyed as `overlapping_net` searches (IPv6 keys only).
    v6: std::collections::BTreeMap<IpNet, ()>,
}

impl Taken {
    /// Records a key's subnets. Only an IPv6 half this config could hand
    /// out blocks one: any other is refused by every peer (wrong prefix,
    /// outside the range or the network), and a hostile short prefix such
    /// as `fd00::-9` must not make the free-subnet walk step through 2^55
    /// subnets, or find none free.
    fn hold(&mut self, config: &NetworkConfig, subnets: LeaseSubnets) {
        self.v4.insert(subnets.v4);
        if let (Some(ipv6), Some(v6)) = (&config.ipv6, subnets.v6)
            && ipv6.fits(&v6)
        {
            self.v6.insert(IpNet::V6(v6), ());
        }
    }

    fn holds_v6(&self, subnet: Ipv6Net) -> bool {
        let subnet = IpNet::V6(subnet);
        self.v6.contains_key(&subnet) || !overlapping_net(&self.v6, subnet).is_empty()
    }
}

/// Whether a lease's subnets are what this config hands out: the IPv4 one
/// fits, and the IPv6 one fits in a dual-stack network and is absent in an
/// IPv4-only one (flanneld's `isSubnetConfigCompat` and
/// `isIPv6SubnetConfigCompat`).
pub fn compatible(config: &NetworkConfig, subnets: &LeaseSubnets) -> bool {
    config
        .ipv4
        .as_ref()
        .is_some_and(|ipv4| ipv4.fits(&subnets.v4))
        && match (&config.ipv6, subnets.v6) {
            (None, v6) => v6.is_none(),
            (Some(ipv6), Some(v6)) => ipv6.fits(&v6),
            (Some(_), None) => false,
        }
}

pub async fn acquire(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<LeaseSubnets>,
) -> Result<(LeaseSubnets, Reason)> {
    // flannel v0.20.2's etcd leases are keyed by their IPv4 subnet.
    let Some(ipv4) = &config.ipv4 else {
        bail!("etcd leases need an IPv4 network: flannel keys them by their IPv4 subnet");
    };
    let mut previous = previous;
    for _ in 0..MAX_LOST_RACES {
        let (leases, _) = registry.leases().await?;
        let mut taken = Taken::default();
        let mut own = None;
        let mut stale_own = None;
        for lease in &leases {
            let subnets = match subnets_of_key(&lease.key) {
                Ok(subnets) => subnets,
                Err(error) => {
                    warn!(key = %lease.key, "{error:#}; skipping");
                    continue;
                }
            };
            match LeaseAttrs::from_json(&lease.value) {
                Ok(existing) if existing.public_ip == attrs.public_ip && own.is_none() => {
                    if compatible(config, &subnets) {
                        own = Some(subnets);
                    } else if stale_own.is_none() {
                        // flanneld deletes it: it does not fit any more.
                        stale_own = Some((lease.key.clone(), subnets));
                        continue;
                    }
                }
                Ok(_) => {}
                Err(error) => warn!(key = %lease.key, "{error:#}; skipping"),
            }
            // A key with a bad value is still somebody's: never hand it out.
            taken.hold(config, subnets);
        }
        if let Some(subnets) = own {
            registry.renew(&subnets, attrs, LEASE_TTL).await?;
            return Ok((subnets, Reason::OwnExistingLease));
        }
        if let Some((key, subnets)) = stale_own {
            info!(%key, "our lease does not fit the network config; deleting it, as flanneld does");
            registry.delete(&key).await?;
            if previous.is_none() {
                previous = Some(subnets);
            }
        }
        let previous_pick = previous.and_then(|previous| reuse(config, ipv4, &taken, previous));
        let (pick, reason) = match previous_pick {
            Some(subnets) => (subnets, Reason::PreviousSubnet),
            None => (random_free(config, ipv4, &taken)?, Reason::RandomFreeSubnet),
        };
        match registry.create(&pick, attrs, LEASE_TTL).await? {
            Some(revision) if !lost_ipv6_race(registry, config, &pick, revision).await? => {
                return Ok((pick, reason));
            }
            Some(_) => {
                info!(subnets = %pick, "an older lease holds that IPv6 subnet; gave ours up, looking again");
                registry
                    .delete(&super::lease_key(registry.prefix(), &pick))
                    .await?;
            }
            None => info!(subnets = %pick, "another node took that subnet first; looking again"),
        }
    }
    bail!("lost the race for a subnet {MAX_LOST_RACES} times in a row")
}

/// Whether a lease older than ours (created at `revision`) holds an IPv6
/// subnet overlapping ours. etcd's transaction keeps the IPv4 half unique
/// (`Registry::create`), but an IPv6 half can sit under any IPv4 key, so
/// two nodes racing for one IPv6 subnet both succeed: the younger one
/// looks after creating and gives way, as every peer would decide (the
/// older claim wins).
pub async fn lost_ipv6_race(
    registry: &mut Registry,
    config: &NetworkConfig,
    ours: &LeaseSubnets,
    revision: i64,
) -> Result<bool> {
    let (Some(ipv6), Some(our_v6)) = (&config.ipv6, ours.v6) else {
        return Ok(false);
    };
    let our_key = super::lease_key(registry.prefix(), ours);
    let (leases, _) = registry.leases().await?;
    Ok(leases.iter().any(|lease| {
        lease.key != our_key
            && lease.create_revision < revision
            && subnets_of_key(&lease.key).is_ok_and(|theirs| {
                theirs.v6.is_some_and(|v6| {
                    ipv6.fits(&v6)
                        && (v6.contains(&our_v6.network()) || our_v6.contains(&v6.network()))
                })
            })
    }))
}

/// The previous subnets, if the IPv4 one still fits and is free; in a
/// dual-stack network with the previous IPv6 subnet if that fits and is
/// free too, else with a free one.
fn reuse(
    config: &NetworkConfig,
    ipv4: &Ipv4Network,
    taken: &Taken,
    previous: LeaseSubnets,
) -> Option<LeaseSubnets> {
    if !ipv4.fits(&previous.v4) || taken.v4.contains(&previous.v4) {
        return None;
    }
    let v6 = match &config.ipv6 {
        None => None,
        Some(ipv6) => match previous.v6 {
            Some(v6) if ipv6.fits(&v6) && !taken.holds_v6(v6) => Some(v6),
            _ => Some(random_free_v6(config, taken).ok()?),
        },
    };
    Some(LeaseSubnets {
        v4: previous.v4,
        v6,
    })
}

/// A random pick among the first [`RANDOM_POOL`] free subnets of each
/// family, as flanneld's `allocateSubnet`.
fn random_free(config: &NetworkConfig, ipv4: &Ipv4Network, taken: &Taken) -> Result<LeaseSubnets> {
    let free: Vec<Ipv4Net> = ipv4
        .subnets()
        .filter(|subnet| !taken.v4.contains(subnet))
        .take(RANDOM_POOL)
        .collect();
    if free.is_empty() {
        bail!(
            "no free subnet between SubnetMin {} and SubnetMax {} ({} leases held)",
            ipv4.subnet_min,
            ipv4.subnet_max,
            taken.v4.len()
        );
    }
    let v4 = free[rand::random_range(0..free.len())];
    let v6 = match config.ipv6 {
        None => None,
        Some(_) => Some(random_free_v6(config, taken)?),
    };
    Ok(LeaseSubnets { v4, v6 })
}

fn random_free_v6(config: &NetworkConfig, taken: &Taken) -> Result<Ipv6Net> {
    let Some(ipv6) = &config.ipv6 else {
        bail!("the network config has no IPv6Network");
    };
    let free: Vec<Ipv6Net> = ipv6
        .subnets()
        .filter(|subnet| !taken.holds_v6(*subnet))
        .take(RANDOM_POOL)
        .collect();
    if free.is_empty() {
        bail!(
            "no free IPv6 subnet between IPv6SubnetMin {} and IPv6SubnetMax {} ({} IPv6 leases held)",
            ipv6.subnet_min,
            ipv6.subnet_max,
            taken.v6.len()
        );
    }
    Ok(free[rand::random_range(0..free.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(config: &NetworkConfig) -> &Ipv4Network {
        config.ipv4.as_ref().expect("IPv4 on")
    }

    fn dual() -> NetworkConfig {
        NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:12::/48","IPv6SubnetLen":56,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap()
    }

    fn subnets(v4: &str, v6: Option<&str>) -> LeaseSubnets {
        LeaseSubnets {
            v4: v4.parse().unwrap(),
            v6: v6.map(|v6| v6.parse().unwrap()),
        }
    }

    #[test]
    fn compatibility_is_flanneld_s_for_both_halves() {
        let v4_only =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        assert!(compatible(&v4_only, &subnets("10.244.3.0/24", None)));
        assert!(!compatible(
            &v4_only,
            &subnets("10.244.3.0/24", Some("fd00:12:0:300::/56"))
        ));
        assert!(compatible(
            &dual(),
            &subnets("10.244.3.0/24", Some("fd00:12:0:300::/56"))
        ));
        for (v4, v6) in [
            ("10.244.3.0/24", None),
            ("10.244.3.0/24", Some("fd00:12:0:300::/64")),
            ("10.244.3.0/24", Some("fd00:12::/56")),
            ("10.244.3.0/24", Some("fd00:13:0:300::/56")),
            ("10.244.0.0/24", Some("fd00:12:0:300::/56")),
        ] {
            assert!(!compatible(&dual(), &subnets(v4, v6)), "{v4} {v6:?}");
        }
    }

    #[test]
    fn free_picks_avoid_every_held_subnet_of_each_family() {
        let config = dual();
        let mut taken = Taken::default();
        // Every IPv6 subnet but one is held.
        for index in 0x01..0xff_u16 {
            let v6 = format!("fd00:12:0:{index:x}00::/56");
            taken.hold(&config, subnets(&format!("10.244.{index}.0/24"), Some(&v6)));
        }
        for _ in 0..20 {
            let pick = random_free(&config, v4(&config), &taken).unwrap();
            assert_eq!(pick.v6, Some("fd00:12:0:ff00::/56".parse().unwrap()));
            assert!(v4(&config).fits(&pick.v4));
        }
        taken.hold(
            &config,
            subnets("10.244.0.0/24", Some("fd00:12:0:ff00::/56")),
        );
        let error = format!(
            "{:#}",
            random_free(&config, v4(&config), &taken).unwrap_err()
        );
        assert!(
            error.contains("no free IPv6 subnet between IPv6SubnetMin fd00:12:0:100:: and IPv6SubnetMax fd00:12:0:ff00::"),
            "{error}"
        );
    }

    #[test]
    fn a_hostile_ipv6_half_the_config_cannot_hand_out_blocks_nothing() {
        // fd00::/8 in /64s: a key's `fd00::-9` half covers 2^55 of them.
        let config = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/8","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let mut taken = Taken::default();
        for hostile in ["fd00::/9", "::/0", "fd00::/64", "fd00:0:0:1::/63"] {
            taken.hold(&config, subnets("10.244.9.0/24", Some(hostile)));
        }
        // fd00::/64 is IPv6SubnetMin - 1 subnet: outside the range.
        assert!(taken.v6.is_empty(), "{:?}", taken.v6.keys());
        let pick = random_free(&config, v4(&config), &taken).unwrap();
        assert!(config.ipv6.as_ref().unwrap().fits(&pick.v6.unwrap()));
        assert!(taken.v4.contains(&"10.244.9.0/24".parse().unwrap()));
    }

    #[test]
    fn the_previous_v4_subnet_is_kept_with_its_v6_or_a_free_one() {
        let config = dual();
        let mut taken = Taken::default();
        let both = subnets("10.244.3.0/24", Some("fd00:12:0:300::/56"));
        assert_eq!(reuse(&config, v4(&config), &taken, both), Some(both));
        // From an IPv4-only subnet.env: the v4 subnet stays, a v6 one is picked.
        let reused = reuse(&config, v4(&config), &taken, subnets("10.244.3.0/24", None)).unwrap();
        assert_eq!(reused.v4, both.v4);
        assert!(config.ipv6.as_ref().unwrap().fits(&reused.v6.unwrap()));
        // The previous v6 subnet is someone else's now: another one.
        taken.v6.insert("fd00:12:0:300::/56".parse().unwrap(), ());
        let reused = reuse(&config, v4(&config), &taken, both).unwrap();
        assert_ne!(reused.v6, both.v6);
        // The previous v4 subnet is someone else's: nothing to reuse.
        taken.v4.insert(both.v4);
        assert_eq!(reuse(&config, v4(&config), &taken, both), None);
    }
}
