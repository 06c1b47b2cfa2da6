//! The rules a claimed subnet must pass on its own, the same four for a
//! claim's IPv4 subnet and its IPv6 half's, in the same order; only the
//! rule counted and the words of the reason (which name the family's own
//! settings, so an operator finds them) differ.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Rejection, Rule};

/// One family's rules and the names of its settings.
pub struct SubnetFamily {
    pub outside_network: Rule,
    pub overlaps_own: Rule,
    pub wrong_prefix: Rule,
    pub outside_range: Rule,
    /// "subnet", "IPv6 subnet".
    pub subnet: &'static str,
    /// The network's setting: "Network", "IPv6Network".
    pub network: &'static str,
    /// What our own subnet is called: "lease", "IPv6 subnet".
    pub own: &'static str,
    pub subnet_min: &'static str,
    pub subnet_max: &'static str,
}

pub const IPV4: SubnetFamily = SubnetFamily {
    outside_network: Rule::SubnetOutsideNetwork,
    overlaps_own: Rule::SubnetOverlapsOwn,
    wrong_prefix: Rule::SubnetWrongPrefix,
    outside_range: Rule::SubnetOutsideRange,
    subnet: "subnet",
    network: "Network",
    own: "lease",
    subnet_min: "SubnetMin",
    subnet_max: "SubnetMax",
};

pub const IPV6: SubnetFamily = SubnetFamily {
    outside_network: Rule::Ipv6SubnetOutsideNetwork,
    overlaps_own: Rule::Ipv6SubnetOverlapsOwn,
    wrong_prefix: Rule::Ipv6SubnetWrongPrefix,
    outside_range: Rule::Ipv6SubnetOutsideRange,
    subnet: "IPv6 subnet",
    network: "IPv6Network",
    own: "IPv6 subnet",
    subnet_min: "IPv6SubnetMin",
    subnet_max: "IPv6SubnetMax",
};

/// Where a family's subnets must lie: its network and allocator settings.
pub struct SubnetBounds {
    pub network: IpNet,
    pub subnet_len: u8,
    /// Where `subnet_len` comes from, for the reason.
    pub subnet_len_source: &'static str,
    pub subnet_min: IpAddr,
    pub subnet_max: IpAddr,
}

impl SubnetFamily {
    /// Checks `subnet` against `bounds` and our `own` subnet, in order:
    /// inside the network, not overlapping ours, the allocator's prefix,
    /// inside SubnetMin .. SubnetMax. The first broken rule is reported.
    pub fn check(
        &self,
        subnet: IpNet,
        own: Option<IpNet>,
        bounds: &SubnetBounds,
    ) -> Result<(), Rejection> {
        let network = bounds.network;
        if !network.contains(&subnet) {
            return Err(Rejection::new(
                self.outside_network,
                format!(
                    "{} {subnet} is not inside {} {network}",
                    self.subnet, self.network
                ),
            ));
        }
        // Before the prefix rule: overlapping our own subnet is the more
        // telling fact, and ours needs no tie-break.
        if let Some(own) = own.filter(|own| overlap(*own, subnet)) {
            return Err(Rejection::new(
                self.overlaps_own,
                format!(
                    "{} {subnet} overlaps our own {} {own}",
                    self.subnet, self.own
                ),
            ));
        }
        if subnet.prefix_len() != bounds.subnet_len {
            return Err(Rejection::new(
                self.wrong_prefix,
                format!(
                    "{} {subnet} is not a /{} ({})",
                    self.subnet, bounds.subnet_len, bounds.subnet_len_source
                ),
            ));
        }
        if subnet.network() < bounds.subnet_min || subnet.network() > bounds.subnet_max {
            return Err(Rejection::new(
                self.outside_range,
                format!(
                    "{} {subnet} is outside {} {} .. {} {}",
                    self.subnet,
                    self.subnet_min,
                    bounds.subnet_min,
                    self.subnet_max,
                    bounds.subnet_max
                ),
            ));
        }
        Ok(())
    }
}

/// Whether two subnets share an address (either holds the other's first).
pub fn overlap(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
