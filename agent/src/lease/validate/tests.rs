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
    Candidate {
        id: key.into(),
        age: create_revision,
        peer: AcceptedPeer {
            public_ip: "192.168.77.2".parse().unwrap(),
            backend: PeerBackend::Vxlan {
                vtep_mac: MacAddr([0x0e, 1, 0, 0, key.len() as u8, create_revision as u8]),
            },
        },
        fingerprint: 0,
    }
}

#[test]
fn a_vtep_mac_belongs_to_the_older_lease() {
    let mut young = candidate("/p/subnets/10.244.3.0-24", 8);
    let old = candidate("/p/subnets/10.244.2.0-24", 4);
    young.peer.backend = old.peer.backend;
    let candidates = BTreeMap::from([(net("10.244.3.0/24"), young), (net("10.244.2.0/24"), old)]);
    let (accepted, losers) = resolve_overlaps(
        candidates
            .iter()
            .map(|(subnet, candidate)| (*subnet, candidate)),
    );
    assert_eq!(
        accepted.keys().copied().collect::<Vec<_>>(),
        [net("10.244.2.0/24")]
    );
    assert_eq!(losers.len(), 1);
    assert_eq!(losers[0].0, net("10.244.3.0/24"));
    assert_eq!(losers[0].2.rule, Rule::VtepMacInUse);
    assert!(
        losers[0].2.reason.contains("/p/subnets/10.244.2.0-24"),
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
    let (accepted, losers) = resolve_overlaps(
        candidates
            .iter()
            .map(|(subnet, candidate)| (*subnet, candidate)),
    );
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
    assert_eq!(losers[0].2.rule, Rule::SubnetOverlapsPeer);
    assert_eq!(
        losers[0].2.reason,
        "subnet 10.244.2.0/23 overlaps 10.244.3.0/24 of /p/subnets/10.244.3.0-24, which is older"
    );
    // The same leases the other way round in age: the /23 wins both.
    let mut reversed = candidates.clone();
    reversed.get_mut(&net("10.244.2.0/23")).unwrap().age = 1;
    let (accepted, losers) = resolve_overlaps(
        reversed
            .iter()
            .map(|(subnet, candidate)| (*subnet, candidate)),
    );
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
