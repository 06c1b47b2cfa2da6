//! Following `<prefix>/subnets`: list, then watch from the listing's
//! revision + 1; on compaction or cancellation list again (resync); on a
//! lost connection back off and reconnect. The caller sees a stream of
//! full listings and change batches and never loses an event.

use std::time::Duration;

use anyhow::{Result, anyhow};
use etcd_client::{EventType, WatchStream};
use tracing::{info, warn};

use super::registry::{RawLease, Registry};

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum LeaseEvent {
    /// Everything under `<prefix>/subnets` as of now.
    Listing(Vec<RawLease>),
    Put {
        key: String,
        value: Vec<u8>,
        create_revision: i64,
    },
    Delete {
        key: String,
    },
}

pub struct LeaseFollower {
    registry: Registry,
    stream: Option<WatchStream>,
    backoff: Duration,
    failing: bool,
}

impl LeaseFollower {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            stream: None,
            backoff: MIN_BACKOFF,
            failing: false,
        }
    }

    /// The next batch of events. Retries forever across etcd outages.
    pub async fn next(&mut self) -> Vec<LeaseEvent> {
        loop {
            if self.stream.is_none() {
                match self.relist().await {
                    Ok(listing) => return vec![listing],
                    Err(error) => {
                        self.failed(&error).await;
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("stream present");
            match stream.message().await {
                Ok(Some(response)) => {
                    if response.compact_revision() > 0 {
                        warn!(
                            compacted_to = response.compact_revision(),
                            "lease watch fell behind a compaction; resyncing"
                        );
                        self.stream = None;
                        continue;
                    }
                    if response.canceled() {
                        warn!(
                            reason = response.cancel_reason(),
                            "lease watch cancelled; resyncing"
                        );
                        self.stream = None;
                        continue;
                    }
                    let events: Vec<LeaseEvent> = response
                        .events()
                        .iter()
                        .filter_map(|event| {
                            let kv = event.kv()?;
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            Some(match event.event_type() {
                                EventType::Put => LeaseEvent::Put {
                                    key,
                                    value: kv.value().to_vec(),
                                    create_revision: kv.create_revision(),
                                },
                                EventType::Delete => LeaseEvent::Delete { key },
                            })
                        })
                        .collect();
                    if !events.is_empty() {
                        return events;
                    }
                }
                Ok(None) => {
                    self.stream = None;
                    self.failed(&anyhow!("etcd closed the lease watch")).await;
                }
                Err(error) => {
                    self.stream = None;
                    self.failed(&anyhow!(error)).await;
                }
            }
        }
    }

    async fn relist(&mut self) -> Result<LeaseEvent> {
        let (leases, revision) = self.registry.leases().await?;
        self.stream = Some(self.registry.watch(revision + 1).await?);
        if self.failing {
            info!("etcd is back; leases resynced");
            self.failing = false;
        }
        self.backoff = MIN_BACKOFF;
        Ok(LeaseEvent::Listing(leases))
    }

    async fn failed(&mut self, error: &anyhow::Error) {
        crate::metrics::global().etcd_connected(false);
        if !self.failing {
            warn!("lost etcd: {error:#}; retrying with backoff");
            self.failing = true;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
