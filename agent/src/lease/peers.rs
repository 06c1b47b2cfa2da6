//! The remote leases the datapath must reach, kept from the etcd listing and
//! watch events. A delete event carries no value, so the last good value is
//! kept to clean up with. A malformed value is logged with its key and
//! skipped; it never stops the agent or drops the last good value.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use tracing::warn;

use super::{LeaseAttrs, registry::RawLease, subnet_of_key};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Upsert { subnet: Ipv4Net, attrs: LeaseAttrs },
    Remove { subnet: Ipv4Net, attrs: LeaseAttrs },
}

#[derive(Default, Debug)]
pub struct PeerTable {
    peers: BTreeMap<Ipv4Net, LeaseAttrs>,
}

impl PeerTable {
    pub fn peers(&self) -> &BTreeMap<Ipv4Net, LeaseAttrs> {
        &self.peers
    }

    /// Replaces the table with a full listing; returns what changed.
    /// `own` (our subnet) is never a peer.
    pub fn resync(&mut self, leases: &[RawLease], own: Option<Ipv4Net>) -> Vec<PeerChange> {
        let mut fresh = BTreeMap::new();
        for lease in leases {
            let Some(subnet) = parse_key(&lease.key) else {
                continue;
            };
            if Some(subnet) == own {
                continue;
            }
            match LeaseAttrs::from_json(&lease.value) {
                Ok(attrs) => {
                    fresh.insert(subnet, attrs);
                }
                Err(error) => {
                    warn!(key = %lease.key, "{error:#}; skipping");
                    // Keep serving the last good value we had for it.
                    if let Some(previous) = self.peers.get(&subnet) {
                        fresh.insert(subnet, previous.clone());
                    }
                }
            }
        }
        let mut changes = Vec::new();
        for (subnet, attrs) in &self.peers {
            if !fresh.contains_key(subnet) {
                changes.push(PeerChange::Remove {
                    subnet: *subnet,
                    attrs: attrs.clone(),
                });
            }
        }
        for (subnet, attrs) in &fresh {
            if self.peers.get(subnet) != Some(attrs) {
                changes.push(PeerChange::Upsert {
                    subnet: *subnet,
                    attrs: attrs.clone(),
                });
            }
        }
        self.peers = fresh;
        changes
    }

    /// A put event for `key`.
    pub fn put(&mut self, key: &str, value: &[u8], own: Option<Ipv4Net>) -> Option<PeerChange> {
        let subnet = parse_key(key)?;
        if Some(subnet) == own {
            return None;
        }
        match LeaseAttrs::from_json(value) {
            Ok(attrs) => {
                if self.peers.get(&subnet) == Some(&attrs) {
                    return None;
                }
                self.peers.insert(subnet, attrs.clone());
                Some(PeerChange::Upsert { subnet, attrs })
            }
            Err(error) => {
                warn!(%key, "{error:#}; skipping");
                None
            }
        }
    }

    /// A delete (or expiry) event for `key`.
    pub fn delete(&mut self, key: &str) -> Option<PeerChange> {
        let subnet = parse_key(key)?;
        let attrs = self.peers.remove(&subnet)?;
        Some(PeerChange::Remove { subnet, attrs })
    }
}

fn parse_key(key: &str) -> Option<Ipv4Net> {
    subnet_of_key(key)
        .map_err(|error| warn!(%key, "{error:#}; skipping"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, ip: &str) -> RawLease {
        RawLease {
            key: format!("/coreos.com/network/subnets/{subnet}"),
            value: format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}}"#).into_bytes(),
        }
    }

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn resync_reports_adds_changes_and_removals_and_skips_our_own() {
        let mut table = PeerTable::default();
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
    fn malformed_values_are_skipped_and_the_last_good_value_kept() {
        let mut table = PeerTable::default();
        let good = lease("10.244.2.0-24", "192.168.77.2");
        table.resync(std::slice::from_ref(&good), None);
        assert_eq!(table.put(&good.key, b"not json", None), None);
        assert_eq!(
            table.peers()[&net("10.244.2.0/24")].public_ip.to_string(),
            "192.168.77.2"
        );
        let bad = RawLease {
            key: good.key.clone(),
            value: br#"{"PublicIP":7}"#.to_vec(),
        };
        assert!(
            table
                .resync(&[bad, lease("garbage-key", "192.168.77.5")], None)
                .is_empty()
        );
        assert_eq!(table.peers().len(), 1);
    }

    #[test]
    fn delete_uses_the_last_value_and_put_ignores_repeats() {
        let mut table = PeerTable::default();
        let peer = lease("10.244.2.0-24", "192.168.77.2");
        assert!(table.put(&peer.key, &peer.value, None).is_some());
        assert!(table.put(&peer.key, &peer.value, None).is_none());
        let removed = table.delete(&peer.key).unwrap();
        assert!(
            matches!(removed, PeerChange::Remove { attrs, .. } if attrs.public_ip.to_string() == "192.168.77.2")
        );
        assert!(table.delete(&peer.key).is_none());
    }
}
