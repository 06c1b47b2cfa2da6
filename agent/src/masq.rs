//! `--ip-masq`: flanneld's nftables rules, in table `ip flannel-ipv4`, and
//! in a dual-stack network flanneld's `MasqIP6Rules` in table
//! `ip6 flannel-ipv6` (the names flannel's knftables gives them).
//!
//! Postrouting (nat): kube-proxy's mark 0x4000 returns untouched; pod to pod
//! returns; external traffic to this node's pods returns; pod to outside
//! (not multicast: 224.0.0.0/4, ff00::/8) is masqueraded fully-random; the
//! host to pods is masqueraded. Forward (filter): traffic from or to the pod
//! network is accepted. Applied atomically with `nft -f -` (the way
//! flannel's knftables does) and re-checked periodically, so a flushed
//! ruleset comes back.
//!
//! nft is a blocking process: [`Keeper`] runs it off the agent's runtime,
//! in a task of its own, so the agent's loop never waits on it.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tracing::{info, warn};

pub const TABLE: &str = "flannel-ipv4";
/// The IPv6 rules' table (family `ip6`), dual-stack only.
pub const TABLE_V6: &str = "flannel-ipv6";
/// kube-proxy marks traffic it has already handled with this bit; other
/// bits may be set too (weft's accept bit, say), so the rule tests the bit
/// as flanneld's `--mark 0x4000/0x4000` does, not the whole mark.
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// The full ruleset for `network` (the cluster) and `subnet` (this node's).
pub fn ruleset(network: &Ipv4Net, subnet: &Ipv4Net) -> String {
    format!(
        "table ip {TABLE} {{
\tchain postrtg {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return
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

/// flanneld's `MasqIP6Rules` for the IPv6 `network` and this node's IPv6
/// `subnet`, in [`ruleset`]'s form (flanneld's order for IPv6).
pub fn ruleset_v6(network: &Ipv6Net, subnet: &Ipv6Net) -> String {
    format!(
        "table ip6 {TABLE_V6} {{
\tchain postrtg {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return
\t\tip6 saddr {network} ip6 daddr {network} return
\t\tip6 saddr {network} ip6 daddr != ff00::/8 masquerade fully-random
\t\tip6 saddr != {network} ip6 daddr {subnet} return
\t\tip6 saddr != {network} ip6 daddr {network} masquerade fully-random
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tip6 saddr {network} accept
\t\tip6 daddr {network} accept
\t}}
}}
"
    )
}

/// The pod networks and this node's subnets the rules are written for, of
/// each family the network runs: (network, subnet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnets {
    pub v4: Option<(Ipv4Net, Ipv4Net)>,
    pub v6: Option<(Ipv6Net, Ipv6Net)>,
}

/// One nftables table this module owns: its family, name and contents.
struct Table {
    family: &'static str,
    name: &'static str,
    ruleset: String,
}

impl Subnets {
    fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        if let Some((network, subnet)) = &self.v4 {
            tables.push(Table {
                family: "ip",
                name: TABLE,
                ruleset: ruleset(network, subnet),
            });
        }
        if let Some((network, subnet)) = &self.v6 {
            tables.push(Table {
                family: "ip6",
                name: TABLE_V6,
                ruleset: ruleset_v6(network, subnet),
            });
        }
        tables
    }
}

/// Replaces the tables' contents with their rulesets in one transaction;
/// then removes the table of a family the network no longer runs (left
/// from dual stack).
pub fn apply(subnets: &Subnets) -> Result<()> {
    crate::nft::apply(&apply_script(subnets), "masquerade rules")?;
    if subnets.v4.is_none() {
        remove_left_over_table("ip", TABLE, "IPv6-only");
    }
    if subnets.v6.is_none() {
        remove_left_over_table("ip6", TABLE_V6, "IPv4-only");
    }
    Ok(())
}

/// [`apply`]'s script: add + delete + define, atomic, and right whether or
/// not a table exists.
fn apply_script(subnets: &Subnets) -> String {
    subnets
        .tables()
        .iter()
        .map(|table| {
            let Table {
                family,
                name,
                ruleset,
            } = table;
            format!("add table {family} {name}\ndelete table {family} {name}\n{ruleset}")
        })
        .collect()
}

/// In an IPv4-only network, table `ip6 flannel-ipv6` left from when the
/// network was dual-stack would masquerade for an IPv6 network no lease
/// holds now (flanneld leaves it): it goes; so does `ip flannel-ipv4` in
/// an IPv6-only network. Only once it is seen, so a node that never had it
/// (or lacks the family) is asked nothing of it; a failure is logged, the
/// other family's rules stand. `now` names what the network is.
fn remove_left_over_table(family: &str, name: &str, now: &str) {
    if !matches!(list_table(family, name), Ok(Some(_))) {
        return;
    }
    match crate::nft::apply(
        &format!("delete table {family} {name}\n"),
        "removal of a masquerade table left from dual stack",
    ) {
        Ok(()) => warn!(
            table = name,
            "the network is {now}: removed the masquerade table left from dual stack"
        ),
        Err(error) => warn!("{error:#}"),
    }
}

/// Whether the tables hold what `apply` wrote (compared as `nft list`
/// prints it, which normalises whitespace and numbers).
pub fn is_current(subnets: &Subnets) -> Result<bool> {
    for table in subnets.tables() {
        if !table_is_current(&table)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `nft list table <family> <name>`'s listing, or `None` when there is no
/// such table.
fn list_table(family: &str, name: &str) -> Result<Option<String>> {
    let output = Command::new("nft")
        .args(["list", "table", family, name])
        .output()
        .context("cannot run nft")?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
}

fn table_is_current(table: &Table) -> Result<bool> {
    let Some(listed) = list_table(table.family, table.name)? else {
        return Ok(false);
    };
    let normalise = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let listed = normalise(&listed);
    // nft prints 0x4000 as 0x00004000 and drops "policy accept" spacing
    // differences; compare each rule line instead of the whole text.
    Ok(table
        .ruleset
        .lines()
        .map(str::trim)
        .filter(|line| {
            line.starts_with("ip ") || line.starts_with("ip6 ") || line.starts_with("type ")
        })
        .all(|line| listed.contains(&normalise(line))))
}

/// Keeps the rules for the node's current subnet in place: checks them
/// every `every` and restores them if they changed, and rewrites them at
/// once when the subnet changes. Dropping it ends its task.
pub struct Keeper {
    subnets: watch::Sender<Subnets>,
}

impl Keeper {
    /// Applies the rules (an error here stops the agent's start, as
    /// flanneld's does), then keeps them in a task of its own.
    pub async fn start(subnets: Subnets, every: Duration) -> Result<Self> {
        tokio::task::spawn_blocking(move || apply(&subnets))
            .await
            .map_err(|error| anyhow!("applying the masquerade rules did not run: {error}"))??;
        info!(
            ipv4 = subnets.v4.is_some(),
            ipv6 = subnets.v6.is_some(),
            "masquerade rules applied"
        );
        let (sender, receiver) = watch::channel(subnets);
        tokio::spawn(keep(receiver, every));
        Ok(Self { subnets: sender })
    }

    /// The node's subnets are now `subnets`: the rules follow.
    pub fn follow(&self, subnets: Subnets) {
        self.subnets.send_replace(subnets);
    }
}

/// The [`Keeper`]'s task: until the keeper is dropped.
async fn keep(mut subnet: watch::Receiver<Subnets>, every: Duration) {
    let mut check = tokio::time::interval(every);
    check.tick().await;
    loop {
        tokio::select! {
            _ = check.tick() => {}
            changed = subnet.changed() => if changed.is_err() { return },
        }
        let current = *subnet.borrow_and_update();
        let restored = tokio::task::spawn_blocking(move || restore_if_changed(&current)).await;
        match restored {
            Ok(Ok(true)) => info!("masquerade rules (re)applied"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => warn!("{error:#}"),
            Err(error) => warn!("the masquerade rules check did not run: {error}"),
        }
    }
}

/// Applies the rules unless the table holds them; returns whether it did.
fn restore_if_changed(subnets: &Subnets) -> Result<bool> {
    if is_current(subnets)? {
        return Ok(false);
    }
    apply(subnets)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of `expected` is in `rules`, after the one before it.
    fn assert_in_order(rules: &str, expected: &[&str]) {
        let mut at = 0;
        for rule in expected {
            at += rules[at..]
                .find(rule)
                .unwrap_or_else(|| panic!("{rule} missing or out of order in\n{rules}"));
        }
    }

    #[test]
    fn each_family_the_network_runs_has_its_table_and_only_those() {
        let v4_only = Subnets {
            v4: Some((
                "10.244.0.0/16".parse().unwrap(),
                "10.244.3.0/24".parse().unwrap(),
            )),
            v6: None,
        };
        let script = apply_script(&v4_only);
        assert!(
            script.starts_with("add table ip flannel-ipv4\n"),
            "{script}"
        );
        assert!(!script.contains("ip6"), "{script}");
        let dual_stack = Subnets {
            v6: Some((
                "fd00:10:244::/56".parse().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap(),
            )),
            ..v4_only
        };
        let script = apply_script(&dual_stack);
        assert!(
            script.contains("add table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\ntable ip6 flannel-ipv6 {"),
            "{script}"
        );
        // IPv6-only: the ip6 table alone.
        let v6_only = Subnets {
            v4: None,
            ..dual_stack
        };
        let script = apply_script(&v6_only);
        assert!(
            script.starts_with("add table ip6 flannel-ipv6\n"),
            "{script}"
        );
        assert!(!script.contains("table ip "), "{script}");
    }

    #[test]
    fn ruleset_has_flannels_rules_in_order() {
        let rules = ruleset(
            &"10.244.0.0/16".parse().unwrap(),
            &"10.244.3.0/24".parse().unwrap(),
        );
        let expected_order = [
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
            "ip saddr 10.244.0.0/16 accept",
            "ip daddr 10.244.0.0/16 accept",
        ];
        assert_in_order(&rules, &expected_order);
    }

    #[test]
    fn ipv6_ruleset_has_flannels_masq_ip6_rules_in_order() {
        let rules = ruleset_v6(
            &"fd00:10:244::/56".parse().unwrap(),
            &"fd00:10:244:3::/64".parse().unwrap(),
        );
        assert!(rules.starts_with("table ip6 flannel-ipv6 {"), "{rules}");
        let expected_order = [
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x4000 == 0x4000 return",
            "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244::/56 return",
            "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return",
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random",
            "type filter hook forward priority filter; policy accept;",
            "ip6 saddr fd00:10:244::/56 accept",
            "ip6 daddr fd00:10:244::/56 accept",
        ];
        assert_in_order(&rules, &expected_order);
        assert!(!rules.contains("ip saddr"), "no IPv4 rule in the ip6 table");
    }
}
