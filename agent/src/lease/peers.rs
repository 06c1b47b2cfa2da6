//! The remote leases the datapath may use, kept from the etcd listing and
//! watch events. Every value passes the rules in [`super::validate`] first,
//! the same way for a listing and for an event; a lease that breaks one is
//! logged once per value (key, rule, reason), counted by rule, and not used.
//! A delete event carries no value, so the last accepted value is kept to
//! clean up with. A key rewritten with a value that fails (or does not
//! parse) is no longer a usable lease: it is removed like a delete.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use ipnet::Ipv4Net;
use tracing::warn;

use super::{
    LeaseAttrs, MacAddr,
    registry::RawLease,
    subnet_of_key,
    validate::{
        Candidate, LeasePolicy, MAX_VALUE_LEN, Rejection, Rule, overlapping, resolve_overlaps,
        vtep_mac,
    },
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Upsert { subnet: Ipv4Net, attrs: LeaseAttrs },
    Remove { subnet: Ipv4Net, attrs: LeaseAttrs },
}

#[derive(Debug)]
pub struct PeerTable {
    policy: LeasePolicy,
    /// Leases that pass the per-lease rules, by subnet (a key names exactly
    /// one subnet).
    candidates: BTreeMap<Ipv4Net, Candidate>,
    /// How many candidates carry each VTEP MAC (more than one: a clash).
    macs: BTreeMap<MacAddr, usize>,
    /// The leases in use: the candidates that overlap no older one.
    peers: BTreeMap<Ipv4Net, LeaseAttrs>,
    /// Rejections already logged: key -> (value fingerprint, rule).
    reported: BTreeMap<String, (u64, Rule)>,
    /// Rejections by rule since start, each (key, value) counted once.
    rejections: BTreeMap<Rule, u64>,
}

/// What one key's current value amounts to.
enum Verdict {
    /// Our own lease: the agent handles it, it is never a peer.
    Own,
    Usable(Ipv4Net, Candidate),
    Rejected {
        subnet: Option<Ipv4Net>,
        fingerprint: u64,
        rejection: Rejection,
    },
}

impl PeerTable {
    pub fn new(policy: LeasePolicy) -> Self {
        Self {
            policy,
            candidates: BTreeMap::new(),
            macs: BTreeMap::new(),
            peers: BTreeMap::new(),
            reported: BTreeMap::new(),
            rejections: BTreeMap::new(),
        }
    }

    pub fn peers(&self) -> &BTreeMap<Ipv4Net, LeaseAttrs> {
        &self.peers
    }

    /// How many (key, value) pairs each rule has rejected since start.
    pub fn rejections(&self) -> &BTreeMap<Rule, u64> {
        &self.rejections
    }

    /// Replaces the table with a full listing; returns what changed.
    /// `own` (our subnet) is never a peer.
    pub fn resync(&mut self, leases: &[RawLease], own: Option<Ipv4Net>) -> Vec<PeerChange> {
        let mut candidates = BTreeMap::new();
        for lease in leases {
            match self.judge(&lease.key, &lease.value, lease.create_revision, own) {
                Verdict::Own => {}
                Verdict::Usable(subnet, candidate) => {
                    candidates.insert(subnet, candidate);
                }
                Verdict::Rejected {
                    subnet,
                    fingerprint,
                    rejection,
                } => self.report(&lease.key, subnet, fingerprint, &rejection),
            }
        }
        // A key that is gone and comes back is news again.
        let present: BTreeSet<&str> = leases.iter().map(|lease| lease.key.as_str()).collect();
        self.reported
            .retain(|key, _| present.contains(key.as_str()));
        self.macs.clear();
        for candidate in candidates.values() {
            if let Some(mac) = vtep_mac(&candidate.attrs) {
                *self.macs.entry(mac).or_default() += 1;
            }
        }
        self.candidates = candidates;
        self.settle_all()
    }

    /// A put event for `key`.
    pub fn put(
        &mut self,
        key: &str,
        value: &[u8],
        create_revision: i64,
        own: Option<Ipv4Net>,
    ) -> Vec<PeerChange> {
        match self.judge(key, value, create_revision, own) {
            Verdict::Own => Vec::new(),
            Verdict::Usable(subnet, candidate) => {
                self.set_candidate(subnet, Some(candidate));
                self.settle(subnet)
            }
            Verdict::Rejected {
                subnet,
                fingerprint,
                rejection,
            } => {
                self.report(key, subnet, fingerprint, &rejection);
                match subnet {
                    Some(subnet) => {
                        self.set_candidate(subnet, None);
                        self.settle(subnet)
                    }
                    None => Vec::new(),
                }
            }
        }
    }

    /// A delete (or expiry) event for `key`.
    pub fn delete(&mut self, key: &str) -> Vec<PeerChange> {
        self.reported.remove(key);
        let Ok(subnet) = subnet_of_key(key) else {
            return Vec::new();
        };
        if !self.candidates.contains_key(&subnet) {
            return Vec::new();
        }
        self.set_candidate(subnet, None);
        self.settle(subnet)
    }

    /// Replaces (or, with `None`, removes) the candidate for `subnet`,
    /// keeping the MAC counts in step.
    fn set_candidate(&mut self, subnet: Ipv4Net, candidate: Option<Candidate>) {
        let old = match candidate {
            Some(candidate) => {
                if let Some(mac) = vtep_mac(&candidate.attrs) {
                    *self.macs.entry(mac).or_default() += 1;
                }
                self.candidates.insert(subnet, candidate)
            }
            None => self.candidates.remove(&subnet),
        };
        if let Some(mac) = old.as_ref().and_then(|old| vtep_mac(&old.attrs))
            && let Some(count) = self.macs.get_mut(&mac)
        {
            *count -= 1;
            if *count == 0 {
                self.macs.remove(&mac);
            }
        }
    }

    fn judge(
        &self,
        key: &str,
        value: &[u8],
        create_revision: i64,
        own: Option<Ipv4Net>,
    ) -> Verdict {
        crate::metrics::global().lease_seen();
        let fingerprint = fingerprint(value);
        let rejected = |subnet, rejection| Verdict::Rejected {
            subnet,
            fingerprint,
            rejection,
        };
        let subnet = match subnet_of_key(key) {
            Ok(subnet) => subnet,
            Err(error) => {
                return rejected(
                    None,
                    Rejection::new(Rule::MalformedKey, format!("{error:#}")),
                );
            }
        };
        if Some(subnet) == own {
            return Verdict::Own;
        }
        if value.len() > MAX_VALUE_LEN {
            return rejected(
                Some(subnet),
                Rejection::new(
                    Rule::ValueTooLarge,
                    format!(
                        "value is {} bytes; a lease value is at most {MAX_VALUE_LEN}",
                        value.len()
                    ),
                ),
            );
        }
        let attrs = match LeaseAttrs::from_json(value) {
            Ok(attrs) => attrs,
            Err(error) => {
                return rejected(
                    Some(subnet),
                    Rejection::new(Rule::MalformedValue, format!("{error:#}")),
                );
            }
        };
        if let Err(rejection) = self.policy.check(subnet, &attrs, own) {
            return rejected(Some(subnet), rejection);
        }
        crate::metrics::global().lease_accepted();
        Verdict::Usable(
            subnet,
            Candidate {
                key: key.to_owned(),
                create_revision,
                attrs,
                fingerprint,
            },
        )
    }

    /// Logs and counts a rejection, once per (key, value, rule).
    fn report(
        &mut self,
        key: &str,
        subnet: Option<Ipv4Net>,
        fingerprint: u64,
        rejection: &Rejection,
    ) {
        let seen = (fingerprint, rejection.rule);
        if self.reported.get(key) == Some(&seen) {
            return;
        }
        self.reported.insert(key.to_owned(), seen);
        let count = self.rejections.entry(rejection.rule).or_default();
        *count += 1;
        crate::metrics::global().lease_rejected(rejection.rule.name());
        let in_use = subnet.is_some_and(|subnet| self.peers.contains_key(&subnet));
        warn!(
            rule = rejection.rule.name(),
            rejected_by_rule = *count,
            "{key}: rejected: {}{}",
            rejection.reason,
            if in_use {
                "; it was in use and is removed from the datapath"
            } else {
                ""
            }
        );
    }

    /// Brings `peers` in line with `candidates` after `touched` changed.
    /// Without clashes (overlapping subnets, shared VTEP MACs) only
    /// `touched` can change; otherwise every clash is decided again.
    fn settle(&mut self, touched: Ipv4Net) -> Vec<PeerChange> {
        let others_in_candidates =
            self.candidates.len() - self.candidates.contains_key(&touched) as usize;
        let others_in_peers = self.peers.len() - self.peers.contains_key(&touched) as usize;
        let nothing_shadowed = others_in_candidates == others_in_peers;
        let mac_shared = self
            .candidates
            .get(&touched)
            .and_then(|candidate| vtep_mac(&candidate.attrs))
            .is_some_and(|mac| self.macs.get(&mac).is_some_and(|count| *count > 1));
        if !nothing_shadowed || mac_shared || !overlapping(&self.candidates, touched).is_empty() {
            return self.settle_all();
        }
        match self.candidates.get(&touched) {
            Some(candidate) => {
                self.reported.remove(&candidate.key);
                if self.peers.get(&touched) == Some(&candidate.attrs) {
                    return Vec::new();
                }
                self.peers.insert(touched, candidate.attrs.clone());
                vec![PeerChange::Upsert {
                    subnet: touched,
                    attrs: candidate.attrs.clone(),
                }]
            }
            None => self
                .peers
                .remove(&touched)
                .map(|attrs| PeerChange::Remove {
                    subnet: touched,
                    attrs,
                })
                .into_iter()
                .collect(),
        }
    }

    /// Decides every overlap again and returns how `peers` changed.
    fn settle_all(&mut self) -> Vec<PeerChange> {
        let (accepted, losers) = resolve_overlaps(&self.candidates);
        for (subnet, rejection) in losers {
            let candidate = &self.candidates[&subnet];
            let (key, fingerprint) = (candidate.key.clone(), candidate.fingerprint);
            self.report(&key, Some(subnet), fingerprint, &rejection);
        }
        for subnet in accepted.keys() {
            self.reported.remove(&self.candidates[subnet].key);
        }
        let mut changes = Vec::new();
        for (subnet, attrs) in &self.peers {
            if !accepted.contains_key(subnet) {
                changes.push(PeerChange::Remove {
                    subnet: *subnet,
                    attrs: attrs.clone(),
                });
            }
        }
        for (subnet, attrs) in &accepted {
            if self.peers.get(subnet) != Some(attrs) {
                changes.push(PeerChange::Upsert {
                    subnet: *subnet,
                    attrs: attrs.clone(),
                });
            }
        }
        self.peers = accepted;
        changes
    }
}

/// Identifies a value without keeping it (values can be large).
fn fingerprint(value: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::NetworkConfig;

    fn table() -> PeerTable {
        let config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#)
                .unwrap();
        PeerTable::new(LeasePolicy::new(
            &config,
            Ipv4Addr::new(192, 168, 77, 1),
            None,
        ))
    }

    fn lease(subnet: &str, ip: &str) -> RawLease {
        RawLease {
            key: format!("/coreos.com/network/subnets/{subnet}"),
            value: format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}}"#).into_bytes(),
            create_revision: 1,
        }
    }

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn resync_reports_adds_changes_and_removals_and_skips_our_own() {
        let mut table = table();
        let own = Some(net("10.244.1.0/24"));
        let first = table.resync(
            &[
                lease("10.244.1.0-24", "192.168.77.1"),
                lease("10.244.2.0-24", "192.168.77.2"),
            ],
            own,
        );
        assert_eq!(first.len(), 1);
        assert!(
            matches!(&first[0], PeerChange::Upsert { subnet, .. } if *subnet == net("10.244.2.0/24"))
        );
        let second = table.resync(
            &[
                lease("10.244.2.0-24", "192.168.77.9"),
                lease("10.244.3.0-24", "192.168.77.3"),
            ],
            own,
        );
        assert_eq!(second.len(), 2, "{second:?}");
        let third = table.resync(&[], own);
        assert_eq!(third.len(), 2);
        assert!(
            third
                .iter()
                .all(|change| matches!(change, PeerChange::Remove { .. }))
        );
        assert!(table.peers().is_empty());
    }

    #[test]
    fn a_lease_rewritten_with_a_bad_value_is_removed_like_a_delete() {
        let mut table = table();
        let good = lease("10.244.2.0-24", "192.168.77.2");
        table.resync(std::slice::from_ref(&good), None);
        let removed = table.put(&good.key, b"not json", 2, None);
        assert!(
            matches!(&removed[..], [PeerChange::Remove { subnet, .. }] if *subnet == net("10.244.2.0/24")),
            "{removed:?}"
        );
        assert!(table.peers().is_empty());
        // Back to a good value: used again.
        assert_eq!(table.put(&good.key, &good.value, 1, None).len(), 1);
        // A value that parses but breaks a rule, in a listing this time.
        let outside = lease("10.244.2.0-24", "10.244.9.9");
        let removed = table.resync(&[outside, lease("garbage-key", "192.168.77.5")], None);
        assert!(
            matches!(&removed[..], [PeerChange::Remove { .. }]),
            "{removed:?}"
        );
        assert!(table.peers().is_empty());
        assert_eq!(table.rejections()[&Rule::MalformedValue], 1);
        assert_eq!(table.rejections()[&Rule::PublicIpInsideNetwork], 1);
        assert_eq!(table.rejections()[&Rule::MalformedKey], 1);
    }

    #[test]
    fn listings_and_events_apply_the_same_rules() {
        let hostile = [
            lease("192.168.77.0-24", "192.168.77.9"),
            lease("10.96.0.0-12", "192.168.77.9"),
            lease("10.244.2.0-24", "0.0.0.0"),
        ];
        let mut listed = table();
        assert!(listed.resync(&hostile, None).is_empty());
        let mut watched = table();
        for lease in &hostile {
            assert!(watched.put(&lease.key, &lease.value, 1, None).is_empty());
        }
        assert_eq!(listed.rejections(), watched.rejections());
        assert_eq!(listed.rejections()[&Rule::SubnetOutsideNetwork], 2);
        assert_eq!(listed.rejections()[&Rule::PublicIpNotUnicast], 1);
    }

    #[test]
    fn a_rejection_is_counted_once_per_value_not_per_resync() {
        let mut table = table();
        let bad = lease("10.96.0.0-12", "192.168.77.9");
        for _ in 0..3 {
            table.resync(std::slice::from_ref(&bad), None);
            table.put(&bad.key, &bad.value, 1, None);
        }
        assert_eq!(table.rejections()[&Rule::SubnetOutsideNetwork], 1);
        // A different value for the same key is news.
        let other = lease("10.96.0.0-12", "192.168.77.8");
        table.put(&other.key, &other.value, 1, None);
        assert_eq!(table.rejections()[&Rule::SubnetOutsideNetwork], 2);
        // So is the same value after the key was deleted.
        table.delete(&bad.key);
        table.put(&bad.key, &bad.value, 1, None);
        assert_eq!(table.rejections()[&Rule::SubnetOutsideNetwork], 3);
    }

    #[test]
    fn oversized_values_are_rejected_unread() {
        let mut table = table();
        let mut big = lease("10.244.2.0-24", "192.168.77.2");
        big.value.resize(1 << 20, b' ');
        assert!(table.resync(&[big], None).is_empty());
        assert_eq!(table.rejections()[&Rule::ValueTooLarge], 1);
    }

    #[test]
    fn delete_uses_the_last_value_and_put_ignores_repeats() {
        let mut table = table();
        let peer = lease("10.244.2.0-24", "192.168.77.2");
        assert_eq!(table.put(&peer.key, &peer.value, 1, None).len(), 1);
        assert!(table.put(&peer.key, &peer.value, 1, None).is_empty());
        let removed = table.delete(&peer.key);
        assert!(
            matches!(&removed[..], [PeerChange::Remove { attrs, .. }] if attrs.public_ip.to_string() == "192.168.77.2")
        );
        assert!(table.delete(&peer.key).is_empty());
    }

    fn vxlan_table() -> PeerTable {
        let config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        PeerTable::new(LeasePolicy::new(
            &config,
            Ipv4Addr::new(192, 168, 77, 1),
            None,
        ))
    }

    fn vxlan_value(ip: &str, mac: &str) -> Vec<u8> {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#).into_bytes()
    }

    #[test]
    fn a_lease_reusing_another_nodes_vtep_mac_is_refused_until_the_owner_goes() {
        let mut table = vxlan_table();
        let owner = "/coreos.com/network/subnets/10.244.2.0-24";
        let thief = "/coreos.com/network/subnets/10.244.3.0-24";
        let mac = "0e:01:c0:a8:4d:02";
        assert_eq!(
            table
                .put(owner, &vxlan_value("192.168.77.2", mac), 5, None)
                .len(),
            1
        );
        assert!(
            table
                .put(thief, &vxlan_value("192.168.77.66", mac), 9, None)
                .is_empty()
        );
        assert_eq!(table.rejections()[&Rule::VtepMacInUse], 1);
        assert_eq!(table.peers().len(), 1);
        // The same clash from a listing.
        let listing = [
            RawLease {
                key: owner.into(),
                value: vxlan_value("192.168.77.2", mac),
                create_revision: 5,
            },
            RawLease {
                key: thief.into(),
                value: vxlan_value("192.168.77.66", mac),
                create_revision: 9,
            },
        ];
        assert!(table.resync(&listing, None).is_empty());
        assert_eq!(table.rejections()[&Rule::VtepMacInUse], 1, "logged once");
        // The owner leaves: the MAC is free and the other lease is used.
        let changes = table.delete(owner);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            table.peers().keys().copied().collect::<Vec<_>>(),
            [net("10.244.3.0/24")]
        );
    }

    #[test]
    fn events_keep_the_older_of_overlapping_leases() {
        // The prefix rule makes overlaps impossible with a real config; a
        // policy with SubnetLen 24 and a /23 candidate inserted directly
        // exercises the tie-break that guards the peer set anyway.
        let mut table = table();
        let young = lease("10.244.2.0-24", "192.168.77.2");
        assert_eq!(table.put(&young.key, &young.value, 10, None).len(), 1);
        let wide = net("10.244.2.0/23");
        table.set_candidate(
            wide,
            Some(Candidate {
                key: "/coreos.com/network/subnets/10.244.2.0-23".into(),
                create_revision: 5,
                attrs: table.peers()[&net("10.244.2.0/24")].clone(),
                fingerprint: 7,
            }),
        );
        let changes = table.settle(wide);
        assert!(
            changes.contains(&PeerChange::Remove {
                subnet: net("10.244.2.0/24"),
                attrs: table.peers()[&wide].clone()
            }),
            "{changes:?}"
        );
        assert_eq!(table.rejections()[&Rule::SubnetOverlapsPeer], 1);
        // The older one goes away: the younger comes back.
        let changes = table.delete("/coreos.com/network/subnets/10.244.2.0-23");
        assert_eq!(
            table.peers().keys().copied().collect::<Vec<_>>(),
            [net("10.244.2.0/24")]
        );
        assert_eq!(changes.len(), 2, "{changes:?}");
    }
}
