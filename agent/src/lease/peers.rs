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
mod tests;
