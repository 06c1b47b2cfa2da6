//! The overlay guard's sink: keeps table `inet weft`'s peer set
//! (`overlay_guard.rs`) equal to [`Desired::members`], the PublicIPs of the
//! accepted peers. nft runs off the agent's runtime.

use std::{collections::BTreeSet, net::Ipv4Addr};

use tracing::{debug, warn};

use crate::{desired::Desired, overlay_guard};

#[derive(Debug, Default)]
pub struct OverlayGuard {
    /// What the set holds, as last written by this agent (`None`: not
    /// written yet, or the last write failed, so the next sync writes).
    written: Option<BTreeSet<Ipv4Addr>>,
}

impl OverlayGuard {
    /// Writes the peer set if it differs from what was written last. Until
    /// the peers are known (`planned`), the set keeps what the previous
    /// agent left, so a restart cuts no peer off. Returns whether it wrote.
    pub async fn sync(&mut self, desired: &Desired) -> bool {
        if !desired.planned || self.written.as_ref() == Some(&desired.members) {
            return false;
        }
        let members = desired.members.clone();
        let written = members.clone();
        let result =
            tokio::task::spawn_blocking(move || overlay_guard::set_members(&members)).await;
        match result {
            Ok(Ok(())) => {
                debug!(
                    peers = written.len(),
                    "overlay guard: the VXLAN port takes only these peers' addresses"
                );
                self.written = Some(written);
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
