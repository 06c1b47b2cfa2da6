use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::*;
use crate::lease::validate::OwnSubnets;
use crate::{config::NetworkConfig, lease::registry::RawLease};

/// The table fed as the etcd subnet manager feeds it.
trait FromEtcd {
    fn resync_leases(&mut self, leases: &[RawLease], own: Option<Ipv4Net>) -> Vec<PeerChange>;
    fn put_lease(
        &mut self,
        key: &str,
        value: &[u8],
        create_revision: i64,
        own: Option<Ipv4Net>,
    ) -> Vec<PeerChange>;
}

impl FromEtcd for PeerTable {
    fn resync_leases(&mut self, leases: &[RawLease], own: Option<Ipv4Net>) -> Vec<PeerChange> {
        let claims: Vec<Claim> = leases
            .iter()
            .map(|lease| Claim::from_lease(&lease.key, &lease.value, lease.create_revision))
            .collect();
        self.resync(&claims, own)
    }

    fn put_lease(
        &mut self,
        key: &str,
        value: &[u8],
        create_revision: i64,
        own: Option<Ipv4Net>,
    ) -> Vec<PeerChange> {
        self.put(&Claim::from_lease(key, value, create_revision), own)
    }
}

fn table() -> PeerTable {
    let config =
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#)
            .unwrap();
    PeerTable::new(LeasePolicy::new(
        &config,
        Some(Ipv4Addr::new(192, 168, 77, 1)),
        None,
    ))
}

fn lease(subnet: &str, ip: &str) -> RawLease {
    RawLease {
        key: format!("/coreos.com/network/subnets/{subnet}"),
        value: format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}}"#
        )
        .into_bytes(),
        create_revision: 1,
    }
}

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

/// An IPv4 subnet as the table keys its peers.
fn key(text: &str) -> IpNet {
    IpNet::V4(net(text))
}

#[test]
fn resync_reports_adds_changes_and_removals_and_skips_our_own() {
    let mut table = table();
    let own = Some(net("10.244.1.0/24"));
    let first = table.resync_leases(
        &[
            lease("10.244.1.0-24", "192.168.77.1"),
            lease("10.244.2.0-24", "192.168.77.2"),
        ],
        own,
    );
    assert_eq!(first.len(), 1);
    assert!(
        matches!(&first[0], PeerChange::Upsert { subnet, .. } if *subnet == key("10.244.2.0/24"))
    );
    let second = table.resync_leases(
        &[
            lease("10.244.2.0-24", "192.168.77.9"),
            lease("10.244.3.0-24", "192.168.77.3"),
        ],
        own,
    );
    assert_eq!(second.len(), 2, "{second:?}");
    let third = table.resync_leases(&[], own);
    assert_eq!(third.len(), 2);
    assert!(
        third
            .iter()
            .all(|change| matches!(change, PeerChange::Remove { .. }))
    );
    assert!(table.peers().is_empty());
}

#[test]
fn a_lease_rewritten_with_a_bad_value_is_removed_like_a_delete() {
    let mut table = table();
    let good = lease("10.244.2.0-24", "192.168.77.2");
    table.resync_leases(std::slice::from_ref(&good), None);
    let removed = table.put_lease(&good.key, b"not json", 2, None);
    assert!(
        matches!(&removed[..], [PeerChange::Remove { subnet, .. }] if *subnet == key("10.244.2.0/24")),
        "{removed:?}"
    );
    assert!(table.peers().is_empty());
    // Back to a good value: used again.
    assert_eq!(table.put_lease(&good.key, &good.value, 1, None).len(), 1);
    // A value that parses but breaks a rule, in a listing this time.
    let outside = lease("10.244.2.0-24", "10.244.9.9");
    let removed = table.resync_leases(&[outside, lease("garbage-key", "192.168.77.5")], None);
    assert!(
        matches!(&removed[..], [PeerChange::Remove { .. }]),
        "{removed:?}"
    );
    assert!(table.peers().is_empty());
    assert_eq!(table.rejections()[&Rule::MalformedValue], 1);
    assert_eq!(table.rejections()[&Rule::PublicIpInsideNetwork], 1);
    assert_eq!(table.rejections()[&Rule::MalformedKey], 1);
}

#[test]
fn listings_and_events_apply_the_same_rules() {
    let hostile = [
        lease("192.168.77.0-24", "192.168.77.9"),
        lease("10.96.0.0-12", "192.168.77.9"),
        lease("10.244.2.0-24", "0.0.0.0"),
    ];
    let mut listed = table();
    assert!(listed.resync_leases(&hostile, None).is_empty());
    let mut watched = table();
    for lease in &hostile {
        assert!(
            watched
                .put_lease(&lease.key, &lease.value, 1, None)
                .is_empty()
        );
    }
    assert_eq!(listed.rejections(), watched.rejections());
    assert_eq!(listed.rejections()[&Rule::SubnetOutsideNetwork], 2);
    assert_eq!(listed.rejections()[&Rule::PublicIpNotUnicast], 1);
}

#[test]
fn a_rejection_is_counted_once_per_value_not_per_resync() {
    let mut table = table();
    let bad = lease("10.96.0.0-12", "192.168.77.9");
    for _ in 0..3 {
        table.resync_leases(std::slice::from_ref(&bad), None);
        table.put_lease(&bad.key, &bad.value, 1, None);
    }
    assert_eq!(table.rejections()[&Rule::SubnetOutsideNetwork], 1);
    // A different value for the same key is news.
    let other = lease("10.96.0.0-12", "192.168.77.8");
    table.put_lease(&other.key, &other.value, 1, None);
    assert_eq!(table.rejections()[&Rule::SubnetOutsideNetwork], 2);
    // So is the same value after the key was deleted.
    table.delete(&bad.key);
    table.put_lease(&bad.key, &bad.value, 1, None);
    assert_eq!(table.rejections()[&Rule::SubnetOutsideNetwork], 3);
}

#[test]
fn oversized_values_are_rejected_unread() {
    let mut table = table();
    let mut big = lease("10.244.2.0-24", "192.168.77.2");
    big.value.resize(1 << 20, b' ');
    assert!(table.resync_leases(&[big], None).is_empty());
    assert_eq!(table.rejections()[&Rule::ValueTooLarge], 1);
}

#[test]
fn delete_uses_the_last_value_and_put_ignores_repeats() {
    let mut table = table();
    let peer = lease("10.244.2.0-24", "192.168.77.2");
    assert_eq!(table.put_lease(&peer.key, &peer.value, 1, None).len(), 1);
    assert!(table.put_lease(&peer.key, &peer.value, 1, None).is_empty());
    let removed = table.delete(&peer.key);
    assert!(
        matches!(&removed[..], [PeerChange::Remove { peer, .. }] if peer.v4.unwrap().public_ip.to_string() == "192.168.77.2")
    );
    assert!(table.delete(&peer.key).is_empty());
}

fn vxlan_table() -> PeerTable {
    let config =
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    PeerTable::new(LeasePolicy::new(
        &config,
        Some(Ipv4Addr::new(192, 168, 77, 1)),
        None,
    ))
}

fn vxlan_value(ip: &str, mac: &str) -> Vec<u8> {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#).into_bytes()
}

#[test]
fn a_lease_reusing_another_nodes_vtep_mac_is_refused_until_the_owner_goes() {
    let mut table = vxlan_table();
    let owner = "/coreos.com/network/subnets/10.244.2.0-24";
    let thief = "/coreos.com/network/subnets/10.244.3.0-24";
    let mac = "0e:01:c0:a8:4d:02";
    assert_eq!(
        table
            .put_lease(owner, &vxlan_value("192.168.77.2", mac), 5, None)
            .len(),
        1
    );
    assert!(
        table
            .put_lease(thief, &vxlan_value("192.168.77.66", mac), 9, None)
            .is_empty()
    );
    assert_eq!(table.rejections()[&Rule::VtepMacInUse], 1);
    assert_eq!(table.peers().len(), 1);
    // The same clash from a listing.
    let listing = [
        RawLease {
            key: owner.into(),
            value: vxlan_value("192.168.77.2", mac),
            create_revision: 5,
        },
        RawLease {
            key: thief.into(),
            value: vxlan_value("192.168.77.66", mac),
            create_revision: 9,
        },
    ];
    assert!(table.resync_leases(&listing, None).is_empty());
    assert_eq!(table.rejections()[&Rule::VtepMacInUse], 1, "logged once");
    // The owner leaves: the MAC is free and the other lease is used.
    let changes = table.delete(owner);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        table.peers().keys().copied().collect::<Vec<_>>(),
        [key("10.244.3.0/24")]
    );
}

#[test]
fn events_keep_the_older_of_overlapping_leases() {
    // The prefix rule makes overlaps impossible with a real config; a
    // policy with SubnetLen 24 and a /23 candidate inserted directly
    // exercises the tie-break that guards the peer set anyway.
    let mut table = table();
    let young = lease("10.244.2.0-24", "192.168.77.2");
    assert_eq!(table.put_lease(&young.key, &young.value, 10, None).len(), 1);
    let wide = key("10.244.2.0/23");
    let wide_id = "/coreos.com/network/subnets/10.244.2.0-23";
    table.set_candidate(
        wide,
        wide_id,
        Some(Candidate {
            id: wide_id.into(),
            age: 5,
            peer: table.peers()[&key("10.244.2.0/24")],
            fingerprint: 7,
        }),
    );
    let changes = table.settle(wide);
    assert!(
        changes.contains(&PeerChange::Remove {
            subnet: key("10.244.2.0/24"),
            peer: table.peers()[&wide]
        }),
        "{changes:?}"
    );
    assert_eq!(table.rejections()[&Rule::SubnetOverlapsPeer], 1);
    // The older one goes away: the younger comes back.
    let changes = table.delete("/coreos.com/network/subnets/10.244.2.0-23");
    assert_eq!(
        table.peers().keys().copied().collect::<Vec<_>>(),
        [key("10.244.2.0/24")]
    );
    assert_eq!(changes.len(), 2, "{changes:?}");
}

/// A claim as the Kubernetes subnet manager makes one from a Node.
fn node_claim(name: &str, subnet: &str, ip: &str, created: i64) -> Claim {
    let value = format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}}"#
    );
    Claim {
        id: format!("node/{name}"),
        subnet: Ok(net(subnet)),
        subnet_v6: Ok(None),
        attrs: Ok(crate::lease::LeaseAttrs::from_json(value.as_bytes()).unwrap()),
        age: created,
        fingerprint: super::super::claim::fingerprint(&value),
    }
}

#[test]
fn two_nodes_given_one_subnet_the_older_is_used_until_it_goes() {
    let mut table = table();
    let real = node_claim("n2", "10.244.2.0/24", "192.168.77.2", 100);
    let forged = node_claim("forged", "10.244.2.0/24", "192.168.77.66", 200);
    table.resync(&[forged.clone(), real.clone()], None);
    assert_eq!(
        table.peers()[&key("10.244.2.0/24")].v4.unwrap().public_ip,
        Ipv4Addr::new(192, 168, 77, 2)
    );
    assert_eq!(table.rejections()[&Rule::SubnetOverlapsPeer], 1);
    // The forged Node changing its value changes nothing.
    let mut forged_again = node_claim("forged", "10.244.2.0/24", "192.168.77.67", 200);
    forged_again.fingerprint += 1;
    assert!(table.put(&forged_again, None).is_empty());
    // Deleting the forged one leaves the real one alone.
    assert!(table.delete("node/forged").is_empty());
    assert!(table.put(&forged_again, None).is_empty());
    // The real one gone, the other claimant of its subnet takes over.
    let changes = table.delete("node/n2");
    assert!(
        matches!(&changes[..], [PeerChange::Upsert { peer, .. }] if peer.v4.unwrap().public_ip == Ipv4Addr::new(192, 168, 77, 67)),
        "{changes:?}"
    );
}

#[test]
fn a_node_whose_pod_cidr_moves_gives_up_the_old_subnet() {
    let mut table = table();
    table.put(
        &node_claim("n2", "10.244.2.0/24", "192.168.77.2", 100),
        None,
    );
    let changes = table.put(
        &node_claim("n2", "10.244.9.0/24", "192.168.77.2", 100),
        None,
    );
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        table.peers().keys().copied().collect::<Vec<_>>(),
        [key("10.244.9.0/24")]
    );
    // A value that no longer parses removes it like a delete.
    let mut broken = node_claim("n2", "10.244.9.0/24", "192.168.77.2", 100);
    broken.attrs = Err(Rejection::new(Rule::MalformedAnnotation, "public-ip \"x\""));
    let changes = table.put(&broken, None);
    assert!(
        matches!(&changes[..], [PeerChange::Remove { .. }]),
        "{changes:?}"
    );
    assert!(table.peers().is_empty());
    assert!(table.delete("node/n2").is_empty());
}

// Dual-stack (issue #23).

fn dual_table() -> PeerTable {
    let config = NetworkConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:12::/48","IPv6SubnetLen":56,"Backend":{"Type":"vxlan","VNI":1}}"#,
    )
    .unwrap();
    PeerTable::new(
        LeasePolicy::new(&config, Some(Ipv4Addr::new(192, 168, 77, 1)), None)
            .with_own_ipv6(Some("fd77::1".parse().unwrap()), None),
    )
}

fn dual_lease(v4: &str, v6: &str, host: u8, revision: i64) -> RawLease {
    RawLease {
        key: format!("/coreos.com/network/subnets/{v4}&{v6}"),
        value: format!(
            r#"{{"PublicIP":"192.168.77.{host}","PublicIPv6":"fd77::{host}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:00:00:00:{host:02x}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"0e:06:00:00:00:{host:02x}"}}}}"#
        )
        .into_bytes(),
        create_revision: revision,
    }
}

fn own_dual() -> OwnSubnets {
    OwnSubnets {
        v4: Some(net("10.244.1.0/24")),
        v6: Some("fd00:12:0:100::/56".parse().unwrap()),
    }
}

#[test]
fn dual_stack_leases_carry_their_v6_half_and_a_v6_clash_is_decided_by_age() {
    let mut table = dual_table();
    let first = dual_lease("10.244.2.0-24", "fd00:12:0:200::-56", 2, 5);
    let copy = dual_lease("10.244.3.0-24", "fd00:12:0:200::-56", 3, 9);
    let v4_only = RawLease {
        key: "/coreos.com/network/subnets/10.244.4.0-24".into(),
        value: br#"{"PublicIP":"192.168.77.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:01:00:00:00:04"}}"#.to_vec(),
        create_revision: 7,
    };
    let changes = table.resync_leases(&[first.clone(), copy.clone(), v4_only], own_dual().v4);
    // Without our v6 subnet given, the listing still decides the clash.
    assert_eq!(changes.len(), 2, "{changes:?}");
    let peers = table.peers();
    assert_eq!(
        peers[&key("10.244.2.0/24")].v6.unwrap().subnet,
        "fd00:12:0:200::/56".parse().unwrap()
    );
    assert_eq!(peers[&key("10.244.4.0/24")].v6, None);
    assert!(!peers.contains_key(&key("10.244.3.0/24")));
    assert_eq!(table.rejections()[&Rule::Ipv6SubnetOverlapsPeer], 1);
    // Events agree: the older goes, the younger copy takes over.
    let changes = table.delete(&first.key);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(table.peers().contains_key(&key("10.244.3.0/24")));
    // A v6 half on our own v6 subnet is refused whole.
    let ours = dual_lease("10.244.5.0-24", "fd00:12:0:100::-56", 5, 11);
    let changes = table.put(
        &Claim::from_lease(&ours.key, &ours.value, ours.create_revision),
        own_dual(),
    );
    assert!(changes.is_empty());
    assert_eq!(table.rejections()[&Rule::Ipv6SubnetOverlapsOwn], 1);
    // A lease rewritten with a hostile v6 half leaves the datapath whole.
    let mut hostile = copy.clone();
    hostile.value = String::from_utf8(hostile.value)
        .unwrap()
        .replace("fd77::3", "fe80::3")
        .into_bytes();
    let changes = table.put(
        &Claim::from_lease(&hostile.key, &hostile.value, hostile.create_revision),
        own_dual(),
    );
    assert!(
        matches!(changes[..], [PeerChange::Remove { subnet, .. }] if subnet == key("10.244.3.0/24")),
        "{changes:?}"
    );
    assert_eq!(table.rejections()[&Rule::PublicIpv6NotUnicast], 1);
}

#[test]
fn a_nodes_unreadable_v6_half_is_refused_in_dual_stack_and_ignored_in_v4_only() {
    let mut claim = node_claim("n2", "10.244.2.0/24", "192.168.77.2", 100);
    claim.attrs.as_mut().unwrap().backend_type = "vxlan".into();
    claim.attrs.as_mut().unwrap().backend_data = Some(crate::lease::VxlanBackendData {
        vni: 1,
        vtep_mac: MacAddr([0x0e, 1, 0, 0, 0, 2]),
    });
    claim.subnet_v6 = Err(Rejection::new(Rule::MalformedPodCidr, "bad IPv6 podCIDR"));
    let mut dual = dual_table();
    assert!(dual.put(&claim, own_dual()).is_empty());
    assert_eq!(dual.rejections()[&Rule::MalformedPodCidr], 1);
    let config =
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#)
            .unwrap();
    let mut v4_only = PeerTable::new(LeasePolicy::new(
        &config,
        Some(Ipv4Addr::new(192, 168, 77, 1)),
        None,
    ));
    let changes = v4_only.put(&claim, own_dual());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(v4_only.peers()[&key("10.244.2.0/24")].v6, None);
}

#[test]
fn a_younger_claim_on_an_accepted_v6_subnet_is_refused_event_by_event() {
    let mut table = dual_table();
    let first = dual_lease("10.244.2.0-24", "fd00:12:0:200::-56", 2, 5);
    // Another IPv4 subnet and v6 MAC; the same IPv6 subnet, then a wider
    // one (refused by its prefix before any overlap is looked at).
    let copy = dual_lease("10.244.3.0-24", "fd00:12:0:200::-56", 3, 9);
    let wider = dual_lease("10.244.4.0-24", "fd00:12::-52", 4, 10);
    for lease in [&first, &copy, &wider] {
        table.put_lease(
            &lease.key,
            &lease.value,
            lease.create_revision,
            own_dual().v4,
        );
    }
    assert_eq!(
        table.peers().keys().copied().collect::<Vec<_>>(),
        [key("10.244.2.0/24")]
    );
    assert_eq!(table.rejections()[&Rule::Ipv6SubnetOverlapsPeer], 1);
    assert_eq!(table.rejections()[&Rule::Ipv6SubnetWrongPrefix], 1);
}

/// An IPv6-only network's table (`EnableIPv4` false): no IPv4 address of
/// our own, our IPv6 one and flannel-v6 MAC.
fn ipv6_only_table() -> PeerTable {
    let config = NetworkConfig::parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:12::/48","IPv6SubnetLen":56,"Backend":{"Type":"vxlan","VNI":1}}"#,
    )
    .unwrap();
    PeerTable::new(LeasePolicy::new(&config, None, None).with_own_ipv6(
        Some("fd77::1".parse().unwrap()),
        Some(MacAddr([0x2e, 1, 0, 0, 0, 1])),
    ))
}

/// An IPv6-only Node's claim as `node_claim` reads flanneld's: its IPv4
/// half unreadable (no IPv4 podCIDR), host `host` at fd77::`host`.
fn ipv6_only_claim(name: &str, subnet_v6: &str, host: u8, created: i64) -> Claim {
    let attrs = crate::lease::LeaseAttrs {
        public_ip: Ipv4Addr::UNSPECIFIED,
        public_ipv6: Some(format!("fd77::{host}").parse().unwrap()),
        backend_type: "vxlan".into(),
        backend_data: None,
        backend_v6_data: Some(crate::lease::VxlanBackendData {
            vni: 1,
            vtep_mac: MacAddr([0x2e, 1, 0, 0, 0, host]),
        }),
    };
    Claim {
        id: format!("node/{name}"),
        subnet: Err(Rejection::new(Rule::MalformedPodCidr, "no IPv4 podCIDR")),
        subnet_v6: Ok(Some(subnet_v6.parse().unwrap())),
        attrs: Ok(attrs),
        age: created,
        fingerprint: u64::from(host),
    }
}

fn v6_key(text: &str) -> IpNet {
    IpNet::V6(text.parse().unwrap())
}

#[test]
fn an_ipv6_only_table_keys_peers_by_their_ipv6_subnet_and_ignores_ipv4_halves() {
    let own = OwnSubnets {
        v4: None,
        v6: Some("fd00:12:0:100::/56".parse().unwrap()),
    };
    let mut v6_only = ipv6_only_table();
    let changes = v6_only.put(&ipv6_only_claim("n2", "fd00:12:0:200::/56", 2, 100), own);
    assert!(
        matches!(&changes[..], [PeerChange::Upsert { subnet, peer }]
            if *subnet == v6_key("fd00:12:0:200::/56") && peer.v4.is_none()),
        "{changes:?}"
    );
    // A hostile IPv4 half is not looked at: an IPv6-only network uses none.
    let mut hostile = ipv6_only_claim("n3", "fd00:12:0:300::/56", 3, 110);
    hostile.subnet = Ok(net("10.96.0.0/12"));
    hostile.attrs.as_mut().unwrap().public_ip = Ipv4Addr::LOCALHOST;
    assert_eq!(v6_only.put(&hostile, own).len(), 1);
    assert_eq!(v6_only.peers()[&v6_key("fd00:12:0:300::/56")].v4, None);
    // Refused by the IPv6 rules: a younger claim on a subnet in use, our
    // own subnet, a claim without an IPv6 half.
    let younger = ipv6_only_claim("forged", "fd00:12:0:200::/56", 9, 200);
    assert!(v6_only.put(&younger, own).is_empty());
    let ours = ipv6_only_claim("n4", "fd00:12:0:100::/56", 4, 120);
    assert!(v6_only.put(&ours, own).is_empty());
    let mut no_v6 = ipv6_only_claim("n5", "fd00:12:0:500::/56", 5, 130);
    no_v6.subnet_v6 = Ok(None);
    no_v6.attrs.as_mut().unwrap().public_ipv6 = None;
    no_v6.attrs.as_mut().unwrap().backend_v6_data = None;
    assert!(v6_only.put(&no_v6, own).is_empty());
    assert_eq!(
        [
            Rule::Ipv6SubnetOverlapsPeer,
            Rule::Ipv6SubnetOverlapsOwn,
            Rule::Ipv6HalfIncomplete
        ]
        .map(|rule| v6_only.rejections().get(&rule).copied()),
        [Some(1), Some(1), Some(1)],
        "{:?}",
        v6_only.rejections()
    );
    assert_eq!(
        v6_only.peers().keys().copied().collect::<Vec<_>>(),
        [v6_key("fd00:12:0:200::/56"), v6_key("fd00:12:0:300::/56")]
    );
    // The older claimant goes: the younger one of its subnet is used now,
    // as for IPv4 subnets; then that one goes too, and the subnet with it.
    let changed = v6_only.delete("node/n2");
    assert!(
        matches!(&changed[..], [PeerChange::Upsert { subnet, peer }]
            if *subnet == v6_key("fd00:12:0:200::/56")
                && peer.v6.unwrap().public_ip.to_string() == "fd77::9"),
        "{changed:?}"
    );
    let removed = v6_only.delete("node/forged");
    assert!(
        matches!(&removed[..], [PeerChange::Remove { subnet, .. }]
            if *subnet == v6_key("fd00:12:0:200::/56")),
        "{removed:?}"
    );
    // The same claims in an IPv4 network: refused for their IPv4 half.
    let mut v4_table = table();
    assert!(
        v4_table
            .put(&ipv6_only_claim("n2", "fd00:12:0:200::/56", 2, 100), None)
            .is_empty()
    );
    assert_eq!(v4_table.rejections()[&Rule::MalformedPodCidr], 1);
}
