use super::*;
use crate::lease::{VxlanBackendData, subnet_of_key};
use ipnet::Ipv6Net;

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

/// An IPv4 subnet as the peer table keys it.
fn key(text: &str) -> IpNet {
    IpNet::V4(net(text))
}

/// The IPv4 keys of `resolve_overlaps`' winners.
fn v4_keys(accepted: &Winners) -> Vec<Ipv4Net> {
    accepted
        .keys()
        .map(|key| match key {
            IpNet::V4(subnet) => *subnet,
            IpNet::V6(subnet) => panic!("an IPv6 key {subnet} in an IPv4 network"),
        })
        .collect()
}

/// The calls most of these tests make: a claim with an IPv4 subnet, the
/// peer alone (its key is that subnet).
trait V4Checks {
    /// A claim without an IPv6 half.
    fn check(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        own: Option<Ipv4Net>,
    ) -> Result<AcceptedPeer, Rejection>;
    fn check_v4_claim(
        &self,
        subnet: Ipv4Net,
        subnet_v6: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        own: OwnSubnets,
    ) -> Result<AcceptedPeer, Rejection>;
}

impl V4Checks for LeasePolicy {
    fn check(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        own: Option<Ipv4Net>,
    ) -> Result<AcceptedPeer, Rejection> {
        self.check_v4_claim(subnet, None, attrs, OwnSubnets::from(own))
    }

    fn check_v4_claim(
        &self,
        subnet: Ipv4Net,
        subnet_v6: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        own: OwnSubnets,
    ) -> Result<AcceptedPeer, Rejection> {
        let (keyed_by, peer) = self.check_claim(Some(subnet), subnet_v6, attrs, own)?;
        assert_eq!(keyed_by, IpNet::V4(subnet));
        Ok(peer)
    }
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
        Some(Ipv4Addr::new(192, 168, 77, 1)),
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
        backend_v6_data: None,
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
    let host_gw_policy = LeasePolicy::new(&config, Some(Ipv4Addr::new(192, 168, 77, 1)), None);
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
            v4: Some(AcceptedPeerV4 {
                subnet: subnet_of_key(key).unwrap(),
                public_ip: "192.168.77.2".parse().unwrap(),
                backend: PeerBackend::Vxlan {
                    vtep_mac: MacAddr([0x0e, 1, 0, 0, key.len() as u8, create_revision as u8]),
                },
            }),
            v6: None,
        },
        fingerprint: 0,
    }
}

#[test]
fn a_vtep_mac_belongs_to_the_older_lease() {
    let mut young = candidate("/p/subnets/10.244.3.0-24", 8);
    let old = candidate("/p/subnets/10.244.2.0-24", 4);
    young.peer.v4.as_mut().unwrap().backend = old.peer.v4.unwrap().backend;
    let candidates = BTreeMap::from([(net("10.244.3.0/24"), young), (net("10.244.2.0/24"), old)]);
    let (accepted, losers) = resolve_overlaps(
        candidates
            .iter()
            .map(|(subnet, candidate)| (IpNet::from(*subnet), candidate)),
    );
    assert_eq!(v4_keys(&accepted), [net("10.244.2.0/24")]);
    assert_eq!(losers.len(), 1);
    assert_eq!(losers[0].0, key("10.244.3.0/24"));
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
            .map(|(subnet, candidate)| (IpNet::from(*subnet), candidate)),
    );
    assert_eq!(
        v4_keys(&accepted),
        [
            net("10.244.2.0/24"),
            net("10.244.3.0/24"),
            net("10.244.9.0/24")
        ],
        "the /23 (revision 9) is younger than 10.244.3.0/24 (revision 5); \
         10.244.2.0/24 then overlaps nothing accepted"
    );
    assert_eq!(losers.len(), 1);
    assert_eq!(losers[0].0, key("10.244.2.0/23"));
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
            .map(|(subnet, candidate)| (IpNet::from(*subnet), candidate)),
    );
    assert_eq!(
        v4_keys(&accepted),
        [net("10.244.2.0/23"), net("10.244.9.0/24")]
    );
    assert_eq!(losers.len(), 2);
}

#[test]
fn overlapping_finds_wider_and_narrower_subnets_of_its_family_only() {
    let v6 = |text: &str| IpNet::V6(text.parse().unwrap());
    let map = BTreeMap::from([
        (key("10.0.0.0/8"), ()),
        (key("10.244.2.0/24"), ()),
        (key("10.244.2.128/25"), ()),
        (key("10.244.3.0/24"), ()),
        (key("10.244.1.255/32"), ()),
        (key("255.255.255.255/32"), ()),
        // ::a0f4:200/120 is 10.244.2.0/24's bits as IPv6: no overlap.
        (v6("::a0f4:200/120"), ()),
        (v6("fd00:12::/48"), ()),
        (v6("fd00:12:0:200::/56"), ()),
        (v6("fd00:12:0:200::1/128"), ()),
    ]);
    let mut found = overlapping_net(&map, key("10.244.2.0/24"));
    found.sort();
    assert_eq!(found, [key("10.0.0.0/8"), key("10.244.2.128/25")]);
    assert!(overlapping_net(&map, key("192.168.0.0/16")).is_empty());
    assert_eq!(
        overlapping_net(&map, key("255.255.255.0/24")),
        [key("255.255.255.255/32")]
    );
    let mut found = overlapping_net(&map, v6("fd00:12:0:200::/56"));
    found.sort();
    assert_eq!(found, [v6("fd00:12::/48"), v6("fd00:12:0:200::1/128")]);
}

#[test]
fn rule_names_are_stable_snake_case_and_unique() {
    let names: std::collections::BTreeSet<&str> =
        Rule::ALL.iter().map(|rule| rule.name()).collect();
    assert_eq!(names.len(), Rule::ALL.len());
    for name in names {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
    }
    assert_eq!(
        Rule::SubnetOutsideNetwork.to_string(),
        "subnet_outside_network"
    );
}

// Dual-stack (issue #23): the IPv6 half of a claim.

fn net6(text: &str) -> Ipv6Net {
    text.parse().unwrap()
}

fn dual_config(backend: &str) -> NetworkConfig {
    NetworkConfig::parse(&format!(
        r#"{{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.200.0","EnableIPv6":true,"IPv6Network":"fd00:12::/48","IPv6SubnetLen":56,"IPv6SubnetMax":"fd00:12:0:c800::","Backend":{backend}}}"#
    ))
    .unwrap()
}

const OUR_V6_MAC: MacAddr = MacAddr([0x0e, 6, 192, 168, 77, 1]);
const OWN_V6: &str = "fd00:12:0:100::/56";

fn dual_policy() -> LeasePolicy {
    LeasePolicy::new(
        &dual_config(r#"{"Type":"vxlan","VNI":1}"#),
        Some(Ipv4Addr::new(192, 168, 77, 1)),
        Some(MacAddr([0x0e, 1, 192, 168, 77, 1])),
    )
    .with_own_ipv6(Some("fd77::1".parse().unwrap()), Some(OUR_V6_MAC))
}

/// A dual-stack vxlan peer as flanneld v0.20.2 writes it.
fn dual_attrs(ip6: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(ip6.parse().unwrap()),
        backend_v6_data: Some(VxlanBackendData {
            vni: 1,
            vtep_mac: MacAddr([0x0e, 6, 192, 168, 77, 2]),
        }),
        ..attrs("192.168.77.2")
    }
}

fn own_dual() -> OwnSubnets {
    OwnSubnets {
        v4: Some(net(OWN)),
        v6: Some(net6(OWN_V6)),
    }
}

fn v6_rule_of(policy: &LeasePolicy, subnet_v6: Option<&str>, attrs: &LeaseAttrs) -> Option<Rule> {
    policy
        .check_v4_claim(net("10.244.2.0/24"), subnet_v6.map(net6), attrs, own_dual())
        .err()
        .map(|rejection| rejection.rule)
}

#[test]
fn a_dual_stack_peer_is_accepted_with_both_halves() {
    let peer = dual_policy()
        .check_v4_claim(
            net("10.244.2.0/24"),
            Some(net6("fd00:12:0:200::/56")),
            &dual_attrs("fd77::2"),
            own_dual(),
        )
        .unwrap();
    assert_eq!(
        peer.v6,
        Some(AcceptedPeerV6 {
            subnet: net6("fd00:12:0:200::/56"),
            public_ip: "fd77::2".parse().unwrap(),
            backend: PeerBackend::Vxlan {
                vtep_mac: MacAddr([0x0e, 6, 192, 168, 77, 2])
            },
        })
    );
    assert_eq!(peer.v4.unwrap().public_ip, Ipv4Addr::new(192, 168, 77, 2));
    // A global-unicast underlay, and the last subnet of the range.
    assert_eq!(
        v6_rule_of(
            &dual_policy(),
            Some("fd00:12:0:c800::/56"),
            &dual_attrs("2001:db8::7")
        ),
        None
    );
}

#[test]
fn a_v4_only_peer_in_a_dual_stack_network_is_accepted_without_a_v6_half() {
    let peer = dual_policy()
        .check_v4_claim(
            net("10.244.2.0/24"),
            None,
            &attrs("192.168.77.2"),
            own_dual(),
        )
        .unwrap();
    assert_eq!(peer.v6, None);
}

#[test]
fn a_v6_half_in_a_v4_only_network_is_ignored() {
    // Even a hostile one: nothing of it is used.
    for (subnet_v6, ip6) in [
        (Some("fd00:12:0:200::/56"), "fd77::2"),
        (Some("::/0"), "ff02::1"),
        (None, "fd77::1"),
    ] {
        let peer = policy()
            .check_v4_claim(
                net("10.244.2.0/24"),
                subnet_v6.map(net6),
                &dual_attrs(ip6),
                OwnSubnets::from(Some(net(OWN))),
            )
            .unwrap();
        assert_eq!(peer.v6, None);
    }
}

#[test]
fn v6_subnets_must_be_inside_ipv6_network_with_its_length_within_the_range() {
    let peer = dual_attrs("fd77::2");
    for (subnet, rule) in [
        ("fd00:13::/56", Rule::Ipv6SubnetOutsideNetwork),
        ("fd77::/56", Rule::Ipv6SubnetOutsideNetwork),
        ("::/0", Rule::Ipv6SubnetOutsideNetwork),
        ("fd00::/16", Rule::Ipv6SubnetOutsideNetwork),
        ("fd00:12:0:100::/56", Rule::Ipv6SubnetOverlapsOwn),
        ("fd00:12::/48", Rule::Ipv6SubnetOverlapsOwn),
        ("fd00:12:0:100::/64", Rule::Ipv6SubnetOverlapsOwn),
        ("fd00:12:0:200::/64", Rule::Ipv6SubnetWrongPrefix),
        ("fd00:12:0:200::/55", Rule::Ipv6SubnetWrongPrefix),
        ("fd00:12::/56", Rule::Ipv6SubnetOutsideRange),
        ("fd00:12:0:c900::/56", Rule::Ipv6SubnetOutsideRange),
        ("fd00:12:0:ff00::/56", Rule::Ipv6SubnetOutsideRange),
    ] {
        assert_eq!(
            v6_rule_of(&dual_policy(), Some(subnet), &peer),
            Some(rule),
            "{subnet}"
        );
    }
    let rejection = dual_policy()
        .check_v4_claim(
            net("10.244.2.0/24"),
            Some(net6("fd77::/56")),
            &peer,
            own_dual(),
        )
        .unwrap_err();
    assert_eq!(
        rejection.reason,
        "IPv6 subnet fd77::/56 is not inside IPv6Network fd00:12::/48"
    );
}

#[test]
fn public_ipv6_must_be_another_nodes_unicast_underlay_address() {
    for (ip, rule) in [
        ("fd77::1", Rule::PublicIpv6Ours),
        ("::", Rule::PublicIpv6NotUnicast),
        ("::1", Rule::PublicIpv6NotUnicast),
        ("ff02::1", Rule::PublicIpv6NotUnicast),
        ("ff05::1:3", Rule::PublicIpv6NotUnicast),
        ("fe80::1", Rule::PublicIpv6NotUnicast),
        ("febf::1", Rule::PublicIpv6NotUnicast),
        ("::ffff:192.168.77.2", Rule::PublicIpv6NotUnicast),
        ("::ffff:127.0.0.1", Rule::PublicIpv6NotUnicast),
        ("::192.168.77.2", Rule::PublicIpv6NotUnicast),
        ("fd00:12:0:200::1", Rule::PublicIpv6InsideNetwork),
        ("fd00:12::", Rule::PublicIpv6InsideNetwork),
    ] {
        assert_eq!(
            v6_rule_of(&dual_policy(), Some("fd00:12:0:200::/56"), &dual_attrs(ip)),
            Some(rule),
            "{ip}"
        );
    }
    for ip in [
        "fd77::2",
        "2001:db8::1",
        "fec0::1",
        "fd00:13::1",
        "64:ff9b::c0a8:4d02",
    ] {
        assert_eq!(
            v6_rule_of(&dual_policy(), Some("fd00:12:0:200::/56"), &dual_attrs(ip)),
            None,
            "{ip}"
        );
    }
    let rejection = dual_policy()
        .check_v4_claim(
            net("10.244.2.0/24"),
            Some(net6("fd00:12:0:200::/56")),
            &dual_attrs("fe80::1"),
            own_dual(),
        )
        .unwrap_err();
    assert_eq!(
        rejection.reason,
        "PublicIPv6 fe80::1 is link-local, not a unicast node address"
    );
}

#[test]
fn a_v6_half_must_be_complete() {
    let subnet = Some("fd00:12:0:200::/56");
    // A subnet without PublicIPv6.
    let mut no_ip = dual_attrs("fd77::2");
    no_ip.public_ipv6 = None;
    assert_eq!(
        v6_rule_of(&dual_policy(), subnet, &no_ip),
        Some(Rule::Ipv6HalfIncomplete)
    );
    // PublicIPv6 without a subnet.
    assert_eq!(
        v6_rule_of(&dual_policy(), None, &dual_attrs("fd77::2")),
        Some(Rule::Ipv6HalfIncomplete)
    );
    // vxlan without BackendV6Data.
    let mut no_data = dual_attrs("fd77::2");
    no_data.backend_v6_data = None;
    assert_eq!(
        v6_rule_of(&dual_policy(), subnet, &no_data),
        Some(Rule::Ipv6HalfIncomplete)
    );
    // BackendV6Data with neither subnet nor PublicIPv6.
    let mut only_data = dual_attrs("fd77::2");
    only_data.public_ipv6 = None;
    assert_eq!(
        v6_rule_of(&dual_policy(), None, &only_data),
        Some(Rule::Ipv6HalfIncomplete)
    );
    let rejection = dual_policy()
        .check_v4_claim(
            net("10.244.2.0/24"),
            None,
            &dual_attrs("fd77::2"),
            own_dual(),
        )
        .unwrap_err();
    assert_eq!(
        rejection.reason,
        "PublicIPv6 fd77::2 comes without an IPv6 subnet"
    );
}

#[test]
fn v6_backend_data_must_carry_the_networks_vni_and_a_unicast_mac_not_ours() {
    let subnet = Some("fd00:12:0:200::/56");
    let mut vni = dual_attrs("fd77::2");
    vni.backend_v6_data.as_mut().unwrap().vni = 2;
    assert_eq!(
        v6_rule_of(&dual_policy(), subnet, &vni),
        Some(Rule::Ipv6VniMismatch)
    );
    for mac in [
        [0x01, 0, 0x5e, 0, 0, 1],
        [0xff; 6],
        [0; 6],
        [0x33, 0x33, 0, 0, 0, 1],
    ] {
        let mut bad = dual_attrs("fd77::2");
        bad.backend_v6_data.as_mut().unwrap().vtep_mac = MacAddr(mac);
        assert_eq!(
            v6_rule_of(&dual_policy(), subnet, &bad),
            Some(Rule::Ipv6VtepMacNotUnicast),
            "{}",
            MacAddr(mac)
        );
    }
    let mut ours = dual_attrs("fd77::2");
    ours.backend_v6_data.as_mut().unwrap().vtep_mac = OUR_V6_MAC;
    assert_eq!(
        v6_rule_of(&dual_policy(), subnet, &ours),
        Some(Rule::Ipv6VtepMacInUse)
    );
    // The v4 half is judged first: a broken v4 half names its own rule.
    let mut both = ours.clone();
    both.backend_data.as_mut().unwrap().vni = 9;
    assert_eq!(
        v6_rule_of(&dual_policy(), subnet, &both),
        Some(Rule::VniMismatch)
    );
}

#[test]
fn host_gw_v6_halves_need_no_backend_data() {
    let policy = LeasePolicy::new(
        &dual_config(r#"{"Type":"host-gw"}"#),
        Some(Ipv4Addr::new(192, 168, 77, 1)),
        None,
    )
    .with_own_ipv6(Some("fd77::1".parse().unwrap()), None);
    let mut host_gw = attrs("192.168.77.2");
    host_gw.backend_type = "host-gw".into();
    host_gw.backend_data = None;
    host_gw.public_ipv6 = Some("fd77::2".parse().unwrap());
    let peer = policy
        .check_v4_claim(
            net("10.244.2.0/24"),
            Some(net6("fd00:12:0:200::/56")),
            &host_gw,
            own_dual(),
        )
        .unwrap();
    assert_eq!(peer.v6.unwrap().backend, PeerBackend::HostGw);
    host_gw.public_ipv6 = Some("fd77::1".parse().unwrap());
    assert_eq!(
        v6_rule_of(&policy, Some("fd00:12:0:200::/56"), &host_gw),
        Some(Rule::PublicIpv6Ours)
    );
}

#[test]
fn pod_cidr_policies_take_the_v6_length_of_our_own_v6_pod_cidr() {
    let policy = dual_policy()
        .for_pod_cidrs(Some(24))
        .for_pod_cidrs_v6(Some(64));
    let attrs = dual_attrs("fd77::2");
    // Any /64 inside IPv6Network, SubnetMin/Max aside.
    assert_eq!(v6_rule_of(&policy, Some("fd00:12::/64"), &attrs), None);
    assert_eq!(
        v6_rule_of(&policy, Some("fd00:12:0:200::/56"), &attrs),
        Some(Rule::Ipv6SubnetWrongPrefix)
    );
    let rejection = policy
        .check_v4_claim(
            net("10.244.2.0/24"),
            Some(net6("fd00:12:0:200::/56")),
            &attrs,
            own_dual(),
        )
        .unwrap_err();
    assert_eq!(
        rejection.reason,
        "IPv6 subnet fd00:12:0:200::/56 is not a /64 (this node's IPv6 podCIDR)"
    );
}

fn dual_candidate(key: &str, age: i64, subnet_v6: &str, mac_v6: u8) -> Candidate {
    let mut candidate = candidate(key, age);
    candidate.peer.v6 = Some(AcceptedPeerV6 {
        subnet: net6(subnet_v6),
        public_ip: "fd77::2".parse().unwrap(),
        backend: PeerBackend::Vxlan {
            vtep_mac: MacAddr([0x0e, 6, 0, 0, 0, mac_v6]),
        },
    });
    candidate
}

#[test]
fn on_a_v6_overlap_or_a_shared_v6_mac_the_older_claim_wins_whole() {
    let candidates = BTreeMap::from([
        (
            net("10.244.2.0/24"),
            dual_candidate(
                "/p/subnets/10.244.2.0-24&fd00:12:0:200::-56",
                5,
                "fd00:12:0:200::/56",
                2,
            ),
        ),
        // Younger, another v4 subnet, the same v6 subnet.
        (
            net("10.244.3.0/24"),
            dual_candidate(
                "/p/subnets/10.244.3.0-24&fd00:12:0:200::-56",
                9,
                "fd00:12:0:200::/56",
                3,
            ),
        ),
        // Younger, a v6 subnet inside the older one's.
        (
            net("10.244.4.0/24"),
            dual_candidate(
                "/p/subnets/10.244.4.0-24&fd00:12:0:200::-64",
                10,
                "fd00:12:0:200::/64",
                4,
            ),
        ),
        // Younger, its own v6 subnet, the older one's v6 MAC.
        (
            net("10.244.5.0/24"),
            dual_candidate(
                "/p/subnets/10.244.5.0-24&fd00:12:0:500::-56",
                11,
                "fd00:12:0:500::/56",
                2,
            ),
        ),
        // Older than all: a v6 subnet wider than the first's.
        (
            net("10.244.6.0/24"),
            dual_candidate(
                "/p/subnets/10.244.6.0-24&fd00:12:0:200::-55",
                1,
                "fd00:12:0:200::/55",
                6,
            ),
        ),
    ]);
    let (accepted, losers) = resolve_overlaps(
        candidates
            .iter()
            .map(|(subnet, candidate)| (IpNet::from(*subnet), candidate)),
    );
    assert_eq!(
        v4_keys(&accepted),
        [net("10.244.5.0/24"), net("10.244.6.0/24")]
    );
    let rules: BTreeMap<IpNet, Rule> = losers
        .iter()
        .map(|(subnet, _, rejection)| (*subnet, rejection.rule))
        .collect();
    assert_eq!(
        rules,
        BTreeMap::from([
            (key("10.244.2.0/24"), Rule::Ipv6SubnetOverlapsPeer),
            (key("10.244.3.0/24"), Rule::Ipv6SubnetOverlapsPeer),
            (key("10.244.4.0/24"), Rule::Ipv6SubnetOverlapsPeer),
        ])
    );
    let reason = &losers
        .iter()
        .find(|(subnet, _, _)| *subnet == key("10.244.2.0/24"))
        .unwrap()
        .2
        .reason;
    assert_eq!(
        reason,
        "IPv6 subnet fd00:12:0:200::/56 overlaps fd00:12:0:200::/55 of /p/subnets/10.244.6.0-24&fd00:12:0:200::-55, which is older"
    );
    // Without the wide one, the first keeps its subnet, and its v6 MAC
    // against the younger claim that copies it.
    let mut rest = candidates.clone();
    rest.remove(&net("10.244.6.0/24"));
    let (accepted, losers) = resolve_overlaps(
        rest.iter()
            .map(|(subnet, candidate)| (IpNet::from(*subnet), candidate)),
    );
    assert_eq!(v4_keys(&accepted), [net("10.244.2.0/24")]);
    let rules: BTreeMap<IpNet, Rule> = losers
        .iter()
        .map(|(subnet, _, rejection)| (*subnet, rejection.rule))
        .collect();
    assert_eq!(rules[&key("10.244.5.0/24")], Rule::Ipv6VtepMacInUse);
    assert_eq!(rules[&key("10.244.3.0/24")], Rule::Ipv6SubnetOverlapsPeer);
}

#[test]
fn overlapping_finds_wider_and_narrower_ipv6_subnets_only() {
    let key6 = |text: &str| IpNet::V6(net6(text));
    let map = BTreeMap::from([
        (key6("fd00::/8"), ()),
        (key6("fd00:12:0:200::/56"), ()),
        (key6("fd00:12:0:280::/57"), ()),
        (key6("fd00:12:0:300::/56"), ()),
        (key6("fd00:12:0:1ff::1/128"), ()),
    ]);
    let mut found = overlapping_net(&map, key6("fd00:12:0:200::/56"));
    found.sort();
    assert_eq!(found, [key6("fd00::/8"), key6("fd00:12:0:280::/57")]);
    assert!(overlapping_net(&map, key6("2001:db8::/32")).is_empty());
}
