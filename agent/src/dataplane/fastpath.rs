//! The fast path's local half: the attached programs, the local pods read
//! from their own side, and the map writer that takes the fast path's part
//! of [`Desired`]. It follows the local view (pod veths to attach, pods to
//! read); what the maps should hold is decided in `desired.rs`, not here.

use ipnet::Ipv4Net;
use tracing::warn;

use super::{
    ebpf::EbpfPrograms,
    maps::{FastPathMaps, MapReport},
    pods::{LocalPod, LocalPods},
};
use crate::{desired::Desired, endpoints::LocalView};

pub struct FastPath {
    pub programs: EbpfPrograms,
    pub maps: FastPathMaps,
    pods: LocalPods,
    handle: rtnetlink::Handle,
    /// The bridge the pods' pinned neighbour entries go on.
    bridge_index: Option<u32>,
}

impl FastPath {
    pub fn new(programs: EbpfPrograms, maps: FastPathMaps, handle: rtnetlink::Handle) -> Self {
        Self {
            programs,
            maps,
            pods: LocalPods::new(handle.clone()),
            handle,
            bridge_index: None,
        }
    }

    /// Follows a new local view: TC on new pod veths, pods read again.
    pub async fn on_view(&mut self, view: &LocalView) {
        self.pods.refresh(&view.ports).await;
        self.programs.reconcile_pod_ports(&view.ports);
        self.bridge_index = view.bridge_index;
    }

    /// Reads again the pods whose side could not be read or whose GRO is
    /// not confirmed yet (views arrive only when something changed).
    /// Returns whether the local pods changed.
    pub async fn retry_pods(&mut self, view: &LocalView) -> bool {
        let before = self.pods.endpoints();
        self.pods.refresh(&view.ports).await;
        self.pods.endpoints() != before
    }

    /// Our lease: local pods are the addresses inside it.
    pub fn set_own_subnet(&mut self, subnet: Ipv4Net) {
        self.pods.set_own_subnet(subnet);
    }

    /// The local pods, an input of [`Desired`].
    pub fn pods(&self) -> std::collections::BTreeMap<std::net::Ipv4Addr, LocalPod> {
        self.pods.endpoints()
    }

    /// Reads the maps back, so the next sync rewrites whatever differs from
    /// what they should hold: an entry deleted or changed behind the agent's
    /// back (by hand with bpftool, say) comes back.
    pub fn reread_maps(&mut self) -> anyhow::Result<()> {
        self.maps.reload()
    }

    /// Writes the maps, and pins each local pod's address to its MAC on the
    /// bridge (from the same pods as ENDPOINTS).
    pub async fn sync(&mut self, desired: &Desired) -> MapReport {
        let report = self.maps.sync(desired);
        self.pin_pod_neighbours().await;
        report
    }

    /// Removes every pinned pod neighbour entry (on a clean stop).
    pub async fn unpin_pod_neighbours(&self) -> anyhow::Result<usize> {
        match (self.bridge_index, self.pods.own_subnet()) {
            (Some(bridge), Some(subnet)) => {
                super::pod_neighbours::unpin_all(&self.handle, bridge, subnet).await
            }
            _ => Ok(0),
        }
    }

    /// Reads every pod's side again, complete or not: a pod whose MAC or
    /// address changed is followed (ENDPOINTS and its pinned neighbour
    /// entry). Returns whether the local pods changed.
    pub async fn reread_pods(&mut self, view: &LocalView) -> bool {
        let before = self.pods.endpoints();
        self.pods.reread(&view.ports).await;
        self.pods.endpoints() != before
    }

    /// Pins each local pod's address to its MAC on the bridge, repairing
    /// entries changed behind the agent's back.
    pub async fn pin_pod_neighbours(&mut self) {
        if let (Some(bridge), Some(subnet)) = (self.bridge_index, self.pods.own_subnet())
            && let Err(error) =
                super::pod_neighbours::sync(&self.handle, bridge, &self.pods.endpoints(), subnet)
                    .await
        {
            warn!("{error:#}");
        }
    }
}
