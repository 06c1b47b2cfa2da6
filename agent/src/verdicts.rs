//! Netfilter's verdicts for the fast path (docs/datapath.md, "Netfilter stays
//! the authority").
//!
//! The fast path takes a flow only after this node's netfilter has passed
//! it unchanged. Netfilter says so itself: chain `verdict` of table
//! `inet weft` sits in the postrouting hook at the last priority before
//! conntrack confirms, so a packet that reaches it has passed every other
//! chain of every hook on its way through the node. It first clears the
//! accept bit on every packet (whoever else set it, weft does not learn
//! from it), then sets it again on forwarded packets of established
//! conntrack flows without NAT, helpers or sequence adjustment, unless the
//! operator's kernel-path bit is set in the packet's or the connection's
//! mark. A packet that still carries the bit when it leaves (TC egress,
//! `tc_verdict`) is recorded in FLOWS, or FLOWS6 for IPv6: the table is
//! `inet` and the rules match nothing family-specific, so both families'
//! forwarded packets are marked alike. Whenever the ruleset changes, the
//! agent bumps the generation in CONFIG, which voids every recorded verdict
//! at once: nothing that a new rule would drop or rewrite rides the fast
//! path past the change. A TCP flow rides it only once its conntrack
//! entry is liberal (see `ct_liberal`).
//!
//! The bit is weft's alone: `mark_conflicts.rs` finds any other rule that
//! sets or tests it, and while one exists weft leaves the mark untouched
//! and the fast path records no verdict.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use tokio::sync::Notify;
use tracing::warn;

pub use crate::weft_table::TABLE;

/// The default accept bit, 0x1000. Clear of kube-proxy's 0x4000 and
/// kubelet's 0x8000, of the CNI portmap plugin's 0x2000 (flannel's CNI
/// config chains portmap), of Calico's (and so Canal's) default mark mask
/// 0xffff0000 that Felix allocates its bits from, of Cilium's magic
/// (0x0f00) and identity (0xffff0000) bits, of Istio's 1337 (0x539) and of
/// wg-quick's 0xca6c.
pub const DEFAULT_ACCEPT_MARK: u32 = 0x1000;

/// The default kernel-path bit, 0x2: an operator's rule that sets it in the
/// packet mark or the connection's mark keeps that traffic on the kernel
/// path, where every rule sees every packet. Clear of the same components'
/// bits (a collision would only keep their traffic on the kernel path).
pub const DEFAULT_KERNEL_PATH_MARK: u32 = 0x2;

/// conntrack status bits (`enum ip_conntrack_status`) that keep a flow on
/// the kernel path for good: EXPECTED (a helper's child connection),
/// SRC_NAT, DST_NAT, SEQ_ADJUST, DYING and HELPER. nft prints the mask as
/// `snat,dnat,0x40,dying,0x2000` plus `expected`.
const KERNEL_ONLY_STATUS: u32 = 0x0001 | 0x0010 | 0x0020 | 0x0040 | 0x0200 | 0x2000;

/// The verdict chain's priority: postrouting, after every other chain
/// (NAT's 100 and anyone's mangle or filter), just before conntrack
/// confirms at INT_MAX.
const PRIORITY: i32 = i32::MAX - 1;

/// The chain, and where it hooks.
const CHAIN: &str = "verdict";
const CHAIN_DEFINITION: &str =
    "{ type filter hook postrouting priority 2147483646; policy accept; }";
/// Where weft before 0.2 set the bit (forward hook, priority 500): removed
/// on upgrade.
const LEGACY_CHAIN: &str = "forward";
const LEGACY_DEFINITION: &str = "{ type filter hook forward priority 500; policy accept; }";

/// nftables' multicast group for ruleset changes (NFNLGRP_NFTABLES).
const NFNLGRP_NFTABLES: u32 = 7;
/// nfnetlink subsystem of nftables' messages (NFNL_SUBSYS_NFTABLES).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// nftables message types (`enum nf_tables_msg_types`).
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
/// NFTA_SET_ELEM_LIST_TABLE: the table a set element message is about.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
/// `struct nfgenmsg` in front of an nfnetlink message's attributes.
const NFGENMSG_LEN: usize = 4;

/// The two bits weft's verdict chain works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// Set on packets netfilter passed unchanged (`--accept-mark`).
    pub accept: u32,
    /// An operator's rule sets it to keep traffic on the kernel path
    /// (`--kernel-path-mark`).
    pub kernel_path: u32,
}

/// Checks a mark bit flag's value: exactly one bit, not kube-proxy's.
pub fn check_mark(mark: u32) -> Result<()> {
    if mark.count_ones() != 1 {
        bail!("{mark:#x} must be exactly one bit (e.g. 0x1000)");
    }
    if mark == 0x4000 || mark == 0x8000 {
        bail!("{mark:#x} is kube-proxy's bit; pick another");
    }
    Ok(())
}

impl Marks {
    /// Checks that the two bits are different.
    pub fn new(accept: u32, kernel_path: u32) -> Result<Self> {
        if accept == kernel_path {
            bail!("--accept-mark and --kernel-path-mark are both {accept:#x}; they must differ");
        }
        Ok(Self {
            accept,
            kernel_path,
        })
    }
}

/// The verdict chain, as `nft -f` lines that rewrite it whole: clear the
/// bit on every packet, then set it where netfilter passed the flow
/// unchanged. Packets this node sends itself (from one of its own
/// addresses) never ride the fast path and get no bit; the check is by
/// source address because bridged packets (br_netfilter) reach postrouting
/// without an input device, like locally generated ones.
pub fn chain_script(marks: Marks) -> String {
    let Marks {
        accept,
        kernel_path,
    } = marks;
    let keep = !accept;
    format!(
        "{table}{legacy}add chain inet {TABLE} {CHAIN} {CHAIN_DEFINITION}
flush chain inet {TABLE} {CHAIN}
add rule inet {TABLE} {CHAIN} meta mark set meta mark & {keep:#x}
add rule inet {TABLE} {CHAIN} ct state established ct status & {KERNEL_ONLY_STATUS:#x} == 0 ct mark & {kernel_path:#x} == 0 meta mark & {kernel_path:#x} == 0 fib saddr type != local meta mark set meta mark | {accept:#x}
",
        table = crate::weft_table::ensure_script(),
        legacy = crate::weft_table::delete_chain_script(LEGACY_CHAIN, LEGACY_DEFINITION),
    )
}

/// Installs (or rewrites) the verdict chain in one transaction.
pub fn install(marks: Marks) -> Result<()> {
    debug_assert!(CHAIN_DEFINITION.contains(&PRIORITY.to_string()));
    crate::nft::apply(&chain_script(marks), "verdict chain")
}

/// Removes the verdict chain (the guard stays): without the agent's
/// `tc_verdict`, nothing would clear the bit before the packet leaves, and
/// while another rule uses the bit, weft must not touch it.
pub fn remove() -> Result<()> {
    crate::nft::apply(
        &format!(
            "{}{}{}",
            crate::weft_table::ensure_script(),
            crate::weft_table::delete_chain_script(CHAIN, CHAIN_DEFINITION),
            crate::weft_table::delete_chain_script(LEGACY_CHAIN, LEGACY_DEFINITION),
        ),
        "verdict chain",
    )
}

/// The nftables notification socket's receive buffer: room for a storm of
/// about 30,000 guard set elements (each notification costs about 1 KiB
/// of socket memory).
const NFT_WATCH_BUFFER: usize = 32 << 20;

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
    // The guard set follows the leases: a storm of lease changes is one
    // notification per element, which overflows the default buffer (and a
    // lost notification must count as a change, voiding every verdict).
    // CAP_NET_ADMIN may go past net.core.rmem_max; the memory is used only
    // while notifications wait.
    if let Err(error) = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &NFT_WATCH_BUFFER,
    ) {
        warn!("cannot enlarge the nftables notification buffer: {error}");
    }
    std::thread::Builder::new()
        .name("nft-watch".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match socket.recv(&mut &mut buffer[..], 0) {
                    Ok(length) => {
                        if !is_own_guard_set_update(&buffer[..length.min(buffer.len())]) {
                            changed.notify_one();
                        }
                    }
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

/// Whether a notification datagram only says that weft's own overlay guard
/// set changed (elements of a set in table `inet weft`, or the generation
/// that closes such a transaction): the guard decides who may send VXLAN
/// to this node, not what netfilter does to forwarded flows, so the peer set
/// following the leases does not void every verdict. Anything unreadable
/// counts as a change.
fn is_own_guard_set_update(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok(message) = netlink_packet_core::NetlinkBuffer::new_checked(rest) else {
            return false;
        };
        let length = (message.length() as usize)
            .next_multiple_of(4)
            .min(rest.len());
        let kind = message.message_type();
        let (subsystem, message_type) = (kind >> 8, kind & 0xff);
        if subsystem != NFNL_SUBSYS_NFTABLES {
            return false;
        }
        match message_type {
            NFT_MSG_NEWGEN => {}
            NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => {
                let Some(attributes) = message.payload().get(NFGENMSG_LEN..) else {
                    return false;
                };
                let table = netlink_packet_core::NlasIterator::new(attributes)
                    .filter_map(Result::ok)
                    .find(|nla| nla.kind() == NFTA_SET_ELEM_LIST_TABLE)
                    .map(|nla| {
                        nla.value()
                            .split(|byte| *byte == 0)
                            .next()
                            .unwrap_or(&[])
                            .to_vec()
                    });
                if table.as_deref() != Some(TABLE.as_bytes()) {
                    return false;
                }
            }
            _ => return false,
        }
        rest = &rest[length..];
    }
    !datagram.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_the_bit_then_marks_only_established_flows_without_nat_helpers_or_the_kernel_path_bit()
    {
        let script = chain_script(Marks::new(0x1000, 0x2).unwrap());
        assert!(script.contains(
            "add chain inet weft verdict { type filter hook postrouting priority 2147483646; policy accept; }"
        ));
        let rules: Vec<&str> = script
            .lines()
            .filter(|line| line.starts_with("add rule"))
            .collect();
        assert_eq!(
            rules,
            [
                "add rule inet weft verdict meta mark set meta mark & 0xffffefff",
                "add rule inet weft verdict ct state established ct status & 0x2271 == 0 ct mark & 0x2 == 0 meta mark & 0x2 == 0 fib saddr type != local meta mark set meta mark | 0x1000",
            ]
        );
        // The chain weft used before is removed on upgrade.
        assert!(script.contains("delete chain inet weft forward"));
        // An inet chain whose rules name neither family marks IPv6
        // forwarded packets as it marks IPv4 ones (FLOWS6's verdicts).
        assert!(
            rules
                .iter()
                .all(|rule| !rule.contains(" ip ") && !rule.contains(" ip6 "))
        );
    }

    #[test]
    fn marks_must_be_one_bit_not_kube_proxys_and_different() {
        assert!(check_mark(0x1000).is_ok());
        for bad in [0, 0x3, 0x4000, 0x8000] {
            assert!(check_mark(bad).is_err(), "{bad:#x} accepted");
        }
        assert!(Marks::new(0x1000, 0x1000).is_err());
        assert!(Marks::new(DEFAULT_ACCEPT_MARK, DEFAULT_KERNEL_PATH_MARK).is_ok());
    }

    /// An nftables notification: nlmsghdr, nfgenmsg, then one attribute
    /// (`kind`, NUL-terminated `value`).
    fn notification(message_type: u16, attribute: Option<(u16, &str)>) -> Vec<u8> {
        let mut payload = vec![2, 0, 0, 0]; // nfgenmsg: AF_INET, version, res_id
        if let Some((kind, value)) = attribute {
            let mut bytes = value.as_bytes().to_vec();
            bytes.push(0);
            let length = 4 + bytes.len();
            payload.extend((length as u16).to_ne_bytes());
            payload.extend(kind.to_ne_bytes());
            payload.extend(&bytes);
            payload.resize(payload.len().next_multiple_of(4), 0);
        }
        let mut message = Vec::new();
        message.extend(((16 + payload.len()) as u32).to_ne_bytes());
        message.extend(((NFNL_SUBSYS_NFTABLES << 8) | message_type).to_ne_bytes());
        message.extend([0u8; 10]); // flags, sequence, port
        message.extend(payload);
        message
    }

    #[test]
    fn only_weft_s_own_set_updates_leave_the_verdicts_alone() {
        let own = notification(NFT_MSG_NEWSETELEM, Some((NFTA_SET_ELEM_LIST_TABLE, "weft")));
        let own_delete = notification(NFT_MSG_DELSETELEM, Some((NFTA_SET_ELEM_LIST_TABLE, "weft")));
        let generation = notification(NFT_MSG_NEWGEN, None);
        assert!(is_own_guard_set_update(&own));
        assert!(is_own_guard_set_update(&own_delete));
        assert!(is_own_guard_set_update(&generation));
        assert!(is_own_guard_set_update(&[own.clone(), generation].concat()));
        // Anyone else's set (kube-proxy's nftables mode keeps its services
        // in sets), a new rule, garbage: a change.
        let theirs = notification(
            NFT_MSG_NEWSETELEM,
            Some((NFTA_SET_ELEM_LIST_TABLE, "kube-proxy")),
        );
        let new_rule = notification(6, Some((1, "weft")));
        assert!(!is_own_guard_set_update(&theirs));
        assert!(!is_own_guard_set_update(&new_rule));
        assert!(!is_own_guard_set_update(&[own, new_rule].concat()));
        assert!(!is_own_guard_set_update(&[1, 2, 3]));
        assert!(!is_own_guard_set_update(&[]));
    }
}
