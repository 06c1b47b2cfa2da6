//! The remote subnets the datapath may use, kept from the subnet manager's
//! claims (etcd leases, Kubernetes Nodes). Every claim passes the rules in
//! [`super::validate`] first, the same way for a listing and for an event,
//! whatever its source; a claim that breaks one is logged once per value
//! (id, rule, reason), counted by rule, and not used. A delete event
//! carries no value, so the last accepted value is kept to clean up with. A
//! claim rewritten with a value that fails (or does not parse) is no longer
//! usable: it is removed like a delete. Two claimants of one subnet (two
//! Nodes given the same podCIDR) are both kept; the older one is used.

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};

use ipnet::{IpNet, Ipv6Net};
use tracing::warn;

use super::{
    MacAddr,
    claim::Claim,
    validate::{
        AcceptedPeer, Candidate, LeasePolicy, OwnSubnets, Rejection, Rule, overlapping_net,
        resolve_overlaps,
    },
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Upsert { subnet: IpNet, peer: AcceptedPeer },
    Remove { subnet: IpNet, peer: AcceptedPeer },
}

#[derive(Debug)]
pub struct PeerTable {
    policy: LeasePolicy,
    /// Claims that pass the per-claim rules, by subnet and claimant.
    candidates: BTreeMap<IpNet, BTreeMap<String, Candidate>>,
    /// How many candidates there are, all subnets together.
    candidate_count: usize,
    /// The subnet each candidate's claimant holds: an etcd key names one
    /// subnet for good, a Node's podCIDR can be given to another Node.
    claimed: BTreeMap<String, IpNet>,
    /// How many candidates carry each VTEP MAC (more than one: a clash).
    macs: BTreeMap<MacAddr, usize>,
    /// The same for the IPv6 halves: subnets and `flannel-v6` VTEP MACs.
    subnets_v6: BTreeMap<IpNet, usize>,
    macs_v6: BTreeMap<MacAddr, usize>,
    /// The leases in use: the candidates that overlap no older one.
    peers: BTreeMap<IpNet, AcceptedPeer>,
    /// Rejections already logged: claim id -> (value fingerprint, rule).
    reported: BTreeMap<String, (u64, Rule)>,
    /// Rejections by rule since start, each (id, value) counted once.
    rejections: BTreeMap<Rule, u64>,
}

/// What one claim amounts to. The subnet managers never hand over our own
/// claim (our lease, our Node): a claim on our subnet is someone else's,
/// refused as `subnet_overlaps_own`.
enum Judgement {
    Usable(IpNet, Candidate),
    Rejected {
        subnet: Option<IpNet>,
        fingerprint: u64,
        rejection: Rejection,
    },
}

impl PeerTable {
    pub fn new(policy: LeasePolicy) -> Self {
        Self {
            policy,
            candidates: BTreeMap::new(),
            candidate_count: 0,
            claimed: BTreeMap::new(),
            macs: BTreeMap::new(),
            subnets_v6: BTreeMap::new(),
            macs_v6: BTreeMap::new(),
            peers: BTreeMap::new(),
            reported: BTreeMap::new(),
            rejections: BTreeMap::new(),
        }
    }

    pub fn peers(&self) -> &BTreeMap<IpNet, AcceptedPeer> {
        &self.peers
    }

    /// How many (claim, value) pairs each rule has rejected since start.
    pub fn rejections(&self) -> &BTreeMap<Rule, u64> {
        &self.rejections
    }

    /// Replaces the table with a full listing; returns what changed.
    /// `own` (our subnets) is never a peer.
    pub fn resync(&mut self, claims: &[Claim], own: impl Into<OwnSubnets>) -> Vec<PeerChange> {
        let own = own.into();
        let mut usable = Vec::new();
        for claim in claims {
            match self.judge(claim, own) {
                Judgement::Usable(subnet, candidate) => usable.push((subnet, candidate)),
                Judgement::Rejected {
                    subnet,
                    fingerprint,
                    rejection,
                } => self.report(&claim.id, subnet, fingerprint, &rejection),
            }
        }
        // A claim that is gone and comes back is news again.
        let present: BTreeSet<&str> = claims.iter().map(|claim| claim.id.as_str()).collect();
        self.reported.retain(|id, _| present.contains(id.as_str()));
        self.candidates.clear();
        self.candidate_count = 0;
        self.claimed.clear();
        self.macs.clear();
        self.subnets_v6.clear();
        self.macs_v6.clear();
        for (subnet, candidate) in usable {
            self.set_candidate(subnet, &candidate.id.clone(), Some(candidate));
        }
        self.settle_all()
    }

    /// A claim is new or changed.
    pub fn put(&mut self, claim: &Claim, own: impl Into<OwnSubnets>) -> Vec<PeerChange> {
        let own = own.into();
        let judgement = self.judge(claim, own);
        // The subnet this claimant held before, if the claim now names
        // another one (or none): it is given up.
        let now = match &judgement {
            Judgement::Usable(subnet, _) => Some(*subnet),
            _ => None,
        };
        let before = self.claimed.get(&claim.id).copied();
        // Reported before anything is removed, so the log can say that a
        // claim in use is being removed.
        if let Judgement::Rejected {
            subnet,
            fingerprint,
            rejection,
        } = &judgement
        {
            self.report(&claim.id, subnet.or(before), *fingerprint, rejection);
        }
        let mut changes = match before {
            Some(before) if Some(before) != now => {
                self.set_candidate(before, &claim.id, None);
                self.settle(before)
            }
            _ => Vec::new(),
        };
        if let Judgement::Usable(subnet, candidate) = judgement {
            self.set_candidate(subnet, &claim.id, Some(candidate));
            changes.extend(self.settle(subnet));
        }
        changes
    }

    /// The claim with this id is gone (an etcd delete or expiry, a Node
    /// deleted or no longer flannel's).
    pub fn delete(&mut self, id: &str) -> Vec<PeerChange> {
        self.reported.remove(id);
        let Some(subnet) = self.claimed.get(id).copied() else {
            return Vec::new();
        };
        self.set_candidate(subnet, id, None);
        self.settle(subnet)
    }

    /// Replaces (or, with `None`, removes) `id`'s candidate for `subnet`,
    /// keeping the count, the MAC counts and the claimants' subnets in step.
    fn set_candidate(&mut self, subnet: IpNet, id: &str, candidate: Option<Candidate>) {
        let claimants = self.candidates.entry(subnet).or_default();
        let old = match candidate {
            Some(candidate) => {
                count(&mut self.macs, candidate.peer.vtep_mac(), 1);
                count(&mut self.macs_v6, candidate.peer.vtep_v6_mac(), 1);
                count(
                    &mut self.subnets_v6,
                    candidate.peer.v6.map(|v6| IpNet::V6(v6.subnet)),
                    1,
                );
                self.claimed.insert(id.to_owned(), subnet);
                claimants.insert(id.to_owned(), candidate)
            }
            None => {
                self.claimed.remove(id);
                claimants.remove(id)
            }
        };
        let now_present = claimants.contains_key(id);
        if claimants.is_empty() {
            self.candidates.remove(&subnet);
        }
        match (old.is_some(), now_present) {
            (false, true) => self.candidate_count += 1,
            (true, false) => self.candidate_count -= 1,
            _ => {}
        }
        if let Some(old) = old {
            count(&mut self.macs, old.peer.vtep_mac(), -1);
            count(&mut self.macs_v6, old.peer.vtep_v6_mac(), -1);
            count(
                &mut self.subnets_v6,
                old.peer.v6.map(|v6| IpNet::V6(v6.subnet)),
                -1,
            );
        }
    }

    fn judge(&self, claim: &Claim, own: OwnSubnets) -> Judgement {
        crate::metrics::global().lease_seen();
        let rejected = |subnet, rejection: &Rejection| Judgement::Rejected {
            subnet,
            fingerprint: claim.fingerprint,
            rejection: rejection.clone(),
        };
        // The subnet the claim is reported under: the one its network keys
        // peers by (IPv4, or in an IPv6-only network IPv6).
        let key = |subnet: Option<ipnet::Ipv4Net>, subnet_v6: Option<Ipv6Net>| {
            if self.policy.has_ipv4() {
                subnet.map(IpNet::from)
            } else {
                subnet_v6.map(IpNet::from)
            }
        };
        let subnet = match &claim.subnet {
            Ok(subnet) => Some(*subnet),
            Err(rejection) if self.policy.has_ipv4() => return rejected(None, rejection),
            // An IPv6-only network ignores the IPv4 half.
            Err(_) => None,
        };
        let subnet_v6_read = claim.subnet_v6.as_ref().ok().copied().flatten();
        let attrs = match &claim.attrs {
            Ok(attrs) => attrs,
            Err(rejection) => return rejected(key(subnet, subnet_v6_read), rejection),
        };
        let subnet_v6 = match &claim.subnet_v6 {
            Ok(subnet_v6) => *subnet_v6,
            Err(rejection) if self.policy.has_ipv6() => {
                return rejected(key(subnet, None), rejection);
            }
            // An IPv4-only network ignores the IPv6 half.
            Err(_) => None,
        };
        let (subnet, peer) = match self.policy.check_claim(subnet, subnet_v6, attrs, own) {
            Ok(keyed) => keyed,
            Err(rejection) => return rejected(key(subnet, subnet_v6), &rejection),
        };
        crate::metrics::global().lease_accepted();
        Judgement::Usable(
            subnet,
            Candidate {
                id: claim.id.clone(),
                age: claim.age,
                peer,
                fingerprint: claim.fingerprint,
            },
        )
    }

    /// Logs and counts a rejection, once per (key, value, rule).
    fn report(&mut self, id: &str, subnet: Option<IpNet>, fingerprint: u64, rejection: &Rejection) {
        let seen = (fingerprint, rejection.rule);
        if self.reported.get(id) == Some(&seen) {
            return;
        }
        self.reported.insert(id.to_owned(), seen);
        let count = self.rejections.entry(rejection.rule).or_default();
        *count += 1;
        crate::metrics::global().lease_rejected(rejection.rule.name());
        // In use: this claimant's own subnet is a peer (not another
        // claimant's of the same subnet).
        let in_use = subnet.is_some_and(|subnet| {
            self.claimed.get(id) == Some(&subnet) && self.peers.contains_key(&subnet)
        });
        warn!(
            rule = rejection.rule.name(),
            rejected_by_rule = *count,
            "{id}: rejected: {}{}",
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
    fn settle(&mut self, touched: IpNet) -> Vec<PeerChange> {
        let claimants = self.candidates.get(&touched);
        let touched_count = claimants.map_or(0, BTreeMap::len);
        let others_in_candidates = self.candidate_count - touched_count;
        let others_in_peers = self.peers.len() - self.peers.contains_key(&touched) as usize;
        let nothing_shadowed = others_in_candidates == others_in_peers;
        let candidate = claimants.and_then(|claimants| claimants.values().next());
        let peer = candidate.map(|candidate| candidate.peer);
        let mac_shared = shared(&self.macs, peer.and_then(|peer| peer.vtep_mac()))
            || shared(&self.macs_v6, peer.and_then(|peer| peer.vtep_v6_mac()));
        let subnet_v6 = peer.and_then(|peer| peer.v6).map(|v6| IpNet::V6(v6.subnet));
        let v6_clash = shared(&self.subnets_v6, subnet_v6)
            || subnet_v6
                .is_some_and(|subnet| !overlapping_net(&self.subnets_v6, subnet).is_empty());
        if !nothing_shadowed
            || touched_count > 1
            || mac_shared
            || v6_clash
            || !overlapping_net(&self.candidates, touched).is_empty()
        {
            return self.settle_all();
        }
        match candidate {
            Some(candidate) => {
                let peer = candidate.peer;
                self.reported.remove(&candidate.id.clone());
                if self.peers.get(&touched) == Some(&peer) {
                    return Vec::new();
                }
                self.peers.insert(touched, peer);
                vec![PeerChange::Upsert {
                    subnet: touched,
                    peer,
                }]
            }
            None => self
                .peers
                .remove(&touched)
                .map(|peer| PeerChange::Remove {
                    subnet: touched,
                    peer,
                })
                .into_iter()
                .collect(),
        }
    }

    /// Decides every overlap again and returns how `peers` changed.
    fn settle_all(&mut self) -> Vec<PeerChange> {
        let (accepted, losers) = resolve_overlaps(
            self.candidates
                .iter()
                .flat_map(|(subnet, claimants)| claimants.values().map(|c| (*subnet, c))),
        );
        for (subnet, id, rejection) in losers {
            let fingerprint = self.candidates[&subnet][&id].fingerprint;
            self.report(&id, Some(subnet), fingerprint, &rejection);
        }
        for (_, id) in accepted.values() {
            self.reported.remove(id);
        }
        let accepted: BTreeMap<IpNet, AcceptedPeer> = accepted
            .into_iter()
            .map(|(subnet, (peer, _))| (subnet, peer))
            .collect();
        let mut changes = Vec::new();
        for (subnet, peer) in &self.peers {
            if !accepted.contains_key(subnet) {
                changes.push(PeerChange::Remove {
                    subnet: *subnet,
                    peer: *peer,
                });
            }
        }
        for (subnet, peer) in &accepted {
            if self.peers.get(subnet) != Some(peer) {
                changes.push(PeerChange::Upsert {
                    subnet: *subnet,
                    peer: *peer,
                });
            }
        }
        self.peers = accepted;
        changes
    }
}

/// Whether more than one candidate holds `key`.
fn shared<K: Ord>(counts: &BTreeMap<K, usize>, key: Option<K>) -> bool {
    key.is_some_and(|key| counts.get(&key).is_some_and(|count| *count > 1))
}

/// Adds `delta` to `key`'s count (nothing without a key), dropping a
/// count that reaches zero.
fn count<K: Ord>(counts: &mut BTreeMap<K, usize>, key: Option<K>, delta: isize) {
    let Some(key) = key else {
        return;
    };
    match counts.entry(key) {
        Entry::Occupied(mut entry) => {
            let value = entry.get().saturating_add_signed(delta);
            if value == 0 {
                entry.remove();
            } else {
                *entry.get_mut() = value;
            }
        }
        Entry::Vacant(entry) => {
            if delta > 0 {
                entry.insert(delta.unsigned_abs());
            }
        }
    }
}

#[cfg(test)]
mod tests;
