//! What flanneld would have in etcd, in subnet.env and in the kernel for a
//! lab, checked against what the agents actually wrote: the compatibility
//! contract (docs/architecture.md), as one assertion tests share.

use anyhow::{Result, anyhow, ensure};
use ipnet::Ipv4Net;

use crate::{
    Backend, Lab, inspect,
    lab::{ETCD_PREFIX, NodeState, POD_NETWORK, UPLINK},
};

const VXLAN_DEV: &str = "flannel.1";

/// The node's VTEP MAC (vxlan labs).
pub fn vtep_mac(node: &NodeState) -> Result<String> {
    let link = inspect::link(&node.ns, VXLAN_DEV)?
        .ok_or_else(|| anyhow!("{} has no {VXLAN_DEV}", node.ns))?;
    Ok(link["address"].as_str().unwrap_or_default().to_owned())
}

fn subnet_of(node: &NodeState) -> Result<Ipv4Net> {
    node.subnet
        .parse()
        .map_err(|_| anyhow!("{}: bad subnet {:?}", node.ns, node.subnet))
}

/// Checks etcd, every subnet.env and every node's kernel state against what
/// flanneld writes for this lab; the error names the first difference.
pub fn check(lab: &Lab) -> Result<()> {
    let backend = lab.state.backend;
    let etcd = lab.etcd().get_prefix(&format!("{ETCD_PREFIX}/subnets/"))?;
    ensure!(
        etcd.len() == lab.state.nodes.len(),
        "etcd holds {} leases for {} nodes: {etcd:?}",
        etcd.len(),
        lab.state.nodes.len()
    );
    for node in &lab.state.nodes {
        let subnet = subnet_of(node)?;
        let key = format!(
            "{ETCD_PREFIX}/subnets/{}-{}",
            subnet.network(),
            subnet.prefix_len()
        );
        let value = etcd
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| anyhow!("no lease {key}"))?;
        let expected = match backend {
            Backend::Vxlan => format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                node.ip,
                vtep_mac(node)?
            ),
            Backend::HostGw => format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
                node.ip
            ),
        };
        ensure!(
            value == expected,
            "{key}:\n  found    {value}\n  expected {expected}"
        );

        let mtu = match backend {
            Backend::Vxlan => 1450,
            Backend::HostGw => 1500,
        };
        let env = std::fs::read_to_string(&node.subnet_file)?;
        let expected_env = format!(
            "FLANNEL_NETWORK={POD_NETWORK}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n",
            subnet.hosts().next().unwrap(),
            subnet.prefix_len()
        );
        ensure!(
            env == expected_env,
            "{}:\n{env}expected\n{expected_env}",
            node.subnet_file.display()
        );
        check_kernel(lab, node)?;
    }
    Ok(())
}

fn check_kernel(lab: &Lab, node: &NodeState) -> Result<()> {
    let ns = &node.ns;
    let peers: Vec<&NodeState> = lab
        .state
        .nodes
        .iter()
        .filter(|peer| peer.id != node.id)
        .collect();
    let network: Ipv4Net = POD_NETWORK.parse()?;
    let own = subnet_of(node)?;
    // Exactly one route per peer subnet, and none into the pod network
    // besides those and cni0's.
    let overlay_routes: Vec<_> = inspect::routes(ns)?
        .into_iter()
        .filter(|route| {
            route["dst"]
                .as_str()
                .and_then(|dst| dst.parse::<Ipv4Net>().ok())
                .is_some_and(|dst| network.contains(&dst) && dst != own)
        })
        .collect();
    ensure!(
        overlay_routes.len() == peers.len(),
        "{ns}: {} overlay routes for {} peers: {overlay_routes:?}",
        overlay_routes.len(),
        peers.len()
    );
    match lab.state.backend {
        Backend::Vxlan => {
            let link =
                inspect::link(ns, VXLAN_DEV)?.ok_or_else(|| anyhow!("{ns}: no {VXLAN_DEV}"))?;
            let data = &link["linkinfo"]["info_data"];
            ensure!(
                link["linkinfo"]["info_kind"] == "vxlan",
                "{ns}: {VXLAN_DEV} is not vxlan: {link}"
            );
            ensure!(
                data["id"] == 1 && data["port"] == 8472 && data["learning"] == false,
                "{ns}: {VXLAN_DEV} settings: {data}"
            );
            ensure!(
                data["local"] == node.ip.as_str() && data["link"] == UPLINK,
                "{ns}: {VXLAN_DEV} local/dev: {data}"
            );
            ensure!(link["mtu"] == 1450, "{ns}: {VXLAN_DEV} MTU {}", link["mtu"]);
            ensure!(
                link["flags"]
                    .as_array()
                    .is_some_and(|flags| flags.iter().any(|flag| flag == "UP")),
                "{ns}: {VXLAN_DEV} is down"
            );
            let addresses = inspect::addresses(ns, VXLAN_DEV)?;
            ensure!(
                addresses == [format!("{}/32", own.network())],
                "{ns}: {VXLAN_DEV} addresses {addresses:?}"
            );
            let neighbours = inspect::neighbours(ns, VXLAN_DEV)?;
            let fdb = inspect::fdb(ns, VXLAN_DEV)?;
            ensure!(
                neighbours.len() == peers.len(),
                "{ns}: neighbours {neighbours:?}"
            );
            ensure!(fdb.len() == peers.len(), "{ns}: fdb {fdb:?}");
            for peer in peers {
                let subnet = subnet_of(peer)?;
                let gateway = subnet.network().to_string();
                let mac = vtep_mac(peer)?;
                let route = inspect::routes_to(ns, &subnet.to_string())?;
                ensure!(
                    route.len() == 1
                        && route[0]["gateway"] == gateway.as_str()
                        && route[0]["dev"] == VXLAN_DEV
                        && route[0]["flags"]
                            .as_array()
                            .is_some_and(|flags| flags.iter().any(|flag| flag == "onlink")),
                    "{ns}: route to {subnet}: {route:?}"
                );
                ensure!(
                    neighbours.iter().any(|n| n["dst"] == gateway.as_str()
                        && n["lladdr"] == mac.as_str()
                        && n["state"][0] == "PERMANENT"),
                    "{ns}: no permanent neighbour {gateway} -> {mac}: {neighbours:?}"
                );
                ensure!(
                    fdb.iter().any(|entry| entry["mac"] == mac.as_str()
                        && entry["dst"] == peer.ip.as_str()
                        && entry["state"] == "permanent"
                        && entry["flags"]
                            .as_array()
                            .is_some_and(|flags| flags.iter().any(|flag| flag == "self"))),
                    "{ns}: no fdb {mac} -> {}: {fdb:?}",
                    peer.ip
                );
            }
        }
        Backend::HostGw => {
            ensure!(
                inspect::link(ns, VXLAN_DEV)?.is_none(),
                "{ns}: host-gw node has {VXLAN_DEV}"
            );
            for peer in peers {
                let subnet = subnet_of(peer)?;
                let route = inspect::routes_to(ns, &subnet.to_string())?;
                ensure!(
                    route.len() == 1
                        && route[0]["gateway"] == peer.ip.as_str()
                        && route[0]["dev"] == UPLINK,
                    "{ns}: route to {subnet}: {route:?}"
                );
            }
        }
    }
    Ok(())
}
