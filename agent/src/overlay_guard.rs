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
//!   peer's PublicIP is dropped (the set follows the accepted leases). In a
//!   dual-stack network `flannel-v6.<VNI>` listens on the same port over
//!   IPv6: an IPv6 datagram passes only from a current peer's PublicIPv6
//!   (its own set, following the same leases' IPv6 halves); in an IPv4-only
//!   network no peer speaks VXLAN over IPv6, and every IPv6 datagram to
//!   the port is dropped.
//!
//! Each refusal is counted by cause in a named nftables counter, read back
//! for `/metrics`.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use tracing::warn;

use crate::weft_table::TABLE;

/// The set of peers' PublicIPs, the only senders the VXLAN port takes.
pub const MEMBERS_SET: &str = "overlay_members";
/// The set of peers' PublicIPv6 (dual-stack), the only IPv6 senders the
/// VXLAN port takes.
pub const MEMBERS_SET_V6: &str = "overlay_members_v6";

/// Why a datagram to the VXLAN port was refused: the name of its counter
/// in table `inet weft` and its `cause` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// From a local pod (in through the CNI bridge), to any address.
    FromPod,
    /// Out of `flannel.<VNI>`: VXLAN inside VXLAN, from a pod elsewhere.
    FromOverlay,
    /// From an address that holds no accepted lease: an IPv4 address no
    /// lease names as PublicIP, an IPv6 address no lease names as
    /// PublicIPv6 (any IPv6 address in an IPv4-only network); or from this
    /// node itself (in through `lo`), whatever address a lease names.
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

/// Where the guard stands: the CNI bridge, the VXLAN device(s), its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardSpec {
    pub bridge: String,
    /// `flannel.<VNI>`, unless the network is IPv6-only: IPv4 peers are
    /// then taken from [`MEMBERS_SET`]; without it IPv4 is refused
    /// wholesale.
    pub vxlan_device: Option<String>,
    /// `flannel-v6.<VNI>` in a network with IPv6: IPv6 peers are then
    /// taken from [`MEMBERS_SET_V6`]; without it IPv6 is refused wholesale.
    pub vxlan_v6_device: Option<String>,
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
        vxlan_v6_device,
        port,
    } = spec;
    // Both sets always exist (the IPv6 one empty in an IPv4-only network),
    // so one members script serves either network.
    let mut script = format!(
        "{table}add set inet {TABLE} {MEMBERS_SET} {{ type ipv4_addr; }}\n\
         add set inet {TABLE} {MEMBERS_SET_V6} {{ type ipv6_addr; }}\n",
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
",
        from_pod = Refusal::FromPod.name(),
    ));
    for device in vxlan_device.iter().chain(vxlan_v6_device) {
        script.push_str(&format!(
            "add rule inet {TABLE} overlay_prerouting iifname \"{device}\" udp dport {port} counter name \"{from_overlay}\" drop\n",
            from_overlay = Refusal::FromOverlay.name(),
        ));
    }
    let not_a_peer = Refusal::NotAPeer.name();
    // This node is never its own peer: a datagram sent from the node to
    // one of its own addresses arrives on `lo`, whatever source it names. A
    // lease naming one of our other local addresses (a second address, a
    // `--public-ip` apart from the uplink's) would otherwise let any local
    // process, a hostNetwork pod's say, feed the overlay from it.
    script.push_str(&format!(
        "add chain inet {TABLE} overlay_input {{ type filter hook input priority raw; policy accept; }}
flush chain inet {TABLE} overlay_input
add rule inet {TABLE} overlay_input iifname \"lo\" udp dport {port} counter name \"{not_a_peer}\" drop
"
    ));
    script.push_str(&if vxlan_device.is_some() {
        format!(
            "add rule inet {TABLE} overlay_input meta nfproto ipv4 udp dport {port} ip saddr != @{MEMBERS_SET} counter name \"{not_a_peer}\" drop\n"
        )
    } else {
        format!(
            "add rule inet {TABLE} overlay_input meta nfproto ipv4 udp dport {port} counter name \"{not_a_peer}\" drop\n"
        )
    });
    script.push_str(&if vxlan_v6_device.is_some() {
        format!(
            "add rule inet {TABLE} overlay_input meta nfproto ipv6 udp dport {port} ip6 saddr != @{MEMBERS_SET_V6} counter name \"{not_a_peer}\" drop\n"
        )
    } else {
        format!(
            "add rule inet {TABLE} overlay_input meta nfproto ipv6 udp dport {port} counter name \"{not_a_peer}\" drop\n"
        )
    });
    script
}

/// The guard's peer sets: PublicIPs, and PublicIPv6 (dual-stack).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub v4: BTreeSet<Ipv4Addr>,
    pub v6: BTreeSet<Ipv6Addr>,
}

/// `add element` lines for the non-empty sets.
fn element_lines(members: &Members) -> String {
    element_command_lines("add", members)
}

/// `<command> element` lines (`add`, `delete`) for the non-empty sets.
fn element_command_lines(command: &str, members: &Members) -> String {
    let mut lines = String::new();
    let mut line = |set: &str, elements: Vec<String>| {
        if !elements.is_empty() {
            lines.push_str(&format!(
                "{command} element inet {TABLE} {set} {{ {} }}\n",
                elements.join(", ")
            ));
        }
    };
    line(
        MEMBERS_SET,
        members.v4.iter().map(Ipv4Addr::to_string).collect(),
    );
    line(
        MEMBERS_SET_V6,
        members.v6.iter().map(Ipv6Addr::to_string).collect(),
    );
    lines
}

/// Installs (or rewrites) the guard in one transaction, with `known_peers`
/// added to the peer set first: the VTEPs the node already sends to (the
/// VXLAN device's fdb, as flanneld or a previous agent left it), so a node
/// taken over from flanneld keeps hearing its peers until the first
/// listing replaces the set with the accepted peers.
pub fn install(spec: &GuardSpec, known_peers: &Members) -> Result<()> {
    crate::nft::apply(&install_script(spec, known_peers), "overlay guard")
}

/// [`script`] with `known_peers` added to the sets before the chains, in
/// the same transaction: no moment in which the input rules exist and the
/// sets lack them.
fn install_script(spec: &GuardSpec, known_peers: &Members) -> String {
    let mut script = script(spec);
    let elements = element_lines(known_peers);
    let at = script
        .find("add chain inet")
        .expect("the guard script adds its chains");
    script.insert_str(at, &elements);
    script
}

/// Replaces the peer sets with `members`, in one transaction (no moment
/// with an empty set).
pub fn members_script(members: &Members) -> String {
    format!(
        "flush set inet {TABLE} {MEMBERS_SET}\nflush set inet {TABLE} {MEMBERS_SET_V6}\n{}",
        element_lines(members)
    )
}

/// Takes the peer sets from `written` (what they hold) to `members`, in
/// one transaction: the members that went deleted, the new ones added,
/// nothing else touched. Work (and nftables notifications) in proportion
/// to the change, not to the set: a lease storm rewriting 16,000 members
/// per update made convergence grow with the square of the leases. An
/// element `written` names that the set lacks (someone removed it) fails
/// the transaction, which changes nothing; the caller then replaces the
/// sets ([`members_script`]).
pub fn members_change_script(written: &Members, members: &Members) -> String {
    let gone = Members {
        v4: written.v4.difference(&members.v4).copied().collect(),
        v6: written.v6.difference(&members.v6).copied().collect(),
    };
    let new = Members {
        v4: members.v4.difference(&written.v4).copied().collect(),
        v6: members.v6.difference(&written.v6).copied().collect(),
    };
    element_command_lines("delete", &gone) + &element_command_lines("add", &new)
}

/// Makes `members` the only senders the VXLAN port takes: by the change
/// from `written` (what the sets hold, as last written), or, not known or
/// not applicable (the sets were changed behind our back), by replacing
/// the sets.
pub fn set_members(written: Option<&Members>, members: &Members) -> Result<()> {
    if let Some(written) = written {
        let change = members_change_script(written, members);
        if change.is_empty() {
            return Ok(());
        }
        match crate::nft::apply(&change, "overlay guard's peer sets (the change)") {
            Ok(()) => return Ok(()),
            Err(error) => warn!("{error:#}; replacing the overlay guard's peer sets instead"),
        }
    }
    crate::nft::apply(&members_script(members), "overlay guard's peer sets")
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
            vxlan_device: Some("flannel.1".into()),
            vxlan_v6_device: None,
            port: 8472,
        }
    }

    #[test]
    fn ipv6_only_refuses_ipv4_wholesale_and_takes_ipv6_from_peers() {
        let script = script(&GuardSpec {
            vxlan_device: None,
            vxlan_v6_device: Some("flannel-v6.1".into()),
            ..spec()
        });
        for rule in [
            "overlay_prerouting iifname \"cni0\" udp dport 8472 counter name \"vxlan_from_pod\" drop",
            "overlay_prerouting iifname \"flannel-v6.1\" udp dport 8472 counter name \"vxlan_from_overlay\" drop",
            "overlay_input meta nfproto ipv4 udp dport 8472 counter name \"vxlan_not_a_peer\" drop",
            "overlay_input meta nfproto ipv6 udp dport 8472 ip6 saddr != @overlay_members_v6 counter name \"vxlan_not_a_peer\" drop",
        ] {
            assert!(script.contains(rule), "missing {rule:?} in\n{script}");
        }
        assert!(!script.contains("flannel.1"), "{script}");
        assert!(!script.contains("@overlay_members "), "{script}");
    }

    fn dual_stack_spec() -> GuardSpec {
        GuardSpec {
            vxlan_v6_device: Some("flannel-v6.1".into()),
            ..spec()
        }
    }

    #[test]
    fn dual_stack_takes_ipv6_only_from_peers_public_ipv6() {
        let script = script(&dual_stack_spec());
        for rule in [
            "add set inet weft overlay_members_v6 { type ipv6_addr; }",
            "overlay_prerouting iifname \"flannel-v6.1\" udp dport 8472 counter name \"vxlan_from_overlay\" drop",
            "overlay_input meta nfproto ipv4 udp dport 8472 ip saddr != @overlay_members counter name \"vxlan_not_a_peer\" drop",
            "overlay_input meta nfproto ipv6 udp dport 8472 ip6 saddr != @overlay_members_v6 counter name \"vxlan_not_a_peer\" drop",
        ] {
            assert!(script.contains(rule), "missing {rule:?} in\n{script}");
        }
        // No wholesale IPv6 refusal once IPv6 peers exist.
        assert!(
            !script.contains("meta nfproto ipv6 udp dport 8472 counter"),
            "{script}"
        );
        let known = Members {
            v4: BTreeSet::from(["192.168.77.2".parse().unwrap()]),
            v6: BTreeSet::from(["fd00:77::2".parse().unwrap()]),
        };
        let script = install_script(&dual_stack_spec(), &known);
        let element = script
            .find("add element inet weft overlay_members_v6 { fd00:77::2 }")
            .expect(&script);
        assert!(element < script.find("add chain inet weft overlay_input").unwrap());
    }

    #[test]
    fn refuses_pods_the_overlay_and_non_members_on_the_vxlan_port() {
        let script = script(&spec());
        for rule in [
            "overlay_prerouting iifname \"cni0\" udp dport 8472 counter name \"vxlan_from_pod\" drop",
            "overlay_prerouting iifname \"flannel.1\" udp dport 8472 counter name \"vxlan_from_overlay\" drop",
            "overlay_input iifname \"lo\" udp dport 8472 counter name \"vxlan_not_a_peer\" drop",
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
        let known = Members {
            v4: BTreeSet::from([
                Ipv4Addr::new(192, 168, 77, 2),
                Ipv4Addr::new(192, 168, 77, 3),
            ]),
            v6: BTreeSet::new(),
        };
        let script = install_script(&spec(), &known);
        let element = script
            .find("add element inet weft overlay_members { 192.168.77.2, 192.168.77.3 }")
            .expect(&script);
        assert!(element < script.find("add chain inet weft overlay_input").unwrap());
        // Added, never flushed: a previous agent's members stay too.
        assert!(!script.contains("flush set"));
        assert_eq!(
            install_script(&spec(), &Members::default()),
            super::script(&spec())
        );
    }

    #[test]
    fn the_peer_set_is_replaced_in_one_transaction() {
        let members = Members {
            v4: BTreeSet::from([
                "192.168.77.2".parse().unwrap(),
                "192.168.77.1".parse().unwrap(),
            ]),
            v6: BTreeSet::from(["fd00:77::1".parse().unwrap()]),
        };
        assert_eq!(
            members_script(&members),
            "flush set inet weft overlay_members\n\
             flush set inet weft overlay_members_v6\n\
             add element inet weft overlay_members { 192.168.77.1, 192.168.77.2 }\n\
             add element inet weft overlay_members_v6 { fd00:77::1 }\n"
        );
        assert_eq!(
            members_script(&Members::default()),
            "flush set inet weft overlay_members\nflush set inet weft overlay_members_v6\n"
        );
    }

    #[test]
    fn a_change_of_peers_touches_only_the_members_that_changed() {
        let ip = |text: &str| -> Ipv4Addr { text.parse().unwrap() };
        let ip6 = |text: &str| -> Ipv6Addr { text.parse().unwrap() };
        let written = Members {
            v4: BTreeSet::from([ip("192.168.77.1"), ip("192.168.77.2")]),
            v6: BTreeSet::from([ip6("fd00:77::1")]),
        };
        let members = Members {
            v4: BTreeSet::from([ip("192.168.77.2"), ip("192.168.77.3"), ip("192.168.77.4")]),
            v6: BTreeSet::from([ip6("fd00:77::1")]),
        };
        assert_eq!(
            members_change_script(&written, &members),
            "delete element inet weft overlay_members { 192.168.77.1 }\n\
             add element inet weft overlay_members { 192.168.77.3, 192.168.77.4 }\n"
        );
        assert_eq!(members_change_script(&members, &members), "");
        assert_eq!(
            members_change_script(&members, &Members::default()),
            "delete element inet weft overlay_members { 192.168.77.2, 192.168.77.3, 192.168.77.4 }\n\
             delete element inet weft overlay_members_v6 { fd00:77::1 }\n"
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
