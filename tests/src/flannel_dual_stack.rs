//! What stock flanneld v0.20.2 writes for a dual-stack lab (etcd leases,
//! subnet.env, the kernel), checked against what a lab's agents wrote: the
//! dual-stack half of the compatibility contract. Every expectation here
//! was read off stock flanneld in the lab (tests/tests/lab/dual_stack.rs
//! runs this check on flanneld itself), except the MTUs, which are
//! returned for the caller to judge (flanneld's are wrong for IPv6), and
//! one known difference of weft's host-gw leases ([`Observed`]).

use anyhow::{Context as _, Result, anyhow, ensure};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::{
    Backend, Lab, inspect,
    lab::{ETCD_PREFIX, NodeState, POD_NETWORK, POD_NETWORK_V6, UPLINK},
};

/// flanneld's IPv6 VXLAN device for VNI 1.
pub const VXLAN_V6_DEV: &str = "flannel-v6.1";
const VXLAN_DEV: &str = "flannel.1";

/// The MTUs a dual-stack node ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mtus {
    /// `FLANNEL_MTU`: what the pods get.
    pub subnet_env: u64,
    /// `flannel.1` (VXLAN labs).
    pub vxlan: Option<u64>,
    /// `flannel-v6.1` (VXLAN labs).
    pub vxlan_v6: Option<u64>,
}

/// What a dual-stack node ended up with where weft and flanneld may
/// differ, for the caller to judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub mtus: Mtus,
}

/// The node's IPv4 and IPv6 pod subnets.
pub fn subnets_of(node: &NodeState) -> Result<(Ipv4Net, Ipv6Net)> {
    let v4 = node
        .subnet
        .parse()
        .map_err(|_| anyhow!("{}: bad subnet {:?}", node.ns, node.subnet))?;
    let v6 = node
        .subnet6
        .as_deref()
        .ok_or_else(|| anyhow!("{} has no IPv6 subnet", node.ns))?
        .parse()
        .map_err(|_| anyhow!("{}: bad IPv6 subnet {:?}", node.ns, node.subnet6))?;
    Ok((v4, v6))
}

/// The etcd key of a dual-stack lease, as flanneld writes it:
/// `10.244.3.0-24&fd00:10:244:5c::-64`.
pub fn lease_key(v4: Ipv4Net, v6: Ipv6Net) -> String {
    format!(
        "{ETCD_PREFIX}/subnets/{}-{}&{}-{}",
        v4.network(),
        v4.prefix_len(),
        v6.network(),
        v6.prefix_len()
    )
}

/// flannel-v6.1's MAC as `node`'s kernel has it (its `backend-v6-data` VtepMAC).
pub fn vtep_v6_mac(node: &NodeState) -> Result<String> {
    mac_of(&node.ns, VXLAN_V6_DEV)
}

fn mac_of(ns: &str, dev: &str) -> Result<String> {
    let link = inspect::link(ns, dev)?.ok_or_else(|| anyhow!("{ns} has no {dev}"))?;
    Ok(link["address"].as_str().unwrap_or_default().to_owned())
}

/// The lease value flanneld writes for `node` (field order and all).
pub fn expected_lease_value(backend: Backend, node: &NodeState) -> Result<String> {
    let ip6 = node
        .ip6
        .as_deref()
        .ok_or_else(|| anyhow!("{} has no IPv6 underlay address", node.ns))?;
    Ok(match backend {
        Backend::Vxlan => format!(
            r#"{{"PublicIP":"{}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            node.ip,
            mac_of(&node.ns, VXLAN_DEV)?,
            mac_of(&node.ns, VXLAN_V6_DEV)?
        ),
        // Host-gw leases carry no BackendData at all (Go's `omitempty` on
        // an empty `json.RawMessage`).
        Backend::HostGw => format!(
            r#"{{"PublicIP":"{}","PublicIPv6":"{ip6}","BackendType":"host-gw"}}"#,
            node.ip
        ),
    })
}

/// Checks etcd, every subnet.env (but its MTU) and every node's kernel
/// state (both families) against what flanneld writes for this dual-stack
/// lab; the error names the first difference. Returns, per node, what may
/// differ from flanneld's and is the caller's to judge ([`Observed`]).
pub fn check(lab: &Lab) -> Result<Vec<Observed>> {
    let backend = lab.state.backend;
    let leases = lab.etcd().get_prefix(&format!("{ETCD_PREFIX}/subnets/"))?;
    ensure!(
        leases.len() == lab.state.nodes.len(),
        "etcd holds {} leases for {} nodes: {leases:?}",
        leases.len(),
        lab.state.nodes.len()
    );
    for node in &lab.state.nodes {
        let (v4, v6) = subnets_of(node)?;
        let key = lease_key(v4, v6);
        let value = leases
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| anyhow!("no lease {key} in {leases:?}"))?;
        let expected = expected_lease_value(backend, node)?;
        ensure!(
            value == expected,
            "{key}:\n  found    {value}\n  expected {expected}"
        );
    }
    check_nodes(lab)
}

/// [`check`] without etcd, for the kube subnet manager (whose Nodes the
/// caller checks): every subnet.env (but its MTU) and every node's kernel
/// state (both families) as flanneld writes them.
pub fn check_nodes(lab: &Lab) -> Result<Vec<Observed>> {
    let backend = lab.state.backend;
    let mut observed = Vec::new();
    for node in &lab.state.nodes {
        let (v4, v6) = subnets_of(node)?;
        let env = std::fs::read_to_string(&node.subnet_file)?;
        let mtu: u64 = env
            .lines()
            .find_map(|line| line.strip_prefix("FLANNEL_MTU="))
            .ok_or_else(|| anyhow!("{}: no FLANNEL_MTU", node.subnet_file.display()))?
            .parse()
            .context("FLANNEL_MTU is not a number")?;
        let expected_env = format!(
            "FLANNEL_NETWORK={POD_NETWORK}\nFLANNEL_SUBNET={}/{}\n\
             FLANNEL_IPV6_NETWORK={POD_NETWORK_V6}\nFLANNEL_IPV6_SUBNET={}/{}\n\
             FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={}\n",
            v4.hosts().next().unwrap(),
            v4.prefix_len(),
            // The first address after the subnet's own (ipnet counts that
            // one among an IPv6 subnet's hosts).
            std::net::Ipv6Addr::from(u128::from(v6.network()) + 1),
            v6.prefix_len(),
            lab.state.ip_masq
        );
        ensure!(
            env == expected_env,
            "{}:\n{env}expected\n{expected_env}",
            node.subnet_file.display()
        );
        check_kernel_v6(lab, node)?;
        let vxlan_mtu = |dev| match backend {
            Backend::Vxlan => inspect::mtu(&node.ns, dev).map(Some),
            Backend::HostGw => Ok(None),
        };
        observed.push(Observed {
            mtus: Mtus {
                subnet_env: mtu,
                vxlan: vxlan_mtu(VXLAN_DEV)?,
                vxlan_v6: vxlan_mtu(VXLAN_V6_DEV)?,
            },
        });
    }
    Ok(observed)
}

/// The IPv6 half of a node's kernel state as flanneld programs it (the
/// IPv4 half is the same as in an IPv4-only lab).
fn check_kernel_v6(lab: &Lab, node: &NodeState) -> Result<()> {
    let ns = &node.ns;
    let peers: Vec<&NodeState> = lab
        .state
        .nodes
        .iter()
        .filter(|peer| peer.id != node.id)
        .collect();
    let network: Ipv6Net = POD_NETWORK_V6.parse()?;
    let (own_v4, own) = subnets_of(node)?;
    // One route per peer subnet of each family into the pod networks,
    // besides cni0's (and, on VXLAN, flannel-v6.1's own address's).
    let v4_network: Ipv4Net = POD_NETWORK.parse()?;
    let v4_routes = inspect::routes(ns)?
        .into_iter()
        .filter(|route| {
            route["dst"]
                .as_str()
                .and_then(|dst| dst.parse::<Ipv4Net>().ok())
                .is_some_and(|dst| v4_network.contains(&dst) && dst != own_v4)
        })
        .count();
    ensure!(
        v4_routes == peers.len(),
        "{ns}: {v4_routes} IPv4 overlay routes for {} peers",
        peers.len()
    );
    let overlay_routes: Vec<_> = inspect::routes6(ns)?
        .into_iter()
        .filter(|route| {
            route["dst"]
                .as_str()
                .and_then(|dst| dst.parse::<Ipv6Net>().ok())
                .is_some_and(|dst| dst.prefix_len() < 128 && network.contains(&dst) && dst != own)
        })
        .collect();
    ensure!(
        overlay_routes.len() == peers.len(),
        "{ns}: {} IPv6 overlay routes for {} peers: {overlay_routes:?}",
        overlay_routes.len(),
        peers.len()
    );
    match lab.state.backend {
        Backend::Vxlan => {
            let link = inspect::link(ns, VXLAN_V6_DEV)?
                .ok_or_else(|| anyhow!("{ns}: no {VXLAN_V6_DEV}"))?;
            let data = &link["linkinfo"]["info_data"];
            ensure!(
                link["linkinfo"]["info_kind"] == "vxlan",
                "{ns}: {VXLAN_V6_DEV} is not vxlan: {link}"
            );
            ensure!(
                data["id"] == 1 && data["port"] == 8472 && data["learning"] == false,
                "{ns}: {VXLAN_V6_DEV} settings: {data}"
            );
            ensure!(
                data["local6"].as_str() == node.ip6.as_deref() && data["link"] == UPLINK,
                "{ns}: {VXLAN_V6_DEV} local/dev: {data}"
            );
            ensure!(
                link["flags"]
                    .as_array()
                    .is_some_and(|flags| flags.iter().any(|flag| flag == "UP")),
                "{ns}: {VXLAN_V6_DEV} is down"
            );
            let addresses = inspect::addresses6(ns, VXLAN_V6_DEV)?;
            ensure!(
                addresses == [format!("{}/128", own.network())],
                "{ns}: {VXLAN_V6_DEV} addresses {addresses:?}"
            );
            let neighbours = inspect::neighbours(ns, VXLAN_V6_DEV)?;
            let permanent: Vec<_> = neighbours
                .iter()
                .filter(|n| n["state"][0] == "PERMANENT")
                .collect();
            let fdb = inspect::fdb(ns, VXLAN_V6_DEV)?;
            ensure!(
                permanent.len() == peers.len(),
                "{ns}: {VXLAN_V6_DEV} neighbours {neighbours:?}"
            );
            ensure!(fdb.len() == peers.len(), "{ns}: fdb {fdb:?}");
            for peer in peers {
                let (_, subnet) = subnets_of(peer)?;
                let gateway = subnet.network().to_string();
                let mac = mac_of(&peer.ns, VXLAN_V6_DEV)?;
                let peer_ip6 = peer.ip6.as_deref().unwrap_or_default();
                let route = inspect::routes6_to(ns, &subnet.to_string())?;
                ensure!(
                    route.len() == 1
                        && route[0]["gateway"] == gateway.as_str()
                        && route[0]["dev"] == VXLAN_V6_DEV
                        && route[0]["flags"]
                            .as_array()
                            .is_some_and(|flags| flags.iter().any(|flag| flag == "onlink")),
                    "{ns}: route to {subnet}: {route:?}"
                );
                ensure!(
                    permanent
                        .iter()
                        .any(|n| n["dst"] == gateway.as_str() && n["lladdr"] == mac.as_str()),
                    "{ns}: no permanent neighbour {gateway} -> {mac}: {neighbours:?}"
                );
                ensure!(
                    fdb.iter().any(|entry| entry["mac"] == mac.as_str()
                        && entry["dst"] == peer_ip6
                        && entry["state"] == "permanent"
                        && entry["flags"]
                            .as_array()
                            .is_some_and(|flags| flags.iter().any(|flag| flag == "self"))),
                    "{ns}: no fdb {mac} -> {peer_ip6}: {fdb:?}"
                );
            }
        }
        Backend::HostGw => {
            ensure!(
                inspect::link(ns, VXLAN_V6_DEV)?.is_none(),
                "{ns}: host-gw node has {VXLAN_V6_DEV}"
            );
            for peer in peers {
                let (_, subnet) = subnets_of(peer)?;
                let route = inspect::routes6_to(ns, &subnet.to_string())?;
                ensure!(
                    route.len() == 1
                        && route[0]["gateway"].as_str() == peer.ip6.as_deref()
                        && route[0]["dev"] == UPLINK,
                    "{ns}: route to {subnet}: {route:?}"
                );
            }
        }
    }
    Ok(())
}
