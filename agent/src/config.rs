//! The network config flanneld reads from `<prefix>/config`, with flannel's
//! defaults and validation. Keys match case-insensitively, as Go's
//! encoding/json matches struct fields.

use std::net::Ipv4Addr;

use anyhow::{Result, anyhow, bail};
use ipnet::Ipv4Net;
use serde_json::{Map, Value};

pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// First subnet handed out (network address of that subnet).
    pub subnet_min: Ipv4Addr,
    /// Last subnet handed out (network address of that subnet).
    pub subnet_max: Ipv4Addr,
    pub backend: BackendConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    Vxlan {
        vni: u32,
        port: u16,
        mtu: Option<u32>,
        direct_routing: bool,
    },
    HostGw,
}

impl BackendConfig {
    /// The `BackendType` string leases carry.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan { .. } => "vxlan",
            BackendConfig::HostGw => "host-gw",
        }
    }

    /// The VXLAN network identifier; host-gw has none.
    pub fn vni(&self) -> Option<u32> {
        match self {
            BackendConfig::Vxlan { vni, .. } => Some(*vni),
            BackendConfig::HostGw => None,
        }
    }
}

impl NetworkConfig {
    /// Parses and validates the JSON stored at `<prefix>/config`; errors name
    /// the field and the rule.
    pub fn parse(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json)
            .map_err(|error| anyhow!("network config is not JSON: {error}"))?;
        let root = value
            .as_object()
            .ok_or_else(|| anyhow!("network config must be a JSON object"))?;
        if let Some(enable_ipv4) = field(root, "EnableIPv4")
            && enable_ipv4.as_bool() == Some(false)
        {
            bail!("network config: EnableIPv4 is false; weft's datapath is IPv4-only");
        }
        if field(root, "EnableIPv6").and_then(Value::as_bool) == Some(true) {
            bail!("network config: EnableIPv6 is true; weft does not support IPv6 yet");
        }
        let network: Ipv4Net = string(root, "Network")?
            .ok_or_else(|| anyhow!("network config: Network is missing"))?
            .parse()
            .map_err(|_| anyhow!("network config: Network is not an IPv4 CIDR"))?;
        let network = network.trunc();
        let prefix = network.prefix_len();

        let subnet_len = match integer(root, "SubnetLen")? {
            Some(0) | None => {
                if prefix > 28 {
                    bail!(
                        "network config: Network {network} is too small; the smallest useful network is a /28"
                    );
                }
                if prefix <= 22 { 24 } else { prefix + 2 }
            }
            Some(len) => {
                let len = u8::try_from(len).map_err(|_| {
                    anyhow!("network config: SubnetLen {len} is not a prefix length")
                })?;
                if len > 30 {
                    bail!("network config: SubnetLen {len} is invalid: it must be at most 30");
                }
                if len < prefix + 2 {
                    bail!(
                        "network config: SubnetLen {len} is invalid: it must be at least Network's prefix + 2 ({}) so the network holds four subnets",
                        prefix + 2
                    );
                }
                len
            }
        };
        let subnet_size = 1u32 << (32 - subnet_len);
        let mask = u32::MAX << (32 - subnet_len);
        let network_start = u32::from(network.network());
        let bound = |name: &str, default: u32| -> Result<Ipv4Addr> {
            let Some(text) = string(root, name)? else {
                return Ok(Ipv4Addr::from(default));
            };
            let address: Ipv4Addr = text
                .parse()
                .map_err(|_| anyhow!("network config: {name} {text:?} is not an IPv4 address"))?;
            if !network.contains(&address) {
                bail!("network config: {name} {address} is not inside Network {network}");
            }
            if u32::from(address) & mask != u32::from(address) {
                bail!(
                    "network config: {name} {address} is not on a SubnetLen (/{subnet_len}) boundary"
                );
            }
            Ok(address)
        };
        let subnet_min = bound("SubnetMin", network_start + subnet_size)?;
        // The last subnet starts `subnet_size - 1` below the broadcast
        // address (which may be 255.255.255.255: no `+ 1` first).
        let subnet_max = bound(
            "SubnetMax",
            u32::from(network.broadcast()) - (subnet_size - 1),
        )?;
        if subnet_min > subnet_max {
            bail!("network config: SubnetMin {subnet_min} is above SubnetMax {subnet_max}");
        }
        let backend = parse_backend(root)?;
        Ok(Self {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// Every subnet from SubnetMin to SubnetMax, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u32 << (32 - self.subnet_len);
        let first = u32::from(self.subnet_min);
        let count = (u32::from(self.subnet_max) - first) / size + 1;
        (0..count).map(move |index| {
            Ipv4Net::new(Ipv4Addr::from(first + index * size), self.subnet_len)
                .expect("prefix length checked")
        })
    }

    /// Whether `subnet` is one this config hands out.
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }
}

fn parse_backend(root: &Map<String, Value>) -> Result<BackendConfig> {
    let Some(backend) = field(root, "Backend") else {
        bail!("network config: Backend is missing");
    };
    let backend = backend
        .as_object()
        .ok_or_else(|| anyhow!("network config: Backend must be an object"))?;
    let kind = string(backend, "Type")?
        .ok_or_else(|| anyhow!("network config: Backend.Type is missing"))?;
    match kind.as_str() {
        "vxlan" => {
            let vni = match integer(backend, "VNI")? {
                None | Some(0) => DEFAULT_VNI,
                Some(vni) if vni < 1 << 24 => vni as u32,
                Some(vni) => bail!("network config: Backend.VNI {vni} does not fit in 24 bits"),
            };
            let port = match integer(backend, "Port")? {
                None | Some(0) => DEFAULT_VXLAN_PORT,
                Some(port) => u16::try_from(port).map_err(|_| {
                    anyhow!("network config: Backend.Port {port} is not a UDP port")
                })?,
            };
            let mtu = match integer(backend, "MTU")? {
                None | Some(0) => None,
                Some(mtu) if (68..=65535).contains(&mtu) => Some(mtu as u32),
                Some(mtu) => bail!("network config: Backend.MTU {mtu} is not an MTU (68..65535)"),
            };
            let direct_routing = match field(backend, "DirectRouting") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(direct)) => *direct,
                Some(_) => bail!("network config: Backend.DirectRouting must be true or false"),
            };
            Ok(BackendConfig::Vxlan {
                vni,
                port,
                mtu,
                direct_routing,
            })
        }
        "host-gw" => Ok(BackendConfig::HostGw),
        other => bail!(
            "network config: Backend.Type {other:?} is not supported (use \"vxlan\" or \"host-gw\")"
        ),
    }
}

/// A field by name, matched as Go's encoding/json does: exact first, then
/// ASCII case-insensitively.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

fn string(object: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => bail!("network config: {name} must be a string, found {other}"),
    }
}

fn integer(object: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            anyhow!("network config: {name} must be a non-negative integer, found {value}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn error(json: &str) -> String {
        format!("{:#}", NetworkConfig::parse(json).unwrap_err())
    }

    #[test]
    fn flannel_defaults_for_a_16() {
        let config = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(config.subnet_len, 24);
        assert_eq!(config.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(config.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(
            config.backend,
            BackendConfig::Vxlan {
                vni: 1,
                port: 8472,
                mtu: None,
                direct_routing: false
            }
        );
        assert_eq!(config.subnets().count(), 255);
    }

    #[test]
    fn small_networks_split_in_four() {
        let config = parse(r#"{"Network":"10.9.0.0/26","Backend":{"Type":"host-gw"}}"#);
        assert_eq!(config.subnet_len, 28);
        assert_eq!(config.subnet_min, Ipv4Addr::new(10, 9, 0, 16));
        assert_eq!(config.subnet_max, Ipv4Addr::new(10, 9, 0, 48));
        let subnets: Vec<String> = config.subnets().map(|net| net.to_string()).collect();
        assert_eq!(subnets, ["10.9.0.16/28", "10.9.0.32/28", "10.9.0.48/28"]);
        assert!(
            error(r#"{"Network":"10.9.0.0/29","Backend":{"Type":"host-gw"}}"#)
                .contains("too small")
        );
    }

    #[test]
    fn keys_match_case_insensitively() {
        let config = parse(
            r#"{"network":"10.1.0.0/16","subnetlen":26,"backend":{"type":"vxlan","vni":4,"port":4789,"directrouting":true}}"#,
        );
        assert_eq!(config.subnet_len, 26);
        assert_eq!(
            config.backend,
            BackendConfig::Vxlan {
                vni: 4,
                port: 4789,
                mtu: None,
                direct_routing: true
            }
        );
    }

    #[test]
    fn explicit_bounds_are_validated() {
        let config = parse(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.0","SubnetMax":"10.1.20.0","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(config.subnets().count(), 11);
        assert!(config.fits(&"10.1.15.0/24".parse().unwrap()));
        assert!(!config.fits(&"10.1.21.0/24".parse().unwrap()));
        assert!(!config.fits(&"10.1.15.0/25".parse().unwrap()));
        let off = error(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.7","Backend":{"Type":"vxlan"}}"#,
        );
        assert!(
            off.contains("SubnetMin 10.1.10.7 is not on a SubnetLen (/24) boundary"),
            "{off}"
        );
        let outside =
            error(r#"{"Network":"10.1.0.0/16","SubnetMax":"10.2.0.0","Backend":{"Type":"vxlan"}}"#);
        assert!(
            outside.contains("SubnetMax 10.2.0.0 is not inside Network 10.1.0.0/16"),
            "{outside}"
        );
    }

    #[test]
    fn invalid_configs_name_the_field_and_rule() {
        let cases = [
            (
                r#"{"Network":"10.1.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
                "SubnetLen 31 is invalid: it must be at most 30",
            ),
            (
                r#"{"Network":"10.1.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}"#,
                "SubnetLen 17 is invalid: it must be at least Network's prefix + 2 (18)",
            ),
            (
                r#"{"Network":"10.1.0.0/16","SubnetLen":"24","Backend":{"Type":"vxlan"}}"#,
                "SubnetLen must be a non-negative integer",
            ),
            (
                r#"{"Network":"banana","Backend":{"Type":"vxlan"}}"#,
                "Network is not an IPv4 CIDR",
            ),
            (r#"{"Backend":{"Type":"vxlan"}}"#, "Network is missing"),
            (
                r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#,
                "Backend.Type \"udp\" is not supported",
            ),
            (
                r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "Backend.VNI 16777216 does not fit in 24 bits",
            ),
            (r#"{"Network":"10.1.0.0/16"}"#, "Backend is missing"),
            ("not json", "network config is not JSON"),
        ];
        for (json, expected) in cases {
            let message = error(json);
            assert!(message.contains(expected), "{json}: {message}");
        }
    }
}
