//! Which leases from etcd the datapath may use. Anyone who can write to
//! etcd can write any key under `<prefix>/subnets`; without these rules a
//! single write (`192.168.77.0-24`, the underlay's own subnet) replaces every
//! node's connected route, and `10.96.0.0-12` hijacks the service range.
//!
//! Pure functions: the peer table applies them, identically, to listings and
//! watch events, before anything reaches the kernel or a map.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{LeaseAttrs, MacAddr};
use crate::config::{BackendConfig, NetworkConfig};

/// Larger values are rejected unread. flanneld's values are about 150 bytes;
/// the limit leaves room for fields newer flannel versions add.
pub const MAX_VALUE_LEN: usize = 4096;

/// A rule a lease broke. The names are stable (snake_case): logs and, later,
/// metrics labels use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    MalformedKey,
    ValueTooLarge,
    MalformedValue,
    SubnetOutsideNetwork,
    SubnetOverlapsOwn,
    SubnetWrongPrefix,
    SubnetOutsideRange,
    SubnetOverlapsPeer,
    PublicIpOurs,
    PublicIpNotUnicast,
    PublicIpInsideNetwork,
    BackendTypeMismatch,
    VniMismatch,
    VtepMacNotUnicast,
    VtepMacInUse,
}

impl Rule {
    pub const ALL: [Rule; 15] = [
        Rule::MalformedKey,
        Rule::ValueTooLarge,
        Rule::MalformedValue,
        Rule::SubnetOutsideNetwork,
        Rule::SubnetOverlapsOwn,
        Rule::SubnetWrongPrefix,
        Rule::SubnetOutsideRange,
        Rule::SubnetOverlapsPeer,
        Rule::PublicIpOurs,
        Rule::PublicIpNotUnicast,
        Rule::PublicIpInsideNetwork,
        Rule::BackendTypeMismatch,
        Rule::VniMismatch,
        Rule::VtepMacNotUnicast,
        Rule::VtepMacInUse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::MalformedKey => "malformed_key",
            Rule::ValueTooLarge => "value_too_large",
            Rule::MalformedValue => "malformed_value",
            Rule::SubnetOutsideNetwork => "subnet_outside_network",
            Rule::SubnetOverlapsOwn => "subnet_overlaps_own",
            Rule::SubnetWrongPrefix => "subnet_wrong_prefix",
            Rule::SubnetOutsideRange => "subnet_outside_range",
            Rule::SubnetOverlapsPeer => "subnet_overlaps_peer",
            Rule::PublicIpOurs => "public_ip_ours",
            Rule::PublicIpNotUnicast => "public_ip_not_unicast",
            Rule::PublicIpInsideNetwork => "public_ip_inside_network",
            Rule::BackendTypeMismatch => "backend_type_mismatch",
            Rule::VniMismatch => "vni_mismatch",
            Rule::VtepMacNotUnicast => "vtep_mac_not_unicast",
            Rule::VtepMacInUse => "vtep_mac_in_use",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a lease is not used: the rule and the facts, for one log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub rule: Rule,
    pub reason: String,
}

impl Rejection {
    pub fn new(rule: Rule, reason: impl Into<String>) -> Self {
        Self {
            rule,
            reason: reason.into(),
        }
    }
}

/// What a peer lease must agree with: the network config and this node.
#[derive(Clone, Debug)]
pub struct LeasePolicy {
    network: Ipv4Net,
    subnet_len: u8,
    subnet_min: Ipv4Addr,
    subnet_max: Ipv4Addr,
    backend_type: &'static str,
    /// The VNI vxlan leases must carry; `None` for host-gw.
    vni: Option<u32>,
    our_public_ip: Ipv4Addr,
    /// Our VTEP MAC: the kernel's fdb holds one destination per MAC, so a
    /// peer lease with it would take our own entry over.
    our_vtep_mac: Option<MacAddr>,
}

impl LeasePolicy {
    pub fn new(
        config: &NetworkConfig,
        our_public_ip: Ipv4Addr,
        our_vtep_mac: Option<MacAddr>,
    ) -> Self {
        Self {
            network: config.network,
            subnet_len: config.subnet_len,
            subnet_min: config.subnet_min,
            subnet_max: config.subnet_max,
            backend_type: config.backend.type_name(),
            vni: match config.backend {
                BackendConfig::Vxlan { vni, .. } => Some(vni),
                BackendConfig::HostGw => None,
            },
            our_public_ip,
            our_vtep_mac,
        }
    }

    /// The rules one lease must pass on its own, in the order they are
    /// checked (the first broken one is reported). Overlap between peers
    /// needs the other leases: see [`resolve_overlaps`].
    pub fn check(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        own: Option<Ipv4Net>,
    ) -> Result<(), Rejection> {
        let network = self.network;
        if !network.contains(&subnet) {
            return Err(Rejection::new(
                Rule::SubnetOutsideNetwork,
                format!("subnet {subnet} is not inside Network {network}"),
            ));
        }
        // Before the prefix rule: overlapping our own subnet is the more
        // telling fact, and ours needs no tie-break.
        if let Some(own) = own.filter(|own| overlap(*own, subnet)) {
            return Err(Rejection::new(
                Rule::SubnetOverlapsOwn,
                format!("subnet {subnet} overlaps our own lease {own}"),
            ));
        }
        if subnet.prefix_len() != self.subnet_len {
            return Err(Rejection::new(
                Rule::SubnetWrongPrefix,
                format!("subnet {subnet} is not a /{} (SubnetLen)", self.subnet_len),
            ));
        }
        if subnet.network() < self.subnet_min || subnet.network() > self.subnet_max {
            return Err(Rejection::new(
                Rule::SubnetOutsideRange,
                format!(
                    "subnet {subnet} is outside SubnetMin {} .. SubnetMax {}",
                    self.subnet_min, self.subnet_max
                ),
            ));
        }
        self.check_public_ip(attrs.public_ip)?;
        self.check_backend(attrs)
    }

    fn check_public_ip(&self, ip: Ipv4Addr) -> Result<(), Rejection> {
        if ip == self.our_public_ip {
            return Err(Rejection::new(
                Rule::PublicIpOurs,
                format!("PublicIP {ip} is this node's own address"),
            ));
        }
        if let Some(kind) = not_unicast(ip) {
            return Err(Rejection::new(
                Rule::PublicIpNotUnicast,
                format!("PublicIP {ip} is {kind}, not a unicast node address"),
            ));
        }
        if self.network.contains(&ip) {
            return Err(Rejection::new(
                Rule::PublicIpInsideNetwork,
                format!("PublicIP {ip} is inside Network {}", self.network),
            ));
        }
        Ok(())
    }

    fn check_backend(&self, attrs: &LeaseAttrs) -> Result<(), Rejection> {
        if attrs.backend_type != self.backend_type {
            return Err(Rejection::new(
                Rule::BackendTypeMismatch,
                format!(
                    "BackendType {:?} is not the network's {:?}",
                    attrs.backend_type, self.backend_type
                ),
            ));
        }
        let (Some(vni), Some(data)) = (self.vni, &attrs.backend_data) else {
            // host-gw, or a vxlan lease without BackendData (which
            // `LeaseAttrs::from_json` already refuses).
            return Ok(());
        };
        if data.vni != vni {
            return Err(Rejection::new(
                Rule::VniMismatch,
                format!("VNI {} is not the network's VNI {vni}", data.vni),
            ));
        }
        if !is_unicast_mac(data.vtep_mac) {
            return Err(Rejection::new(
                Rule::VtepMacNotUnicast,
                format!("VtepMAC {} is not a unicast MAC", data.vtep_mac),
            ));
        }
        if Some(data.vtep_mac) == self.our_vtep_mac {
            return Err(Rejection::new(
                Rule::VtepMacInUse,
                format!("VtepMAC {} is this node's own VTEP MAC", data.vtep_mac),
            ));
        }
        Ok(())
    }
}

/// Why `ip` cannot be another node's underlay address, if it cannot.
/// Link-local (169.254/16) is refused too: it is never routed off the link,
/// and it holds cloud metadata services (169.254.169.254), where a forged
/// lease would otherwise send pod traffic.
fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.octets()[0] >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else if ip.octets()[0] == 0 {
        Some("in 0.0.0.0/8 (\"this network\")")
    } else {
        None
    }
}

/// Not multicast (the group bit of the first byte) and not all zero.
fn is_unicast_mac(mac: MacAddr) -> bool {
    mac.0[0] & 0x01 == 0 && mac.0 != [0; 6]
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A lease that passed [`LeasePolicy::check`], with what the overlap
/// tie-break needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub key: String,
    /// etcd's create revision: the lease written first wins an overlap.
    pub create_revision: i64,
    pub attrs: LeaseAttrs,
    /// Identifies the raw value, so a rejection is logged once per value.
    pub fingerprint: u64,
}

/// Splits `candidates` into the leases to use and the ones that clash with
/// an older one (by create revision; the key breaks a tie): a subnet that
/// overlaps, or a VtepMAC already in use. The fdb holds one destination per
/// MAC, so a second lease with a node's VTEP MAC would redirect that node's
/// traffic to its own PublicIP. With the prefix rule in force two passing
/// leases can only overlap by being the same subnet, i.e. the same key, so
/// the overlap half is a second line of defence: it keeps the peer set free
/// of overlaps whatever the rules above become.
pub fn resolve_overlaps(
    candidates: &BTreeMap<Ipv4Net, Candidate>,
) -> (BTreeMap<Ipv4Net, LeaseAttrs>, Vec<(Ipv4Net, Rejection)>) {
    let mut by_age: Vec<(&Ipv4Net, &Candidate)> = candidates.iter().collect();
    by_age.sort_by(|(_, a), (_, b)| (a.create_revision, &a.key).cmp(&(b.create_revision, &b.key)));
    let mut accepted: BTreeMap<Ipv4Net, LeaseAttrs> = BTreeMap::new();
    let mut winners: BTreeMap<Ipv4Net, &str> = BTreeMap::new();
    let mut mac_holders: BTreeMap<MacAddr, &str> = BTreeMap::new();
    let mut losers = Vec::new();
    for (subnet, candidate) in by_age {
        let mac = vtep_mac(&candidate.attrs);
        if let Some(older) = overlapping(&winners, *subnet).first() {
            losers.push((
                *subnet,
                Rejection::new(
                    Rule::SubnetOverlapsPeer,
                    format!(
                        "subnet {subnet} overlaps {older} of {}, which is older",
                        winners[older]
                    ),
                ),
            ));
        } else if let Some(holder) = mac.and_then(|mac| mac_holders.get(&mac)) {
            losers.push((
                *subnet,
                Rejection::new(
                    Rule::VtepMacInUse,
                    format!(
                        "VtepMAC {} is already used by {holder}, which is older",
                        mac.expect("checked")
                    ),
                ),
            ));
        } else {
            winners.insert(*subnet, &candidate.key);
            if let Some(mac) = mac {
                mac_holders.insert(mac, &candidate.key);
            }
            accepted.insert(*subnet, candidate.attrs.clone());
        }
    }
    (accepted, losers)
}

/// The VTEP MAC of a vxlan lease.
pub fn vtep_mac(attrs: &LeaseAttrs) -> Option<MacAddr> {
    attrs.backend_data.as_ref().map(|data| data.vtep_mac)
}

/// The subnets in `map` that overlap `subnet` (itself excluded), found with
/// at most 33 lookups and one range scan instead of a pass over the map.
pub fn overlapping<V>(map: &BTreeMap<Ipv4Net, V>, subnet: Ipv4Net) -> Vec<Ipv4Net> {
    let mut found: Vec<Ipv4Net> = (0..subnet.prefix_len())
        .filter_map(|len| Ipv4Net::new(subnet.network(), len).ok())
        .map(|wider| wider.trunc())
        .filter(|wider| map.contains_key(wider))
        .collect();
    let first = Ipv4Net::new(subnet.network(), 0).expect("prefix 0");
    let last = Ipv4Net::new(subnet.broadcast(), 32).expect("prefix 32");
    found.extend(
        map.range(first..=last)
            .map(|(inner, _)| *inner)
            .filter(|inner| *inner != subnet && subnet.contains(inner)),
    );
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::VxlanBackendData;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn vxlan_config() -> NetworkConfig {
        NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.200.0","Backend":{"Type":"vxlan","VNI":1}}"#,
        )
        .unwrap()
    }

    fn policy() -> LeasePolicy {
        LeasePolicy::new(
            &vxlan_config(),
            Ipv4Addr::new(192, 168, 77, 1),
            Some(MacAddr([0x0e, 1, 192, 168, 77, 1])),
        )
    }

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(VxlanBackendData {
                vni: 1,
                vtep_mac: MacAddr([0x0e, 1, 192, 168, 77, 2]),
            }),
        }
    }

    const OWN: &str = "10.244.1.0/24";

    fn rule_of(subnet: &str, attrs: &LeaseAttrs) -> Option<Rule> {
        policy()
            .check(net(subnet), attrs, Some(net(OWN)))
            .err()
            .map(|rejection| rejection.rule)
    }

    #[test]
    fn a_well_formed_peer_lease_is_accepted() {
        assert_eq!(rule_of("10.244.2.0/24", &attrs("192.168.77.2")), None);
        assert_eq!(rule_of("10.244.200.0/24", &attrs("172.16.0.9")), None);
        // Without a lease of our own yet, too.
        assert!(
            policy()
                .check(net("10.244.1.0/24"), &attrs("192.168.77.2"), None)
                .is_ok()
        );
    }

    #[test]
    fn subnets_must_be_inside_network_with_subnet_len_within_the_range() {
        let peer = attrs("192.168.77.2");
        for (subnet, rule) in [
            ("10.96.0.0/12", Rule::SubnetOutsideNetwork),
            ("192.168.77.0/24", Rule::SubnetOutsideNetwork),
            ("10.0.0.0/8", Rule::SubnetOutsideNetwork),
            ("10.245.0.0/24", Rule::SubnetOutsideNetwork),
            ("10.244.1.0/24", Rule::SubnetOverlapsOwn),
            ("10.244.0.0/23", Rule::SubnetOverlapsOwn),
            ("10.244.1.128/25", Rule::SubnetOverlapsOwn),
            ("10.244.2.0/23", Rule::SubnetWrongPrefix),
            ("10.244.3.0/25", Rule::SubnetWrongPrefix),
            ("10.244.0.0/24", Rule::SubnetOutsideRange),
            ("10.244.201.0/24", Rule::SubnetOutsideRange),
            ("10.244.255.0/24", Rule::SubnetOutsideRange),
        ] {
            assert_eq!(rule_of(subnet, &peer), Some(rule), "{subnet}");
        }
        let rejection = policy()
            .check(net("10.96.0.0/12"), &peer, Some(net(OWN)))
            .unwrap_err();
        assert_eq!(
            rejection.reason,
            "subnet 10.96.0.0/12 is not inside Network 10.244.0.0/16"
        );
    }

    #[test]
    fn public_ips_must_be_another_nodes_unicast_underlay_address() {
        for (ip, rule) in [
            ("192.168.77.1", Rule::PublicIpOurs),
            ("0.0.0.0", Rule::PublicIpNotUnicast),
            ("0.1.2.3", Rule::PublicIpNotUnicast),
            ("127.0.0.1", Rule::PublicIpNotUnicast),
            ("224.0.0.1", Rule::PublicIpNotUnicast),
            ("239.255.255.250", Rule::PublicIpNotUnicast),
            ("255.255.255.255", Rule::PublicIpNotUnicast),
            ("240.0.0.1", Rule::PublicIpNotUnicast),
            ("169.254.169.254", Rule::PublicIpNotUnicast),
            ("10.244.2.1", Rule::PublicIpInsideNetwork),
            ("10.244.0.0", Rule::PublicIpInsideNetwork),
        ] {
            assert_eq!(rule_of("10.244.2.0/24", &attrs(ip)), Some(rule), "{ip}");
        }
        for ip in ["192.168.77.2", "10.1.2.3", "172.16.0.1", "8.8.8.8"] {
            assert_eq!(rule_of("10.244.2.0/24", &attrs(ip)), None, "{ip}");
        }
    }

    #[test]
    fn backend_type_vni_and_vtep_mac_must_match_the_network() {
        let mut host_gw = attrs("192.168.77.2");
        host_gw.backend_type = "host-gw".into();
        host_gw.backend_data = None;
        assert_eq!(
            rule_of("10.244.2.0/24", &host_gw),
            Some(Rule::BackendTypeMismatch)
        );
        let mut vni = attrs("192.168.77.2");
        vni.backend_data.as_mut().unwrap().vni = 2;
        assert_eq!(rule_of("10.244.2.0/24", &vni), Some(Rule::VniMismatch));
        for mac in [
            [0x01, 0, 0x5e, 0, 0, 1],
            [0xff; 6],
            [0; 6],
            [0x0f, 1, 2, 3, 4, 5],
        ] {
            let mut bad = attrs("192.168.77.2");
            bad.backend_data.as_mut().unwrap().vtep_mac = MacAddr(mac);
            assert_eq!(
                rule_of("10.244.2.0/24", &bad),
                Some(Rule::VtepMacNotUnicast),
                "{}",
                MacAddr(mac)
            );
        }
        let mut ours = attrs("192.168.77.2");
        ours.backend_data.as_mut().unwrap().vtep_mac = MacAddr([0x0e, 1, 192, 168, 77, 1]);
        assert_eq!(rule_of("10.244.2.0/24", &ours), Some(Rule::VtepMacInUse));
        // A host-gw network takes host-gw leases and refuses vxlan ones.
        let config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#)
                .unwrap();
        let host_gw_policy = LeasePolicy::new(&config, Ipv4Addr::new(192, 168, 77, 1), None);
        assert!(
            host_gw_policy
                .check(net("10.244.2.0/24"), &host_gw, None)
                .is_ok()
        );
        assert_eq!(
            host_gw_policy
                .check(net("10.244.2.0/24"), &attrs("192.168.77.2"), None)
                .unwrap_err()
                .rule,
            Rule::BackendTypeMismatch
        );
    }

    /// A candidate with a VTEP MAC of its own (the last byte from the key's
    /// length and revision).
    fn candidate(key: &str, create_revision: i64) -> Candidate {
        let mut attrs = attrs("192.168.77.2");
        attrs.backend_data.as_mut().unwrap().vtep_mac =
            MacAddr([0x0e, 1, 0, 0, key.len() as u8, create_revision as u8]);
        Candidate {
            key: key.into(),
            create_revision,
            attrs,
            fingerprint: 0,
        }
    }

    #[test]
    fn a_vtep_mac_belongs_to_the_older_lease() {
        let mut young = candidate("/p/subnets/10.244.3.0-24", 8);
        let old = candidate("/p/subnets/10.244.2.0-24", 4);
        young.attrs.backend_data = old.attrs.backend_data.clone();
        let candidates =
            BTreeMap::from([(net("10.244.3.0/24"), young), (net("10.244.2.0/24"), old)]);
        let (accepted, losers) = resolve_overlaps(&candidates);
        assert_eq!(
            accepted.keys().copied().collect::<Vec<_>>(),
            [net("10.244.2.0/24")]
        );
        assert_eq!(losers.len(), 1);
        assert_eq!(losers[0].0, net("10.244.3.0/24"));
        assert_eq!(losers[0].1.rule, Rule::VtepMacInUse);
        assert!(
            losers[0].1.reason.contains("/p/subnets/10.244.2.0-24"),
            "{:?}",
            losers[0]
        );
    }

    #[test]
    fn on_overlap_the_older_lease_by_create_revision_wins() {
        let candidates = BTreeMap::from([
            (
                net("10.244.2.0/23"),
                candidate("/p/subnets/10.244.2.0-23", 9),
            ),
            (
                net("10.244.3.0/24"),
                candidate("/p/subnets/10.244.3.0-24", 5),
            ),
            (
                net("10.244.2.0/24"),
                candidate("/p/subnets/10.244.2.0-24", 12),
            ),
            (
                net("10.244.9.0/24"),
                candidate("/p/subnets/10.244.9.0-24", 20),
            ),
        ]);
        let (accepted, losers) = resolve_overlaps(&candidates);
        assert_eq!(
            accepted.keys().copied().collect::<Vec<_>>(),
            [
                net("10.244.2.0/24"),
                net("10.244.3.0/24"),
                net("10.244.9.0/24")
            ],
            "the /23 (revision 9) is younger than 10.244.3.0/24 (revision 5); \
             10.244.2.0/24 then overlaps nothing accepted"
        );
        assert_eq!(losers.len(), 1);
        assert_eq!(losers[0].0, net("10.244.2.0/23"));
        assert_eq!(losers[0].1.rule, Rule::SubnetOverlapsPeer);
        assert_eq!(
            losers[0].1.reason,
            "subnet 10.244.2.0/23 overlaps 10.244.3.0/24 of /p/subnets/10.244.3.0-24, which is older"
        );
        // The same leases the other way round in age: the /23 wins both.
        let mut reversed = candidates.clone();
        reversed
            .get_mut(&net("10.244.2.0/23"))
            .unwrap()
            .create_revision = 1;
        let (accepted, losers) = resolve_overlaps(&reversed);
        assert_eq!(
            accepted.keys().copied().collect::<Vec<_>>(),
            [net("10.244.2.0/23"), net("10.244.9.0/24")]
        );
        assert_eq!(losers.len(), 2);
    }

    #[test]
    fn overlapping_finds_wider_and_narrower_subnets_only() {
        let map = BTreeMap::from([
            (net("10.0.0.0/8"), ()),
            (net("10.244.2.0/24"), ()),
            (net("10.244.2.128/25"), ()),
            (net("10.244.3.0/24"), ()),
            (net("10.244.1.255/32"), ()),
        ]);
        let mut found = overlapping(&map, net("10.244.2.0/24"));
        found.sort();
        assert_eq!(found, [net("10.0.0.0/8"), net("10.244.2.128/25")]);
        assert!(overlapping(&map, net("192.168.0.0/16")).is_empty());
    }

    #[test]
    fn rule_names_are_stable_snake_case_and_unique() {
        let names: std::collections::BTreeSet<&str> =
            Rule::ALL.iter().map(|rule| rule.name()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
        assert_eq!(
            Rule::SubnetOutsideNetwork.to_string(),
            "subnet_outside_network"
        );
    }
}
