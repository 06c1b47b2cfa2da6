//! flannel's etcd subnet manager: the network config at `<prefix>/config`,
//! this node's lease (`own_lease.rs`), and the other leases as claims.

mod own_lease;

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;
use tracing::error;

use self::own_lease::OwnLease;
use super::{STARTUP_RETRY, Update};
use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    lease::{
        LeaseAttrs, LeaseSubnets,
        claim::{Claim, ClaimEvent},
        registry::{EtcdOptions, Registry},
        validate::OwnSubnets,
        watch::{LeaseEvent, LeaseFollower},
    },
    metrics,
};

pub struct Connection {
    registry: Registry,
}

pub struct Manager {
    config: NetworkConfig,
    own: OwnLease,
    reacquired: mpsc::Receiver<LeaseSubnets>,
    follower: LeaseFollower,
}

impl Connection {
    /// Checks the TLS files and credentials once (a bad one is an error),
    /// then connects and reads a valid network config, retrying (and saying
    /// why, once per distinct reason) until both work.
    pub async fn open(args: &AgentArgs) -> Result<(Self, NetworkConfig)> {
        let options = EtcdOptions {
            endpoints: args.etcd_endpoints.clone(),
            prefix: args.etcd_prefix.clone(),
            keyfile: args.etcd_keyfile.clone(),
            certfile: args.etcd_certfile.clone(),
            cafile: args.etcd_cafile.clone(),
            username: args.etcd_username.clone(),
            password: args.etcd_password.clone(),
        };
        let connect = options.connect_options()?;
        let mut last_error = String::new();
        loop {
            let attempt = async {
                let mut registry = Registry::connect(&options, &connect).await?;
                let key = registry.config_key();
                let text = registry
                    .config()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("{key}: no network config yet"))?;
                let config = NetworkConfig::parse(&text)
                    .and_then(leasable)
                    .with_context(|| key.clone())?;
                anyhow::Ok((registry, config))
            };
            match attempt.await {
                Ok((registry, config)) => {
                    metrics::global().etcd_connected(true);
                    return Ok((Self { registry }, config));
                }
                Err(error) => {
                    metrics::global().etcd_connected(false);
                    let message = format!("{error:#}");
                    if message != last_error {
                        error!("{message}; retrying");
                        last_error = message;
                    }
                    tokio::time::sleep(STARTUP_RETRY).await;
                }
            }
        }
    }

    /// Acquires a lease (preferring `previous`), retrying until it works.
    pub async fn acquire(
        self,
        config: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<OwnSubnets>,
        renew_margin_minutes: u64,
    ) -> (Manager, OwnSubnets) {
        // An etcd lease is keyed by its IPv4 subnet: a previous subnet.env
        // without one (IPv6-only) has nothing an etcd lease could reuse.
        let previous = previous.and_then(|previous| {
            Some(LeaseSubnets {
                v4: previous.v4?,
                v6: previous.v6,
            })
        });
        let (own, reacquired) = OwnLease::acquire(
            self.registry.clone(),
            config,
            attrs,
            previous,
            renew_margin_minutes,
        )
        .await;
        let subnets = own.subnets.into();
        let follower = LeaseFollower::new(self.registry);
        let manager = Manager {
            config: config.clone(),
            own,
            reacquired,
            follower,
        };
        (manager, subnets)
    }
}

/// `config` if etcd leases can carry it. flannel v0.20.2's etcd leases
/// are keyed by their IPv4 subnet (`10.244.3.0-24&fd00:...`): its registry
/// has no IPv6-only lease, so weft does not invent one.
fn leasable(config: NetworkConfig) -> Result<NetworkConfig> {
    if config.ipv4.is_none() {
        anyhow::bail!(
            "EnableIPv4 is false, and an IPv6-only network needs the Kubernetes subnet manager (--kube-subnet-mgr): etcd leases are keyed by their IPv4 subnet"
        );
    }
    Ok(config)
}

impl Manager {
    /// Lease events become claims (our own lease never does); a lost lease
    /// is acquired again in a task of its own, and renewal runs when due.
    pub async fn next(&mut self) -> Update {
        loop {
            tokio::select! {
                events = self.follower.next() => {
                    if let Some(update) = self.on_lease_events(events) {
                        return update;
                    }
                }
                () = tokio::time::sleep_until(self.own.renew_at), if self.own.is_held() => {
                    self.own.renew().await;
                }
                Some(subnets) = self.reacquired.recv() => {
                    if self.own.reacquired(subnets) {
                        return Update::Subnet(subnets.into());
                    }
                }
            }
        }
    }

    fn on_lease_events(&mut self, events: Vec<LeaseEvent>) -> Option<Update> {
        let mut lost = false;
        let mut claims = Vec::with_capacity(events.len());
        for event in events {
            lost |= self.own.is_lost_by(&event);
            if self.own.is_own(&event) {
                continue;
            }
            claims.push(match event {
                // Our own lease is the agent's, never a claim.
                LeaseEvent::Listing(leases) => {
                    let own_key = self.own.key();
                    ClaimEvent::Listing(
                        leases
                            .iter()
                            .filter(|lease| lease.key != own_key)
                            .map(|lease| {
                                Claim::from_lease(&lease.key, &lease.value, lease.create_revision)
                            })
                            .collect(),
                    )
                }
                LeaseEvent::Put {
                    key,
                    value,
                    create_revision,
                } => ClaimEvent::Put(Claim::from_lease(&key, &value, create_revision)),
                LeaseEvent::Delete { key } => ClaimEvent::Delete { id: key },
            });
        }
        if lost {
            // The loop goes on while it runs: the subnet comes back as an
            // `Update::Subnet`.
            self.own.start_reacquiring(&self.config);
        }
        (!claims.is_empty()).then_some(Update::Claims(claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_only_config_is_refused_naming_the_kube_subnet_manager() {
        let ipv6_only = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let error = format!("{:#}", leasable(ipv6_only).unwrap_err());
        assert!(
            error.contains("needs the Kubernetes subnet manager (--kube-subnet-mgr)"),
            "{error}"
        );
        let dual = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(leasable(dual.clone()).unwrap(), dual);
    }
}
