//! Netfilter's verdicts for the fast path (see the README, "Netfilter stays
//! the authority").
//!
//! The fast path takes a flow only after this node's netfilter has passed
//! it unchanged. Netfilter says so itself: table `inet weft` has one rule
//! in the forward hook that sets a mark bit on packets of established
//! conntrack flows without NAT, helpers or sequence adjustment; a packet
//! that still carries the bit when it leaves (TC egress, `tc_verdict`)
//! passed every hook, and its flow is recorded in FLOWS. Whenever the
//! ruleset changes, the agent bumps the generation in CONFIG, which voids
//! every recorded verdict at once: nothing that a new rule would drop or
//! rewrite rides the fast path past the change. A TCP flow rides it only
//! once its conntrack entry is liberal (see `ct_liberal`).

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use tokio::sync::Notify;
use tracing::warn;

pub const TABLE: &str = "weft";

/// The default mark bit: clear of kube-proxy's 0x4000 and 0x8000 and of
/// the low bits other agents commonly use.
pub const DEFAULT_ACCEPT_MARK: u32 = 0x0010_0000;

/// conntrack status bits (`enum ip_conntrack_status`) that keep a flow on
/// the kernel path for good: EXPECTED (a helper's child connection),
/// SRC_NAT, DST_NAT, SEQ_ADJUST, DYING and HELPER. nft prints the mask as
/// `snat,dnat,0x40,dying,0x2000` plus `expected`.
const KERNEL_ONLY_STATUS: u32 = 0x0001 | 0x0010 | 0x0020 | 0x0040 | 0x0200 | 0x2000;

/// The forward hook's priority: after the filter chains (0) of iptables,
/// kube-proxy and NetworkPolicy agents. Any hook that drops the packet
/// later still wins: the verdict is recorded only where the packet leaves.
const PRIORITY: i32 = 500;

/// nftables' multicast group for ruleset changes (NFNLGRP_NFTABLES).
const NFNLGRP_NFTABLES: u32 = 7;

/// Checks a `--accept-mark` value: exactly one bit, not kube-proxy's.
pub fn check_mark(mark: u32) -> Result<()> {
    if mark.count_ones() != 1 {
        bail!("{mark:#x} must be exactly one bit (e.g. 0x100000)");
    }
    if mark == 0x4000 || mark == 0x8000 {
        bail!("{mark:#x} is kube-proxy's bit; pick another");
    }
    Ok(())
}

/// The table, as `nft -f` reads it.
pub fn ruleset(mark: u32) -> String {
    format!(
        "table inet {TABLE} {{
\tchain forward {{
\t\ttype filter hook forward priority {PRIORITY}; policy accept;
\t\tct state established ct status & {KERNEL_ONLY_STATUS:#x} == 0 meta mark set meta mark | {mark:#x}
\t}}
}}
"
    )
}

/// Installs (or replaces) the table in one transaction.
pub fn install(mark: u32) -> Result<()> {
    let script = format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        ruleset(mark)
    );
    crate::nft::apply(&script, &format!("inet {TABLE} table"))
}

/// Removes the table: without the agent's `tc_verdict` nothing would clear
/// the mark bit.
pub fn remove() -> Result<()> {
    crate::nft::apply(
        &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        &format!("inet {TABLE} table"),
    )
}

/// Wakes `changed` after every change to the node's nftables ruleset
/// (iptables-nft included: it is nftables underneath), and after a lost
/// notification, which may have been one. A thread blocks on the netlink
/// socket so the agent's runtime never does.
pub fn watch_ruleset(changed: Arc<Notify>) -> Result<()> {
    let mut socket =
        Socket::new(NETLINK_NETFILTER).context("cannot open a netfilter netlink socket")?;
    socket
        .bind_auto()
        .context("cannot bind the netfilter netlink socket")?;
    socket
        .add_membership(NFNLGRP_NFTABLES)
        .context("cannot follow nftables ruleset changes")?;
    std::thread::Builder::new()
        .name("nft-watch".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match socket.recv(&mut &mut buffer[..], 0) {
                    Ok(_) => changed.notify_one(),
                    Err(error) => {
                        // ENOBUFS: notifications were lost; assume a change.
                        warn!("nftables change notifications: {error}; treating as a change");
                        changed.notify_one();
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
        })
        .context("cannot start the nftables watcher")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_established_flows_without_nat_or_helpers() {
        let rules = ruleset(0x10_0000);
        assert!(rules.contains("type filter hook forward priority 500; policy accept;"));
        assert!(rules.contains(
            "ct state established ct status & 0x2271 == 0 meta mark set meta mark | 0x100000"
        ));
    }

    #[test]
    fn accept_mark_must_be_one_bit_and_not_kube_proxys() {
        assert!(check_mark(0x10_0000).is_ok());
        for bad in [0, 0x3, 0x4000, 0x8000] {
            assert!(check_mark(bad).is_err(), "{bad:#x} accepted");
        }
    }
}
