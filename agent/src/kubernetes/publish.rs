//! What this node writes on its own Node, as flanneld writes it: the
//! annotations (`AcquireLease`) and the `NetworkUnavailable` condition
//! (`CompleteLease`), both as strategic-merge patches on the Node's
//! **status** subresource, the only write kube-flannel.yml's ClusterRole
//! grants. One attempt each: the agent loop schedules the retries.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use super::{
    annotations::{AnnotationKeys, Announcement, annotation_patch, public_ip_overwrite},
    calls::call,
    node::get_node,
};
use crate::metrics::KubeOperation;

/// flanneld's condition, word for word.
pub const CONDITION_REASON: &str = "FlannelIsUp";
pub const CONDITION_MESSAGE: &str = "Flannel is running on this node";

/// Reads the Node `node` and patches the annotations that differ from
/// `ours` (see [`annotation_patch`]). Returns the public IP peers will see:
/// the Node's public-ip-overwrite if set, else ours.
pub async fn publish(
    client: &kube::Client,
    keys: &AnnotationKeys,
    node: &str,
    ours: &Announcement,
) -> Result<Ipv4Addr> {
    let current = get_node(client, node).await?;
    let refused = || format!("cannot announce this node on Node {node}");
    let peers_see = public_ip_overwrite(keys, &current.annotations)
        .with_context(refused)?
        .unwrap_or(ours.public_ip);
    let Some(annotations) =
        annotation_patch(keys, &current.annotations, ours).with_context(refused)?
    else {
        return Ok(peers_see);
    };
    let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
    patch_status(client, node, &patch)
        .await
        .with_context(|| format!("cannot patch Node {node}'s status (its annotations)"))?;
    tracing::info!(
        "announced this node on Node {node}: {}",
        annotations
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(peers_see)
}

/// flanneld's `CompleteLease`: the condition `NetworkUnavailable=False`,
/// reason `FlannelIsUp`, both times now.
pub async fn set_network_available(client: &kube::Client, node: &str) -> Result<()> {
    let patch = network_available_patch(k8s_openapi::jiff::Timestamp::now());
    patch_status(client, node, &patch).await.with_context(|| {
        format!("cannot patch Node {node}'s status (condition NetworkUnavailable)")
    })
}

/// The condition patch at `now`, with times as Go's `metav1.Time` writes
/// them (RFC 3339, whole seconds, UTC).
fn network_available_patch(now: k8s_openapi::jiff::Timestamp) -> serde_json::Value {
    let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    serde_json::json!({ "status": { "conditions": [{
        "type": "NetworkUnavailable",
        "status": "False",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
        "reason": CONDITION_REASON,
        "message": CONDITION_MESSAGE,
    }]}})
}

async fn patch_status(client: &kube::Client, node: &str, patch: &serde_json::Value) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    call(
        KubeOperation::PatchStatus,
        nodes.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch)),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_is_flanneld_s() {
        let now: k8s_openapi::jiff::Timestamp = "2026-12-04T19:46:16.734Z".parse().unwrap();
        assert_eq!(
            network_available_patch(now).to_string(),
            r#"{"status":{"conditions":[{"lastHeartbeatTime":"2026-12-04T19:46:16Z","lastTransitionTime":"2026-12-04T19:46:16Z","message":"Flannel is running on this node","reason":"FlannelIsUp","status":"False","type":"NetworkUnavailable"}]}}"#
        );
    }
}
