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
