//! Property tests of what weft reads from etcd and the API server, where
//! flannel has fuzz tests: lease keys, lease values, Nodes (podCIDRs and
//! annotations), the peer table they build, and the network config
//! (net-conf.json). Every input is hostile: whatever the
//! bytes, parsing returns a value or an error, never panics, and what is
//! accepted obeys the rules `validate.rs` and `config.rs` state.
//!
//! No privileges, no etcd: the agent's own parsing and `PeerTable`, run on
//! generated inputs. Case counts are bounded so the file runs in seconds.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use weft_agent::{
    config::NetworkConfig,
    kubernetes::{AnnotationKeys, NodeRecord},
    lease::{
        LeaseAttrs, LeaseSubnets, MacAddr, VxlanBackendData,
        claim::Claim,
        key, key_name,
        peers::{PeerChange, PeerTable},
        subnet_of_key, subnets_of_key,
        validate::{AcceptedPeer, LeasePolicy, OwnSubnets},
    },
    subnet_manager::node_claim,
};

const PREFIX: &str = "/coreos.com/network";

/// The IPv4 subnet an IPv4 network's peer table keys a peer by.
fn v4_key(key: &IpNet) -> Ipv4Net {
    match key {
        IpNet::V4(subnet) => *subnet,
        IpNet::V6(subnet) => panic!("an IPv6 key {subnet} in an IPv4 network"),
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // A failure is shrunk to a small case, and the seed is printed
        // (not persisted: the test crate has no source-tree regression file).
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An address drawn mostly from the ranges the rules care about: the
/// network, this node, special-purpose blocks, and anything at all.
fn address() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (0u8..=255, 0u8..=255).prop_map(|(c, d)| Ipv4Addr::new(10, 244, c, d)),
        (0u8..=255).prop_map(|d| Ipv4Addr::new(192, 168, 77, d)),
        Just(Ipv4Addr::new(192, 168, 77, 1)),
        Just(Ipv4Addr::UNSPECIFIED),
        Just(Ipv4Addr::BROADCAST),
        Just(Ipv4Addr::new(127, 0, 0, 1)),
        Just(Ipv4Addr::new(169, 254, 169, 254)),
        Just(Ipv4Addr::new(224, 0, 0, 1)),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn subnet() -> impl Strategy<Value = Ipv4Net> {
    prop_oneof![
        4 => (0u8..=255).prop_map(|c| Ipv4Net::new(Ipv4Addr::new(10, 244, c, 0), 24).unwrap()),
        1 => (address(), 0u8..=32).prop_map(|(ip, len)| Ipv4Net::new(ip, len).unwrap().trunc()),
    ]
}

fn mac() -> impl Strategy<Value = MacAddr> {
    prop_oneof![
        // A handful of MACs, so clashes between leases happen.
        (0u8..4).prop_map(|n| MacAddr([0x0e, 1, 0, 0, 0, n])),
        Just(MacAddr([0x0e, 1, 192, 168, 77, 1])),
        Just(MacAddr([0; 6])),
        Just(MacAddr([0xff; 6])),
        any::<[u8; 6]>().prop_map(MacAddr),
    ]
}

/// Lease attributes: half the time a lease that passes the per-lease rules
/// of one network or the other (a peer's address, a small set of VTEP MACs,
/// so clashes happen), else anything.
fn attrs() -> impl Strategy<Value = LeaseAttrs> {
    let plausible = (2u8..=254, any::<bool>(), 0u8..4).prop_map(|(host, vxlan, mac)| {
        let public_ip = Ipv4Addr::new(192, 168, 77, host);
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: if vxlan { "vxlan" } else { "host-gw" }.to_owned(),
            backend_data: vxlan.then_some(VxlanBackendData {
                vni: 1,
                vtep_mac: MacAddr([0x0e, 1, 0, 0, 0, mac]),
            }),
            backend_v6_data: None,
        }
    });
    prop_oneof![plausible, any_attrs()]
}

fn any_attrs() -> impl Strategy<Value = LeaseAttrs> {
    let backend_type = prop_oneof![
        Just("vxlan".to_owned()),
        Just("host-gw".to_owned()),
        Just("udp".to_owned()),
        "[a-z-]{0,8}",
    ];
    let data = proptest::option::of(
        (prop_oneof![Just(1u32), any::<u32>()], mac())
            .prop_map(|(vni, vtep_mac)| VxlanBackendData { vni, vtep_mac }),
    );
    (address(), backend_type, data).prop_map(|(public_ip, backend_type, backend_data)| LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type,
        backend_data,
        backend_v6_data: None,
    })
}

/// A lease value: well-formed JSON of generated attributes, the same with
/// bytes flipped or cut, or arbitrary bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => attrs().prop_map(|attrs| attrs.to_json().into_bytes()),
        2 => (attrs(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(attrs, at, byte)| {
            let mut bytes = attrs.to_json().into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            bytes
        }),
        1 => (attrs(), any::<prop::sample::Index>()).prop_map(|(attrs, at)| {
            let mut bytes = attrs.to_json().into_bytes();
            bytes.truncate(at.index(bytes.len()));
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// A lease key: well-formed for a generated subnet, or mangled.
fn lease_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => subnet().prop_map(|subnet| key(PREFIX, &subnet)),
        1 => (address(), 0u8..=40).prop_map(|(ip, len)| format!("{PREFIX}/subnets/{ip}-{len}")),
        1 => "[0-9./-]{0,24}".prop_map(|tail| format!("{PREFIX}/subnets/{tail}")),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any string: a subnet or an error, never a panic; an accepted key
    /// names its subnet canonically (the key a lease for it is written at).
    #[test]
    fn lease_keys_parse_to_the_subnet_they_name_or_are_refused(key in lease_key()) {
        if let Ok(subnet) = subnet_of_key(&key) {
            prop_assert_eq!(subnet, subnet.trunc());
            let name = key_name(&subnet);
            let canonical = key.ends_with(&format!("/{name}")) || key == name;
            prop_assert!(canonical, "{:?} parsed to {}", key, subnet);
        }
    }

    /// Every subnet's key parses back to the subnet.
    #[test]
    fn lease_keys_round_trip(subnet in subnet()) {
        prop_assert_eq!(subnet_of_key(&key(PREFIX, &subnet)).unwrap(), subnet);
    }

    /// Any bytes: attributes or an error, never a panic. Accepted values
    /// speak a backend weft speaks (vxlan with its BackendData, or host-gw)
    /// and write back to JSON that parses to the same attributes.
    #[test]
    fn lease_values_parse_to_a_backend_weft_speaks_or_are_refused(value in value()) {
        if let Ok(attrs) = LeaseAttrs::from_json(&value) {
            match attrs.backend_type.as_str() {
                "vxlan" => prop_assert!(attrs.backend_data.is_some()),
                "host-gw" => {}
                other => prop_assert!(false, "accepted BackendType {other:?}"),
            }
            let again = LeaseAttrs::from_json(attrs.to_json().as_bytes()).unwrap();
            prop_assert_eq!(again, attrs);
        }
    }

    /// The peer table after any sequence of puts and deletes of hostile
    /// leases: every peer passes the per-lease rules, no two peers overlap
    /// or share a VTEP MAC, our own subnet is never a peer, the changes it
    /// reported add up to the table, and a full listing of the same keys
    /// gives the same table (events and resyncs agree).
    #[test]
    fn peer_tables_hold_only_leases_that_pass_every_rule(
        events in prop::collection::vec(
            (lease_key(), proptest::option::of(value())),
            1..24,
        ),
        vxlan in any::<bool>(),
    ) {
        let network = if vxlan {
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#
        } else {
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#
        };
        let network = NetworkConfig::parse(network).unwrap();
        let our_ip = Ipv4Addr::new(192, 168, 77, 1);
        let our_mac = vxlan.then_some(MacAddr([0x0e, 1, 192, 168, 77, 1]));
        let own: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let policy = LeasePolicy::new(&network, Some(our_ip), our_mac);
        let mut table = PeerTable::new(policy.clone());
        // What the store holds after each event: key -> (value, revision).
        let mut store: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
        // The peer set the reported changes describe.
        let mut reported: BTreeMap<IpNet, AcceptedPeer> = BTreeMap::new();
        for (revision, (key, value)) in (1..).zip(events) {
            let changes = match value {
                Some(value) => {
                    let created = store.get(&key).map_or(revision, |(_, created)| *created);
                    store.insert(key.clone(), (value.clone(), created));
                    table.put(&Claim::from_lease(&key, &value, created), Some(own))
                }
                None => {
                    store.remove(&key);
                    table.delete(&key)
                }
            };
            for change in changes {
                match change {
                    PeerChange::Upsert { subnet, peer } => {
                        reported.insert(subnet, peer);
                    }
                    PeerChange::Remove { subnet, peer } => {
                        prop_assert_eq!(reported.remove(&subnet), Some(peer));
                    }
                }
            }
        }
        let peers = table.peers();
        prop_assert_eq!(&reported, peers);
        let mut macs = BTreeMap::new();
        for (key, peer) in peers {
            // An IPv4 network keys its peers by their IPv4 subnet.
            let subnet = &v4_key(key);
            // The peer is what the rules make of a value the store holds
            // for its subnet (two keys can name one subnet: `-24`, `-024`).
            let made_by_rules = store
                .iter()
                .filter(|(key, _)| subnet_of_key(key).ok() == Some(*subnet))
                .filter_map(|(_, (value, _))| LeaseAttrs::from_json(value).ok())
                .any(|attrs| {
                    policy.check_claim(Some(*subnet), None, &attrs, OwnSubnets::from(Some(own)))
                        == Ok((*key, *peer))
                });
            prop_assert!(made_by_rules, "{} {:?} is no stored value's judgement", subnet, peer);
            prop_assert!(!own.contains(&subnet.network()) && !subnet.contains(&own.network()));
            for other in peers.keys().filter(|other| *other != key).map(v4_key) {
                prop_assert!(!subnet.contains(&other.network()), "{subnet} overlaps {other}");
            }
            if let Some(mac) = peer.vtep_mac() {
                prop_assert!(
                    macs.insert(mac, *subnet).is_none(),
                    "two peers with VtepMAC {}", mac
                );
            }
        }
        let listing: Vec<Claim> = store
            .into_iter()
            .map(|(key, (value, create_revision))| Claim::from_lease(&key, &value, create_revision))
            .collect();
        let mut fresh = PeerTable::new(policy);
        fresh.resync(&listing, Some(own));
        prop_assert_eq!(fresh.peers(), peers);
    }
}

/// A Node as the API server could hold it: flannel's annotations generated
/// from lease attributes (or mangled, or missing), podCIDRs well-formed,
/// mangled, IPv6 or absent, and anything else a forger could write.
fn node() -> impl Strategy<Value = NodeRecord> {
    let annotation = |attrs: LeaseAttrs| {
        let data = serde_json::to_string(&attrs.backend_data).unwrap();
        (attrs.public_ip.to_string(), attrs.backend_type, data)
    };
    let text = prop_oneof![Just(String::new()), "[ -~]{0,12}", any::<String>()];
    let value = prop_oneof![6 => attrs().prop_map(annotation), 1 => (text.clone(), text.clone(), text.clone())];
    let pod_cidr = prop_oneof![
        4 => subnet().prop_map(|subnet| subnet.to_string()),
        1 => (address(), 0u8..=40).prop_map(|(ip, len)| format!("{ip}/{len}")),
        1 => Just("fd00:1::/64".to_owned()),
        1 => text.clone(),
    ];
    (
        "[a-z][a-z0-9-]{0,8}",
        any::<i64>(),
        proptest::option::of(pod_cidr.clone()),
        prop::collection::vec(pod_cidr, 0..3),
        proptest::option::of(value),
        prop_oneof![
            Just(Some("true".to_owned())),
            Just(None),
            proptest::option::of(text)
        ],
    )
        .prop_map(|(name, created, pod_cidr, pod_cidrs, value, managed)| {
            let keys = AnnotationKeys::new("flannel.alpha.coreos.com").unwrap();
            let mut annotations = BTreeMap::new();
            if let Some((public_ip, backend_type, data)) = value {
                annotations.insert(keys.public_ip.clone(), public_ip);
                annotations.insert(keys.backend_type.clone(), backend_type);
                annotations.insert(keys.backend_data.clone(), data);
            }
            if let Some(managed) = managed {
                annotations.insert(keys.kube_subnet_manager.clone(), managed);
            }
            NodeRecord {
                uid: format!("uid-{name}"),
                name,
                created,
                pod_cidr,
                pod_cidrs,
                annotations,
            }
        })
}

proptest! {
    #![proptest_config(config())]

    /// Any Node: a claim, no claim (flannel does not manage it) or a
    /// rejection naming its rule, never a panic. A Node whose annotations
    /// are exactly what flanneld writes for a lease claims that lease's
    /// value (when its IPv4 half reads); an accepted podCIDR is canonical.
    #[test]
    fn nodes_become_the_claim_their_annotations_say_or_are_refused(node in node()) {
        let keys = AnnotationKeys::new("flannel.alpha.coreos.com").unwrap();
        let claim = node_claim::claim(&node, &keys);
        let managed = node.annotations.get(&keys.kube_subnet_manager).map(String::as_str) == Some("true");
        prop_assert_eq!(claim.is_some(), managed);
        let Some(claim) = claim else { return Ok(()) };
        prop_assert_eq!(&claim.id, &format!("node/{}", node.name));
        if let Ok(subnet) = &claim.subnet {
            prop_assert_eq!(*subnet, subnet.trunc());
        }
        // The IPv4 annotations belong to the IPv4 half: when it reads (the
        // podCIDR and `public-ip`, `backend-data`), the value is what a
        // lease with the same value would parse to.
        if let (Ok(attrs), Ok(_)) = (&claim.attrs, &claim.subnet) {
            let spoken = ["vxlan", "host-gw"].contains(&attrs.backend_type.as_str());
            let as_lease = LeaseAttrs::from_json(attrs.to_json().as_bytes()).ok();
            prop_assert_eq!(as_lease.as_ref(), spoken.then_some(attrs));
            prop_assert_eq!(&attrs.public_ip.to_string(), &node.annotations[&keys.public_ip]);
        }
    }

    /// A peer table fed Nodes holds only peers that pass every rule, and
    /// events agree with a listing of the same Nodes, as for etcd leases.
    #[test]
    fn peer_tables_fed_nodes_agree_with_a_listing(nodes in prop::collection::vec(node(), 1..16)) {
        let keys = AnnotationKeys::new("flannel.alpha.coreos.com").unwrap();
        let network = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#).unwrap();
        let own: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let policy = LeasePolicy::new(&network, Some(Ipv4Addr::new(192, 168, 77, 1)), Some(MacAddr([0x0e, 1, 192, 168, 77, 1])))
            .for_pod_cidrs(Some(own.prefix_len()));
        let mut table = PeerTable::new(policy.clone());
        // Later Nodes of one name replace earlier ones, as updates do.
        let mut current = BTreeMap::new();
        for node in &nodes {
            match node_claim::claim(node, &keys) {
                Some(claim) => table.put(&claim, Some(own)),
                None => table.delete(&format!("node/{}", node.name)),
            };
            current.insert(node.name.clone(), node.clone());
        }
        let network = network.ipv4.expect("IPv4 on").network;
        for (key, peer) in table.peers() {
            let subnet = v4_key(key);
            prop_assert!(network.contains(&subnet) && subnet.prefix_len() == 24);
            prop_assert!(!own.contains(&subnet.network()) && !subnet.contains(&own.network()));
            prop_assert!(peer.v4.expect("an IPv4 half").public_ip != Ipv4Addr::new(192, 168, 77, 1));
        }
        let listing: Vec<_> = current.values().filter_map(|node| node_claim::claim(node, &keys)).collect();
        let mut fresh = PeerTable::new(policy);
        fresh.resync(&listing, Some(own));
        prop_assert_eq!(fresh.peers(), table.peers());
    }
}

/// A net-conf.json: generated objects with each field present, absent, of
/// the wrong type or out of range, in any key case; the same with bytes
/// flipped; or any string.
fn net_conf() -> impl Strategy<Value = String> {
    let network = prop_oneof![
        (subnet()).prop_map(|net| serde_json::json!(net.to_string())),
        (address(), 0u8..=40).prop_map(|(ip, len)| serde_json::json!(format!("{ip}/{len}"))),
        // The ends of the address space, where sizes overflow.
        Just(serde_json::json!("0.0.0.0/0")),
        (0u8..=32).prop_map(|len| serde_json::json!(format!("255.255.255.255/{len}"))),
        Just(serde_json::json!(42)),
        Just(serde_json::Value::Null),
    ];
    let number = || {
        prop_oneof![
            Just(serde_json::Value::Null),
            (0u64..40).prop_map(|n| serde_json::json!(n)),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!("24")),
        ]
    };
    let bound = prop_oneof![
        Just(serde_json::Value::Null),
        address().prop_map(|ip| serde_json::json!(ip.to_string())),
        Just(serde_json::json!("not an address")),
    ];
    let backend = (
        prop_oneof![
            Just(serde_json::json!("vxlan")),
            Just(serde_json::json!("host-gw")),
            Just(serde_json::json!("udp")),
            Just(serde_json::Value::Null),
        ],
        number(),
        number(),
        number(),
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(|b| serde_json::json!(b)),
            Just(serde_json::json!("yes")),
        ],
    )
        .prop_map(|(kind, vni, port, mtu, direct)| {
            serde_json::json!({"Type": kind, "VNI": vni, "Port": port, "MTU": mtu, "DirectRouting": direct})
        });
    let object = (
        network,
        number(),
        bound.clone(),
        bound,
        prop_oneof![4 => backend, 1 => Just(serde_json::json!("vxlan"))],
        any::<bool>(),
    )
        .prop_map(|(network, len, min, max, backend, lower)| {
            let text = serde_json::json!({
                "Network": network, "SubnetLen": len, "SubnetMin": min,
                "SubnetMax": max, "Backend": backend,
            })
            .to_string();
            // Go's encoding/json (and weft) match keys in any case.
            if lower { text.to_lowercase() } else { text }
        });
    prop_oneof![
        6 => object.clone(),
        2 => (object, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(text, at, byte)| {
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            String::from_utf8_lossy(&bytes).into_owned()
        }),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any text: a config or an error, never a panic. An accepted config
    /// hands out at least one subnet, all of SubnetLen inside Network, from
    /// SubnetMin to SubnetMax, and a VNI that fits VXLAN's 24 bits.
    #[test]
    fn net_conf_parses_to_a_config_that_hands_out_subnets_or_is_refused(text in net_conf()) {
        let Ok(config) = NetworkConfig::parse(&text) else {
            return Ok(());
        };
        // The texts leave EnableIPv4 at its default: on.
        prop_assert!(config.ipv4.is_some());
        let ipv4 = config.ipv4.as_ref().expect("IPv4 on");
        prop_assert!(ipv4.subnet_len <= 30);
        prop_assert!(ipv4.subnet_len >= ipv4.network.prefix_len() + 2);
        prop_assert!(ipv4.subnet_min <= ipv4.subnet_max);
        let first = ipv4.subnets().next().unwrap();
        prop_assert_eq!(first.network(), ipv4.subnet_min);
        for subnet in [first, Ipv4Net::new(ipv4.subnet_max, ipv4.subnet_len).unwrap()] {
            prop_assert!(ipv4.network.contains(&subnet), "{subnet} outside {}", ipv4.network);
            prop_assert!(ipv4.fits(&subnet));
            prop_assert_eq!(subnet, subnet.trunc());
        }
        if let Some(vni) = config.backend.vni() {
            prop_assert!(vni > 0 && vni < 1 << 24);
        }
    }
}

// Dual-stack (issue #23): IPv6 halves of keys, values and the peer table.

/// An IPv6 address drawn from the ranges the IPv6 rules care about: the
/// IPv6 network, this node, the underlay, special-purpose blocks, anything.
fn address_v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        // Mostly peers' underlay addresses, so whole peers are common.
        8 => (2u16..16).prop_map(|n| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, n)),
        1 => Just(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1)),
        1 => any::<u16>().prop_map(|n| Ipv6Addr::new(0xfd00, 0x12, 0, n, 0, 0, 0, 1)),
        1 => Just(Ipv6Addr::UNSPECIFIED),
        1 => Just(Ipv6Addr::LOCALHOST),
        1 => Just("ff02::1".parse().unwrap()),
        1 => Just("fe80::1".parse().unwrap()),
        1 => any::<u32>().prop_map(|v4| Ipv4Addr::from(v4).to_ipv6_mapped()),
        1 => any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

fn subnet_v6() -> impl Strategy<Value = Ipv6Net> {
    prop_oneof![
        // A few subnets, so IPv6 clashes between leases happen.
        4 => (0u16..8).prop_map(|n| Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x12, 0, n << 8, 0, 0, 0, 0), 56).unwrap()),
        1 => (address_v6(), 0u8..=128).prop_map(|(ip, len)| Ipv6Net::new(ip, len).unwrap().trunc()),
    ]
}

/// A dual-stack lease value: mostly a peer as flanneld writes it (a few
/// IPv6 addresses and v6 VTEP MACs, so clashes happen), with each IPv6
/// field dropped or hostile at times.
fn dual_attrs() -> impl Strategy<Value = LeaseAttrs> {
    // A vxlan peer's IPv4 half that passes, most of the time.
    let v4_half = (2u8..=254, 0u8..16).prop_map(|(host, mac)| LeaseAttrs {
        public_ip: Ipv4Addr::new(192, 168, 77, host),
        public_ipv6: None,
        backend_type: "vxlan".to_owned(),
        backend_data: Some(VxlanBackendData {
            vni: 1,
            vtep_mac: MacAddr([0x0e, 1, 0, 0, 1, mac]),
        }),
        backend_v6_data: None,
    });
    (
        prop_oneof![4 => v4_half, 1 => attrs()],
        proptest::option::weighted(0.9, address_v6()),
        proptest::option::weighted(
            0.9,
            (
                prop_oneof![8 => Just(1u32), 1 => any::<u32>()],
                prop_oneof![
                    8 => (0u8..16).prop_map(|n| MacAddr([0x0e, 6, 0, 0, 0, n])),
                    1 => Just(MacAddr([0x0e, 6, 192, 168, 77, 1])),
                    1 => mac(),
                ],
            )
                .prop_map(|(vni, vtep_mac)| VxlanBackendData { vni, vtep_mac }),
        ),
    )
        .prop_map(|(attrs, public_ipv6, backend_v6_data)| LeaseAttrs {
            public_ipv6,
            backend_v6_data,
            ..attrs
        })
}

/// A dual-stack key: `<v4>&<v6>` for generated subnets, an IPv4-only one,
/// or mangled IPv6 halves.
fn dual_lease_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (subnet(), subnet_v6()).prop_map(|(v4, v6)| weft_agent::lease::lease_key(PREFIX, &LeaseSubnets { v4, v6: Some(v6) })),
        2 => subnet().prop_map(|subnet| key(PREFIX, &subnet)),
        1 => (subnet(), "[0-9a-fA-F:.&-]{0,24}").prop_map(|(v4, tail)| format!("{}&{tail}", key(PREFIX, &v4))),
        1 => (subnet(), address_v6(), 0u8..=140).prop_map(|(v4, ip, len)| format!("{}&{ip}-{len}", key(PREFIX, &v4))),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any dual-stack key: subnets or an error, never a panic; accepted
    /// keys name their subnets as flanneld writes them (the key a lease
    /// for them is written at), and every pair of subnets round-trips.
    #[test]
    fn dual_stack_keys_parse_to_the_subnets_they_name_or_are_refused(
        key in dual_lease_key(),
        v4 in subnet(),
        v6 in subnet_v6(),
    ) {
        if let Ok(subnets) = subnets_of_key(&key) {
            prop_assert_eq!(subnets.v4, subnets.v4.trunc());
            if let Some(v6) = subnets.v6 {
                prop_assert_eq!(v6, v6.trunc());
                prop_assert!(key.ends_with(&format!("/{}", subnets.key_name())), "{:?} parsed to {}", key, subnets);
            }
        }
        // An IPv4-mapped start is spelled `::ffff:a.b.c.d`, which is not
        // a key flanneld can read either (config.rs refuses such networks,
        // and those inside ::/96).
        prop_assume!(v6.network().to_ipv4_mapped().is_none() && u128::from(v6.network()) >> 32 != 0);
        let subnets = LeaseSubnets { v4, v6: Some(v6) };
        prop_assert_eq!(subnets_of_key(&weft_agent::lease::lease_key(PREFIX, &subnets)).unwrap(), subnets);
    }

    /// Dual-stack values round-trip through JSON as flanneld writes them.
    #[test]
    fn dual_stack_values_round_trip(attrs in dual_attrs()) {
        if let Ok(parsed) = LeaseAttrs::from_json(attrs.to_json().as_bytes()) {
            prop_assert_eq!(&parsed, &attrs);
            prop_assert_eq!(parsed.to_json(), attrs.to_json());
        }
    }

    /// The dual-stack peer table after any sequence of puts and deletes of
    /// hostile dual-stack leases: every peer's IPv6 half passes the IPv6
    /// rules, no two peers' IPv6 subnets overlap or share a v6 VTEP MAC,
    /// our own IPv6 subnet, address and MAC are never a peer's, a peer
    /// without an IPv6 half came from a lease without one, and a listing
    /// of the same keys gives the same table.
    #[test]
    fn dual_stack_peer_tables_hold_only_whole_peers_that_pass_every_rule(
        events in prop::collection::vec(
            (dual_lease_key(), proptest::option::of(dual_attrs().prop_map(|attrs| attrs.to_json().into_bytes()))),
            1..24,
        ),
    ) {
        let network = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:12::/48","IPv6SubnetLen":56,"Backend":{"Type":"vxlan","VNI":1}}"#,
        ).unwrap();
        let ipv6 = network.ipv6.clone().unwrap();
        let our_ipv6: Ipv6Addr = "fd77::1".parse().unwrap();
        let our_v6_mac = MacAddr([0x0e, 6, 192, 168, 77, 1]);
        let own = OwnSubnets {
            v4: Some("10.244.1.0/24".parse().unwrap()),
            v6: Some("fd00:12:0:100::/56".parse().unwrap()),
        };
        let policy = LeasePolicy::new(&network, Some(Ipv4Addr::new(192, 168, 77, 1)), Some(MacAddr([0x0e, 1, 192, 168, 77, 1])))
            .with_own_ipv6(Some(our_ipv6), Some(our_v6_mac));
        let mut table = PeerTable::new(policy.clone());
        let mut store: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
        for (revision, (key, value)) in (1..).zip(events) {
            match value {
                Some(value) => {
                    let created = store.get(&key).map_or(revision, |(_, created)| *created);
                    store.insert(key.clone(), (value.clone(), created));
                    table.put(&Claim::from_lease(&key, &value, created), own);
                }
                None => {
                    store.remove(&key);
                    table.delete(&key);
                }
            }
        }
        let peers = table.peers();
        let mut v6_macs = BTreeMap::new();
        let mut v6_subnets: Vec<Ipv6Net> = Vec::new();
        for (key, peer) in peers {
            let subnet = &v4_key(key);
            let made_by_rules = store
                .iter()
                .filter_map(|(key, (value, _))| Some((subnets_of_key(key).ok()?, LeaseAttrs::from_json(value).ok()?)))
                .filter(|(subnets, _)| subnets.v4 == *subnet)
                .any(|(subnets, attrs)| {
                    policy.check_claim(Some(*subnet), subnets.v6, &attrs, own) == Ok((*key, *peer))
                });
            prop_assert!(made_by_rules, "{} {:?} is no stored value's judgement", subnet, peer);
            let Some(v6) = peer.v6 else { continue };
            prop_assert!(ipv6.network.contains(&v6.subnet) && ipv6.fits(&v6.subnet), "{}", v6.subnet);
            let own_v6 = own.v6.unwrap();
            prop_assert!(!own_v6.contains(&v6.subnet.network()) && !v6.subnet.contains(&own_v6.network()));
            prop_assert!(v6.public_ip != our_ipv6 && !ipv6.network.contains(&v6.public_ip));
            prop_assert!(!v6.public_ip.is_multicast() && !v6.public_ip.is_loopback() && !v6.public_ip.is_unspecified());
            prop_assert!(!v6.public_ip.is_unicast_link_local() && v6.public_ip.to_ipv4_mapped().is_none());
            for other in &v6_subnets {
                prop_assert!(!other.contains(&v6.subnet.network()) && !v6.subnet.contains(&other.network()), "{} overlaps {}", v6.subnet, other);
            }
            v6_subnets.push(v6.subnet);
            if let Some(mac) = peer.vtep_v6_mac() {
                prop_assert!(mac != our_v6_mac);
                prop_assert!(v6_macs.insert(mac, *subnet).is_none(), "two peers with v6 VtepMAC {}", mac);
            }
        }
        let listing: Vec<Claim> = store
            .into_iter()
            .map(|(key, (value, create_revision))| Claim::from_lease(&key, &value, create_revision))
            .collect();
        let mut fresh = PeerTable::new(policy);
        fresh.resync(&listing, own);
        prop_assert_eq!(fresh.peers(), peers);
    }
}
