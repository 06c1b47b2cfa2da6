//! The overlay guard's sink: keeps table `inet weft`'s peer set
//! (`overlay_guard.rs`) equal to [`Desired::members`], the PublicIPs of the
//! accepted peers, and its IPv6 set to [`Desired::members_v6`] (their
//! PublicIPv6, dual-stack). nft runs off the agent's runtime.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::{
    desired::Desired,
    overlay_guard::{self, Members},
};

/// How long the sets are only changed (members added and removed) before
/// the next write replaces them whole: what else got into them (`nft`
/// by hand) goes then.
const REPLACE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct OverlayGuard {
    /// What the sets hold, as last written by this agent (`None`: not
    /// written yet, or the last write failed, so the next sync writes).
    written: Option<Members>,
    /// When the sets were last replaced whole.
    replaced: Option<Instant>,
}

impl OverlayGuard {
    /// Writes the peer set if it differs from what was written last. Until
    /// the peers are known (`planned`), the set keeps what the previous
    /// agent left, so a restart cuts no peer off. Returns whether it wrote.
    pub async fn sync(&mut self, desired: &Desired) -> bool {
        let members = Members {
            v4: desired.members.clone(),
            v6: desired.members_v6.clone(),
        };
        if !desired.planned || self.written.as_ref() == Some(&members) {
            return false;
        }
        let written = members.clone();
        let replace = self
            .replaced
            .is_none_or(|replaced| replaced.elapsed() >= REPLACE_EVERY);
        let before = self.written.take().filter(|_| !replace);
        let result = tokio::task::spawn_blocking(move || {
            overlay_guard::set_members(before.as_ref(), &members)
        })
        .await;
        match result {
            Ok(Ok(())) => {
                debug!(
                    peers = written.v4.len(),
                    ipv6_peers = written.v6.len(),
                    "overlay guard: the VXLAN port takes only these peers' addresses"
                );
                self.written = Some(written);
                if replace {
                    self.replaced = Some(Instant::now());
                }
                true
            }
            Ok(Err(error)) => {
                warn!("{error:#}; retried on the next sync");
                self.written = None;
                false
            }
            Err(error) => {
                warn!("overlay guard update did not run: {error}");
                self.written = None;
                false
            }
        }
    }
}
