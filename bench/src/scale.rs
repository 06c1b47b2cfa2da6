//! The control plane at scale: thousands of leases into one agent, then
//! all of them deleted.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use weft_tests::{Lab, LabSpec, NodeId, inspect, lab::ETCD_PREFIX, netns};

use crate::BenchOptions;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleResult {
    pub leases: usize,
    /// From the first lease written to all of them in PEERS.
    pub peers_converged_s: f64,
    /// ... and all of them routed by the kernel path.
    pub kernel_converged_s: f64,
    /// From deleting every lease to none left in PEERS ...
    pub peers_removed_s: f64,
    /// ... and none left in the kernel (routes, neighbours, fdb entries).
    pub kernel_removed_s: f64,
    pub agent_peak_rss_mib: f64,
    /// How often the ruleset generation moved during the storm (in and
    /// out): each move voids every verdict. The guard set's own updates do
    /// not move it; a lost nftables notification does.
    pub ruleset_generation_moves: u64,
}

/// Writes `leases` synthetic VXLAN leases and times how long one agent takes
/// to have them all in PEERS and in the kernel routes; then deletes them all
/// and times how long until none is left in either; reports its peak RSS.
pub fn scale(options: &BenchOptions, leases: usize) -> Result<ScaleResult> {
    // A /8 pod network has room for 65,535 /24 leases.
    let mut spec = LabSpec::new(&format!("{}-scale", options.lab_prefix), 1, 0);
    spec.weft_bin = options.weft_bin.clone();
    spec.network_config = Some(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#.to_owned());
    let lab = Lab::up(&spec)?;
    let node = lab.node(NodeId::FIRST).clone();
    let weft = options.weft_bin.display().to_string();
    let pin_dir = node.pin_dir.display().to_string();
    let own = format!("{ETCD_PREFIX}/subnets/{}", node.subnet.replace('/', "-"));
    let values: Vec<(String, String)> = (0..leases + 1)
        .map(|index| {
            let subnet = 1 + index;
            let key = format!("{ETCD_PREFIX}/subnets/10.{}.{}.0-24", 100 + subnet / 256, subnet % 256);
            let ip = format!("172.16.{}.{}", subnet / 250, 1 + subnet % 250);
            let value = format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:ac:10:{:02x}:{:02x}"}}}}"#,
                subnet / 250,
                1 + subnet % 250
            );
            (key, value)
        })
        .filter(|(key, _)| *key != own)
        .take(leases)
        .collect();
    let generation = || -> Result<u64> {
        let out = netns::run_host(&[&weft, "maps", "config", "--json", "--bpf-pin-dir", &pin_dir])?;
        serde_json::from_str::<serde_json::Value>(&out)?["ruleset_generation"]
            .as_u64()
            .ok_or_else(|| anyhow!("weft maps config shows no ruleset_generation: {out}"))
    };
    let generation_before = generation()?;
    let started = Instant::now();
    lab.etcd().put_many(&values)?;
    let peer_count = || -> Result<usize> {
        let out = netns::run_host(&[&weft, "maps", "peers", "--json", "--bpf-pin-dir", &pin_dir])?;
        Ok(serde_json::from_str::<serde_json::Value>(&out)?
            .as_array()
            .map_or(0, Vec::len))
    };
    let kernel_count = |all: bool| -> Result<usize> {
        let routes = inspect::routes(&node.ns)?
            .iter()
            .filter(|route| route["dev"] == "flannel.1")
            .count();
        if !all {
            return Ok(routes);
        }
        let neighbours = inspect::neighbours(&node.ns, "flannel.1")?.len();
        let fdb = inspect::fdb(&node.ns, "flannel.1")?
            .iter()
            .filter(|entry| entry["dst"].is_string())
            .count();
        Ok(routes + neighbours + fdb)
    };
    let (peers_converged_s, kernel_converged_s) = converge(
        leases,
        "in",
        started,
        || Ok(peer_count()? >= leases),
        || Ok(kernel_count(false)? >= leases),
    )?;
    let rss = peak_rss_mib(
        lab.agent_pid(NodeId::FIRST)
            .ok_or_else(|| anyhow!("the agent died"))?,
    )?;
    let keys: Vec<String> = values.into_iter().map(|(key, _)| key).collect();
    let started = Instant::now();
    lab.etcd().delete_many(&keys)?;
    let (peers_removed_s, kernel_removed_s) = converge(
        leases,
        "out",
        started,
        || Ok(peer_count()? == 0),
        || Ok(kernel_count(true)? == 0),
    )?;
    Ok(ScaleResult {
        leases,
        peers_converged_s,
        kernel_converged_s,
        peers_removed_s,
        kernel_removed_s,
        agent_peak_rss_mib: rss,
        ruleset_generation_moves: generation()? - generation_before,
    })
}

/// Seconds from `started` until `in_peers`, then also `in_kernel`, holds
/// (checked every 20 ms, for at most 120 s).
fn converge(
    leases: usize,
    way: &str,
    started: Instant,
    mut in_peers: impl FnMut() -> Result<bool>,
    mut in_kernel: impl FnMut() -> Result<bool>,
) -> Result<(f64, f64)> {
    let mut peers_at = None;
    let deadline = started + Duration::from_secs(120);
    loop {
        if peers_at.is_none() && in_peers()? {
            peers_at = Some(started.elapsed().as_secs_f64());
        }
        if let Some(peers_at) = peers_at
            && in_kernel()?
        {
            return Ok((peers_at, started.elapsed().as_secs_f64()));
        }
        if Instant::now() > deadline {
            bail!("{leases} leases did not converge {way} within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM for pid {pid}"))?;
    Ok(kib / 1024.0)
}
