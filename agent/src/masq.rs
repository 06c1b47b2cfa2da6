//! `--ip-masq`: flanneld's nftables rules, in table `ip flannel-ipv4`.
//!
//! Postrouting (nat): kube-proxy's mark 0x4000 returns untouched; pod to pod
//! returns; external traffic to this node's pods returns; pod to outside
//! (not multicast) is masqueraded fully-random; the host to pods is
//! masqueraded. Forward (filter): traffic from or to the pod network is
//! accepted. Applied atomically with `nft -f -` (the way flannel's knftables
//! does) and re-checked periodically, so a flushed ruleset comes back.

use std::process::Command;

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;

pub const TABLE: &str = "flannel-ipv4";
/// kube-proxy marks traffic it has already handled with this.
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// The full ruleset for `network` (the cluster) and `subnet` (this node's).
pub fn ruleset(network: &Ipv4Net, subnet: &Ipv4Net) -> String {
    format!(
        "table ip {TABLE} {{
\tchain postrtg {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark {KUBE_PROXY_MARK:#x} return
\t\tip saddr {network} ip daddr {network} return
\t\tip saddr != {network} ip daddr {subnet} return
\t\tip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != {network} ip daddr {network} masquerade fully-random
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr {network} accept
\t\tip daddr {network} accept
\t}}
}}
"
    )
}

/// Replaces the table's contents with `ruleset` in one transaction.
pub fn apply(network: &Ipv4Net, subnet: &Ipv4Net) -> Result<()> {
    // add + delete + define: atomic, and works whether or not the table exists.
    let script = format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\n{}",
        ruleset(network, subnet)
    );
    crate::nft::apply(&script, &format!("{TABLE} rules"))
}

/// Whether the table holds what `apply` wrote (compared as `nft list`
/// prints it, which normalises whitespace and numbers).
pub fn is_current(network: &Ipv4Net, subnet: &Ipv4Net) -> Result<bool> {
    let output = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .output()
        .context("cannot run nft")?;
    if !output.status.success() {
        return Ok(false);
    }
    let listed = String::from_utf8_lossy(&output.stdout);
    let normalise = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let expected = ruleset(network, subnet);
    let listed = normalise(&listed);
    // nft prints 0x4000 as 0x00004000 and drops "policy accept" spacing
    // differences; compare each rule line instead of the whole text.
    Ok(expected
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("ip ") || line.starts_with("type "))
        .all(|line| listed.contains(&normalise(line))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_has_flannels_rules_in_order() {
        let rules = ruleset(
            &"10.244.0.0/16".parse().unwrap(),
            &"10.244.3.0/24".parse().unwrap(),
        );
        let expected_order = [
            "meta mark 0x4000 return",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
            "ip saddr 10.244.0.0/16 accept",
            "ip daddr 10.244.0.0/16 accept",
        ];
        let mut at = 0;
        for rule in expected_order {
            at += rules[at..]
                .find(rule)
                .unwrap_or_else(|| panic!("{rule} missing or out of order in\n{rules}"));
        }
    }
}
