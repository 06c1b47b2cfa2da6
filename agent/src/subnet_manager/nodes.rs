//! flannel's Kubernetes subnet manager (`--kube-subnet-mgr`): the network
//! config from `net-conf.json`, this node's subnet from its Node's
//! `spec.podCIDR`, announced in the Node's annotations on the status
//! subresource as flanneld v0.20.2 writes them; the other Nodes are the
//! claims (`node_claim.rs`). The API calls are `crate::kubernetes`'s.
//!
//! Nothing here waits inside the agent's loop: start-up retries before the
//! loop starts (SIGTERM still ends it), and the writes made later (the
//! NetworkUnavailable condition, annotations someone else changed) run in
//! tasks of their own.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::{STARTUP_RETRY, Update, node_claim};
use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    kubernetes::{
        self, AnnotationKeys, Announcement, KubeOptions, NodeEvent, NodeFollower, NodeRecord,
    },
    lease::{LeaseAttrs, claim::ClaimEvent, validate::OwnSubnets},
};

/// The longest wait between two tries of a background write.
const MAX_RETRY: Duration = Duration::from_secs(30);

pub struct Connection {
    client: ::kube::Client,
    keys: AnnotationKeys,
    node: String,
    set_network_unavailable: bool,
}

pub struct Manager {
    client: ::kube::Client,
    keys: AnnotationKeys,
    node: String,
    announcement: Announcement,
    follower: NodeFollower,
    set_network_unavailable: bool,
    /// Setting NetworkUnavailable=False, once the datapath is ready.
    condition: Option<Background>,
    /// Writing our annotations again after someone changed them.
    republish: Option<Background>,
}

/// A task that ends with the agent.
struct Background(JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Connection {
    /// Reads net-conf.json and the annotation prefix (errors name the file
    /// or the flag), builds the API client, and finds this node's name.
    pub async fn open(args: &AgentArgs) -> Result<(Self, NetworkConfig)> {
        let keys = AnnotationKeys::new(&args.kube_annotation_prefix)
            .context("--kube-annotation-prefix")?;
        let config = read_net_conf(&args.net_config_path)?;
        let client = kubernetes::client(&KubeOptions {
            api_url: args.kube_api_url.clone(),
            kubeconfig: args.kubeconfig_file.clone(),
            annotation_prefix: args.kube_annotation_prefix.clone(),
        })
        .await?;
        let node = find_node_name(&client).await?;
        info!(node = %node, "kube subnet manager: this node's Node");
        let connection = Self {
            client,
            keys,
            node,
            set_network_unavailable: args.set_node_network_unavailable,
        };
        Ok((connection, config))
    }

    /// Waits for the Node's podCIDR (saying so once), checks it lies inside
    /// Network, and announces `attrs` in the Node's annotations (retried,
    /// each distinct error logged once). In a dual-stack network the Node's
    /// IPv6 podCIDR is this node's IPv6 subnet, inside IPv6Network.
    pub async fn acquire(self, config: &NetworkConfig, attrs: LeaseAttrs) -> (Manager, OwnSubnets) {
        let announcement = Announcement {
            backend_type: attrs.backend_type.clone(),
            backend_data: serde_json::to_string(&attrs.backend_data)
                .expect("backend data always serializes"),
            public_ip: attrs.public_ip,
            public_ipv6: attrs.public_ipv6,
            backend_v6_data: serde_json::to_string(&attrs.backend_v6_data)
                .expect("backend data always serializes"),
        };
        let mut last_error = String::new();
        let subnet = loop {
            match self.try_acquire(config, &announcement).await {
                Ok(subnet) => break subnet,
                Err(error) => {
                    let message = format!("{error:#}");
                    if message != last_error {
                        error!("{message}; retrying");
                        last_error = message;
                    }
                }
            }
            tokio::time::sleep(STARTUP_RETRY).await;
        };
        info!(node = %self.node, subnet = ?subnet.v4.map(|v4| v4.to_string()), subnet_v6 = ?subnet.v6.map(|v6| v6.to_string()), "subnets taken from the Node's podCIDRs");
        let manager = Manager {
            follower: NodeFollower::new(self.client.clone()),
            client: self.client,
            keys: self.keys,
            node: self.node,
            announcement,
            set_network_unavailable: self.set_network_unavailable,
            condition: None,
            republish: None,
        };
        (manager, subnet)
    }

    async fn try_acquire(
        &self,
        config: &NetworkConfig,
        announcement: &Announcement,
    ) -> Result<OwnSubnets> {
        let node = kubernetes::get_node(&self.client, &self.node).await?;
        if node.pod_cidr.is_none() && node.pod_cidrs.is_empty() {
            bail!("Node {} has no podCIDR yet; waiting for one", self.node);
        }
        let subnet = match &config.ipv4 {
            // An IPv4 podCIDR in an IPv6-only network is not weft's to use.
            None => None,
            Some(ipv4) => {
                let subnet = node_claim::pod_cidr(&node).map_err(anyhow::Error::msg)?;
                if !ipv4.network.contains(&subnet) {
                    bail!(
                        "podCIDR {subnet} of Node {} is not inside Network {} (net-conf.json)",
                        self.node,
                        ipv4.network
                    );
                }
                Some(subnet)
            }
        };
        let subnet_v6 = match &config.ipv6 {
            // An IPv6 podCIDR in an IPv4-only network is not weft's to use.
            None => None,
            Some(ipv6) => {
                let subnet_v6 = node_claim::pod_cidr_v6(&node)
                    .map_err(anyhow::Error::msg)?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "Node {} has no IPv6 podCIDR in {:?}, and net-conf.json has EnableIPv6; waiting for one (the controller manager needs a dual-stack --cluster-cidr)",
                            self.node,
                            node.pod_cidrs
                        )
                    })?;
                if !ipv6.network.contains(&subnet_v6) {
                    bail!(
                        "IPv6 podCIDR {subnet_v6} of Node {} is not inside IPv6Network {} (net-conf.json)",
                        self.node,
                        ipv6.network
                    );
                }
                Some(subnet_v6)
            }
        };
        let seen = kubernetes::publish(&self.client, &self.keys, &self.node, announcement).await?;
        info!(node = %self.node, public_ip = %seen, "Node annotated");
        Ok(OwnSubnets {
            v4: subnet,
            v6: subnet_v6,
        })
    }
}

impl Manager {
    /// Node events become claims; our own Node never does, but annotations
    /// on it that differ from ours are written again.
    pub async fn next(&mut self) -> Update {
        loop {
            let events = self.follower.next().await;
            let claims: Vec<ClaimEvent> = events
                .into_iter()
                .filter_map(|event| self.claim_event(event))
                .collect();
            if !claims.is_empty() {
                return Update::Claims(claims);
            }
        }
    }

    fn claim_event(&mut self, event: NodeEvent) -> Option<ClaimEvent> {
        match event {
            NodeEvent::Listing(nodes) => {
                if let Some(own) = nodes.iter().find(|node| node.name == self.node) {
                    self.check_own(&own.clone());
                }
                Some(ClaimEvent::Listing(
                    nodes
                        .iter()
                        .filter(|node| node.name != self.node)
                        .filter_map(|node| node_claim::claim(node, &self.keys))
                        .collect(),
                ))
            }
            NodeEvent::Applied(node) if node.name == self.node => {
                self.check_own(&node);
                None
            }
            NodeEvent::Applied(node) => Some(match node_claim::claim(&node, &self.keys) {
                Some(claim) => ClaimEvent::Put(claim),
                // No longer flannel's: no longer a peer.
                None => ClaimEvent::Delete {
                    id: node_claim::id(&node.name),
                },
            }),
            NodeEvent::Deleted(node) if node.name == self.node => {
                warn!(node = %self.node, "our own Node was deleted; the datapath stays as it is");
                None
            }
            NodeEvent::Deleted(node) => Some(ClaimEvent::Delete {
                id: node_claim::id(&node.name),
            }),
        }
    }

    /// Someone changed our annotations (or removed them): write ours again,
    /// in the background.
    fn check_own(&mut self, node: &NodeRecord) {
        // A bad public-ip-overwrite is the publish's error to report.
        if !matches!(
            kubernetes::annotation_patch(&self.keys, &node.annotations, &self.announcement),
            Ok(Some(_))
        ) {
            return;
        }
        if self
            .republish
            .as_ref()
            .is_some_and(|task| !task.0.is_finished())
        {
            return;
        }
        warn!(node = %self.node, "our Node's flannel annotations differ from ours; writing them again");
        let (client, keys, name, announcement) = (
            self.client.clone(),
            self.keys.clone(),
            self.node.clone(),
            self.announcement.clone(),
        );
        self.republish = Some(Background(tokio::spawn(retry(
            "annotate our Node again",
            move || {
                let (client, keys, name, announcement) = (
                    client.clone(),
                    keys.clone(),
                    name.clone(),
                    announcement.clone(),
                );
                async move {
                    kubernetes::publish(&client, &keys, &name, &announcement)
                        .await
                        .map(|_| ())
                }
            },
        ))));
    }

    /// The datapath is programmed: NetworkUnavailable=False (FlannelIsUp),
    /// as flanneld sets it, unless --set-node-network-unavailable=false.
    pub fn datapath_ready(&mut self) {
        if !self.set_network_unavailable || self.condition.is_some() {
            return;
        }
        let (client, name) = (self.client.clone(), self.node.clone());
        self.condition = Some(Background(tokio::spawn(retry(
            "set the Node's NetworkUnavailable condition to False",
            move || {
                let (client, name) = (client.clone(), name.clone());
                async move { kubernetes::set_network_available(&client, &name).await }
            },
        ))));
    }
}

/// Runs `attempt` until it succeeds, backing off up to [`MAX_RETRY`] and
/// logging each distinct error once.
async fn retry<F, Fut>(what: &'static str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut wait = STARTUP_RETRY;
    let mut last_error = String::new();
    loop {
        match attempt().await {
            Ok(()) => {
                info!("done: {what}");
                return;
            }
            Err(error) => {
                let message = format!("{error:#}");
                if message != last_error {
                    warn!("cannot {what}: {message}; retrying");
                    last_error = message;
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RETRY);
    }
}

/// net-conf.json, parsed by the same rules as etcd's network config.
fn read_net_conf(path: &Path) -> Result<NetworkConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the network config {}", path.display()))?;
    NetworkConfig::parse(&text).with_context(|| path.display().to_string())
}

/// NODE_NAME, or the node of the pod POD_NAMESPACE/POD_NAME (flanneld's
/// rule). A missing variable is an error at once; the API is asked again
/// until it answers.
async fn find_node_name(client: &::kube::Client) -> Result<String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.is_empty());
    let named = set("NODE_NAME") || (set("POD_NAME") && set("POD_NAMESPACE"));
    if !named {
        bail!(
            "--kube-subnet-mgr needs this node's name: set NODE_NAME, or POD_NAME and POD_NAMESPACE"
        );
    }
    let mut last_error = String::new();
    loop {
        match kubernetes::node_name(client).await {
            Ok(name) => return Ok(name),
            Err(error) => {
                let message = format!("{error:#}");
                if message != last_error {
                    error!("{message}; retrying");
                    last_error = message;
                }
            }
        }
        tokio::time::sleep(STARTUP_RETRY).await;
    }
}
