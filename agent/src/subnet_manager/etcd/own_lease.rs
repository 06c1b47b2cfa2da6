//! This node's own etcd lease: acquisition (retried until it works),
//! renewal, noticing that it was deleted or overwritten, acquiring it again.
//!
//! The lease is either held (renewed when due) or being acquired again.
//! Acquiring again can take forever (no free subnet, etcd away), so it runs
//! as a task of its own whose result comes back on a channel: the agent's
//! loop goes on meanwhile, SIGTERM included.

use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tracing::{error, info, warn};

use super::STARTUP_RETRY;
use crate::{
    config::NetworkConfig,
    lease::{
        self, LeaseAttrs, LeaseSubnets,
        acquire::{LEASE_TTL, acquire},
        registry::Registry,
        watch::LeaseEvent,
    },
    metrics,
};

/// A failed renewal is retried this often, as flanneld does.
const RENEW_RETRY: Duration = Duration::from_secs(60);

pub struct OwnLease {
    pub registry: Registry,
    pub attrs: LeaseAttrs,
    /// The subnets held (IPv4, and IPv6 in a dual-stack network), or
    /// (while acquiring again) the ones last held.
    pub subnets: LeaseSubnets,
    renew_every: Duration,
    pub renew_at: Instant,
    /// The acquisition under way after the lease was lost; `None` while
    /// the lease is held.
    reacquiring: Option<Reacquiring>,
    /// Where an acquisition under way sends the subnets it got.
    reacquired: mpsc::Sender<LeaseSubnets>,
}

/// An acquisition task; dropping it (the agent stops) ends the task.
struct Reacquiring(JoinHandle<()>);

impl Drop for Reacquiring {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl OwnLease {
    /// Acquires a lease (preferring `previous`), retrying until it works.
    /// Later acquisitions (after the lease is lost) send their subnet on the
    /// returned receiver.
    pub async fn acquire(
        mut registry: Registry,
        config: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<LeaseSubnets>,
        renew_margin_minutes: u64,
    ) -> (Self, mpsc::Receiver<LeaseSubnets>) {
        let subnets = acquire_until_done(&mut registry, config, &attrs, previous).await;
        metrics::global().lease_acquired();
        let renew_every = LEASE_TTL
            .saturating_sub(Duration::from_secs(renew_margin_minutes * 60))
            .max(Duration::from_secs(60));
        let (reacquired, receiver) = mpsc::channel(1);
        let own = Self {
            registry,
            attrs,
            subnets,
            renew_every,
            renew_at: Instant::now() + renew_every,
            reacquiring: None,
            reacquired,
        };
        (own, receiver)
    }

    /// Whether the lease is held (not being acquired again): only then is
    /// it renewed, and only then can an event say it was lost.
    pub fn is_held(&self) -> bool {
        self.reacquiring.is_none()
    }

    pub fn key(&self) -> String {
        lease::lease_key(self.registry.prefix(), &self.subnets)
    }

    /// Whether `event` says our lease is gone or no longer ours (it must
    /// be acquired again). Listings are checked by the caller's key set.
    pub fn is_lost_by(&self, event: &LeaseEvent) -> bool {
        if !self.is_held() {
            return false;
        }
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

    /// Whether `event` is about our own lease (never a peer): our key, or
    /// while acquiring again, a lease with our value (the new one, whose
    /// event can come before the acquisition's result).
    pub fn is_own(&self, event: &LeaseEvent) -> bool {
        let own_key = self.key();
        match event {
            LeaseEvent::Put { key, value, .. } => {
                *key == own_key
                    || (!self.is_held()
                        && LeaseAttrs::from_json(value).ok().as_ref() == Some(&self.attrs))
            }
            LeaseEvent::Delete { key } => *key == own_key,
            LeaseEvent::Listing(_) => false,
        }
    }

    /// The lease was lost: starts acquiring it again (preferring the
    /// subnet held) in a task of its own; the subnet it gets comes back
    /// through [`Self::reacquired`]. Renewal stops meanwhile.
    pub fn start_reacquiring(&mut self, config: &NetworkConfig) {
        if self.reacquiring.is_some() {
            return;
        }
        metrics::global().lease_lost();
        let (mut registry, config, attrs) =
            (self.registry.clone(), config.clone(), self.attrs.clone());
        let (previous, results) = (self.subnets, self.reacquired.clone());
        let task = tokio::spawn(async move {
            let subnets = acquire_until_done(&mut registry, &config, &attrs, Some(previous)).await;
            let _ = results.send(subnets).await;
        });
        self.reacquiring = Some(Reacquiring(task));
    }

    /// An acquisition started by [`Self::start_reacquiring`] got
    /// `subnets`: the lease is held again. Returns whether the subnets
    /// changed (either half).
    pub fn reacquired(&mut self, subnets: LeaseSubnets) -> bool {
        self.reacquiring = None;
        self.renew_at = Instant::now() + self.renew_every;
        metrics::global().lease_reacquired(subnets != self.subnets);
        if subnets == self.subnets {
            info!(%subnets, "re-acquired our subnet");
            return false;
        }
        warn!(old = %self.subnets, new = %subnets, "re-acquired a different subnet; pods on the old one need restarting");
        self.subnets = subnets;
        true
    }

    /// Renews the lease (due at `renew_at`); the outcome is counted.
    pub async fn renew(&mut self) {
        let renewed = match self
            .registry
            .renew(&self.subnets, &self.attrs, LEASE_TTL)
            .await
        {
            Ok(()) => {
                info!(subnets = %self.subnets, "lease renewed");
                self.renew_at = Instant::now() + self.renew_every;
                true
            }
            Err(error) => {
                warn!("{error:#}; retrying in a minute");
                self.renew_at = Instant::now() + RENEW_RETRY;
                false
            }
        };
        metrics::global().lease_renewed(renewed);
    }
}

async fn acquire_until_done(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<LeaseSubnets>,
) -> LeaseSubnets {
    loop {
        match acquire(registry, config, attrs, previous).await {
            Ok((subnets, reason)) => {
                info!(subnet = %subnets.v4, subnet_v6 = ?subnets.v6.map(|v6| v6.to_string()), ?reason, "lease acquired");
                return subnets;
            }
            Err(error) => {
                error!("cannot acquire a subnet lease: {error:#}; retrying");
                tokio::time::sleep(STARTUP_RETRY).await;
            }
        }
    }
}
