//! Where this node's subnet and the other nodes' claims come from: flannel's
//! two subnet managers, behind one interface.
//!
//! - etcd (`etcd.rs`): the network config at `<prefix>/config`, a leased
//!   subnet under `<prefix>/subnets`, renewed; the peers are the other keys.
//! - Kubernetes (`nodes.rs`, `--kube-subnet-mgr`): the network config in
//!   `net-conf.json`, the subnet from this Node's `spec.podCIDR`, announced
//!   in the Node's annotations; the peers are the other Nodes.
//!
//! Start-up is two steps, as the types say: [`Connection::open`] reads the
//! network config, [`Connection::acquire`] takes the subnet and returns the
//! running [`SubnetManager`], whose [`SubnetManager::next`] the agent's loop
//! reads. Either way the peers arrive as [`ClaimEvent`]s, judged by the
//! same rules (`lease/validate.rs`) in the same peer table.

mod etcd;
pub mod node_claim;
mod nodes;

use anyhow::Result;

use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    lease::{
        LeaseAttrs,
        claim::ClaimEvent,
        validate::{LeasePolicy, OwnSubnets},
    },
};

/// How often start-up steps that wait on etcd or the API server try again.
const STARTUP_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// A subnet manager reached, its network config read; no subnet taken yet.
// One per agent, moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Connection {
    Etcd(etcd::Connection),
    Kube(nodes::Connection),
}

/// The subnet manager after this node's subnet was taken.
#[allow(clippy::large_enum_variant)]
pub enum SubnetManager {
    Etcd(etcd::Manager),
    Kube(nodes::Manager),
}

/// What the subnet manager reports to the agent's loop.
#[derive(Debug)]
pub enum Update {
    /// The other nodes' claims changed (a listing, or events).
    Claims(Vec<ClaimEvent>),
    /// This node's subnet was lost and taken again: it is now this one
    /// (one of each family the network runs).
    Subnet(OwnSubnets),
}

impl Connection {
    /// Reaches the subnet manager the flags name and reads the network
    /// config. etcd is retried until it answers; a config that cannot be
    /// read or parsed is an error in kube mode (it is a file), and retried
    /// in etcd (someone may still write it).
    pub async fn open(args: &AgentArgs) -> Result<(Self, NetworkConfig)> {
        if args.kube_subnet_mgr {
            let (connection, config) = nodes::Connection::open(args).await?;
            Ok((Self::Kube(connection), config))
        } else {
            let (connection, config) = etcd::Connection::open(args).await?;
            Ok((Self::Etcd(connection), config))
        }
    }

    /// Takes this node's subnet, announcing `attrs` (retried until it
    /// works, saying why not). `previous` is the subnets in the node's
    /// subnet.env, which an etcd lease prefers. In a dual-stack network the
    /// subnets taken have an IPv6 half (an etcd lease always; a Node when
    /// it has an IPv6 podCIDR).
    pub async fn acquire(
        self,
        config: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<OwnSubnets>,
        args: &AgentArgs,
    ) -> (SubnetManager, OwnSubnets) {
        match self {
            Self::Etcd(connection) => {
                let (manager, subnet) = connection
                    .acquire(config, attrs, previous, args.subnet_lease_renew_margin)
                    .await;
                (SubnetManager::Etcd(manager), subnet)
            }
            Self::Kube(connection) => {
                let (manager, subnet) = connection.acquire(config, attrs).await;
                (SubnetManager::Kube(manager), subnet)
            }
        }
    }
}

impl SubnetManager {
    /// The next change. Cancel-safe: the agent's loop polls it next to its
    /// other inputs.
    pub async fn next(&mut self) -> Update {
        match self {
            Self::Etcd(manager) => manager.next().await,
            Self::Kube(manager) => manager.next().await,
        }
    }

    /// The rules peers are held to, for this source: etcd leases must fit
    /// SubnetLen and SubnetMin..SubnetMax (flanneld allocates them so);
    /// Kubernetes podCIDRs come from the controller manager's own mask size
    /// and range, so there they must be as long as ours and inside Network
    /// (IPv6Network for the IPv6 ones).
    pub fn peer_policy(&self, policy: LeasePolicy, own: OwnSubnets) -> LeasePolicy {
        match self {
            Self::Etcd(_) => policy,
            Self::Kube(_) => policy
                .for_pod_cidrs(own.v4.map(|v4| v4.prefix_len()))
                .for_pod_cidrs_v6(own.v6.map(|v6| v6.prefix_len())),
        }
    }

    /// The datapath holds this node's subnet and its peers: Kubernetes is
    /// told the node's network is available (in the background, retried).
    pub fn datapath_ready(&mut self) {
        if let Self::Kube(manager) = self {
            manager.datapath_ready();
        }
    }
}
