//! Nodes as the seam needs them ([`NodeRecord`]: plain data, every value
//! still untrusted), one Node read, and which Node this agent runs on.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;

use super::calls::call;
use crate::metrics::KubeOperation;

/// What the seam needs of a Node. Nothing here is checked: the seam judges
/// it by the same rules as an etcd lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub uid: String,
    /// creationTimestamp, unix seconds (0 if absent).
    pub created: i64,
    /// `spec.podCIDR`; an empty one (not assigned yet) is `None`.
    pub pod_cidr: Option<String>,
    /// `spec.podCIDRs`, as listed.
    pub pod_cidrs: Vec<String>,
    pub annotations: BTreeMap<String, String>,
}

impl From<&Node> for NodeRecord {
    fn from(node: &Node) -> Self {
        let metadata = &node.metadata;
        let spec = node.spec.as_ref();
        Self {
            name: metadata.name.clone().unwrap_or_default(),
            uid: metadata.uid.clone().unwrap_or_default(),
            created: metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |time| time.0.as_second()),
            pod_cidr: spec
                .and_then(|spec| spec.pod_cidr.clone())
                .filter(|cidr| !cidr.is_empty()),
            pod_cidrs: spec
                .and_then(|spec| spec.pod_cidrs.clone())
                .unwrap_or_default(),
            annotations: metadata.annotations.clone().unwrap_or_default(),
        }
    }
}

/// The Node `name` as the API server holds it now.
pub async fn get_node(client: &kube::Client, name: &str) -> Result<NodeRecord> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = call(KubeOperation::GetNode, nodes.get(name))
        .await
        .with_context(|| format!("cannot read Node {name}"))?;
    Ok(NodeRecord::from(&node))
}

/// Where the node name comes from, as flanneld looks for it.
#[derive(Debug, PartialEq, Eq)]
enum NodeNameSource {
    /// `NODE_NAME`.
    Given(String),
    /// `POD_NAME` in `POD_NAMESPACE`: the name is that pod's `spec.nodeName`.
    Pod { namespace: String, name: String },
}

fn node_name_source(env: &dyn Fn(&str) -> Option<String>) -> Result<NodeNameSource> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty());
    if let Some(node) = var("NODE_NAME") {
        return Ok(NodeNameSource::Given(node));
    }
    match (var("POD_NAME"), var("POD_NAMESPACE")) {
        (Some(name), Some(namespace)) => Ok(NodeNameSource::Pod { namespace, name }),
        _ => bail!("NODE_NAME is not set, so env variables POD_NAME and POD_NAMESPACE must be set"),
    }
}

/// The name of the Node this agent runs on: `NODE_NAME`, else the
/// `spec.nodeName` of the pod `POD_NAME` in `POD_NAMESPACE`.
pub async fn node_name(client: &kube::Client) -> Result<String> {
    let (namespace, name) = match node_name_source(&|name| std::env::var(name).ok())? {
        NodeNameSource::Given(node) => return Ok(node),
        NodeNameSource::Pod { namespace, name } => (namespace, name),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = call(KubeOperation::GetPod, pods.get(&name))
        .await
        .with_context(|| format!("error retrieving pod spec for '{namespace}/{name}'"))?;
    match pod.spec.and_then(|spec| spec.node_name) {
        Some(node) if !node.is_empty() => Ok(node),
        _ => bail!("node name not present in pod spec '{namespace}/{name}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_becomes_a_record_with_nothing_judged() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "n1",
                "uid": "4f1c2a9e-0000-4000-8000-000000000001",
                "creationTimestamp": "2026-12-04T19:46:16Z",
                "resourceVersion": "42",
                "annotations": {
                    "flannel.alpha.coreos.com/public-ip": "not an address",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": { "podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"] },
            "status": {
                "conditions": [{ "type": "Ready", "status": "True" }],
                "addresses": [{ "type": "InternalIP", "address": "192.168.50.2" }],
            },
        }))
        .unwrap();
        assert_eq!(
            NodeRecord::from(&node),
            NodeRecord {
                name: "n1".into(),
                uid: "4f1c2a9e-0000-4000-8000-000000000001".into(),
                created: 1_796_413_576,
                pod_cidr: Some("10.244.1.0/24".into()),
                pod_cidrs: vec!["10.244.1.0/24".into(), "fd00:1::/64".into()],
                annotations: [
                    ("flannel.alpha.coreos.com/public-ip", "not an address"),
                    ("node.alpha.kubernetes.io/ttl", "0"),
                ]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            }
        );
    }

    #[test]
    fn a_node_without_spec_or_annotations_is_empty_not_an_error() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "bare" },
            "spec": { "podCIDR": "" },
        }))
        .unwrap();
        assert_eq!(
            NodeRecord::from(&node),
            NodeRecord {
                name: "bare".into(),
                uid: String::new(),
                created: 0,
                pod_cidr: None,
                pod_cidrs: Vec::new(),
                annotations: BTreeMap::new(),
            }
        );
        assert_eq!(
            NodeRecord::from(&Node::default()).pod_cidrs,
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_node_name_comes_from_node_name_else_the_pod() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        assert_eq!(
            node_name_source(&env(&[("NODE_NAME", "n1"), ("POD_NAME", "p")])).unwrap(),
            NodeNameSource::Given("n1".into())
        );
        assert_eq!(
            node_name_source(&env(&[
                ("NODE_NAME", ""),
                ("POD_NAME", "weft-x7k2p"),
                ("POD_NAMESPACE", "kube-flannel"),
            ]))
            .unwrap(),
            NodeNameSource::Pod {
                namespace: "kube-flannel".into(),
                name: "weft-x7k2p".into(),
            }
        );
        for pairs in [&[][..], &[("POD_NAME", "weft-x7k2p")][..]] {
            assert_eq!(
                node_name_source(&env(pairs)).unwrap_err().to_string(),
                "NODE_NAME is not set, so env variables POD_NAME and POD_NAMESPACE must be set"
            );
        }
    }
}
