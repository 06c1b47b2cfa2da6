//! A claim: one node's announcement of a subnet, as either subnet manager
//! delivers it (an etcd lease, a Kubernetes Node), parsed as far as its
//! source allows and not judged yet. The peer table judges every claim by
//! the same rules (`validate.rs`), whichever source it came from: a Node
//! annotation is exactly as untrusted as an etcd value.

use std::hash::{DefaultHasher, Hash, Hasher as _};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    LeaseAttrs, subnets_of_key,
    validate::{MAX_VALUE_LEN, Rejection, Rule},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Who claims: the etcd key, or `node/<name>`. Names the claim in logs
    /// and identifies it in later events.
    pub id: String,
    /// The subnet claimed, or why none can be read from the claim.
    pub subnet: Result<Ipv4Net, Rejection>,
    /// The IPv6 subnet claimed next to it, in a dual-stack claim (the
    /// `&<v6>` half of an etcd key, a Node's IPv6 podCIDR), or why the
    /// claim's IPv6 half cannot be read (a Node's IPv6 podCIDR or
    /// annotations): only a dual-stack network judges it, an IPv4-only one
    /// ignores the IPv6 half.
    pub subnet_v6: Result<Option<Ipv6Net>, Rejection>,
    /// What the claimant announces, or why it cannot be read.
    pub attrs: Result<LeaseAttrs, Rejection>,
    /// Which of two clashing claims is older (the older one wins): etcd's
    /// create revision, a Node's creation time.
    pub age: i64,
    /// Identifies the raw value, so a rejection is logged once per value.
    pub fingerprint: u64,
}

/// What a subnet manager reports about the other nodes.
#[derive(Clone, Debug)]
pub enum ClaimEvent {
    /// Every claim as of now (a first listing, or a resync).
    Listing(Vec<Claim>),
    /// A claim is new or changed.
    Put(Claim),
    /// The claim with this id is gone.
    Delete { id: String },
}

impl Claim {
    /// An etcd lease: key `<prefix>/subnets/10.244.3.0-24` (or
    /// `...-24&fd00:12:13::-56`), value flanneld's JSON.
    pub fn from_lease(key: &str, value: &[u8], create_revision: i64) -> Self {
        let subnets = subnets_of_key(key)
            .map_err(|error| Rejection::new(Rule::MalformedKey, format!("{error:#}")));
        // A malformed key is the IPv4 half's rejection already.
        let subnet_v6 = Ok(subnets.as_ref().ok().and_then(|subnets| subnets.v6));
        let subnet = subnets.map(|subnets| subnets.v4);
        let attrs = if value.len() > MAX_VALUE_LEN {
            Err(Rejection::new(
                Rule::ValueTooLarge,
                format!(
                    "value is {} bytes; a lease value is at most {MAX_VALUE_LEN}",
                    value.len()
                ),
            ))
        } else {
            LeaseAttrs::from_json(value)
                .map_err(|error| Rejection::new(Rule::MalformedValue, format!("{error:#}")))
        };
        Self {
            id: key.to_owned(),
            subnet,
            subnet_v6,
            attrs,
            age: create_revision,
            fingerprint: fingerprint(value),
        }
    }
}

/// Identifies a value without keeping it (values can be large).
pub fn fingerprint(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}
