//! Subnet leases as flanneld stores them in etcd.
//!
//! Key `<prefix>/subnets/10.244.3.0-24`, value
//! `{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`.
//! Field names and order match flanneld's so values are byte-compatible.

pub mod acquire;
pub mod claim;
pub mod peers;
pub mod registry;
pub mod validate;
pub mod watch;

use std::net::Ipv4Addr;

use anyhow::{Result, anyhow, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The lease value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: Option<VxlanBackendData>,
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

/// `10.244.3.0/24` -> `10.244.3.0-24`.
pub fn key_name(subnet: &Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// `<prefix>/subnets/10.244.3.0-24` for a subnet.
pub fn key(prefix: &str, subnet: &Ipv4Net) -> String {
    format!("{}/{}", subnets_prefix(prefix), key_name(subnet))
}

/// `<prefix>/subnets`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets", prefix.trim_end_matches('/'))
}

/// The subnet a lease key names (`.../10.244.3.0-24`).
pub fn subnet_of_key(key: &str) -> Result<Ipv4Net> {
    let name = key.rsplit('/').next().unwrap_or(key);
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

#[cfg(test)]
mod tests {
    use super::*;

    const VXLAN: &str = r#"{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    const HOST_GW: &str = r#"{"PublicIP":"192.168.77.2","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#;

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
