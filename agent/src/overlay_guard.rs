//! Nothing but a peer node feeds the overlay (docs/security.md, "The overlay
//! guard").
//!
//! The kernel's VXLAN socket (`flannel.<VNI>`'s) listens on the backend's
//! UDP port on every local address and takes frames from anyone: a pod
//! sending to its gateway or to `flannel.<VNI>`'s address, a pod on another
//! node sending through the overlay, a host on the underlay that holds no
//! lease. `flannel.<VNI>` then delivers the inner packet with whatever
//! source it carries. Stock flannel leaves this open; weft closes it in
//! both dataplanes with chains in its own table (`inet weft`), so the
//! kernel path is covered as well as the fast path:
//!
//! - prerouting (before conntrack): UDP to the VXLAN port arriving from the
//!   CNI bridge (a local pod, whatever its destination or source address)
//!   or out of `flannel.<VNI>` (VXLAN inside VXLAN: a pod elsewhere) is
//!   dropped;
//! - input: UDP to the VXLAN port from an address that is not a current
//!   peer's PublicIP is dropped (the set follows the accepted leases).
//!
//! Each refusal is counted by cause in a named nftables counter, read back
//! for `/metrics`.

use std::{collections::BTreeSet, net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::weft_table::TABLE;

/// The set of peers' PublicIPs, the only senders the VXLAN port takes.
pub const MEMBERS_SET: &str = "overlay_members";

/// Why a datagram to the VXLAN port was refused: the name of its counter
/// in table `inet weft` and its `cause` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// From a local pod (in through the CNI bridge), to any address.
    FromPod,
    /// Out of `flannel.<VNI>`: VXLAN inside VXLAN, from a pod elsewhere.
    FromOverlay,
    /// From an address that holds no accepted lease (IPv6 included: no
    /// peer speaks VXLAN over IPv6 yet).
    NotAPeer,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::FromPod, Refusal::FromOverlay, Refusal::NotAPeer];

    /// The counter's name in table `inet weft`, and the metric's label.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::FromPod => "vxlan_from_pod",
            Refusal::FromOverlay => "vxlan_from_overlay",
            Refusal::NotAPeer => "vxlan_not_a_peer",
        }
    }
}

/// Where the guard stands: the CNI bridge, the VXLAN device, its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardSpec {
    pub bridge: String,
    pub vxlan_device: String,
    pub port: u16,
}

/// The guard's set, counters and chains, as one `nft -f` script. The set
/// and the counters are only added, never flushed: a restarting agent keeps
/// the peers the last one allowed (and the counts) until its first listing
/// replaces them, so real peers are not cut off meanwhile. The chains are
/// rewritten whole.
pub fn script(spec: &GuardSpec) -> String {
    let GuardSpec {
        bridge,
        vxlan_device,
        port,
    } = spec;
    let mut script = format!(
        "{table}add set inet {TABLE} {MEMBERS_SET} {{ type ipv4_addr; }}\n",
        table = crate::weft_table::ensure_script()
    );
    for refusal in Refusal::ALL {
        script.push_str(&format!("add counter inet {TABLE} {}\n", refusal.name()));
    }
    // Priority raw (-300): before conntrack, so refused datagrams leave no
    // entries behind, and after defragmentation (-400), so a fragmented
    // datagram is judged whole.
    script.push_str(&format!(
        "add chain inet {TABLE} overlay_prerouting {{ type filter hook prerouting priority raw; policy accept; }}
flush chain inet {TABLE} overlay_prerouting
add rule inet {TABLE} overlay_prerouting iifname \"{bridge}\" udp dport {port} counter name \"{from_pod}\" drop
add rule inet {TABLE} overlay_prerouting iifname \"{vxlan_device}\" udp dport {port} counter name \"{from_overlay}\" drop
add chain inet {TABLE} overlay_input {{ type filter hook input priority raw; policy accept; }}
flush chain inet {TABLE} overlay_input
add rule inet {TABLE} overlay_input meta nfproto ipv4 udp dport {port} ip saddr != @{MEMBERS_SET} counter name \"{not_a_peer}\" drop
add rule inet {TABLE} overlay_input meta nfproto ipv6 udp dport {port} counter name \"{not_a_peer}\" drop
",
        from_pod = Refusal::FromPod.name(),
        from_overlay = Refusal::FromOverlay.name(),
        not_a_peer = Refusal::NotAPeer.name(),
    ));
    script
}

/// Installs (or rewrites) the guard in one transaction, with `known_peers`
/// added to the peer set first: the VTEPs the node already sends to (the
/// VXLAN device's fdb, as flanneld or a previous agent left it), so a node
/// taken over from flanneld keeps hearing its peers until the first
/// listing replaces the set with the accepted peers.
pub fn install(spec: &GuardSpec, known_peers: &BTreeSet<Ipv4Addr>) -> Result<()> {
    crate::nft::apply(&install_script(spec, known_peers), "overlay guard")
}

/// [`script`] with `known_peers` added to the set before the chains, in
/// the same transaction: no moment in which the input rule exists and the
/// set lacks them.
fn install_script(spec: &GuardSpec, known_peers: &BTreeSet<Ipv4Addr>) -> String {
    let mut script = script(spec);
    if !known_peers.is_empty() {
        let elements: Vec<String> = known_peers.iter().map(Ipv4Addr::to_string).collect();
        let at = script
            .find("add chain inet")
            .expect("the guard script adds its chains");
        script.insert_str(
            at,
            &format!(
                "add element inet {TABLE} {MEMBERS_SET} {{ {} }}\n",
                elements.join(", ")
            ),
        );
    }
    script
}

/// Replaces the peer set with `members`, in one transaction (no moment
/// with an empty set).
pub fn members_script(members: &BTreeSet<Ipv4Addr>) -> String {
    let mut script = format!("flush set inet {TABLE} {MEMBERS_SET}\n");
    if !members.is_empty() {
        let elements: Vec<String> = members.iter().map(Ipv4Addr::to_string).collect();
        script.push_str(&format!(
            "add element inet {TABLE} {MEMBERS_SET} {{ {} }}\n",
            elements.join(", ")
        ));
    }
    script
}

/// Makes `members` the only senders the VXLAN port takes.
pub fn set_members(members: &BTreeSet<Ipv4Addr>) -> Result<()> {
    crate::nft::apply(&members_script(members), "overlay guard's peer set")
}

/// Packets refused so far, by cause (all zero where the guard is not
/// installed: host-gw, or an agent that has not started it).
pub fn refusals() -> Result<Vec<(Refusal, u64)>> {
    let output = Command::new("nft")
        .args(["-j", "list", "counters", "table", "inet", TABLE])
        .output()
        .context("cannot run nft")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(Refusal::ALL.iter().map(|refusal| (*refusal, 0)).collect());
        }
        bail!(
            "nft cannot list table inet {TABLE}'s counters: {}",
            stderr.trim()
        );
    }
    parse_counters(&output.stdout)
}

#[derive(Deserialize)]
struct Listing {
    nftables: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct CounterObject {
    name: String,
    packets: u64,
}

/// The guard's counters from `nft -j list counters`' output.
fn parse_counters(json: &[u8]) -> Result<Vec<(Refusal, u64)>> {
    let listing: Listing =
        serde_json::from_slice(json).context("nft printed counters that are not JSON")?;
    let counters: Vec<CounterObject> = listing
        .nftables
        .into_iter()
        .filter_map(|object| object.get("counter").cloned())
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .context("nft printed a counter without a name or packet count")?;
    Ok(Refusal::ALL
        .iter()
        .map(|refusal| {
            let packets = counters
                .iter()
                .find(|counter| counter.name == refusal.name())
                .map_or(0, |counter| counter.packets);
            (*refusal, packets)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuardSpec {
        GuardSpec {
            bridge: "cni0".into(),
            vxlan_device: "flannel.1".into(),
            port: 8472,
        }
    }

    #[test]
    fn refuses_pods_the_overlay_and_non_members_on_the_vxlan_port() {
        let script = script(&spec());
        for rule in [
            "overlay_prerouting iifname \"cni0\" udp dport 8472 counter name \"vxlan_from_pod\" drop",
            "overlay_prerouting iifname \"flannel.1\" udp dport 8472 counter name \"vxlan_from_overlay\" drop",
            "overlay_input meta nfproto ipv4 udp dport 8472 ip saddr != @overlay_members counter name \"vxlan_not_a_peer\" drop",
            "overlay_input meta nfproto ipv6 udp dport 8472 counter name \"vxlan_not_a_peer\" drop",
        ] {
            assert!(script.contains(rule), "missing {rule:?} in\n{script}");
        }
        // The set is added, never flushed: a restart keeps the last peers.
        assert!(!script.contains("flush set"), "{script}");
        assert!(!script.contains("delete table"), "{script}");
    }

    #[test]
    fn the_vteps_the_node_already_sends_to_are_members_before_the_rules_exist() {
        let known = BTreeSet::from([
            Ipv4Addr::new(192, 168, 77, 2),
            Ipv4Addr::new(192, 168, 77, 3),
        ]);
        let script = install_script(&spec(), &known);
        let element = script
            .find("add element inet weft overlay_members { 192.168.77.2, 192.168.77.3 }")
            .expect(&script);
        assert!(element < script.find("add chain inet weft overlay_input").unwrap());
        // Added, never flushed: a previous agent's members stay too.
        assert!(!script.contains("flush set"));
        assert_eq!(
            install_script(&spec(), &BTreeSet::new()),
            super::script(&spec())
        );
    }

    #[test]
    fn the_peer_set_is_replaced_in_one_transaction() {
        let members = BTreeSet::from([
            "192.168.77.2".parse().unwrap(),
            "192.168.77.1".parse().unwrap(),
        ]);
        assert_eq!(
            members_script(&members),
            "flush set inet weft overlay_members\n\
             add element inet weft overlay_members { 192.168.77.1, 192.168.77.2 }\n"
        );
        assert_eq!(
            members_script(&BTreeSet::new()),
            "flush set inet weft overlay_members\n"
        );
    }

    #[test]
    fn counters_are_read_by_name_and_missing_ones_are_zero() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "inet", "name": "vxlan_from_pod", "table": "weft", "handle": 2, "packets": 7, "bytes": 700}},
            {"counter": {"family": "inet", "name": "vxlan_not_a_peer", "table": "weft", "handle": 4, "packets": 3, "bytes": 300}}]}"#;
        assert_eq!(
            parse_counters(json).unwrap(),
            [
                (Refusal::FromPod, 7),
                (Refusal::FromOverlay, 0),
                (Refusal::NotAPeer, 3)
            ]
        );
        assert!(parse_counters(b"not json").is_err());
    }
}
