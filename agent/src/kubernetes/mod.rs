//! The Kubernetes API side of the kube subnet manager (flanneld's
//! `--kube-subnet-mgr`, `subnet/kube/kube.go` in flannel v0.20.2): how to
//! reach the API server, which Node this agent runs on, following every
//! Node, and what this node writes on its own.
//!
//! It writes exactly what flanneld writes (annotation names and values,
//! the condition, both on the Node's status subresource), and reads
//! without judging: a [`NodeRecord`] is raw data that the subnet manager
//! seam checks by the same rules as an etcd lease.

mod annotations;
mod calls;
mod config;
mod follower;
mod node;
mod publish;

/// The client every call here takes, for callers that do not depend on
/// `kube` themselves (the integration tests).
pub use kube::Client;

pub use annotations::{AnnotationKeys, Announcement, annotation_patch, public_ip_overwrite};
pub use calls::CALL_TIMEOUT;
pub use config::{KubeOptions, SERVICE_ACCOUNT_DIR, client};
pub use follower::{NodeEvent, NodeFollower};
pub use node::{NodeRecord, get_node, node_name};
pub use publish::{CONDITION_MESSAGE, CONDITION_REASON, publish, set_network_available};
