//! Which leases from etcd the datapath may use. Anyone who can write to
//! etcd can write any key under `<prefix>/subnets`; without these rules a
//! single write (`192.168.77.0-24`, the underlay's own subnet) replaces every
//! node's connected route, and `10.96.0.0-12` hijacks the service range.
//!
//! Pure functions: the peer table applies them, identically, to listings and
//! watch events, before anything reaches the kernel or a map.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{LeaseAttrs, MacAddr};
use crate::config::NetworkConfig;

/// Larger values are rejected unread. flanneld's values are about 150 bytes;
/// the limit leaves room for fields newer flannel versions add.
pub const MAX_VALUE_LEN: usize = 4096;

/// A rule a lease broke. The names are stable (snake_case): the logs and
/// the `rule` label of `weft_leases_rejected_total` use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    MalformedKey,
    ValueTooLarge,
    MalformedValue,
    MalformedPodCidr,
    MalformedAnnotation,
    SubnetOutsideNetwork,
    SubnetOverlapsOwn,
    SubnetWrongPrefix,
    SubnetOutsideRange,
    SubnetOverlapsPeer,
    PublicIpOurs,
    PublicIpNotUnicast,
    PublicIpInsideNetwork,
    BackendTypeMismatch,
    VniMismatch,
    VtepMacNotUnicast,
    VtepMacInUse,
}

impl Rule {
    pub const ALL: [Rule; 17] = [
        Rule::MalformedKey,
        Rule::ValueTooLarge,
        Rule::MalformedValue,
        Rule::MalformedPodCidr,
        Rule::MalformedAnnotation,
        Rule::SubnetOutsideNetwork,
        Rule::SubnetOverlapsOwn,
        Rule::SubnetWrongPrefix,
        Rule::SubnetOutsideRange,
        Rule::SubnetOverlapsPeer,
        Rule::PublicIpOurs,
        Rule::PublicIpNotUnicast,
        Rule::PublicIpInsideNetwork,
        Rule::BackendTypeMismatch,
        Rule::VniMismatch,
        Rule::VtepMacNotUnicast,
        Rule::VtepMacInUse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::MalformedKey => "malformed_key",
            Rule::ValueTooLarge => "value_too_large",
            Rule::MalformedValue => "malformed_value",
            Rule::MalformedPodCidr => "malformed_pod_cidr",
            Rule::MalformedAnnotation => "malformed_annotation",
            Rule::SubnetOutsideNetwork => "subnet_outside_network",
            Rule::SubnetOverlapsOwn => "subnet_overlaps_own",
            Rule::SubnetWrongPrefix => "subnet_wrong_prefix",
            Rule::SubnetOutsideRange => "subnet_outside_range",
            Rule::SubnetOverlapsPeer => "subnet_overlaps_peer",
            Rule::PublicIpOurs => "public_ip_ours",
            Rule::PublicIpNotUnicast => "public_ip_not_unicast",
            Rule::PublicIpInsideNetwork => "public_ip_inside_network",
            Rule::BackendTypeMismatch => "backend_type_mismatch",
            Rule::VniMismatch => "vni_mismatch",
            Rule::VtepMacNotUnicast => "vtep_mac_not_unicast",
            Rule::VtepMacInUse => "vtep_mac_in_use",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a lease is not used: the rule and the facts, for one log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub rule: Rule,
    pub reason: String,
}

impl Rejection {
    pub fn new(rule: Rule, reason: impl Into<String>) -> Self {
        Self {
            rule,
            reason: reason.into(),
        }
    }
}

/// A peer that passed every rule: what the datapath needs of it, typed.
/// Its backend is the network's (a vxlan peer's VNI is the network's too),
/// so nothing downstream checks either again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedPeer {
    pub public_ip: Ipv4Addr,
    pub backend: PeerBackend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerBackend {
    Vxlan { vtep_mac: MacAddr },
    HostGw,
}

impl AcceptedPeer {
    pub fn vtep_mac(&self) -> Option<MacAddr> {
        match self.backend {
            PeerBackend::Vxlan { vtep_mac } => Some(vtep_mac),
            PeerBackend::HostGw => None,
        }
    }
}

/// What a peer lease must agree with: the network config and this node.
#[derive(Clone, Debug)]
pub struct LeasePolicy {
    network: Ipv4Net,
    subnet_len: u8,
    /// Where `subnet_len` comes from, for the rejection's reason.
    subnet_len_source: &'static str,
    subnet_min: Ipv4Addr,
    subnet_max: Ipv4Addr,
    backend_type: &'static str,
    /// The VNI vxlan leases must carry; `None` for host-gw.
    vni: Option<u32>,
    our_public_ip: Ipv4Addr,
    /// Our VTEP MAC: the kernel's fdb holds one destination per MAC, so a
    /// peer lease with it would take our own entry over.
    our_vtep_mac: Option<MacAddr>,
}

impl LeasePolicy {
    pub fn new(
        config: &NetworkConfig,
        our_public_ip: Ipv4Addr,
        our_vtep_mac: Option<MacAddr>,
    ) -> Self {
        Self {
            network: config.network,
            subnet_len: config.subnet_len,
            subnet_len_source: "SubnetLen",
            subnet_min: config.subnet_min,
            subnet_max: config.subnet_max,
            backend_type: config.backend.type_name(),
            vni: config.backend.vni(),
            our_public_ip,
            our_vtep_mac,
        }
    }

    /// The policy for Kubernetes podCIDRs: the controller manager gives
    /// every Node a prefix of its `--node-cidr-mask-size` anywhere in its
    /// cluster CIDR (kubeadm's first Node gets `10.244.0.0/24`, below
    /// flannel's default SubnetMin), so a peer's podCIDR must be as long as
    /// ours and inside Network; SubnetLen, SubnetMin and SubnetMax are
    /// flannel's allocator settings and do not apply.
    pub fn for_pod_cidrs(mut self, prefix_len: u8) -> Self {
        self.subnet_len = prefix_len;
        self.subnet_len_source = "this node's podCIDR";
        self.subnet_min = self.network.network();
        self.subnet_max = self.network.broadcast();
        self
    }

    /// The rules one lease must pass on its own, in the order they are
    /// checked (the first broken one is reported). Overlap between peers
    /// needs the other leases: see [`resolve_overlaps`].
    pub fn check(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        own: Option<Ipv4Net>,
    ) -> Result<AcceptedPeer, Rejection> {
        let network = self.network;
        if !network.contains(&subnet) {
            return Err(Rejection::new(
                Rule::SubnetOutsideNetwork,
                format!("subnet {subnet} is not inside Network {network}"),
            ));
        }
        // Before the prefix rule: overlapping our own subnet is the more
        // telling fact, and ours needs no tie-break.
        if let Some(own) = own.filter(|own| overlap(*own, subnet)) {
            return Err(Rejection::new(
                Rule::SubnetOverlapsOwn,
                format!("subnet {subnet} overlaps our own lease {own}"),
            ));
        }
        if subnet.prefix_len() != self.subnet_len {
            return Err(Rejection::new(
                Rule::SubnetWrongPrefix,
                format!(
                    "subnet {subnet} is not a /{} ({})",
                    self.subnet_len, self.subnet_len_source
                ),
            ));
        }
        if subnet.network() < self.subnet_min || subnet.network() > self.subnet_max {
            return Err(Rejection::new(
                Rule::SubnetOutsideRange,
                format!(
                    "subnet {subnet} is outside SubnetMin {} .. SubnetMax {}",
                    self.subnet_min, self.subnet_max
                ),
            ));
        }
        self.check_public_ip(attrs.public_ip)?;
        Ok(AcceptedPeer {
            public_ip: attrs.public_ip,
            backend: self.check_backend(attrs)?,
        })
    }

    fn check_public_ip(&self, ip: Ipv4Addr) -> Result<(), Rejection> {
        if ip == self.our_public_ip {
            return Err(Rejection::new(
                Rule::PublicIpOurs,
                format!("PublicIP {ip} is this node's own address"),
            ));
        }
        if let Some(kind) = not_unicast(ip) {
            return Err(Rejection::new(
                Rule::PublicIpNotUnicast,
                format!("PublicIP {ip} is {kind}, not a unicast node address"),
            ));
        }
        if self.network.contains(&ip) {
            return Err(Rejection::new(
                Rule::PublicIpInsideNetwork,
                format!("PublicIP {ip} is inside Network {}", self.network),
            ));
        }
        Ok(())
    }

    fn check_backend(&self, attrs: &LeaseAttrs) -> Result<PeerBackend, Rejection> {
        if attrs.backend_type != self.backend_type {
            return Err(Rejection::new(
                Rule::BackendTypeMismatch,
                format!(
                    "BackendType {:?} is not the network's {:?}",
                    attrs.backend_type, self.backend_type
                ),
            ));
        }
        let Some(vni) = self.vni else {
            return Ok(PeerBackend::HostGw);
        };
        let Some(data) = &attrs.backend_data else {
            // `LeaseAttrs::from_json` and the Node parser refuse this first.
            return Err(Rejection::new(
                Rule::MalformedValue,
                "a vxlan lease needs BackendData with VNI and VtepMAC",
            ));
        };
        if data.vni != vni {
            return Err(Rejection::new(
                Rule::VniMismatch,
                format!("VNI {} is not the network's VNI {vni}", data.vni),
            ));
        }
        if !is_unicast_mac(data.vtep_mac) {
            return Err(Rejection::new(
                Rule::VtepMacNotUnicast,
                format!("VtepMAC {} is not a unicast MAC", data.vtep_mac),
            ));
        }
        if Some(data.vtep_mac) == self.our_vtep_mac {
            return Err(Rejection::new(
                Rule::VtepMacInUse,
                format!("VtepMAC {} is this node's own VTEP MAC", data.vtep_mac),
            ));
        }
        Ok(PeerBackend::Vxlan {
            vtep_mac: data.vtep_mac,
        })
    }
}

/// Why `ip` cannot be another node's underlay address, if it cannot.
/// Link-local (169.254/16) is refused too: it is never routed off the link,
/// and it holds cloud metadata services (169.254.169.254), where a forged
/// lease would otherwise send pod traffic.
fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.octets()[0] >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else if ip.octets()[0] == 0 {
        Some("in 0.0.0.0/8 (\"this network\")")
    } else {
        None
    }
}

/// Not multicast (the group bit of the first byte) and not all zero.
fn is_unicast_mac(mac: MacAddr) -> bool {
    mac.0[0] & 0x01 == 0 && mac.0 != [0; 6]
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A lease that passed [`LeasePolicy::check`], with what the overlap
/// tie-break needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The claim's id (etcd key, `node/<name>`).
    pub id: String,
    /// The claim's age (etcd's create revision, a Node's creation time):
    /// the older claim wins an overlap.
    pub age: i64,
    pub peer: AcceptedPeer,
    /// Identifies the raw value, so a rejection is logged once per value.
    pub fingerprint: u64,
}

/// The claims used, by subnet: the peer and its claimant's id.
pub type Winners = BTreeMap<Ipv4Net, (AcceptedPeer, String)>;
/// A claim that lost a clash: its subnet, its claimant's id, and why.
pub type Loser = (Ipv4Net, String, Rejection);

/// Splits `candidates` into the claims to use (with their claimant) and
/// the ones that clash with an older one (by age; the id breaks a tie): a
/// subnet claimed twice or overlapping, or a VtepMAC already in use. The
/// fdb holds one destination per MAC, so a second claim with a node's VTEP
/// MAC would redirect that node's traffic to its own PublicIP. An etcd key
/// names its subnet, so two etcd leases can only claim one subnet by being
/// one key, and with the prefix rule in force they never overlap; two
/// Nodes can be given one podCIDR, though (by hand, or by a forged Node).
pub fn resolve_overlaps<'a>(
    candidates: impl IntoIterator<Item = (Ipv4Net, &'a Candidate)>,
) -> (Winners, Vec<Loser>) {
    let mut by_age: Vec<(Ipv4Net, &Candidate)> = candidates.into_iter().collect();
    by_age.sort_by(|(_, a), (_, b)| (a.age, &a.id).cmp(&(b.age, &b.id)));
    let mut accepted: Winners = BTreeMap::new();
    let mut winners: BTreeMap<Ipv4Net, &str> = BTreeMap::new();
    let mut mac_holders: BTreeMap<MacAddr, &str> = BTreeMap::new();
    let mut losers = Vec::new();
    for (subnet, candidate) in by_age {
        let mac = candidate.peer.vtep_mac();
        let lose =
            |reason: String, rule| (subnet, candidate.id.clone(), Rejection::new(rule, reason));
        if let Some(holder) = winners.get(&subnet) {
            losers.push(lose(
                format!("subnet {subnet} is also claimed by {holder}, which is older"),
                Rule::SubnetOverlapsPeer,
            ));
        } else if let Some(older) = overlapping(&winners, subnet).first() {
            losers.push(lose(
                format!(
                    "subnet {subnet} overlaps {older} of {}, which is older",
                    winners[older]
                ),
                Rule::SubnetOverlapsPeer,
            ));
        } else if let Some(holder) = mac.and_then(|mac| mac_holders.get(&mac)) {
            losers.push(lose(
                format!(
                    "VtepMAC {} is already used by {holder}, which is older",
                    mac.expect("checked")
                ),
                Rule::VtepMacInUse,
            ));
        } else {
            winners.insert(subnet, &candidate.id);
            if let Some(mac) = mac {
                mac_holders.insert(mac, &candidate.id);
            }
            accepted.insert(subnet, (candidate.peer, candidate.id.clone()));
        }
    }
    (accepted, losers)
}

/// The subnets in `map` that overlap `subnet` (itself excluded), found with
/// at most 33 lookups and one range scan instead of a pass over the map.
pub fn overlapping<V>(map: &BTreeMap<Ipv4Net, V>, subnet: Ipv4Net) -> Vec<Ipv4Net> {
    let mut found: Vec<Ipv4Net> = (0..subnet.prefix_len())
        .filter_map(|len| Ipv4Net::new(subnet.network(), len).ok())
        .map(|wider| wider.trunc())
        .filter(|wider| map.contains_key(wider))
        .collect();
    let first = Ipv4Net::new(subnet.network(), 0).expect("prefix 0");
    let last = Ipv4Net::new(subnet.broadcast(), 32).expect("prefix 32");
    found.extend(
        map.range(first..=last)
            .map(|(inner, _)| *inner)
            .filter(|inner| *inner != subnet && subnet.contains(inner)),
    );
    found
}

#[cfg(test)]
mod tests;
