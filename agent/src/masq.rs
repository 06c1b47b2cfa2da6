//! `--ip-masq`: flanneld's nftables rules, in table `ip flannel-ipv4`.
//!
//! Postrouting (nat): kube-proxy's mark 0x4000 returns untouched; pod to pod
//! returns; external traffic to this node's pods returns; pod to outside
//! (not multicast) is masqueraded fully-random; the host to pods is
//! masqueraded. Forward (filter): traffic from or to the pod network is
//! accepted. Applied atomically with `nft -f -` (the way flannel's knftables
//! does) and re-checked periodically, so a flushed ruleset comes back.
//!
//! nft is a blocking process: [`Keeper`] runs it off the agent's runtime,
//! in a task of its own, so the agent's loop never waits on it.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tracing::{info, warn};

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

/// Keeps the rules for the node's current subnet in place: checks them
/// every `every` and restores them if they changed, and rewrites them at
/// once when the subnet changes. Dropping it ends its task.
pub struct Keeper {
    subnet: watch::Sender<Ipv4Net>,
}

impl Keeper {
    /// Applies the rules (an error here stops the agent's start, as
    /// flanneld's does), then keeps them in a task of its own.
    pub async fn start(network: Ipv4Net, subnet: Ipv4Net, every: Duration) -> Result<Self> {
        tokio::task::spawn_blocking(move || apply(&network, &subnet))
            .await
            .map_err(|error| anyhow!("applying the masquerade rules did not run: {error}"))??;
        info!(table = TABLE, "masquerade rules applied");
        let (sender, receiver) = watch::channel(subnet);
        tokio::spawn(keep(network, receiver, every));
        Ok(Self { subnet: sender })
    }

    /// The node's subnet is now `subnet`: the rules follow.
    pub fn follow(&self, subnet: Ipv4Net) {
        self.subnet.send_replace(subnet);
    }
}

/// The [`Keeper`]'s task: until the keeper is dropped.
async fn keep(network: Ipv4Net, mut subnet: watch::Receiver<Ipv4Net>, every: Duration) {
    let mut check = tokio::time::interval(every);
    check.tick().await;
    loop {
        tokio::select! {
            _ = check.tick() => {}
            changed = subnet.changed() => if changed.is_err() { return },
        }
        let current = *subnet.borrow_and_update();
        let restored =
            tokio::task::spawn_blocking(move || restore_if_changed(&network, &current)).await;
        match restored {
            Ok(Ok(true)) => info!(table = TABLE, "masquerade rules (re)applied"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => warn!("{error:#}"),
            Err(error) => warn!("the masquerade rules check did not run: {error}"),
        }
    }
}

/// Applies the rules unless the table holds them; returns whether it did.
fn restore_if_changed(network: &Ipv4Net, subnet: &Ipv4Net) -> Result<bool> {
    if is_current(network, subnet)? {
        return Ok(false);
    }
    apply(network, subnet)?;
    Ok(true)
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
