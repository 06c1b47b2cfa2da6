//! A real Prometheus (Debian's `prometheus`) in the lab's underlay namespace:
//! it scrapes every node's agent at `/metrics` once a second, and tests and
//! the demo ask it questions through its HTTP API (`/api/v1/query`), as an
//! operator's dashboards and alerts would.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, ensure};

use crate::{netns, process};

pub const PORT: u16 = 9090;
/// How often Prometheus scrapes: short, so a test sees its traffic quickly.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// One scrape target: the node's name (the `node` label) and `ip:port`.
pub struct Target {
    pub node: String,
    pub address: String,
}

/// Writes the scrape config and starts Prometheus in `ns` on `ip:9090`, with
/// its data under `run_dir`; waits until it reports ready.
pub fn start(ns: &str, ip: &str, run_dir: &Path, targets: &[Target]) -> Result<u32> {
    let config = run_dir.join("prometheus.yml");
    std::fs::write(&config, scrape_config(targets))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let mut command = netns::command(ns, "prometheus")?;
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            run_dir.join("prometheus.data").display()
        ))
        .arg(format!("--web.listen-address={ip}:{PORT}"))
        .arg("--log.level=warn");
    let log = run_dir.join("prometheus.log");
    let pid_file = run_dir.join("prometheus.pid");
    let pid = process::spawn_daemon(command, &log, &pid_file)?;
    let address: SocketAddr = format!("{ip}:{PORT}").parse()?;
    process::wait_ready(
        "prometheus",
        &pid_file,
        &log,
        Duration::from_secs(30),
        || netns::in_netns(ns, || get(address, "/-/ready")).is_ok_and(|(status, _)| status == 200),
    )?;
    Ok(pid)
}

fn scrape_config(targets: &[Target]) -> String {
    let interval = SCRAPE_INTERVAL.as_secs();
    let mut config = format!(
        "global:\n  scrape_interval: {interval}s\n  evaluation_interval: {interval}s\n\
         scrape_configs:\n  - job_name: weft\n    static_configs:\n"
    );
    for target in targets {
        let _ = write!(
            config,
            "      - targets: ['{}']\n        labels:\n          node: '{}'\n",
            target.address, target.node
        );
    }
    config
}

/// One sample of an instant query's result: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Runs the PromQL instant query `promql` against the Prometheus at
/// `ip:9090` in `ns`.
pub fn query(ns: &str, ip: &str, promql: &str) -> Result<Vec<Sample>> {
    let address: SocketAddr = format!("{ip}:{PORT}").parse()?;
    let path = format!(
        "/api/v1/query?query={}",
        form_urlencoded::byte_serialize(promql.as_bytes()).collect::<String>()
    );
    let (status, body) = netns::in_netns(ns, || get(address, &path))?;
    let reply: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("prometheus answered {status} with no JSON: {body}"))?;
    ensure!(
        status == 200 && reply["status"] == "success",
        "query {promql:?} failed ({status}): {}",
        reply["error"]
    );
    let result = reply["data"]["result"]
        .as_array()
        .ok_or_else(|| anyhow!("query {promql:?}: no result vector in {body}"))?;
    result
        .iter()
        .map(|sample| {
            let labels = sample["metric"]
                .as_object()
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(name, value)| {
                            (name.clone(), value.as_str().unwrap_or("").to_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let value = sample["value"][1]
                .as_str()
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| anyhow!("query {promql:?}: sample without a value: {sample}"))?;
            Ok(Sample { labels, value })
        })
        .collect()
}

/// Plain HTTP/1.0 GET (Prometheus then answers without chunking and closes).
fn get(address: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response from {address}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_is_a_target_with_its_node_label() {
        let config = scrape_config(&[
            Target {
                node: "lab-n1".into(),
                address: "192.168.77.1:10256".into(),
            },
            Target {
                node: "lab-n2".into(),
                address: "192.168.77.2:10256".into(),
            },
        ]);
        assert!(config.contains("scrape_interval: 1s"));
        assert!(config.contains(
            "- targets: ['192.168.77.1:10256']\n        labels:\n          node: 'lab-n1'"
        ));
        assert!(config.contains(
            "- targets: ['192.168.77.2:10256']\n        labels:\n          node: 'lab-n2'"
        ));
    }
}
