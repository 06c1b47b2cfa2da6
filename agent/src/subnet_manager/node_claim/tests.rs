use std::collections::BTreeMap;

use super::*;

const VTEP: &str = r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#;

fn keys() -> AnnotationKeys {
    AnnotationKeys::new("flannel.alpha.coreos.com").unwrap()
}

/// A Node as stock flanneld v0.20.2 leaves it.
fn node(name: &str, pod_cidr: &str) -> NodeRecord {
    let keys = keys();
    NodeRecord {
        name: name.into(),
        uid: format!("uid-{name}"),
        created: 1_700_000_000,
        pod_cidr: Some(pod_cidr.into()),
        pod_cidrs: vec![pod_cidr.into()],
        annotations: BTreeMap::from([
            (keys.backend_type.clone(), "vxlan".into()),
            (keys.backend_data.clone(), VTEP.into()),
            (keys.public_ip.clone(), "192.168.77.2".into()),
            (keys.kube_subnet_manager.clone(), "true".into()),
            ("node.alpha.kubernetes.io/ttl".into(), "0".into()),
        ]),
    }
}

fn rule(claim: &Claim) -> Option<Rule> {
    match (&claim.subnet, &claim.attrs) {
        (Err(rejection), _) | (_, Err(rejection)) => Some(rejection.rule),
        _ => None,
    }
}

#[test]
fn a_flanneld_node_is_the_claim_its_lease_would_be() {
    let claim = claim(&node("n2", "10.244.2.0/24"), &keys()).unwrap();
    assert_eq!(claim.id, "node/n2");
    assert_eq!(claim.subnet, Ok("10.244.2.0/24".parse().unwrap()));
    let lease = br#"{"PublicIP":"192.168.77.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    assert_eq!(claim.attrs, Ok(LeaseAttrs::from_json(lease).unwrap()));
    assert_eq!(claim.age, 1_700_000_000);
}

#[test]
fn only_nodes_flannel_manages_are_claims() {
    let keys = keys();
    let mut unmanaged = node("n2", "10.244.2.0/24");
    unmanaged.annotations.remove(&keys.kube_subnet_manager);
    assert_eq!(claim(&unmanaged, &keys), None);
    unmanaged
        .annotations
        .insert(keys.kube_subnet_manager.clone(), "false".into());
    assert_eq!(claim(&unmanaged, &keys), None);
}

#[test]
fn the_ipv4_pod_cidr_is_chosen_as_flanneld_chooses_it() {
    let mut dual = node("n2", "fd00:1::/64");
    dual.pod_cidrs = vec!["fd00:1::/64".into(), "10.244.7.0/24".into()];
    assert_eq!(pod_cidr(&dual), Ok("10.244.7.0/24".parse().unwrap()));
    // spec.podCIDR alone (an older API server's Node).
    let mut single = node("n2", "10.244.5.0/24");
    single.pod_cidrs.clear();
    assert_eq!(pod_cidr(&single), Ok("10.244.5.0/24".parse().unwrap()));
}

/// A hostile change to a Node, the rule it breaks, and what the reason says.
type Case = (
    &'static str,
    Box<dyn Fn(&mut NodeRecord)>,
    Rule,
    &'static str,
);

#[test]
fn hostile_values_are_rejected_by_rule_naming_the_annotation() {
    let keys = keys();
    let cases: Vec<Case> = vec![
        (
            "no podCIDR",
            Box::new(|node| {
                node.pod_cidr = None;
                node.pod_cidrs.clear();
            }),
            Rule::MalformedPodCidr,
            "has no podCIDR",
        ),
        (
            "podCIDR not a prefix",
            Box::new(|node| node.pod_cidrs = vec!["10.244.2.0".into()]),
            Rule::MalformedPodCidr,
            "not an IPv4 prefix",
        ),
        (
            "podCIDR with host bits",
            Box::new(|node| node.pod_cidrs = vec!["10.244.2.9/24".into()]),
            Rule::MalformedPodCidr,
            "not the start of a /24",
        ),
        (
            "IPv6 only",
            Box::new(|node| node.pod_cidrs = vec!["fd00::/64".into()]),
            Rule::MalformedPodCidr,
            "no IPv4 podCIDR",
        ),
        (
            "public-ip not an address",
            Box::new(|node| {
                node.annotations
                    .insert("flannel.alpha.coreos.com/public-ip".into(), "evil".into());
            }),
            Rule::MalformedAnnotation,
            "flannel.alpha.coreos.com/public-ip \"evil\" is not an IPv4 address",
        ),
        (
            "no backend-type",
            Box::new(|node| {
                node.annotations
                    .remove("flannel.alpha.coreos.com/backend-type");
            }),
            Rule::MalformedAnnotation,
            "no flannel.alpha.coreos.com/backend-type annotation",
        ),
        (
            "backend-data not JSON",
            Box::new(|node| {
                node.annotations
                    .insert("flannel.alpha.coreos.com/backend-data".into(), "{".into());
            }),
            Rule::MalformedAnnotation,
            "flannel.alpha.coreos.com/backend-data \"{\"",
        ),
        (
            "vxlan with null backend-data",
            Box::new(|node| {
                node.annotations.insert(
                    "flannel.alpha.coreos.com/backend-data".into(),
                    "null".into(),
                );
            }),
            Rule::MalformedAnnotation,
            "needs VNI and VtepMAC",
        ),
        (
            "huge annotation",
            Box::new(|node| {
                node.annotations.insert(
                    "flannel.alpha.coreos.com/backend-data".into(),
                    format!("\"{}\"", "x".repeat(5000)),
                );
            }),
            Rule::ValueTooLarge,
            "at most 4096",
        ),
    ];
    for (what, change, expected, reason) in cases {
        let mut hostile = node("n2", "10.244.2.0/24");
        change(&mut hostile);
        let claim = claim(&hostile, &keys).unwrap();
        assert_eq!(rule(&claim), Some(expected), "{what}: {claim:?}");
        let rejection = claim.subnet.as_ref().err().or(claim.attrs.as_ref().err());
        assert!(
            rejection.unwrap().reason.contains(reason),
            "{what}: {rejection:?} does not say {reason:?}"
        );
    }
}

#[test]
fn host_gw_nodes_carry_no_backend_data_and_a_changed_value_is_a_new_fingerprint() {
    let keys = keys();
    let mut host_gw = node("n3", "10.244.3.0/24");
    host_gw
        .annotations
        .insert(keys.backend_type.clone(), "host-gw".into());
    host_gw
        .annotations
        .insert(keys.backend_data.clone(), "null".into());
    let first = claim(&host_gw, &keys).unwrap();
    assert_eq!(first.attrs.as_ref().unwrap().backend_data, None);
    host_gw
        .annotations
        .insert(keys.public_ip.clone(), "192.168.77.9".into());
    assert_ne!(
        claim(&host_gw, &keys).unwrap().fingerprint,
        first.fingerprint
    );
}

/// A dual-stack Node as stock flanneld v0.20.2 (vxlan) leaves it.
fn dual_node(name: &str) -> NodeRecord {
    let keys = keys();
    let mut node = node(name, "10.244.2.0/24");
    node.pod_cidrs = vec!["10.244.2.0/24".into(), "fd00:12:0:2::/64".into()];
    node.annotations
        .insert(keys.public_ipv6.clone(), "fd50::2".into());
    node.annotations.insert(
        keys.backend_v6_data.clone(),
        r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:66"}"#.into(),
    );
    node
}

#[test]
fn a_dual_stack_node_is_the_claim_its_dual_stack_lease_would_be() {
    let claim = claim(&dual_node("n2"), &keys()).unwrap();
    assert_eq!(claim.subnet, Ok("10.244.2.0/24".parse().unwrap()));
    assert_eq!(
        claim.subnet_v6,
        Ok(Some("fd00:12:0:2::/64".parse().unwrap()))
    );
    let lease = br#"{"PublicIP":"192.168.77.2","PublicIPv6":"fd50::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:66"}}"#;
    assert_eq!(claim.attrs, Ok(LeaseAttrs::from_json(lease).unwrap()));
    // An IPv4-only Node: no IPv6 half.
    let v4 = claim_of(&node("n3", "10.244.3.0/24"));
    assert_eq!(v4.subnet_v6, Ok(None));
    assert_eq!(v4.attrs.unwrap().public_ipv6, None);
}

fn claim_of(node: &NodeRecord) -> Claim {
    claim(node, &keys()).unwrap()
}

#[test]
fn the_ipv6_pod_cidr_is_chosen_as_flanneld_chooses_it() {
    let mut dual = node("n2", "10.244.7.0/24");
    dual.pod_cidrs = vec!["10.244.7.0/24".into(), "fd00:1::/64".into()];
    assert_eq!(pod_cidr_v6(&dual), Ok(Some("fd00:1::/64".parse().unwrap())));
    dual.pod_cidrs.clear();
    dual.pod_cidr = Some("fd00:2::/64".into());
    assert_eq!(pod_cidr_v6(&dual), Ok(Some("fd00:2::/64".parse().unwrap())));
    dual.pod_cidr = Some("10.244.7.0/24".into());
    assert_eq!(pod_cidr_v6(&dual), Ok(None));
}

/// A hostile change to a dual-stack Node's IPv6 half, its rule and reason.
type V6Case = (Box<dyn Fn(&mut NodeRecord)>, Rule, &'static str);

#[test]
fn hostile_v6_halves_are_refused_by_rule_and_only_for_the_v6_half() {
    let keys = keys();
    let cases: Vec<V6Case> = vec![
        (
            Box::new(|node| node.pod_cidrs[1] = "fd00:12:0:2::1/64".into()),
            Rule::MalformedPodCidr,
            "IPv6 podCIDR \"fd00:12:0:2::1/64\" of Node n2 is not the start of a /64",
        ),
        (
            Box::new(|node| node.pod_cidrs[1] = "fd00:12:0:2::/129".into()),
            Rule::MalformedPodCidr,
            "is not an IPv6 prefix",
        ),
        (
            Box::new({
                let key = keys.public_ipv6.clone();
                move |node| {
                    node.annotations.insert(key.clone(), "192.168.77.2".into());
                }
            }),
            Rule::MalformedAnnotation,
            "flannel.alpha.coreos.com/public-ipv6 \"192.168.77.2\" is not an IPv6 address",
        ),
        (
            Box::new({
                let key = keys.backend_v6_data.clone();
                move |node| {
                    node.annotations
                        .insert(key.clone(), r#"{"VNI":1,"VtepMAC":"zz"}"#.into());
                }
            }),
            Rule::MalformedAnnotation,
            "flannel.alpha.coreos.com/backend-v6-data",
        ),
    ];
    for (change, rule, reason) in cases {
        let mut node = dual_node("n2");
        change(&mut node);
        let claim = claim_of(&node);
        // The IPv4 half still reads: an IPv4-only network uses it.
        assert!(claim.subnet.is_ok() && claim.attrs.is_ok(), "{claim:?}");
        let rejection = claim.subnet_v6.unwrap_err();
        assert_eq!(rejection.rule, rule);
        assert!(rejection.reason.contains(reason), "{}", rejection.reason);
    }
    // Oversized IPv6 annotations count towards the limit.
    let mut huge = dual_node("n2");
    huge.annotations
        .insert(keys.backend_v6_data.clone(), "x".repeat(5000));
    assert_eq!(rule(&claim_of(&huge)), Some(Rule::ValueTooLarge));
}

/// An IPv6-only Node as stock flanneld v0.20.2 leaves it: one IPv6
/// podCIDR, and for vxlan no `public-ip` or `backend-data` (its IPv4
/// backend data is `null`, so `AcquireLease` writes neither).
fn ipv6_only_node(name: &str) -> NodeRecord {
    let keys = keys();
    let mut node = dual_node(name);
    node.pod_cidr = Some("fd00:12:0:2::/64".into());
    node.pod_cidrs = vec!["fd00:12:0:2::/64".into()];
    node.annotations.remove(&keys.public_ip);
    node.annotations.remove(&keys.backend_data);
    node
}

#[test]
fn an_ipv6_only_node_has_an_ipv6_half_and_an_unreadable_ipv4_one() {
    let claim = claim_of(&ipv6_only_node("n2"));
    assert_eq!(
        claim.subnet_v6,
        Ok(Some("fd00:12:0:2::/64".parse().unwrap()))
    );
    let attrs = claim.attrs.unwrap();
    assert_eq!(attrs.public_ipv6, Some("fd50::2".parse().unwrap()));
    assert_eq!(
        attrs.backend_v6_data.map(|data| data.vtep_mac.to_string()),
        Some("c6:d2:32:6f:8f:66".to_owned())
    );
    // The IPv4 half: what an IPv6-only network ignores and any other
    // network refuses, naming why.
    assert_eq!(attrs.public_ip, std::net::Ipv4Addr::UNSPECIFIED);
    assert_eq!(attrs.backend_data, None);
    let rejection = claim.subnet.unwrap_err();
    assert_eq!(rejection.rule, Rule::MalformedPodCidr);
    assert!(
        rejection.reason.contains("has no IPv4 podCIDR"),
        "{}",
        rejection.reason
    );
    // With an IPv4 podCIDR but no IPv4 annotations, the annotation is named.
    let mut no_public_ip = ipv6_only_node("n3");
    no_public_ip.pod_cidrs.insert(0, "10.244.3.0/24".into());
    let rejection = claim_of(&no_public_ip).subnet.unwrap_err();
    assert_eq!(rejection.rule, Rule::MalformedAnnotation);
    assert!(
        rejection
            .reason
            .contains("no flannel.alpha.coreos.com/public-ip annotation"),
        "{}",
        rejection.reason
    );
}
