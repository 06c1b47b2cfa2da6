//! This node's own lease: acquisition (retried until it works), renewal,
//! noticing that it was deleted or overwritten, and making a subnet the
//! node's (VXLAN device address, masquerade rules, `subnet.env`).

use std::time::Duration;

use anyhow::Result;
use ipnet::Ipv4Net;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::STARTUP_RETRY;
use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    dataplane::kernel::KernelDataplane,
    lease::{
        self, LeaseAttrs,
        acquire::{LEASE_TTL, acquire},
        registry::Registry,
        watch::LeaseEvent,
    },
    masq,
    subnet_env::{self, SubnetEnv},
};

/// A failed renewal is retried this often, as flanneld does.
const RENEW_RETRY: Duration = Duration::from_secs(60);

pub struct OwnLease {
    pub registry: Registry,
    pub attrs: LeaseAttrs,
    pub subnet: Ipv4Net,
    renew_every: Duration,
    pub renew_at: Instant,
}

/// What a renewal did, for the log and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    Failed,
}

impl OwnLease {
    /// Acquires a lease (preferring `previous`), retrying until it works.
    pub async fn acquire(
        mut registry: Registry,
        config: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<Ipv4Net>,
        renew_margin_minutes: u64,
    ) -> Self {
        let subnet = acquire_until_done(&mut registry, config, &attrs, previous).await;
        let renew_every = LEASE_TTL
            .saturating_sub(Duration::from_secs(renew_margin_minutes * 60))
            .max(Duration::from_secs(60));
        Self {
            registry,
            attrs,
            subnet,
            renew_every,
            renew_at: Instant::now() + renew_every,
        }
    }

    pub fn key(&self) -> String {
        lease::key(self.registry.prefix(), &self.subnet)
    }

    /// Whether `event` says our lease is gone or no longer ours (it must
    /// be acquired again). Listings are checked by the caller's key set.
    pub fn is_lost_by(&self, event: &LeaseEvent) -> bool {
        let own_key = self.key();
        match event {
            LeaseEvent::Listing(leases) => {
                let lost = !leases.iter().any(|lease| lease.key == own_key);
                if lost {
                    warn!(key = %own_key, "our lease is gone from etcd");
                }
                lost
            }
            LeaseEvent::Put { key, value, .. } if *key == own_key => {
                let lost = LeaseAttrs::from_json(value).ok().as_ref() != Some(&self.attrs);
                if lost {
                    warn!(%key, "our lease was overwritten by someone else");
                }
                lost
            }
            LeaseEvent::Delete { key } if *key == own_key => {
                warn!(%key, "our lease was deleted");
                true
            }
            _ => false,
        }
    }

    /// Whether `event` is about our own key (never a peer).
    pub fn is_own(&self, event: &LeaseEvent) -> bool {
        let own_key = self.key();
        matches!(event, LeaseEvent::Put { key, .. } | LeaseEvent::Delete { key } if *key == own_key)
    }

    /// Acquires again after the lease was lost; returns whether the subnet
    /// changed.
    pub async fn reacquire(&mut self, config: &NetworkConfig) -> bool {
        let subnet =
            acquire_until_done(&mut self.registry, config, &self.attrs, Some(self.subnet)).await;
        self.renew_at = Instant::now() + self.renew_every;
        if subnet == self.subnet {
            info!(%subnet, "re-acquired our subnet");
            return false;
        }
        warn!(old = %self.subnet, new = %subnet, "re-acquired a different subnet; pods on the old one need restarting");
        self.subnet = subnet;
        true
    }

    /// Renews the lease (due at `renew_at`).
    pub async fn renew(&mut self) -> Renewal {
        match self
            .registry
            .renew(&self.subnet, &self.attrs, LEASE_TTL)
            .await
        {
            Ok(()) => {
                info!(subnet = %self.subnet, "lease renewed");
                self.renew_at = Instant::now() + self.renew_every;
                Renewal::Renewed
            }
            Err(error) => {
                warn!("{error:#}; retrying in a minute");
                self.renew_at = Instant::now() + RENEW_RETRY;
                Renewal::Failed
            }
        }
    }

    /// Makes the subnet this node's: the VXLAN device address, the
    /// masquerade rules and subnet.env.
    pub async fn take(
        &self,
        kernel: &KernelDataplane,
        args: &AgentArgs,
        config: &NetworkConfig,
        mtu: u32,
    ) -> Result<()> {
        let subnet = self.subnet;
        kernel.set_vxlan_address(&subnet).await?;
        let gateway = Ipv4Net::new(
            subnet.hosts().next().unwrap_or(subnet.network()),
            subnet.prefix_len(),
        )?;
        let env = SubnetEnv {
            network: config.network,
            subnet: gateway,
            mtu,
            ipmasq: args.ip_masq,
        };
        if args.ip_masq {
            masq::apply(&config.network, &subnet)?;
            info!(table = masq::TABLE, "masquerade rules applied");
        }
        subnet_env::write_atomic(&args.subnet_file, &env)?;
        info!(file = %args.subnet_file.display(), subnet = %gateway, "subnet.env written");
        Ok(())
    }
}

async fn acquire_until_done(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Net>,
) -> Ipv4Net {
    loop {
        match acquire(registry, config, attrs, previous).await {
            Ok((subnet, reason)) => {
                info!(%subnet, ?reason, "lease acquired");
                return subnet;
            }
            Err(error) => {
                error!("cannot acquire a subnet lease: {error:#}; retrying");
                tokio::time::sleep(STARTUP_RETRY).await;
            }
        }
    }
}
