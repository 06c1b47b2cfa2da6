//! A Kubernetes Node as a claim: its podCIDR is the subnet, its flannel
//! annotations the lease value (`public-ip`, `backend-type`,
//! `backend-data`); in a dual-stack cluster its IPv6 podCIDR and the
//! `public-ipv6` and `backend-v6-data` annotations are the IPv6 half. Only Nodes flannel manages (`kube-subnet-manager:
//! "true"`) are claims. Parsing here only says what a value is; whether
//! the peer may be used is the peer table's judgement, by the same rules as
//! an etcd lease.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::{
    kubernetes::{AnnotationKeys, NodeRecord},
    lease::{
        LeaseAttrs, VxlanBackendData,
        claim::{Claim, fingerprint},
        validate::{MAX_VALUE_LEN, Rejection, Rule},
    },
};

/// The claim id of the Node named `name`.
pub fn id(name: &str) -> String {
    format!("node/{name}")
}

/// `node` as a claim; `None` if flannel does not manage it (yet).
pub fn claim(node: &NodeRecord, keys: &AnnotationKeys) -> Option<Claim> {
    let annotation = |key: &str| node.annotations.get(key).map(String::as_str);
    if annotation(&keys.kube_subnet_manager) != Some("true") {
        return None;
    }
    let values = [
        annotation(&keys.public_ip),
        annotation(&keys.backend_type),
        annotation(&keys.backend_data),
        annotation(&keys.public_ipv6),
        annotation(&keys.backend_v6_data),
    ];
    let (attrs, v4, v6) = match attrs(node, keys) {
        Ok(Annotated { attrs, v4, v6 }) => (Ok(attrs), v4, v6),
        Err(rejection) => (Err(rejection), Ok(()), Ok(())),
    };
    // Each half's podCIDR and annotations together: a network that does
    // not run a family ignores that half whole, however broken.
    let subnet = match (pod_cidr(node), v4) {
        (Err(reason), _) => Err(Rejection::new(Rule::MalformedPodCidr, reason)),
        (Ok(_), Err(rejection)) => Err(rejection),
        (Ok(subnet), Ok(_)) => Ok(subnet),
    };
    let subnet_v6 = match (pod_cidr_v6(node), v6) {
        (Err(reason), _) => Err(Rejection::new(Rule::MalformedPodCidr, reason)),
        (Ok(_), Err(rejection)) => Err(rejection),
        (Ok(subnet_v6), Ok(_)) => Ok(subnet_v6),
    };
    Some(Claim {
        id: id(&node.name),
        subnet,
        subnet_v6,
        attrs,
        age: node.created,
        fingerprint: fingerprint((node.pod_cidr.as_deref(), &node.pod_cidrs, values)),
    })
}

/// The Node's IPv6 podCIDR, if it has one, chosen as flanneld chooses it:
/// the first IPv6 entry of `spec.podCIDRs`, or `spec.podCIDR` when that
/// list is empty and it is IPv6. It must be a network address with its
/// prefix (`fd00:1:0:3::/64`).
pub fn pod_cidr_v6(node: &NodeRecord) -> Result<Option<Ipv6Net>, String> {
    let text = if node.pod_cidrs.is_empty() {
        node.pod_cidr.as_deref().filter(|cidr| cidr.contains(':'))
    } else {
        node.pod_cidrs
            .iter()
            .find(|cidr| cidr.contains(':'))
            .map(String::as_str)
    };
    let Some(text) = text else {
        return Ok(None);
    };
    let subnet: Ipv6Net = text.parse().map_err(|_| {
        format!(
            "IPv6 podCIDR {text:?} of Node {} is not an IPv6 prefix",
            node.name
        )
    })?;
    if subnet.trunc() != subnet {
        return Err(format!(
            "IPv6 podCIDR {text:?} of Node {} is not the start of a /{}",
            node.name,
            subnet.prefix_len()
        ));
    }
    Ok(Some(subnet))
}

/// The Node's IPv4 podCIDR, chosen as flanneld chooses it: the first IPv4
/// entry of `spec.podCIDRs`, or `spec.podCIDR` when that list is empty.
/// It must be a network address with its prefix (`10.244.3.0/24`).
pub fn pod_cidr(node: &NodeRecord) -> Result<Ipv4Net, String> {
    let text = if node.pod_cidrs.is_empty() {
        node.pod_cidr
            .as_deref()
            .ok_or_else(|| format!("Node {} has no podCIDR", node.name))?
    } else {
        node.pod_cidrs
            .iter()
            .find(|cidr| !cidr.contains(':'))
            .ok_or_else(|| {
                format!(
                    "Node {} has no IPv4 podCIDR in {:?}",
                    node.name, node.pod_cidrs
                )
            })?
    };
    let subnet: Ipv4Net = text.parse().map_err(|_| {
        format!(
            "podCIDR {text:?} of Node {} is not an IPv4 prefix",
            node.name
        )
    })?;
    if subnet.trunc() != subnet {
        return Err(format!(
            "podCIDR {text:?} of Node {} is not the start of a /{}",
            node.name,
            subnet.prefix_len()
        ));
    }
    Ok(subnet)
}

/// The lease value a Node's annotations announce, and whether its IPv4 and
/// its IPv6 annotations could be read (a network judges the halves of the
/// families it runs and ignores the others: an IPv6-only flanneld writes
/// no `public-ip` for vxlan, `0.0.0.0` for host-gw). A half that cannot be
/// read leaves its fields empty in the value.
fn attrs(node: &NodeRecord, keys: &AnnotationKeys) -> Result<Annotated, Rejection> {
    let malformed = |reason: String| Rejection::new(Rule::MalformedAnnotation, reason);
    let size: usize = [
        &keys.public_ip,
        &keys.backend_type,
        &keys.backend_data,
        &keys.public_ipv6,
        &keys.backend_v6_data,
    ]
    .iter()
    .filter_map(|key| node.annotations.get(key.as_str()))
    .map(String::len)
    .sum();
    if size > MAX_VALUE_LEN {
        return Err(Rejection::new(
            Rule::ValueTooLarge,
            format!("flannel's annotations are {size} bytes; at most {MAX_VALUE_LEN} are read"),
        ));
    }
    let get = |key: &str| {
        node.annotations
            .get(key)
            .ok_or_else(|| malformed(format!("no {key} annotation")))
    };
    let backend_type = get(&keys.backend_type)?.clone();
    let mut attrs = LeaseAttrs {
        public_ip: Ipv4Addr::UNSPECIFIED,
        public_ipv6: None,
        backend_type,
        backend_data: None,
        backend_v6_data: None,
    };
    let v4 = v4_attrs(node, keys, &mut attrs);
    let v6 = v6_attrs(node, keys, &mut attrs);
    Ok(Annotated { attrs, v4, v6 })
}

/// A Node's annotations read: the lease value, and whether each family's
/// half of it could be read.
struct Annotated {
    attrs: LeaseAttrs,
    v4: Result<(), Rejection>,
    v6: Result<(), Rejection>,
}

/// The IPv4 half's annotations into `attrs`: `public-ip` and
/// `backend-data` (VNI and VtepMAC for vxlan).
fn v4_attrs(
    node: &NodeRecord,
    keys: &AnnotationKeys,
    attrs: &mut LeaseAttrs,
) -> Result<(), Rejection> {
    let malformed = |reason: String| Rejection::new(Rule::MalformedAnnotation, reason);
    let public_ip = node
        .annotations
        .get(&keys.public_ip)
        .ok_or_else(|| malformed(format!("no {} annotation", keys.public_ip)))?;
    let public_ip: Ipv4Addr = public_ip.parse().map_err(|_| {
        malformed(format!(
            "{} {public_ip:?} is not an IPv4 address",
            keys.public_ip
        ))
    })?;
    let data = node.annotations.get(&keys.backend_data);
    attrs.backend_data = vxlan_data(&attrs.backend_type, data, &keys.backend_data)?;
    attrs.public_ip = public_ip;
    Ok(())
}

/// The IPv6 half's annotations into `attrs`: `public-ipv6` (absent on an
/// IPv4-only node) and `backend-v6-data` (`null` or absent without one,
/// as flanneld writes them).
fn v6_attrs(
    node: &NodeRecord,
    keys: &AnnotationKeys,
    attrs: &mut LeaseAttrs,
) -> Result<(), Rejection> {
    let malformed = |reason: String| Rejection::new(Rule::MalformedAnnotation, reason);
    if let Some(text) = node.annotations.get(&keys.public_ipv6) {
        let ip: Ipv6Addr = text.parse().map_err(|_| {
            malformed(format!(
                "{} {text:?} is not an IPv6 address",
                keys.public_ipv6
            ))
        })?;
        attrs.public_ipv6 = Some(ip);
    }
    if let Some(data) = node.annotations.get(&keys.backend_v6_data) {
        attrs.backend_v6_data = serde_json::from_str::<Option<VxlanBackendData>>(data)
            .map_err(|error| malformed(format!("{} {data:?}: {error}", keys.backend_v6_data)))?;
    }
    Ok(())
}

/// `backend-data` as the backend needs it: VNI and VtepMAC for vxlan;
/// any JSON (unused) for the others.
fn vxlan_data(
    backend_type: &str,
    data: Option<&String>,
    key: &str,
) -> Result<Option<VxlanBackendData>, Rejection> {
    let malformed = |reason: String| Rejection::new(Rule::MalformedAnnotation, reason);
    if backend_type == "vxlan" {
        let data =
            data.ok_or_else(|| malformed(format!("a vxlan Node needs a {key} annotation")))?;
        let parsed: Option<VxlanBackendData> = serde_json::from_str(data)
            .map_err(|error| malformed(format!("{key} {data:?}: {error}")))?;
        Ok(Some(parsed.ok_or_else(|| {
            malformed(format!("{key} is null; a vxlan Node needs VNI and VtepMAC"))
        })?))
    } else {
        // Other backends carry nothing weft uses; it must still be JSON.
        if let Some(data) = data {
            serde_json::from_str::<serde_json::Value>(data)
                .map_err(|error| malformed(format!("{key} {data:?}: {error}")))?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
