//! Reading a node's kernel state the way a user checks it: `ip -j` and
//! `bridge -j` inside the node's namespace.

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::netns;

fn json(args: &[&str]) -> Result<Vec<Value>> {
    let out = netns::run_host(args)?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(&out)
        .with_context(|| format!("`{}` printed no JSON", args.join(" ")))?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

/// `ip -j route show` (main table) in `ns`.
pub fn routes(ns: &str) -> Result<Vec<Value>> {
    json(&["ip", "-j", "-n", ns, "route", "show"])
}

/// `ip -j -6 route show` (main table) in `ns`.
pub fn routes6(ns: &str) -> Result<Vec<Value>> {
    json(&["ip", "-j", "-6", "-n", ns, "route", "show"])
}

/// The IPv6 routes in `ns` whose destination is `dst` (e.g.
/// `fd00:10:244:3::/64`).
pub fn routes6_to(ns: &str, dst: &str) -> Result<Vec<Value>> {
    Ok(routes6(ns)?
        .into_iter()
        .filter(|route| route["dst"] == dst)
        .collect())
}

/// The routes in `ns` whose destination is `dst` (e.g. `10.244.3.0/24`).
pub fn routes_to(ns: &str, dst: &str) -> Result<Vec<Value>> {
    Ok(routes(ns)?
        .into_iter()
        .filter(|route| route["dst"] == dst)
        .collect())
}

/// `ip -j neigh show dev <dev>` in `ns`.
pub fn neighbours(ns: &str, dev: &str) -> Result<Vec<Value>> {
    json(&["ip", "-j", "-n", ns, "neigh", "show", "dev", dev])
}

/// `bridge -j fdb show dev <dev>` in `ns`.
pub fn fdb(ns: &str, dev: &str) -> Result<Vec<Value>> {
    json(&["bridge", "-j", "-n", ns, "fdb", "show", "dev", dev])
}

/// `ip -j -d link show <dev>` in `ns`, if the device exists.
pub fn link(ns: &str, dev: &str) -> Result<Option<Value>> {
    if netns::run_host(&["ip", "-n", ns, "link", "show", dev]).is_err() {
        return Ok(None);
    }
    Ok(json(&["ip", "-j", "-d", "-n", ns, "link", "show", dev])?
        .into_iter()
        .next())
}

/// `ip -j addr show <dev>` addresses as `a.b.c.d/len`.
pub fn addresses(ns: &str, dev: &str) -> Result<Vec<String>> {
    addresses_of_family(ns, dev, "inet")
}

/// `dev`'s global IPv6 addresses as `addr/len` (link-local ones left out).
pub fn addresses6(ns: &str, dev: &str) -> Result<Vec<String>> {
    Ok(addresses_of_family(ns, dev, "inet6")?
        .into_iter()
        .filter(|address| !address.starts_with("fe80:"))
        .collect())
}

fn addresses_of_family(ns: &str, dev: &str, family: &str) -> Result<Vec<String>> {
    let links = json(&["ip", "-j", "-n", ns, "addr", "show", dev])?;
    Ok(links
        .iter()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|addr| addr["family"] == family)
        .map(|addr| {
            format!(
                "{}/{}",
                addr["local"].as_str().unwrap_or_default(),
                addr["prefixlen"]
            )
        })
        .collect())
}

/// (rx packets, tx packets) of `dev` in `ns`.
pub fn packet_counts(ns: &str, dev: &str) -> Result<(u64, u64)> {
    let links = json(&["ip", "-j", "-s", "-n", ns, "link", "show", "dev", dev])?;
    let stats = &links.first().context("no such link")?["stats64"];
    // A missing field is an error, never 0 (which would pass every
    // "stayed idle" check).
    let count = |direction: &str| {
        stats[direction]["packets"]
            .as_u64()
            .with_context(|| format!("`ip -s link show {dev}` in {ns}: no {direction} packets"))
    };
    Ok((count("rx")?, count("tx")?))
}

/// `dev`'s MTU in `ns`.
pub fn mtu(ns: &str, dev: &str) -> Result<u64> {
    let link = link(ns, dev)?.with_context(|| format!("{ns} has no {dev}"))?;
    link["mtu"]
        .as_u64()
        .with_context(|| format!("{ns}: {dev} has no MTU"))
}

/// Bytes `dev` in `ns` received so far (its rx `bytes`).
pub fn received_bytes(ns: &str, dev: &str) -> Result<u64> {
    link_bytes(ns, dev, "rx")
}

/// Bytes `dev` in `ns` sent so far (its tx `bytes`).
pub fn sent_bytes(ns: &str, dev: &str) -> Result<u64> {
    link_bytes(ns, dev, "tx")
}

/// `dev`'s `direction` (`rx` or `tx`) byte count in `ns`.
fn link_bytes(ns: &str, dev: &str, direction: &str) -> Result<u64> {
    let links = json(&["ip", "-j", "-s", "-n", ns, "link", "show", "dev", dev])?;
    links.first().context("no such link")?["stats64"][direction]["bytes"]
        .as_u64()
        .with_context(|| format!("`ip -s link show {dev}` in {ns}: no {direction} bytes"))
}

/// How many packets the IPv4 stack of `ns` forwarded (routed) so far:
/// `ForwDatagrams` from /proc/net/snmp, read by a process inside `ns`.
pub fn forwarded_datagrams(ns: &str) -> Result<u64> {
    let snmp = netns::run(ns, &["cat", "/proc/net/snmp"])?;
    let mut ip_lines = snmp.lines().filter(|line| line.starts_with("Ip:"));
    let (names, values) = (
        ip_lines.next().context("no Ip: header")?,
        ip_lines.next().context("no Ip: values")?,
    );
    let column = names
        .split_whitespace()
        .position(|name| name == "ForwDatagrams")
        .context("no ForwDatagrams")?;
    values
        .split_whitespace()
        .nth(column)
        .context("short Ip: line")?
        .parse()
        .context("ForwDatagrams is not a number")
}
