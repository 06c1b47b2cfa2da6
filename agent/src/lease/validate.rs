//! Which leases from etcd the datapath may use. Anyone who can write to
//! etcd can write any key under `<prefix>/subnets`; without these rules a
//! single write (`192.168.77.0-24`, the underlay's own subnet) replaces every
//! node's connected route, and `10.96.0.0-12` hijacks the service range.
//!
//! Pure functions: the peer table applies them, identically, to listings and
//! watch events, before anything reaches the kernel or a map.
//!
//! Dual-stack (issue #23): in a network with `EnableIPv6`, a claim's IPv6
//! half (the `&<v6>` of its key, `PublicIPv6`, `BackendV6Data`) is checked
//! by rules of its own, the IPv4 rules' twins. A claim whose IPv6 half
//! breaks one is rejected whole, as a malformed value is: a peer is
//! programmed with both halves or not at all, never half. A claim with no
//! IPv6 half at all is an IPv4-only peer (`v6: None`), as flannel takes it;
//! in an IPv4-only network the IPv6 half is ignored once the key parses (a
//! key whose IPv6 half does not parse is `malformed_key` in any network, as
//! flanneld's `ParseSubnetKey` refuses it).

mod subnet_rules;

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use self::subnet_rules::SubnetBounds;
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
    Ipv6HalfIncomplete,
    Ipv6SubnetOutsideNetwork,
    Ipv6SubnetOverlapsOwn,
    Ipv6SubnetWrongPrefix,
    Ipv6SubnetOutsideRange,
    Ipv6SubnetOverlapsPeer,
    PublicIpv6Ours,
    PublicIpv6NotUnicast,
    PublicIpv6InsideNetwork,
    Ipv6VniMismatch,
    Ipv6VtepMacNotUnicast,
    Ipv6VtepMacInUse,
}

impl Rule {
    pub const ALL: [Rule; 29] = [
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
        Rule::Ipv6HalfIncomplete,
        Rule::Ipv6SubnetOutsideNetwork,
        Rule::Ipv6SubnetOverlapsOwn,
        Rule::Ipv6SubnetWrongPrefix,
        Rule::Ipv6SubnetOutsideRange,
        Rule::Ipv6SubnetOverlapsPeer,
        Rule::PublicIpv6Ours,
        Rule::PublicIpv6NotUnicast,
        Rule::PublicIpv6InsideNetwork,
        Rule::Ipv6VniMismatch,
        Rule::Ipv6VtepMacNotUnicast,
        Rule::Ipv6VtepMacInUse,
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
            Rule::Ipv6HalfIncomplete => "ipv6_half_incomplete",
            Rule::Ipv6SubnetOutsideNetwork => "ipv6_subnet_outside_network",
            Rule::Ipv6SubnetOverlapsOwn => "ipv6_subnet_overlaps_own",
            Rule::Ipv6SubnetWrongPrefix => "ipv6_subnet_wrong_prefix",
            Rule::Ipv6SubnetOutsideRange => "ipv6_subnet_outside_range",
            Rule::Ipv6SubnetOverlapsPeer => "ipv6_subnet_overlaps_peer",
            Rule::PublicIpv6Ours => "public_ipv6_ours",
            Rule::PublicIpv6NotUnicast => "public_ipv6_not_unicast",
            Rule::PublicIpv6InsideNetwork => "public_ipv6_inside_network",
            Rule::Ipv6VniMismatch => "ipv6_vni_mismatch",
            Rule::Ipv6VtepMacNotUnicast => "ipv6_vtep_mac_not_unicast",
            Rule::Ipv6VtepMacInUse => "ipv6_vtep_mac_in_use",
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
///
/// It has a half for each family the network runs: an IPv4 one unless the
/// network is IPv6-only, and an IPv6 one when the network has IPv6 and the
/// claim an IPv6 half (in a dual-stack network a claim without one is an
/// IPv4-only peer, as flannel takes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedPeer {
    pub v4: Option<AcceptedPeerV4>,
    /// Its subnet, underlay address and v6 backend, checked by the same
    /// rules as the IPv4 half.
    pub v6: Option<AcceptedPeerV6>,
}

/// A peer's IPv4 half: its subnet, `PublicIP`, and `BackendData` (the
/// `flannel.<VNI>` VTEP MAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedPeerV4 {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub backend: PeerBackend,
}

/// A peer's IPv6 half (dual-stack or IPv6-only): `<v4>&<v6>` key's v6 subnet
/// or a Node's IPv6 podCIDR,
/// `PublicIPv6`, and `BackendV6Data` (the `flannel-v6.<VNI>` VTEP MAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedPeerV6 {
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
    pub backend: PeerBackend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerBackend {
    Vxlan { vtep_mac: MacAddr },
    HostGw,
}

impl AcceptedPeer {
    /// The VTEP MAC of the IPv4 half (`flannel.<VNI>`'s fdb), if any.
    pub fn vtep_mac(&self) -> Option<MacAddr> {
        self.v4.and_then(|v4| v4.backend.vtep_mac())
    }

    /// The VTEP MAC of the IPv6 half (`flannel-v6.<VNI>`'s fdb), if any.
    pub fn vtep_v6_mac(&self) -> Option<MacAddr> {
        self.v6.and_then(|v6| v6.backend.vtep_mac())
    }
}

impl PeerBackend {
    pub fn vtep_mac(&self) -> Option<MacAddr> {
        match *self {
            PeerBackend::Vxlan { vtep_mac } => Some(vtep_mac),
            PeerBackend::HostGw => None,
        }
    }
}

/// This node's own subnets, which no peer may overlap: the IPv4 one, and
/// in a dual-stack network the IPv6 one. `None` before one is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnSubnets {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl From<super::LeaseSubnets> for OwnSubnets {
    fn from(lease: super::LeaseSubnets) -> Self {
        Self {
            v4: Some(lease.v4),
            v6: lease.v6,
        }
    }
}

impl From<Option<Ipv4Net>> for OwnSubnets {
    fn from(v4: Option<Ipv4Net>) -> Self {
        Self { v4, v6: None }
    }
}

/// What a peer lease must agree with: the network config and this node.
#[derive(Clone, Debug)]
pub struct LeasePolicy {
    backend_type: &'static str,
    /// The VNI vxlan leases must carry; `None` for host-gw.
    vni: Option<u32>,
    /// The rules of a claim's IPv4 half, unless the network is IPv6-only.
    ipv4: Option<Ipv4Policy>,
    /// The rules of a claim's IPv6 half, in a network with IPv6.
    ipv6: Option<Ipv6Policy>,
}

/// What a claim's IPv4 half must agree with: `Network` and its allocator
/// settings, and this node's underlay address and `flannel.<VNI>` MAC.
#[derive(Clone, Debug)]
struct Ipv4Policy {
    network: Ipv4Net,
    subnet_len: u8,
    /// Where `subnet_len` comes from, for the rejection's reason.
    subnet_len_source: &'static str,
    subnet_min: Ipv4Addr,
    subnet_max: Ipv4Addr,
    our_public_ip: Option<Ipv4Addr>,
    /// Our VTEP MAC: the kernel's fdb holds one destination per MAC, so a
    /// peer lease with it would take our own entry over.
    our_vtep_mac: Option<MacAddr>,
}

/// What a claim's IPv6 half must agree with: `IPv6Network` and its
/// allocator settings, and this node's IPv6 underlay address and
/// `flannel-v6.<VNI>` MAC.
#[derive(Clone, Debug)]
struct Ipv6Policy {
    network: Ipv6Net,
    subnet_len: u8,
    subnet_len_source: &'static str,
    subnet_min: Ipv6Addr,
    subnet_max: Ipv6Addr,
    our_public_ip: Option<Ipv6Addr>,
    our_vtep_mac: Option<MacAddr>,
}

impl LeasePolicy {
    /// `our_public_ip`: none in an IPv6-only network.
    pub fn new(
        config: &NetworkConfig,
        our_public_ip: Option<Ipv4Addr>,
        our_vtep_mac: Option<MacAddr>,
    ) -> Self {
        Self {
            backend_type: config.backend.type_name(),
            vni: config.backend.vni(),
            ipv4: config.ipv4.as_ref().map(|ipv4| Ipv4Policy {
                network: ipv4.network,
                subnet_len: ipv4.subnet_len,
                subnet_len_source: "SubnetLen",
                subnet_min: ipv4.subnet_min,
                subnet_max: ipv4.subnet_max,
                our_public_ip,
                our_vtep_mac,
            }),
            ipv6: config.ipv6.as_ref().map(|ipv6| Ipv6Policy {
                network: ipv6.network,
                subnet_len: ipv6.subnet_len,
                subnet_len_source: "IPv6SubnetLen",
                subnet_min: ipv6.subnet_min,
                subnet_max: ipv6.subnet_max,
                our_public_ip: None,
                our_vtep_mac: None,
            }),
        }
    }

    /// This node's own IPv6 underlay address (`PublicIPv6`) and
    /// `flannel-v6.<VNI>` MAC, which no peer may announce. Nothing in an
    /// IPv4-only network.
    pub fn with_own_ipv6(
        mut self,
        public_ipv6: Option<Ipv6Addr>,
        vtep_v6_mac: Option<MacAddr>,
    ) -> Self {
        if let Some(ipv6) = self.ipv6.as_mut() {
            ipv6.our_public_ip = public_ipv6;
            ipv6.our_vtep_mac = vtep_v6_mac;
        }
        self
    }

    /// Whether claims' IPv6 halves are checked and used (`EnableIPv6`).
    pub fn has_ipv6(&self) -> bool {
        self.ipv6.is_some()
    }

    /// The policy for Kubernetes podCIDRs: the controller manager gives
    /// every Node a prefix of its `--node-cidr-mask-size` anywhere in its
    /// cluster CIDR (kubeadm's first Node gets `10.244.0.0/24`, below
    /// flannel's default SubnetMin), so a peer's podCIDR must be as long as
    /// ours and inside Network; SubnetLen, SubnetMin and SubnetMax are
    /// flannel's allocator settings and do not apply.
    pub fn for_pod_cidrs(mut self, prefix_len: Option<u8>) -> Self {
        if let Some(ipv4) = self.ipv4.as_mut() {
            if let Some(len) = prefix_len {
                ipv4.subnet_len = len;
                ipv4.subnet_len_source = "this node's podCIDR";
            }
            ipv4.subnet_min = ipv4.network.network();
            ipv4.subnet_max = ipv4.network.broadcast();
        }
        self
    }

    /// [`Self::for_pod_cidrs`] for the IPv6 podCIDRs: as long as our own
    /// IPv6 podCIDR (the controller manager's
    /// `--node-cidr-mask-size-ipv6`) and inside IPv6Network. Without an
    /// IPv6 podCIDR of our own, IPv6SubnetLen still says the length.
    pub fn for_pod_cidrs_v6(mut self, prefix_len: Option<u8>) -> Self {
        if let Some(ipv6) = self.ipv6.as_mut() {
            if let Some(len) = prefix_len {
                ipv6.subnet_len = len;
                ipv6.subnet_len_source = "this node's IPv6 podCIDR";
            }
            ipv6.subnet_min = ipv6.network.network();
            ipv6.subnet_max = ipv6.network.broadcast();
        }
        self
    }

    /// The rules one claim must pass on its own, in the order they are
    /// checked (the first broken one is reported): its BackendType, then
    /// the IPv4 half (unless the network is IPv6-only), then (in a network
    /// with IPv6) the IPv6 half, whose rules are the IPv4 ones' twins. A
    /// broken half rejects the whole claim: a peer is programmed with every
    /// half it has or not at all. Overlap between peers needs the other
    /// claims: see [`resolve_overlaps`].
    pub fn check_claim(
        &self,
        subnet: Option<Ipv4Net>,
        subnet_v6: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        own: OwnSubnets,
    ) -> Result<(IpNet, AcceptedPeer), Rejection> {
        if attrs.backend_type != self.backend_type {
            return Err(Rejection::new(
                Rule::BackendTypeMismatch,
                format!(
                    "BackendType {:?} is not the network's {:?}",
                    attrs.backend_type, self.backend_type
                ),
            ));
        }
        let v4 = match (&self.ipv4, subnet) {
            (None, _) => None,
            (Some(ipv4), Some(subnet)) => Some(ipv4.check(subnet, attrs, own.v4, self.vni)?),
            // The subnet managers name the missing subnet first.
            (Some(_), None) => {
                return Err(Rejection::new(
                    Rule::MalformedPodCidr,
                    "the claim has no IPv4 subnet",
                ));
            }
        };
        let v6 = match &self.ipv6 {
            None => None,
            Some(ipv6) => ipv6.check(subnet_v6, attrs, own.v6, self.backend_type, self.vni)?,
        };
        // The peer table keys a peer by its IPv4 subnet, or in an
        // IPv6-only network by its IPv6 one.
        let key = match (v4, v6) {
            (Some(v4), _) => IpNet::from(v4.subnet),
            (None, Some(v6)) => IpNet::from(v6.subnet),
            (None, None) => {
                return Err(Rejection::new(
                    Rule::Ipv6HalfIncomplete,
                    "the network is IPv6-only, and the claim has no IPv6 half",
                ));
            }
        };
        Ok((key, AcceptedPeer { v4, v6 }))
    }

    /// Whether claims' IPv4 halves are checked and used (not IPv6-only).
    pub fn has_ipv4(&self) -> bool {
        self.ipv4.is_some()
    }
}

impl Ipv4Policy {
    /// The IPv4 half of a claim whose BackendType is the network's.
    fn check(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        own: Option<Ipv4Net>,
        vni: Option<u32>,
    ) -> Result<AcceptedPeerV4, Rejection> {
        subnet_rules::IPV4.check(subnet.into(), own.map(IpNet::from), &self.subnet_bounds())?;
        self.check_public_ip(attrs.public_ip)?;
        Ok(AcceptedPeerV4 {
            subnet,
            public_ip: attrs.public_ip,
            backend: self.check_backend(attrs, vni)?,
        })
    }

    fn subnet_bounds(&self) -> SubnetBounds {
        SubnetBounds {
            network: self.network.into(),
            subnet_len: self.subnet_len,
            subnet_len_source: self.subnet_len_source,
            subnet_min: self.subnet_min.into(),
            subnet_max: self.subnet_max.into(),
        }
    }

    fn check_public_ip(&self, ip: Ipv4Addr) -> Result<(), Rejection> {
        if Some(ip) == self.our_public_ip {
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

    fn check_backend(
        &self,
        attrs: &LeaseAttrs,
        vni: Option<u32>,
    ) -> Result<PeerBackend, Rejection> {
        let Some(vni) = vni else {
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

impl Ipv6Policy {
    /// The IPv6 half of a claim whose IPv4 half passed (so its
    /// BackendType is the network's): `None` when it has none.
    fn check(
        &self,
        subnet: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        own: Option<Ipv6Net>,
        backend_type: &str,
        vni: Option<u32>,
    ) -> Result<Option<AcceptedPeerV6>, Rejection> {
        let incomplete = |reason: String| Err(Rejection::new(Rule::Ipv6HalfIncomplete, reason));
        let (subnet, public_ip) = match (subnet, attrs.public_ipv6) {
            (None, None) => {
                if let Some(data) = &attrs.backend_v6_data {
                    return incomplete(format!(
                        "BackendV6Data (VtepMAC {}) comes without an IPv6 subnet and PublicIPv6",
                        data.vtep_mac
                    ));
                }
                return Ok(None);
            }
            (Some(subnet), None) => {
                return incomplete(format!("IPv6 subnet {subnet} comes without a PublicIPv6"));
            }
            (None, Some(ip)) => {
                return incomplete(format!("PublicIPv6 {ip} comes without an IPv6 subnet"));
            }
            (Some(subnet), Some(ip)) => (subnet, ip),
        };
        subnet_rules::IPV6.check(subnet.into(), own.map(IpNet::from), &self.subnet_bounds())?;
        self.check_public_ip(public_ip)?;
        let backend = match vni {
            None => PeerBackend::HostGw,
            Some(vni) => {
                let Some(data) = &attrs.backend_v6_data else {
                    return incomplete(format!(
                        "a {backend_type} lease with an IPv6 half needs BackendV6Data with VNI and VtepMAC"
                    ));
                };
                if data.vni != vni {
                    return Err(Rejection::new(
                        Rule::Ipv6VniMismatch,
                        format!(
                            "BackendV6Data VNI {} is not the network's VNI {vni}",
                            data.vni
                        ),
                    ));
                }
                if !is_unicast_mac(data.vtep_mac) {
                    return Err(Rejection::new(
                        Rule::Ipv6VtepMacNotUnicast,
                        format!(
                            "BackendV6Data VtepMAC {} is not a unicast MAC",
                            data.vtep_mac
                        ),
                    ));
                }
                if Some(data.vtep_mac) == self.our_vtep_mac {
                    return Err(Rejection::new(
                        Rule::Ipv6VtepMacInUse,
                        format!(
                            "BackendV6Data VtepMAC {} is this node's own IPv6 VTEP MAC",
                            data.vtep_mac
                        ),
                    ));
                }
                PeerBackend::Vxlan {
                    vtep_mac: data.vtep_mac,
                }
            }
        };
        Ok(Some(AcceptedPeerV6 {
            subnet,
            public_ip,
            backend,
        }))
    }

    fn subnet_bounds(&self) -> SubnetBounds {
        SubnetBounds {
            network: self.network.into(),
            subnet_len: self.subnet_len,
            subnet_len_source: self.subnet_len_source,
            subnet_min: self.subnet_min.into(),
            subnet_max: self.subnet_max.into(),
        }
    }

    fn check_public_ip(&self, ip: Ipv6Addr) -> Result<(), Rejection> {
        if Some(ip) == self.our_public_ip {
            return Err(Rejection::new(
                Rule::PublicIpv6Ours,
                format!("PublicIPv6 {ip} is this node's own address"),
            ));
        }
        if let Some(kind) = not_unicast_v6(ip) {
            return Err(Rejection::new(
                Rule::PublicIpv6NotUnicast,
                format!("PublicIPv6 {ip} is {kind}, not a unicast node address"),
            ));
        }
        if self.network.contains(&ip) {
            return Err(Rejection::new(
                Rule::PublicIpv6InsideNetwork,
                format!("PublicIPv6 {ip} is inside IPv6Network {}", self.network),
            ));
        }
        Ok(())
    }
}

/// Why `ip` cannot be another node's IPv6 underlay address, if it cannot.
/// Link-local (fe80::/10) needs an interface to mean anything and is never
/// routed off the link; an IPv4-mapped address (`::ffff:0:0/96`) is an
/// IPv4 address in IPv6 clothing, which would send VXLAN-over-IPv6 to
/// wherever the IPv4 stack says; the IPv4-compatible block (`::/96`,
/// deprecated) likewise.
fn not_unicast_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_unicast_link_local() {
        Some("link-local")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped (::ffff:0:0/96)")
    } else if segments[..6] == [0; 6] {
        Some("IPv4-compatible (::/96, deprecated)")
    } else {
        None
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
pub type Winners = BTreeMap<IpNet, (AcceptedPeer, String)>;
/// A claim that lost a clash: its subnet, its claimant's id, and why.
pub type Loser = (IpNet, String, Rejection);

/// Splits `candidates` into the claims to use (with their claimant) and
/// the ones that clash with an older one (by age; the id breaks a tie): a
/// subnet claimed twice or overlapping, or a VtepMAC already in use. The
/// fdb holds one destination per MAC, so a second claim with a node's VTEP
/// MAC would redirect that node's traffic to its own PublicIP. An etcd key
/// names its subnet, so two etcd leases can only claim one subnet by being
/// one key, and with the prefix rule in force they never overlap; two
/// Nodes can be given one podCIDR, though (by hand, or by a forged Node).
pub fn resolve_overlaps<'a>(
    candidates: impl IntoIterator<Item = (IpNet, &'a Candidate)>,
) -> (Winners, Vec<Loser>) {
    let mut by_age: Vec<(IpNet, &Candidate)> = candidates.into_iter().collect();
    by_age.sort_by(|(_, a), (_, b)| (a.age, &a.id).cmp(&(b.age, &b.id)));
    let mut accepted: Winners = BTreeMap::new();
    // By the subnet the peers are keyed by (IPv4; IPv6 in an IPv6-only
    // network, whose IPv6 halves are checked below as well, and agree).
    let mut winners: BTreeMap<IpNet, &str> = BTreeMap::new();
    let mut mac_holders: BTreeMap<MacAddr, &str> = BTreeMap::new();
    // The IPv6 halves of the winners: their subnets and their
    // `flannel-v6.<VNI>` MACs (another device, another fdb).
    let mut winners_v6: BTreeMap<IpNet, &str> = BTreeMap::new();
    let mut mac_v6_holders: BTreeMap<MacAddr, &str> = BTreeMap::new();
    let mut losers = Vec::new();
    for (subnet, candidate) in by_age {
        let mac = candidate.peer.vtep_mac();
        let v6 = candidate.peer.v6;
        let mac_v6 = candidate.peer.vtep_v6_mac();
        let lose =
            |reason: String, rule| (subnet, candidate.id.clone(), Rejection::new(rule, reason));
        if let Some(holder) = winners.get(&subnet) {
            losers.push(lose(
                format!("subnet {subnet} is also claimed by {holder}, which is older"),
                overlap_rule(subnet),
            ));
        } else if let Some(older) = overlapping_net(&winners, subnet).first() {
            losers.push(lose(
                format!(
                    "subnet {subnet} overlaps {older} of {}, which is older",
                    winners[older]
                ),
                overlap_rule(subnet),
            ));
        } else if let Some(holder) = mac.and_then(|mac| mac_holders.get(&mac)) {
            losers.push(lose(
                format!(
                    "VtepMAC {} is already used by {holder}, which is older",
                    mac.expect("checked")
                ),
                Rule::VtepMacInUse,
            ));
        } else if let Some((older, holder)) = v6.and_then(|v6| {
            let subnet = IpNet::V6(v6.subnet);
            overlapping_net(&winners_v6, subnet)
                .first()
                .map(|older| (*older, winners_v6[older]))
                .or_else(|| winners_v6.get(&subnet).map(|holder| (subnet, *holder)))
        }) {
            losers.push(lose(
                format!(
                    "IPv6 subnet {} overlaps {older} of {holder}, which is older",
                    v6.expect("checked").subnet
                ),
                Rule::Ipv6SubnetOverlapsPeer,
            ));
        } else if let Some(holder) = mac_v6.and_then(|mac| mac_v6_holders.get(&mac)) {
            losers.push(lose(
                format!(
                    "BackendV6Data VtepMAC {} is already used by {holder}, which is older",
                    mac_v6.expect("checked")
                ),
                Rule::Ipv6VtepMacInUse,
            ));
        } else {
            winners.insert(subnet, &candidate.id);
            if let Some(mac) = mac {
                mac_holders.insert(mac, &candidate.id);
            }
            if let Some(v6) = v6 {
                winners_v6.insert(IpNet::V6(v6.subnet), &candidate.id);
            }
            if let Some(mac) = mac_v6 {
                mac_v6_holders.insert(mac, &candidate.id);
            }
            accepted.insert(subnet, (candidate.peer, candidate.id.clone()));
        }
    }
    (accepted, losers)
}

/// The rule a subnet overlapping an older claim's breaks, by its family.
fn overlap_rule(subnet: IpNet) -> Rule {
    match subnet {
        IpNet::V4(_) => Rule::SubnetOverlapsPeer,
        IpNet::V6(_) => Rule::Ipv6SubnetOverlapsPeer,
    }
}

/// The subnets in `map` that overlap `subnet` (itself excluded), found with
/// at most one lookup per shorter prefix and one range scan instead of a
/// pass over the map. `IpNet` orders each family's subnets as its own type
/// does (address, then prefix), and only subnets of `subnet`'s family can
/// overlap it.
pub fn overlapping_net<V>(map: &BTreeMap<IpNet, V>, subnet: IpNet) -> Vec<IpNet> {
    let mut found: Vec<IpNet> = (0..subnet.prefix_len())
        .filter_map(|len| IpNet::new(subnet.network(), len).ok())
        .map(|wider| wider.trunc())
        .filter(|wider| map.contains_key(wider))
        .collect();
    let first = IpNet::new(subnet.network(), 0).expect("prefix 0");
    let last = IpNet::new(subnet.broadcast(), subnet.max_prefix_len()).expect("a full prefix");
    found.extend(
        map.range(first..=last)
            .map(|(inner, _)| *inner)
            .filter(|inner| *inner != subnet && subnet.contains(inner)),
    );
    found
}

#[cfg(test)]
mod tests;
