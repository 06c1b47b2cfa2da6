//! Pods wired by the real CNI plugins (`bridge` + `host-local` from Debian's
//! containernetworking-plugins), with the network config that flannel's CNI
//! plugin derives from `subnet.env`.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use weft_agent::subnet_env::SubnetEnv;

use crate::netns;

pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// The delegate config flannel's CNI plugin hands to the bridge plugin:
/// bridge `cni0`, gateway = first address of the node subnet, MTU =
/// FLANNEL_MTU, a route to the whole pod network. `ipMasq` is set to false
/// explicitly (a delegate override flannel honours) because the lab has no
/// iptables and masquerade is the agent's job. host-local keeps its state in
/// the lab's run directory because all lab nodes share one filesystem.
///
/// An IPv6-only subnet.env gives the IPv6 range and route alone. A
/// dual-stack subnet.env (`FLANNEL_IPV6_SUBNET`) adds, as flannel's CNI
/// plugin does, a second host-local range (the node's IPv6 subnet) and a
/// route to the IPv6 pod network: the pod gets one address of each family.
pub fn flannel_bridge_config(env: &SubnetEnv, ipam_dir: &Path) -> Value {
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    if let Some(ipv4) = &env.ipv4 {
        ranges.push(json!([{ "subnet": ipv4.subnet.trunc().to_string() }]));
        routes.push(json!({ "dst": ipv4.network.to_string() }));
    }
    if let Some(ipv6) = &env.ipv6 {
        ranges.push(json!([{ "subnet": ipv6.subnet.trunc().to_string() }]));
        routes.push(json!({ "dst": ipv6.network.to_string() }));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "bridge": "cni0",
        "mtu": env.mtu,
        "isGateway": true,
        "isDefaultGateway": true,
        "hairpinMode": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": ipam_dir.display().to_string(),
        },
    })
}

/// What CNI ADD reported for one pod.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNetwork {
    /// The pod's address with prefix, e.g. `10.244.1.2/24`: its IPv4 one,
    /// or in an IPv6-only lab its IPv6 one.
    pub address: String,
    /// The pod's IPv6 address with prefix, e.g. `fd00:10:244:1::2/64`
    /// (dual-stack and IPv6-only labs).
    #[serde(default)]
    pub address6: Option<String>,
    /// The host-side veth in the node namespace.
    pub host_veth: String,
    pub mac: String,
}

impl PodNetwork {
    /// The pod's address: its IPv4 one, or in an IPv6-only lab its IPv6 one.
    pub fn ip(&self) -> &str {
        self.address.split('/').next().unwrap_or(&self.address)
    }

    /// The pod's IPv6 address without its prefix, if it has one.
    pub fn ip6(&self) -> Option<&str> {
        let address = self.address6.as_deref()?;
        Some(address.split('/').next().unwrap_or(address))
    }
}

/// Runs CNI ADD for pod namespace `pod_ns` from inside `node_ns`.
pub fn add_pod(node_ns: &str, pod_ns: &str, config: &Value) -> Result<PodNetwork> {
    let netns_path = netns::path(pod_ns).display().to_string();
    let output = run_plugin(node_ns, pod_ns, "bridge", config)?;
    let result: Value =
        serde_json::from_slice(&output).context("CNI ADD printed no JSON result")?;
    parse_result(&result, &netns_path)
        .with_context(|| format!("unexpected CNI result for {pod_ns}: {result}"))
}

/// Runs `plugin`'s ADD for `pod_ns` from inside `node_ns` with `config`
/// on its standard input, as a container runtime does; returns its output.
fn run_plugin(node_ns: &str, pod_ns: &str, plugin: &str, config: &Value) -> Result<Vec<u8>> {
    let netns_path = netns::path(pod_ns).display().to_string();
    let mut command = netns::command(node_ns, &format!("{PLUGIN_DIR}/{plugin}"))?;
    command
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", pod_ns)
        .env("CNI_NETNS", &netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", PLUGIN_DIR)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run the CNI {plugin} plugin"))?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        stdin.write_all(config.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "CNI {plugin} ADD for {pod_ns} failed: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

fn parse_result(result: &Value, netns_path: &str) -> Result<PodNetwork> {
    let interfaces = result["interfaces"]
        .as_array()
        .ok_or_else(|| anyhow!("no interfaces"))?;
    let ips = result["ips"].as_array().ok_or_else(|| anyhow!("no ips"))?;
    // One address per family, in the order of the ranges (IPv4 first).
    let of_family = |v6: bool| {
        ips.iter().find(|ip| {
            ip["address"]
                .as_str()
                .is_some_and(|address| address.contains(':') == v6)
        })
    };
    // An IPv6-only pod's one address is its primary one.
    let ip = of_family(false)
        .or_else(|| of_family(true))
        .ok_or_else(|| anyhow!("no address"))?;
    let address = ip["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no address"))?
        .to_owned();
    let address6 = of_family(true)
        .and_then(|ip6| ip6["address"].as_str())
        .map(str::to_owned);
    let pod_if = &interfaces[ip["interface"]
        .as_u64()
        .ok_or_else(|| anyhow!("no interface index"))? as usize];
    let host_veth = interfaces
        .iter()
        .find(|interface| interface["sandbox"].is_null() && interface["name"] != "cni0")
        .and_then(|interface| interface["name"].as_str())
        .ok_or_else(|| anyhow!("no host-side veth"))?
        .to_owned();
    if pod_if["sandbox"] != netns_path {
        bail!("the address is not on the pod's interface");
    }
    Ok(PodNetwork {
        address,
        address6,
        host_veth,
        mac: pod_if["mac"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Runs the real `portmap` plugin's ADD for a pod, as a container runtime
/// does for a pod with `hostPort`s: each (protocol, host port, container
/// port) is DNATed from the node's addresses to the pod.
pub fn add_port_mappings(
    node_ns: &str,
    pod_ns: &str,
    pod: &PodNetwork,
    mappings: &[(&str, u16, u16)],
) -> Result<()> {
    let netns_path = netns::path(pod_ns).display().to_string();
    let port_mappings: Vec<Value> = mappings
        .iter()
        .map(|(protocol, host_port, container_port)| {
            json!({ "hostPort": host_port, "containerPort": container_port, "protocol": protocol })
        })
        .collect();
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "portmap",
        "capabilities": { "portMappings": true },
        "runtimeConfig": { "portMappings": port_mappings },
        // What the bridge plugin reported for the pod: portmap reads the
        // pod's address from it.
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{ "name": "eth0", "mac": pod.mac, "sandbox": netns_path }],
            "ips": [{ "address": pod.address, "interface": 0 }],
        },
    });
    run_plugin(node_ns, pod_ns, "portmap", &config)?;
    Ok(())
}

/// Runs the real `bandwidth` plugin's ADD for a pod, as a container runtime
/// does for a pod with kube's `kubernetes.io/ingress-bandwidth` and
/// `egress-bandwidth` annotations: `bits_per_second` each way, with a
/// burst of a tenth of a second's worth. The plugin puts a tbf as the host
/// veth's root qdisc (what the pod receives) and an ingress u32 filter on
/// the host veth redirecting to an ifb with a tbf (what the pod sends).
/// The ifb lives in the node's namespace and goes with it.
pub fn add_bandwidth_limits(
    node_ns: &str,
    pod_ns: &str,
    pod: &PodNetwork,
    bits_per_second: u64,
) -> Result<()> {
    let netns_path = netns::path(pod_ns).display().to_string();
    let burst = bits_per_second / 10;
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bandwidth",
        "capabilities": { "bandwidth": true },
        "runtimeConfig": { "bandwidth": {
            "ingressRate": bits_per_second,
            "ingressBurst": burst,
            "egressRate": bits_per_second,
            "egressBurst": burst,
        } },
        // What the bridge plugin reported: the plugin finds the host veth
        // among the interfaces outside the sandbox.
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [
                { "name": pod.host_veth },
                { "name": "eth0", "mac": pod.mac, "sandbox": netns_path },
            ],
            "ips": [{ "address": pod.address, "interface": 1 }],
        },
    });
    run_plugin(node_ns, pod_ns, "bandwidth", &config)?;
    Ok(())
}
