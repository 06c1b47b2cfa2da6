//! [`NodeId`]: the one way the lab API names a node.

use std::fmt;

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

/// A node of a lab, numbered from 1 the way everything the lab creates for
/// it is: `NodeId::new(3)` is the node in namespace `<lab>-n3`, at underlay
/// address 192.168.77.3, with pin dir `/sys/fs/bpf/<lab>-n3`.
///
/// Every lab method that takes a node takes a `NodeId`, so there is no
/// 0-based index to confuse with it. It displays as the node's part of the
/// namespace name (`n3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "usize", into = "usize")]
pub struct NodeId(usize);

impl NodeId {
    /// Node 1, the first of every lab.
    pub const FIRST: NodeId = NodeId(1);

    /// Node `number`, counted from 1. Panics on 0: no lab has a node 0.
    pub const fn new(number: usize) -> NodeId {
        assert!(number >= 1, "lab nodes are numbered from 1");
        NodeId(number)
    }

    /// The nodes of a lab with `count` nodes, in order.
    pub fn all(count: usize) -> impl Iterator<Item = NodeId> {
        (1..=count).map(NodeId)
    }

    /// The node's number, as in its namespace name and underlay address.
    pub fn number(self) -> usize {
        self.0
    }

    /// Where the node sits in the lab's node list (`LabState::nodes`).
    pub(crate) fn position(self) -> usize {
        self.0 - 1
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl TryFrom<usize> for NodeId {
    type Error = anyhow::Error;

    fn try_from(number: usize) -> Result<NodeId> {
        ensure!(
            number >= 1,
            "node number {number}: lab nodes are numbered from 1"
        );
        Ok(NodeId(number))
    }
}

impl From<NodeId> for usize {
    fn from(node: NodeId) -> usize {
        node.0
    }
}

#[cfg(test)]
mod tests {
    use super::NodeId;

    #[test]
    fn a_node_id_names_the_node_as_its_namespace_does() {
        assert_eq!(NodeId::new(3).to_string(), "n3");
        assert_eq!(NodeId::FIRST, NodeId::new(1));
        assert_eq!(
            NodeId::all(3).map(NodeId::number).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn node_zero_is_refused() {
        assert!(NodeId::try_from(0).is_err());
        assert!(std::panic::catch_unwind(|| NodeId::new(0)).is_err());
    }
}
