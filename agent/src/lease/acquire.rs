//! Taking a subnet lease, in flanneld's order: (1) an existing lease whose
//! PublicIP is ours and that still fits the config, (2) the subnet recorded
//! in our subnet.env, if free, (3) a random pick among the first 100 free
//! subnets from SubnetMin. Creation is a transaction; where flanneld gives
//! up on a lost race, weft looks again.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, bail};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{LeaseAttrs, registry::Registry, subnet_of_key};
use crate::config::NetworkConfig;

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

pub async fn acquire(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Net>,
) -> Result<(Ipv4Net, Reason)> {
    for _ in 0..MAX_LOST_RACES {
        let (leases, _) = registry.leases().await?;
        let mut taken = BTreeSet::new();
        let mut own = None;
        for lease in &leases {
            let subnet = match subnet_of_key(&lease.key) {
                Ok(subnet) => subnet,
                Err(error) => {
                    warn!(key = %lease.key, "{error:#}; skipping");
                    continue;
                }
            };
            // A key with a bad value is still somebody's: never hand it out.
            taken.insert(subnet);
            match LeaseAttrs::from_json(&lease.value) {
                Ok(existing)
                    if existing.public_ip == attrs.public_ip
                        && config.fits(&subnet)
                        && own.is_none() =>
                {
                    own = Some(subnet)
                }
                Ok(_) => {}
                Err(error) => warn!(key = %lease.key, "{error:#}; skipping"),
            }
        }
        if let Some(subnet) = own {
            registry.renew(&subnet, attrs, LEASE_TTL).await?;
            return Ok((subnet, Reason::OwnExistingLease));
        }
        if let Some(subnet) =
            previous.filter(|subnet| config.fits(subnet) && !taken.contains(subnet))
        {
            if registry.create(&subnet, attrs, LEASE_TTL).await? {
                return Ok((subnet, Reason::PreviousSubnet));
            }
            info!(%subnet, "another node took our previous subnet first; looking again");
            continue;
        }
        let free: Vec<Ipv4Net> = config
            .subnets()
            .filter(|subnet| !taken.contains(subnet))
            .take(RANDOM_POOL)
            .collect();
        if free.is_empty() {
            bail!(
                "no free subnet between SubnetMin {} and SubnetMax {} ({} leases held)",
                config.subnet_min,
                config.subnet_max,
                taken.len()
            );
        }
        let pick = free[rand::random_range(0..free.len())];
        if registry.create(&pick, attrs, LEASE_TTL).await? {
            return Ok((pick, Reason::RandomFreeSubnet));
        }
        info!(subnet = %pick, "another node took that subnet first; looking again");
    }
    bail!("lost the race for a subnet {MAX_LOST_RACES} times in a row")
}
