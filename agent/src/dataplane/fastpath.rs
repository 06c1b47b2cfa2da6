//! The fast path's sink: the attached programs, the map writer that takes
//! the fast path's part of [`Desired`], and the pods' pinned neighbour
//! entries on the bridge. It follows the local view only to attach TC to
//! new pod veths; the local pods are an input the agent holds
//! (`pods.rs`), and what the maps and the bridge should hold is decided in
//! `desired.rs`, not here.

use tracing::warn;

use super::{
    ebpf::EbpfPrograms,
    maps::{FastPathMaps, MapReport},
    pod_neighbours,
};
use crate::{
    desired::{Desired, PodNeighbours},
    endpoints::LocalView,
};

pub struct FastPath {
    pub programs: EbpfPrograms,
    pub maps: FastPathMaps,
    handle: rtnetlink::Handle,
    /// The pinned neighbour entries of the last [`Desired`] applied: kept
    /// so they can be repaired between syncs and removed on a clean stop.
    pod_neighbours: Option<PodNeighbours>,
}

impl FastPath {
    pub fn new(programs: EbpfPrograms, maps: FastPathMaps, handle: rtnetlink::Handle) -> Self {
        Self {
            programs,
            maps,
            handle,
            pod_neighbours: None,
        }
    }

    /// Follows a new local view: TC on new pod veths.
    pub fn on_view(&mut self, view: &LocalView) {
        self.programs.reconcile_pod_ports(&view.ports);
    }

    /// Reads the maps back, so the next sync rewrites whatever differs from
    /// what they should hold: an entry deleted or changed behind the agent's
    /// back (by hand with bpftool, say) comes back.
    pub fn reread_maps(&mut self) -> anyhow::Result<()> {
        self.maps.reload()
    }

    /// Writes the maps, and pins each local pod's addresses to its MAC on
    /// the bridge (from the same pods as ENDPOINTS and ENDPOINTS6).
    pub async fn sync(&mut self, desired: &Desired) -> MapReport {
        let report = self.maps.sync(desired);
        self.pod_neighbours.clone_from(&desired.pod_neighbours);
        self.pin_pod_neighbours().await;
        report
    }

    /// Removes every pinned pod neighbour entry, both families (on a clean
    /// stop).
    pub async fn unpin_pod_neighbours(&self) -> anyhow::Result<usize> {
        match &self.pod_neighbours {
            Some(pinned) => {
                pod_neighbours::unpin_all(&self.handle, pinned.bridge, pinned.into()).await
            }
            None => Ok(0),
        }
    }

    /// Pins each local pod's addresses to its MAC on the bridge, as the last
    /// [`Desired`] says, repairing entries changed behind the agent's back.
    pub async fn pin_pod_neighbours(&self) {
        if let Some(wanted) = &self.pod_neighbours
            && let Err(error) = pod_neighbours::sync(&self.handle, wanted).await
        {
            warn!("{error:#}");
        }
    }
}
