//! What tests ask a running lab: pings between pods and the agents' maps.

use std::{thread::sleep, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use weft_agent::subnet_env;

use super::{Counters, Lab, NodeId, PodState};
use crate::netns;

impl Lab {
    /// Pings `to` (an IPv4 or IPv6 address: ping picks the family from it)
    /// from inside pod namespace `from`; returns ping's output.
    pub fn ping(&self, from: &PodState, to: &str, count: u32) -> Result<String> {
        self.ping_with(from, to, count, &[])
    }

    /// Pings `size`-byte payloads with the DF bit set (`df`) or not.
    pub fn ping_sized(
        &self,
        from: &PodState,
        to: &str,
        count: u32,
        size: usize,
        df: bool,
    ) -> Result<String> {
        let size = size.to_string();
        self.ping_with(
            from,
            to,
            count,
            &["-M", if df { "do" } else { "dont" }, "-s", &size],
        )
    }

    fn ping_with(&self, from: &PodState, to: &str, count: u32, extra: &[&str]) -> Result<String> {
        let count = count.to_string();
        let mut args = vec!["ping", "-q", "-n", "-c", &count, "-i", "0.01", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(to);
        netns::run(&from.ns, &args)
            .with_context(|| format!("{} ({}) cannot reach {to}", from.ns, from.ip()))
    }

    /// `weft status` (`--json` or not) against `node`'s pin dir and subnet
    /// file, run in `ns` (`None`: the host's namespace).
    pub fn weft_status(&self, node: NodeId, ns: Option<&str>, json: bool) -> Result<String> {
        let weft = self.state.weft_bin.display().to_string();
        let state = self.node(node);
        let pin_dir = state.pin_dir.display().to_string();
        let subnet_file = state.subnet_file.display().to_string();
        let mut args = vec![
            weft.as_str(),
            "status",
            "--bpf-pin-dir",
            &pin_dir,
            "--subnet-file",
            &subnet_file,
        ];
        if json {
            args.push("--json");
        }
        match ns {
            Some(ns) => netns::run(ns, &args),
            None => netns::run_host(&args),
        }
    }

    /// `weft maps <map> --json` on `node`, parsed.
    pub fn maps_json(&self, node: NodeId, map: &str) -> Result<serde_json::Value> {
        let weft = self.state.weft_bin.display().to_string();
        let pin_dir = self.node(node).pin_dir.display().to_string();
        let out = netns::run_host(&[&weft, "maps", map, "--json", "--bpf-pin-dir", &pin_dir])?;
        serde_json::from_str(&out).with_context(|| format!("weft maps {map} printed no JSON"))
    }

    /// The nftables ruleset generation `node`'s agent last wrote to CONFIG
    /// (it changes once the agent has seen a ruleset change).
    pub fn ruleset_generation(&self, node: NodeId) -> Result<u64> {
        self.maps_json(node, "config")?["ruleset_generation"]
            .as_u64()
            .context("CONFIG has no ruleset_generation")
    }

    /// Every pod pings every other pod `count` times (each of its addresses,
    /// IPv4 and IPv6 in a dual-stack lab); panics naming the pair
    /// that does not get every answer in two tries. A pair that needed the
    /// second try is reported loudly on stderr: with native XDP on the
    /// uplinks, full-suite runs lose one echo of a pair now and then, which
    /// is still to be explained (see the closing note of the session that
    /// added this).
    pub fn assert_all_pairs_ping(&self, count: u32) {
        let pods: Vec<PodState> = self.pods().cloned().collect();
        let every_answer = |from: &PodState, to: &str| -> Result<String> {
            let out = self.ping(from, to, count)?;
            anyhow::ensure!(
                out.contains(&format!("{count} received")),
                "{} -> {to}: {out}",
                from.ns,
            );
            Ok(out)
        };
        for from in &pods {
            for to in pods.iter().filter(|to| to.ns != from.ns) {
                for to in pod_addresses(to) {
                    if let Err(first) = every_answer(from, to) {
                        eprintln!(
                            "NOTE: {} -> {to} lost echoes on the first try: {first:#}",
                            from.ns,
                        );
                        // What each node's programs counted during the
                        // second try, so a loss there names its path.
                        let before = self.all_counters();
                        let second = every_answer(from, to);
                        if second.is_err() {
                            self.print_counted_since(&before);
                        }
                        second.unwrap_or_else(|error| panic!("{error:#}"));
                    }
                }
            }
        }
    }

    /// Every node's counters, where they can be read.
    pub fn all_counters(&self) -> Vec<(NodeId, Option<Counters>)> {
        self.node_ids()
            .map(|node| (node, self.counters(node).ok()))
            .collect()
    }

    /// Prints, per node, every counter that moved since `before` (a
    /// diagnosis for a failed check: which path each packet took).
    pub fn print_counted_since(&self, before: &[(NodeId, Option<Counters>)]) {
        for (node, earlier) in before {
            let (Some(earlier), Ok(now)) = (earlier, self.counters(*node)) else {
                eprintln!("node {node}: counters unreadable");
                continue;
            };
            let moved: Vec<String> = now
                .iter()
                .filter_map(|(id, (packets, _))| {
                    let was = earlier.get(id).map_or(0, |(packets, _)| *packets);
                    (*packets != was).then(|| format!("{id}+{}", packets - was))
                })
                .collect();
            eprintln!("node {node} counted meanwhile: {}", moved.join(" "));
            // A frame XDP redirected into a veth that could not take it
            // shows only as that veth's drop.
            if let Ok(links) = netns::run(&self.node(*node).ns, &["ip", "-s", "-o", "link"]) {
                eprintln!("node {node} links:\n{links}");
            }
        }
    }

    /// Waits until every pod gets an answer from every address of every
    /// other pod, for up to `timeout`: an agent turns ready once its own
    /// lease is programmed, and its peers' leases reach it a moment later
    /// (longer on a loaded machine).
    pub fn wait_all_pairs_reach(&self, timeout: Duration) -> Result<()> {
        let pods: Vec<PodState> = self.pods().cloned().collect();
        for from in &pods {
            for to in pods.iter().filter(|to| to.ns != from.ns) {
                for address in pod_addresses(to) {
                    super::wait_for(&format!("{} to reach {address}", from.ns), timeout, || {
                        Ok(self.ping(from, address, 1).is_ok())
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Every pod pings its gateways, then every other pod until it answers
    /// (at most 20 s), so nodes learn their pods and underlay neighbours
    /// (the fast path's inputs) the way traffic teaches them.
    pub fn warm_up(&self) -> Result<()> {
        for node in &self.state.nodes {
            let env = subnet_env::read_if_present(&node.subnet_file)?
                .ok_or_else(|| anyhow!("{} has no subnet.env", node.ns))?;
            let mut gateways: Vec<String> = env.gateway().iter().map(ToString::to_string).collect();
            if let Some(ipv6) = env.ipv6.filter(|_| self.state.dual_stack) {
                gateways.push(ipv6.subnet.addr().to_string());
            }
            for pod in &node.pods {
                for gateway in &gateways {
                    self.ping(pod, gateway, 1)?;
                }
            }
        }
        // Until each answers: an agent is ready once its own lease is
        // programmed, and its peers' leases (in kube mode, their Nodes'
        // annotations) reach it a moment later.
        self.wait_all_pairs_reach(Duration::from_secs(20))?;
        // Give the agents a moment to turn what the kernel learned into map entries.
        sleep(Duration::from_millis(300));
        Ok(())
    }
}

/// Every address of `pod`: its IPv4 one, then its IPv6 one if it has one
/// (an IPv6-only pod's one address once).
pub fn pod_addresses(pod: &PodState) -> impl Iterator<Item = &str> {
    let primary = pod.ip();
    std::iter::once(primary).chain(pod.network.ip6().filter(move |ip6| *ip6 != primary))
}

/// The packets `ping` sent and got answers to, from the summary line it
/// prints (`N packets transmitted, M received, ...`).
pub fn ping_counts(out: &str) -> (u64, u64) {
    let summary = out
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping printed no summary: {out}"));
    let count = |word: &str| -> u64 {
        summary
            .split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no '{word}' in ping's summary: {out}"))
    };
    (count("transmitted"), count("received"))
}
