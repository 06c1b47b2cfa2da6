//! Helpers of the tests that write leases into etcd by hand: a lease's
//! key, the agent's log that must name what it rejected, and the underlay
//! route no lease may touch.

use crate::{
    inspect,
    lab::{ETCD_PREFIX, NodeState},
};

/// The etcd key of the lease named `name` (`<subnet>-<prefix>`).
pub fn key(name: &str) -> String {
    format!("{ETCD_PREFIX}/subnets/{name}")
}

/// Everything the node's agent logged so far.
pub fn log_of(node: &NodeState) -> String {
    std::fs::read_to_string(node.agent_log.as_ref().unwrap()).unwrap()
}

/// The node's connected underlay route, as the kernel made it.
pub fn assert_underlay_route_intact(node: &NodeState) {
    let routes = inspect::routes_to(&node.ns, "192.168.77.0/24").unwrap();
    assert!(
        routes.len() == 1
            && routes[0]["dev"] == "eth0"
            && routes[0]["protocol"] == "kernel"
            && routes[0]["gateway"].is_null(),
        "{}: underlay route changed: {routes:?}",
        node.ns
    );
}
