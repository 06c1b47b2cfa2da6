//! Every Node, followed: a full listing, then each change, with kube's
//! runtime watcher (list, then watch from the listing's resourceVersion;
//! the API server's default list-then-watch, which 1.20 has, not the
//! streaming lists it lacks).
//!
//! Recovery, as client-go's reflector (flanneld's informer) recovers:
//! - a watch that ends (the server's timeout) is resumed where it was;
//! - a watch that expired (410 Gone) is re-listed at once;
//! - any other error (API server unreachable, a broken watch, a refusal)
//!   drops the watch and re-lists after a backoff (1 s doubling to 30 s,
//!   jittered, so a restarted API server is not hit by every node at once).
//!
//! An outage is logged once when it starts and once when a listing works
//! again, not per retry. Meanwhile the caller keeps what it has: no event
//! means no change.

use std::time::Duration;

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    runtime::watcher::{self, watcher},
};
use tokio::time::Instant;

use super::{calls::describe, node::NodeRecord};
use crate::metrics::{self, KubeOperation};

/// What changed among the Nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// Every Node there is: replaces whatever the caller held (the first
    /// listing, and every re-list).
    Listing(Vec<NodeRecord>),
    /// A Node was added or changed.
    Applied(NodeRecord),
    /// A Node was deleted (its last state).
    Deleted(NodeRecord),
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type NodeStream = BoxStream<'static, Result<watcher::Event<Node>, watcher::Error>>;

/// Follows every Node. [`NodeFollower::next`] is cancel-safe: all its
/// progress lives in the follower, so it can sit in a `tokio::select!`
/// beside timers and be dropped at any await.
pub struct NodeFollower {
    client: kube::Client,
    /// The watcher; `None` after an error until the retry.
    stream: Option<NodeStream>,
    /// The listing being collected (between `Init` and `InitDone`).
    listing: Option<Vec<NodeRecord>>,
    /// No call before this (the backoff after an error).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Since when the API has been failing; `None` while it works.
    outage_since: Option<Instant>,
}

impl NodeFollower {
    pub fn new(client: kube::Client) -> Self {
        metrics::global().kube_api().set_connected(false);
        Self {
            client,
            stream: None,
            listing: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            outage_since: None,
        }
    }

    /// The next batch: a full listing or one change. Waits (retrying) as
    /// long as the API server fails.
    pub async fn next(&mut self) -> Vec<NodeEvent> {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            let client = &self.client;
            let stream = self.stream.get_or_insert_with(|| {
                // The default config: list then watch, 500 Nodes a page,
                // bookmarks (1.17+), a 290 s watch timeout.
                watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).boxed()
            });
            match stream.next().await {
                Some(Ok(event)) => {
                    if let Some(batch) = self.on_event(event) {
                        return vec![batch];
                    }
                }
                Some(Err(error)) => self.on_error(error),
                // The watcher never ends by itself; start over if it does.
                None => self.stream = None,
            }
        }
    }

    fn on_event(&mut self, event: watcher::Event<Node>) -> Option<NodeEvent> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(Vec::new());
                None
            }
            watcher::Event::InitApply(node) => {
                self.listing
                    .get_or_insert_with(Vec::new)
                    .push(NodeRecord::from(&node));
                None
            }
            watcher::Event::InitDone => {
                let nodes = self.listing.take().unwrap_or_default();
                metrics::global().kube_api().nodes_listed();
                self.backoff = FIRST_BACKOFF;
                if let Some(since) = self.outage_since.take() {
                    tracing::info!(
                        "Kubernetes API back after {} s: listed {} Nodes",
                        since.elapsed().as_secs(),
                        nodes.len()
                    );
                } else {
                    tracing::debug!("listed {} Nodes", nodes.len());
                }
                Some(NodeEvent::Listing(nodes))
            }
            watcher::Event::Apply(node) => Some(NodeEvent::Applied(NodeRecord::from(&node))),
            watcher::Event::Delete(node) => Some(NodeEvent::Deleted(NodeRecord::from(&node))),
        }
    }

    fn on_error(&mut self, error: watcher::Error) {
        self.listing = None;
        if let watcher::Error::WatchError(status) = &error
            && status.code == 410
        {
            // The watcher starts a fresh listing on its next poll.
            tracing::info!(
                "the Node watch expired (410 Gone: {}); re-listing",
                status.message
            );
            return;
        }
        metrics::global().kube_api().error(KubeOperation::ListWatch);
        metrics::global().kube_api().set_connected(false);
        let message = format!("{:#}", describe_watcher_error(error));
        if self.outage_since.is_none() {
            self.outage_since = Some(Instant::now());
            tracing::warn!(
                "cannot list and watch Nodes: {message}; retrying with backoff (up to {} s), \
                 the data plane stays as it is",
                MAX_BACKOFF.as_secs()
            );
        } else {
            tracing::debug!("Nodes still unreachable: {message}");
        }
        self.stream = None;
        self.retry_at = Some(Instant::now() + jittered(self.backoff));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// `backoff` give or take a fifth.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random_range(0.8..1.2))
}

/// The watcher's error with the API server's own words inside.
fn describe_watcher_error(error: watcher::Error) -> anyhow::Error {
    match error {
        watcher::Error::InitialListFailed(error) => describe(error).context("listing Nodes"),
        watcher::Error::WatchStartFailed(error) => describe(error).context("watching Nodes"),
        watcher::Error::WatchFailed(error) => describe(error).context("the Node watch broke"),
        watcher::Error::WatchError(status) => {
            describe(kube::Error::Api(status)).context("the Node watch reported an error")
        }
        other => anyhow::anyhow!("{}", super::calls::error_text(&other)),
    }
}
