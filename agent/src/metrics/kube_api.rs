//! The Kubernetes API as the kube subnet manager sees it: whether the Node
//! watch is live, the failed calls by operation, and the re-lists.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

/// A call to the Kubernetes API that can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeOperation {
    /// Listing and watching the Nodes (the Node follower).
    ListWatch,
    /// Reading one Node.
    GetNode,
    /// Patching a Node's status subresource (annotations, the condition).
    PatchStatus,
    /// Reading this agent's own Pod (to learn the node name).
    GetPod,
}

impl KubeOperation {
    pub const ALL: [Self; 4] = [
        Self::ListWatch,
        Self::GetNode,
        Self::PatchStatus,
        Self::GetPod,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::ListWatch => "list_watch",
            Self::GetNode => "get_node",
            Self::PatchStatus => "patch_status",
            Self::GetPod => "get_pod",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Debug, Default)]
pub struct KubeApiMetrics {
    connected: Gauge,
    errors: Family<OperationLabel, Counter>,
    relists: Counter,
    listed_once: AtomicBool,
}

impl KubeApiMetrics {
    pub(super) fn register(&self, registry: &mut super::Families) {
        registry.register(
            "weft_kube_api_connected",
            "1 while the Node watch is live (listed and watching), 0 before the first listing and after an error until a listing succeeds again",
            self.connected.clone(),
        );
        registry.register(
            "weft_kube_api_errors",
            "Failed Kubernetes API calls, by operation (list_watch, get_node, patch_status, get_pod)",
            self.errors.clone(),
        );
        // Every operation shows from the start, at 0.
        for operation in KubeOperation::ALL {
            drop(self.errors.get_or_create(&OperationLabel {
                operation: operation.label(),
            }));
        }
        registry.register(
            "weft_node_watch_relists",
            "Full listings of the Nodes after the first (after an expired watch, a broken watch or an API outage)",
            self.relists.clone(),
        );
    }

    /// One failed call.
    pub fn error(&self, operation: KubeOperation) {
        self.errors
            .get_or_create(&OperationLabel {
                operation: operation.label(),
            })
            .inc();
    }

    /// The Node watch went down (an error) or is live again.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// A full listing of the Nodes arrived; every one after the first is a
    /// re-list. The watch is live.
    pub fn nodes_listed(&self) {
        if self.listed_once.swap(true, Ordering::Relaxed) {
            self.relists.inc();
        }
        self.set_connected(true);
    }
}

#[cfg(test)]
mod tests {
    use super::{super::Metrics, *};

    #[test]
    fn the_kube_api_metrics_render_with_prometheus_names() {
        let metrics = Metrics::new();
        let text = metrics.render(false);
        for line in [
            "weft_kube_api_connected 0",
            "weft_kube_api_errors_total{operation=\"get_pod\"} 0",
            "weft_node_watch_relists_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        let kube = metrics.kube_api();
        kube.error(KubeOperation::PatchStatus);
        kube.nodes_listed();
        kube.set_connected(false);
        kube.nodes_listed();
        kube.nodes_listed();
        let text = metrics.render(false);
        for line in [
            "weft_kube_api_connected 1",
            "weft_kube_api_errors_total{operation=\"patch_status\"} 1",
            "weft_kube_api_errors_total{operation=\"list_watch\"} 0",
            "weft_node_watch_relists_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
