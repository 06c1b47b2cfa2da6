//! Subnet leases as flanneld stores them in etcd.
//!
//! Key `<prefix>/subnets/10.244.3.0-24`, value
//! `{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`.
//! A dual-stack lease (flannel v0.20.2 with `EnableIPv6`) adds its IPv6
//! subnet to the key, `10.244.3.0-24&fd00:12:13::-56` (flannel's
//! `MakeSubnetKey`), and `PublicIPv6` and `BackendV6Data` to the value.
//! Field names and order match flanneld's so values are byte-compatible.

pub mod acquire;
pub mod claim;
pub mod peers;
pub mod registry;
pub mod validate;
pub mod watch;

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, anyhow, bail};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// The lease value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// flanneld always writes it, `null` on an IPv4-only node.
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    /// flanneld omits it when empty (a host-gw lease), as it omits
    /// `BackendV6Data`; a `null` from elsewhere still reads as none.
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<VxlanBackendData>,
    /// `flannel-v6.<VNI>`'s VNI and MAC; flanneld omits it when empty.
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<VxlanBackendData>,
}

/// `BackendData` of a vxlan lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanBackendData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

/// A MAC address, written `c6:d2:32:6f:8f:44` as Go's net.HardwareAddr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for MacAddr {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts
                .next()
                .ok_or_else(|| anyhow!("{text:?} is not a MAC address"))?;
            if part.len() != 2 {
                bail!("{text:?} is not a MAC address");
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| anyhow!("{text:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            bail!("{text:?} is not a MAC address");
        }
        Ok(MacAddr(bytes))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl LeaseAttrs {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attrs always serialize")
    }

    /// Parses a lease value; errors say what is wrong with it.
    pub fn from_json(value: &[u8]) -> Result<Self> {
        let attrs: LeaseAttrs = serde_json::from_slice(value)
            .map_err(|error| anyhow!("malformed lease value: {error}"))?;
        match (attrs.backend_type.as_str(), &attrs.backend_data) {
            ("vxlan", None) => {
                bail!("malformed lease value: a vxlan lease needs BackendData with VNI and VtepMAC")
            }
            ("vxlan" | "host-gw", _) => Ok(attrs),
            (other, _) => bail!("lease has BackendType {other:?}, which weft does not speak"),
        }
    }
}

/// The subnets a lease key names: always an IPv4 one, and in a
/// dual-stack lease an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseSubnets {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

impl LeaseSubnets {
    /// An IPv4-only lease's.
    pub fn v4(v4: Ipv4Net) -> Self {
        Self { v4, v6: None }
    }

    /// `10.244.3.0-24`, or `10.244.3.0-24&fd00:12:13::-56` (flannel's
    /// `MakeSubnetKey`: Go's `net.IP` spelling, which is Rust's for every
    /// address a subnet start can be but `::ffff:0:0/96`'s, refused as a
    /// pod subnet anyway).
    pub fn key_name(&self) -> String {
        match self.v6 {
            None => key_name(&self.v4),
            Some(v6) => format!(
                "{}&{}-{}",
                key_name(&self.v4),
                v6.network(),
                v6.prefix_len()
            ),
        }
    }
}

impl std::fmt::Display for LeaseSubnets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.v6 {
            None => write!(f, "{}", self.v4),
            Some(v6) => write!(f, "{}&{v6}", self.v4),
        }
    }
}

/// `10.244.3.0/24` -> `10.244.3.0-24`.
pub fn key_name(subnet: &Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// `<prefix>/subnets/10.244.3.0-24` for a subnet.
pub fn key(prefix: &str, subnet: &Ipv4Net) -> String {
    format!("{}/{}", subnets_prefix(prefix), key_name(subnet))
}

/// `<prefix>/subnets/10.244.3.0-24&fd00:12:13::-56` for a lease's subnets.
pub fn lease_key(prefix: &str, subnets: &LeaseSubnets) -> String {
    format!("{}/{}", subnets_prefix(prefix), subnets.key_name())
}

/// `<prefix>/subnets`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets", prefix.trim_end_matches('/'))
}

/// The IPv4 subnet a lease key names (`.../10.244.3.0-24`, with or
/// without an IPv6 half).
pub fn subnet_of_key(key: &str) -> Result<Ipv4Net> {
    subnets_of_key(key).map(|subnets| subnets.v4)
}

/// The subnets a lease key names: `.../10.244.3.0-24`, or
/// `.../10.244.3.0-24&fd00:12:13::-56` (flannel's `subnetRegex`: the IPv6
/// half is lower-case hex digits and colons). Each half must be a subnet
/// start with its prefix length, spelled as flanneld spells it: a key
/// flanneld would not write is refused, naming what is wrong.
pub fn subnets_of_key(key: &str) -> Result<LeaseSubnets> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let (v4, v6) = match name.split_once('&') {
        None => (name, None),
        Some((v4, v6)) => (v4, Some(v6)),
    };
    let v4 = v4_half(key, v4)?;
    let v6 = v6.map(|v6| v6_half(key, v6)).transpose()?;
    Ok(LeaseSubnets { v4, v6 })
}

fn v4_half(key: &str, name: &str) -> Result<Ipv4Net> {
    let (address, len) = name
        .split_once('-')
        .ok_or_else(|| anyhow!("lease key {key:?} does not end in ADDRESS-PREFIXLEN"))?;
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| anyhow!("lease key {key:?}: {address:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| anyhow!("lease key {key:?}: {len:?} is not a prefix length"))?;
    let subnet = Ipv4Net::new(address, len)
        .map_err(|_| anyhow!("lease key {key:?}: /{len} is not a prefix length"))?;
    if subnet.network() != address {
        bail!("lease key {key:?}: {address} is not the start of a /{len}");
    }
    Ok(subnet)
}

fn v6_half(key: &str, name: &str) -> Result<Ipv6Net> {
    let (address, len) = name.rsplit_once('-').ok_or_else(|| {
        anyhow!("lease key {key:?}: the IPv6 half {name:?} is not ADDRESS-PREFIXLEN")
    })?;
    if !address
        .bytes()
        .all(|byte| byte == b':' || byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    {
        bail!("lease key {key:?}: {address:?} is not a lower-case IPv6 address");
    }
    let parsed: Ipv6Addr = address
        .parse()
        .map_err(|_| anyhow!("lease key {key:?}: {address:?} is not an IPv6 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| anyhow!("lease key {key:?}: {len:?} is not a prefix length"))?;
    let subnet = Ipv6Net::new(parsed, len)
        .map_err(|_| anyhow!("lease key {key:?}: /{len} is not an IPv6 prefix length"))?;
    if subnet.network() != parsed {
        bail!("lease key {key:?}: {parsed} is not the start of a /{len}");
    }
    if parsed.to_string() != address {
        bail!("lease key {key:?}: {address:?} is not written as flanneld writes it ({parsed})");
    }
    Ok(subnet)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VXLAN: &str = r#"{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    const HOST_GW: &str =
        r#"{"PublicIP":"192.168.77.2","PublicIPv6":null,"BackendType":"host-gw"}"#;

    #[test]
    fn values_are_byte_compatible_with_flanneld() {
        for value in [VXLAN, HOST_GW] {
            assert_eq!(
                LeaseAttrs::from_json(value.as_bytes()).unwrap().to_json(),
                value
            );
        }
    }

    #[test]
    fn keys_round_trip() {
        let subnet: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let key = key("/coreos.com/network", &subnet);
        assert_eq!(key, "/coreos.com/network/subnets/10.244.3.0-24");
        assert_eq!(subnet_of_key(&key).unwrap(), subnet);
        assert_eq!(key_name(&"10.9.0.16/28".parse().unwrap()), "10.9.0.16-28");
    }

    /// What flanneld v0.20.2 writes for a dual-stack vxlan node, derived
    /// from its source (`subnet.LeaseAttrs` field order, `ip.IP6`'s
    /// `MarshalJSON` through `net.IP.String`, `vxlanLeaseAttrs` for both
    /// backend data, `BackendV6Data` omitempty) and the key from
    /// `MakeSubnetKey`.
    const DUAL_VXLAN: &str = r#"{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:7e:1d:00:00:01"}}"#;
    const DUAL_HOST_GW: &str =
        r#"{"PublicIP":"192.168.77.2","PublicIPv6":"2001:db8::1:0:0:1","BackendType":"host-gw"}"#;

    #[test]
    fn dual_stack_values_are_byte_compatible_with_flanneld() {
        for value in [DUAL_VXLAN, DUAL_HOST_GW] {
            assert_eq!(
                LeaseAttrs::from_json(value.as_bytes()).unwrap().to_json(),
                value
            );
        }
        let attrs = LeaseAttrs::from_json(DUAL_VXLAN.as_bytes()).unwrap();
        assert_eq!(attrs.public_ipv6, Some("fd77::1".parse().unwrap()));
        assert_eq!(
            attrs.backend_v6_data,
            Some(VxlanBackendData {
                vni: 1,
                vtep_mac: "aa:7e:1d:00:00:01".parse().unwrap()
            })
        );
        // Hostile v6 fields are malformed values, named.
        for (from, to) in [
            (r#""fd77::1""#, r#""fd77::1::""#),
            (r#""fd77::1""#, r#""192.168.77.1""#),
            (r#""fd77::1""#, "7"),
            (r#""aa:7e:1d:00:00:01""#, r#""aa:7e""#),
            (
                r#""BackendV6Data":{"VNI":1,"#,
                r#""BackendV6Data":{"VNI":-1,"#,
            ),
        ] {
            let bad = DUAL_VXLAN.replace(from, to);
            let error = format!("{:#}", LeaseAttrs::from_json(bad.as_bytes()).unwrap_err());
            assert!(error.contains("malformed lease value"), "{bad}: {error}");
        }
    }

    #[test]
    fn dual_stack_keys_round_trip_as_flannel_writes_them() {
        let subnets = LeaseSubnets {
            v4: "10.12.13.0/24".parse().unwrap(),
            v6: Some("fd00:12:13::/56".parse().unwrap()),
        };
        assert_eq!(subnets.key_name(), "10.12.13.0-24&fd00:12:13::-56");
        let key = lease_key("/coreos.com/network/", &subnets);
        assert_eq!(
            key,
            "/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-56"
        );
        assert_eq!(subnets_of_key(&key).unwrap(), subnets);
        assert_eq!(subnet_of_key(&key).unwrap(), subnets.v4);
        let v4_only = LeaseSubnets::v4("10.12.13.0/24".parse().unwrap());
        assert_eq!(lease_key("/p", &v4_only), "/p/subnets/10.12.13.0-24");
        assert_eq!(subnets_of_key("/p/subnets/10.12.13.0-24").unwrap(), v4_only);
        assert_eq!(subnets.to_string(), "10.12.13.0/24&fd00:12:13::/56");
    }

    #[test]
    fn bad_dual_stack_keys_say_what_is_wrong() {
        for (key, expected) in [
            (
                "/p/subnets/10.1.2.0-24&fd00::1-64",
                "fd00::1 is not the start of a /64",
            ),
            (
                "/p/subnets/10.1.2.0-24&fd00::-129",
                "/129 is not an IPv6 prefix length",
            ),
            (
                "/p/subnets/10.1.2.0-24&fd00::-x",
                "\"x\" is not a prefix length",
            ),
            ("/p/subnets/10.1.2.0-24&fd00::", "is not ADDRESS-PREFIXLEN"),
            ("/p/subnets/10.1.2.0-24&", "is not ADDRESS-PREFIXLEN"),
            (
                "/p/subnets/10.1.2.0-24&FD00::-64",
                "is not a lower-case IPv6 address",
            ),
            (
                "/p/subnets/10.1.2.0-24&::ffff:10.0.0.0-104",
                "is not a lower-case IPv6 address",
            ),
            (
                "/p/subnets/10.1.2.0-24&fd00:0::-64",
                "is not written as flanneld writes it (fd00::)",
            ),
            (
                "/p/subnets/10.1.2.0-24&fd00:::-64",
                "is not an IPv6 address",
            ),
            (
                "/p/subnets/10.1.2.0-24&fd00::-64&fd01::-64",
                "is not a lower-case IPv6 address",
            ),
            (
                "/p/subnets/10.1.2.1-24&fd00::-64",
                "10.1.2.1 is not the start of a /24",
            ),
        ] {
            let error = format!("{:#}", subnets_of_key(key).unwrap_err());
            assert!(error.contains(expected), "{key}: {error}");
        }
    }

    #[test]
    fn bad_keys_and_values_say_what_is_wrong() {
        assert!(
            format!(
                "{:#}",
                subnet_of_key("/p/subnets/10.244.3.1-24").unwrap_err()
            )
            .contains("not the start of a /24")
        );
        assert!(
            format!("{:#}", subnet_of_key("/p/subnets/garbage").unwrap_err())
                .contains("does not end in ADDRESS-PREFIXLEN")
        );
        assert!(
            format!("{:#}", subnet_of_key("/p/subnets/10.1.0.0-33").unwrap_err()).contains("/33")
        );
        let wrong_type = VXLAN.replace(r#""VNI":1"#, r#""VNI":"one""#);
        assert!(
            format!(
                "{:#}",
                LeaseAttrs::from_json(wrong_type.as_bytes()).unwrap_err()
            )
            .contains("malformed lease value")
        );
        let bad_ip = HOST_GW.replace("192.168.77.2", "not-an-ip");
        assert!(LeaseAttrs::from_json(bad_ip.as_bytes()).is_err());
        assert!(LeaseAttrs::from_json(b"not json").is_err());
        let bad_mac = VXLAN.replace("c6:d2:32:6f:8f:44", "c6:d2:32");
        assert!(LeaseAttrs::from_json(bad_mac.as_bytes()).is_err());
        let udp = HOST_GW.replace("host-gw", "udp");
        assert!(
            format!("{:#}", LeaseAttrs::from_json(udp.as_bytes()).unwrap_err()).contains("\"udp\"")
        );
    }
}
