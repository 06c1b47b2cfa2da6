//! A Kubernetes Node as a claim: its podCIDR is the subnet, its flannel
//! annotations the lease value (`public-ip`, `backend-type`,
//! `backend-data`). Only Nodes flannel manages (`kube-subnet-manager:
//! "true"`) are claims. Parsing here only says what a value is; whether
//! the peer may be used is the peer table's judgement, by the same rules as
//! an etcd lease.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

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
    ];
    Some(Claim {
        id: id(&node.name),
        subnet: pod_cidr(node).map_err(|reason| Rejection::new(Rule::MalformedPodCidr, reason)),
        attrs: attrs(node, keys),
        age: node.created,
        fingerprint: fingerprint((node.pod_cidr.as_deref(), &node.pod_cidrs, values)),
    })
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

/// The lease value a Node's annotations announce.
fn attrs(node: &NodeRecord, keys: &AnnotationKeys) -> Result<LeaseAttrs, Rejection> {
    let malformed = |reason: String| Rejection::new(Rule::MalformedAnnotation, reason);
    let size: usize = [&keys.public_ip, &keys.backend_type, &keys.backend_data]
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
    let public_ip = get(&keys.public_ip)?;
    let public_ip: Ipv4Addr = public_ip.parse().map_err(|_| {
        malformed(format!(
            "{} {public_ip:?} is not an IPv4 address",
            keys.public_ip
        ))
    })?;
    let backend_type = get(&keys.backend_type)?.clone();
    let data = node.annotations.get(&keys.backend_data);
    let backend_data = if backend_type == "vxlan" {
        let data = data.ok_or_else(|| {
            malformed(format!(
                "a vxlan Node needs a {} annotation",
                keys.backend_data
            ))
        })?;
        let parsed: Option<VxlanBackendData> = serde_json::from_str(data)
            .map_err(|error| malformed(format!("{} {data:?}: {error}", keys.backend_data)))?;
        Some(parsed.ok_or_else(|| {
            malformed(format!(
                "{} is null; a vxlan Node needs VNI and VtepMAC",
                keys.backend_data
            ))
        })?)
    } else {
        // Other backends carry nothing weft uses; it must still be JSON.
        if let Some(data) = data {
            serde_json::from_str::<serde_json::Value>(data)
                .map_err(|error| malformed(format!("{} {data:?}: {error}", keys.backend_data)))?;
        }
        None
    };
    Ok(LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type,
        backend_data,
    })
}

#[cfg(test)]
mod tests;
