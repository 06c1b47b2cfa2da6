//! The network config flanneld reads from `<prefix>/config`, with flannel's
//! defaults and validation. Keys match case-insensitively, as Go's
//! encoding/json matches struct fields.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, anyhow, bail};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network` and its subnets, unless `EnableIPv4` is false (an
    /// IPv6-only network).
    pub ipv4: Option<Ipv4Network>,
    /// `IPv6Network` and its subnets, when `EnableIPv6` is true (dual-stack,
    /// or IPv6-only).
    pub ipv6: Option<Ipv6Network>,
    pub backend: BackendConfig,
}

/// `Network`, `SubnetLen`, `SubnetMin`/`SubnetMax` with flannel's defaults
/// applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Network {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// First subnet handed out (network address of that subnet).
    pub subnet_min: Ipv4Addr,
    /// Last subnet handed out (network address of that subnet).
    pub subnet_max: Ipv4Addr,
}

/// `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`/`IPv6SubnetMax` with
/// flannel's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Network {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    /// First subnet handed out (network address of that subnet).
    pub subnet_min: Ipv6Addr,
    /// Last subnet handed out (network address of that subnet).
    pub subnet_max: Ipv6Addr,
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
        // flannel's defaults: IPv4 on, IPv6 off.
        let enable_ipv4 = boolean(root, "EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = boolean(root, "EnableIPv6")?.unwrap_or(false);
        if !enable_ipv4 && !enable_ipv6 {
            bail!(
                "network config: EnableIPv4 and EnableIPv6 are both false: no family is left to run"
            );
        }
        let ipv4 = enable_ipv4.then(|| parse_ipv4(root)).transpose()?;
        let ipv6 = enable_ipv6.then(|| parse_ipv6(root)).transpose()?;
        let backend = parse_backend(root)?;
        Ok(Self {
            ipv4,
            ipv6,
            backend,
        })
    }
}

/// `Network`, `SubnetLen`, `SubnetMin`/`SubnetMax` with flannel v0.20.2's
/// defaults and checks: the subnet length defaults to 24 on a /22 or
/// wider, else to the prefix + 2; it is at most 30 and at least the
/// prefix + 2 (four subnets); the bounds default to the second and the
/// last subnet, and must lie inside the network on a subnet boundary.
fn parse_ipv4(root: &Map<String, Value>) -> Result<Ipv4Network> {
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
            let len = u8::try_from(len)
                .map_err(|_| anyhow!("network config: SubnetLen {len} is not a prefix length"))?;
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
    Ok(Ipv4Network {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

impl Ipv4Network {
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

/// `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`/`IPv6SubnetMax` with
/// flannel v0.20.2's defaults and checks (`CheckNetworkConfig`): the
/// subnet length defaults to 64 on a network of /62 or wider, else to the
/// prefix + 2; it is at most 126 and at least the prefix + 2 (four
/// subnets); the network is at most a /124; the bounds default to the
/// second and the last subnet, and must lie inside the network on a
/// subnet boundary.
fn parse_ipv6(root: &Map<String, Value>) -> Result<Ipv6Network> {
    let network: Ipv6Net = string(root, "IPv6Network")?
        .ok_or_else(|| anyhow!("network config: EnableIPv6 is true but IPv6Network is missing"))?
        .parse()
        .map_err(|_| anyhow!("network config: IPv6Network is not an IPv6 CIDR"))?;
    let network = network.trunc();
    let prefix = network.prefix_len();
    // Go spells IPv4-mapped addresses (and flannel's `ip.IP6` those of
    // `::/96` from ::1.0.0.0 on) `a.b.c.d`, which flannel's lease key
    // pattern cannot read back: subnets there could not be keyed.
    for name in ["::ffff:0:0/96", "::/96"] {
        let block: Ipv6Net = name.parse().expect("a valid prefix");
        if network.contains(&block.network()) || block.contains(&network.network()) {
            bail!(
                "network config: IPv6Network {network} overlaps {name}, whose addresses flannel writes as IPv4 ones: its lease keys could not name them"
            );
        }
    }
    let subnet_len = match integer(root, "IPv6SubnetLen")? {
        Some(0) | None => {
            if prefix > 124 {
                bail!(
                    "network config: IPv6Network {network} is too small; the smallest useful network is a /124"
                );
            }
            if prefix <= 62 { 64 } else { prefix + 2 }
        }
        Some(len) => {
            let len = u8::try_from(len).map_err(|_| {
                anyhow!("network config: IPv6SubnetLen {len} is not a prefix length")
            })?;
            if len > 126 {
                bail!("network config: IPv6SubnetLen {len} is invalid: it must be at most 126");
            }
            if len < prefix + 2 {
                bail!(
                    "network config: IPv6SubnetLen {len} is invalid: it must be at least IPv6Network's prefix + 2 ({}) so the network holds four subnets",
                    prefix + 2
                );
            }
            len
        }
    };
    let size = 1u128 << (128 - subnet_len);
    let start = u128::from(network.network());
    let bound = |name: &str, default: u128| -> Result<Ipv6Addr> {
        let Some(text) = string(root, name)? else {
            return Ok(Ipv6Addr::from(default));
        };
        let address: Ipv6Addr = text
            .parse()
            .map_err(|_| anyhow!("network config: {name} {text:?} is not an IPv6 address"))?;
        if !network.contains(&address) {
            bail!("network config: {name} {address} is not inside IPv6Network {network}");
        }
        if u128::from(address) & (size - 1) != 0 {
            bail!(
                "network config: {name} {address} is not on an IPv6SubnetLen (/{subnet_len}) boundary"
            );
        }
        Ok(address)
    };
    let subnet_min = bound("IPv6SubnetMin", start + size)?;
    // The last subnet starts `size - 1` below the network's last address.
    let subnet_max = bound(
        "IPv6SubnetMax",
        u128::from(network.broadcast()) - (size - 1),
    )?;
    if subnet_min > subnet_max {
        bail!("network config: IPv6SubnetMin {subnet_min} is above IPv6SubnetMax {subnet_max}");
    }
    Ok(Ipv6Network {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

impl Ipv6Network {
    /// Whether `subnet` is one this config hands out.
    pub fn fits(&self, subnet: &Ipv6Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }

    /// Every subnet from IPv6SubnetMin to IPv6SubnetMax, in order (lazily:
    /// a /48 holds 65536 /64s).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let size = 1u128 << (128 - self.subnet_len);
        let first = u128::from(self.subnet_min);
        let count = (u128::from(self.subnet_max) - first) / size + 1;
        (0..count).map(move |index| {
            Ipv6Net::new(Ipv6Addr::from(first + index * size), self.subnet_len)
                .expect("prefix length checked")
        })
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

fn boolean(object: &Map<String, Value>, name: &str) -> Result<Option<bool>> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => bail!("network config: {name} must be true or false, found {other}"),
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

    fn v4(config: &NetworkConfig) -> &Ipv4Network {
        config.ipv4.as_ref().expect("IPv4 on")
    }

    #[test]
    fn flannel_defaults_for_a_16() {
        let config = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(v4(&config).subnet_len, 24);
        assert_eq!(v4(&config).subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(v4(&config).subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(
            config.backend,
            BackendConfig::Vxlan {
                vni: 1,
                port: 8472,
                mtu: None,
                direct_routing: false
            }
        );
        assert_eq!(v4(&config).subnets().count(), 255);
    }

    #[test]
    fn small_networks_split_in_four() {
        let config = parse(r#"{"Network":"10.9.0.0/26","Backend":{"Type":"host-gw"}}"#);
        assert_eq!(v4(&config).subnet_len, 28);
        assert_eq!(v4(&config).subnet_min, Ipv4Addr::new(10, 9, 0, 16));
        assert_eq!(v4(&config).subnet_max, Ipv4Addr::new(10, 9, 0, 48));
        let subnets: Vec<String> = v4(&config).subnets().map(|net| net.to_string()).collect();
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
        assert_eq!(v4(&config).subnet_len, 26);
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
        assert_eq!(v4(&config).subnets().count(), 11);
        assert!(v4(&config).fits(&"10.1.15.0/24".parse().unwrap()));
        assert!(!v4(&config).fits(&"10.1.21.0/24".parse().unwrap()));
        assert!(!v4(&config).fits(&"10.1.15.0/25".parse().unwrap()));
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

    const DUAL: &str = r#""Network":"10.244.0.0/16","Backend":{"Type":"vxlan"},"EnableIPv6":true"#;

    fn dual(extra: &str) -> String {
        format!("{{{DUAL}{extra}}}")
    }

    fn v6(config: &NetworkConfig) -> &Ipv6Network {
        config.ipv6.as_ref().expect("dual-stack")
    }

    #[test]
    fn ipv6_is_off_unless_enabled() {
        assert_eq!(
            parse(r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#).ipv6,
            None
        );
        assert_eq!(
            parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":false,"EnableIPv4":true,"Backend":{"Type":"vxlan"}}"#).ipv6,
            None
        );
    }

    #[test]
    fn flannel_ipv6_defaults_for_a_48() {
        let config = parse(&dual(r#","IPv6Network":"fd00:12::/48""#));
        let ipv6 = v6(&config);
        assert_eq!(ipv6.network, "fd00:12::/48".parse().unwrap());
        assert_eq!(ipv6.subnet_len, 64);
        assert_eq!(
            ipv6.subnet_min,
            "fd00:12:0:1::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ipv6.subnet_max,
            "fd00:12:0:ffff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(ipv6.subnets().count(), 65535);
        assert_eq!(
            ipv6.subnets().next().unwrap(),
            "fd00:12:0:1::/64".parse().unwrap()
        );
        assert!(ipv6.fits(&"fd00:12:0:9::/64".parse().unwrap()));
        assert!(!ipv6.fits(&"fd00:12::/64".parse().unwrap()));
        assert!(!ipv6.fits(&"fd00:12:0:9::/65".parse().unwrap()));
        // A host address with its prefix names the network, as Go's ParseCIDR.
        assert_eq!(
            v6(&parse(&dual(r#","IPv6Network":"fd00:12::5/48""#))).network,
            "fd00:12::/48".parse().unwrap()
        );
    }

    #[test]
    fn ipv6_subnet_len_defaults_to_64_up_to_a_62_then_prefix_plus_2() {
        for (network, len) in [
            ("fd00::/8", 64),
            ("fd00::/56", 64),
            ("fd00::/62", 64),
            ("fd00::/63", 65),
            ("fd00::/100", 102),
            ("fd00::/124", 126),
        ] {
            let config = parse(&dual(&format!(r#","IPv6Network":"{network}""#)));
            assert_eq!(v6(&config).subnet_len, len, "{network}");
        }
        // A /124 splits in four /126s: the first is skipped, three are handed out.
        let config = parse(&dual(r#","IPv6Network":"fd00::/124""#));
        let subnets: Vec<String> = v6(&config).subnets().map(|net| net.to_string()).collect();
        assert_eq!(subnets, ["fd00::4/126", "fd00::8/126", "fd00::c/126"]);
        let small = error(&dual(r#","IPv6Network":"fd00::/125""#));
        assert!(
            small.contains(
                "IPv6Network fd00::/125 is too small; the smallest useful network is a /124"
            ),
            "{small}"
        );
    }

    #[test]
    fn ipv6_keys_match_case_insensitively() {
        let config = parse(
            r#"{"network":"10.1.0.0/16","backend":{"type":"host-gw"},"enableipv6":true,"ipv6network":"fd00:1::/48","IPV6SUBNETLEN":56,"ipv6subnetmin":"fd00:1:0:200::","Ipv6SubnetMax":"fd00:1:0:300::"}"#,
        );
        let ipv6 = v6(&config);
        assert_eq!(ipv6.subnet_len, 56);
        assert_eq!(
            ipv6.subnet_min,
            "fd00:1:0:200::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ipv6.subnet_max,
            "fd00:1:0:300::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(ipv6.subnets().count(), 2);
    }

    #[test]
    fn invalid_ipv6_configs_name_the_field_and_rule() {
        let cases = [
            ("", "EnableIPv6 is true but IPv6Network is missing"),
            (
                r#","IPv6Network":"10.0.0.0/8""#,
                "IPv6Network is not an IPv6 CIDR",
            ),
            (
                r#","IPv6Network":"fd00::""#,
                "IPv6Network is not an IPv6 CIDR",
            ),
            (
                r#","IPv6Network":"::ffff:10.0.0.0/104""#,
                "IPv6Network ::ffff:10.0.0.0/104 overlaps ::ffff:0:0/96, whose addresses flannel writes as IPv4 ones",
            ),
            (
                r#","IPv6Network":"::a00:0/104""#,
                "IPv6Network ::a00:0/104 overlaps ::/96",
            ),
            (
                r#","IPv6Network":"::/0""#,
                "IPv6Network ::/0 overlaps ::ffff:0:0/96",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetLen":127"#,
                "IPv6SubnetLen 127 is invalid: it must be at most 126",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetLen":49"#,
                "IPv6SubnetLen 49 is invalid: it must be at least IPv6Network's prefix + 2 (50)",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetLen":300"#,
                "IPv6SubnetLen 300 is not a prefix length",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetLen":"64""#,
                "IPv6SubnetLen must be a non-negative integer",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:1::""#,
                "IPv6SubnetMin fd00:1:: is not inside IPv6Network fd00::/48",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetMax":"fd01::""#,
                "IPv6SubnetMax fd01:: is not inside IPv6Network fd00::/48",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:1::1""#,
                "IPv6SubnetMin fd00:0:0:1::1 is not on an IPv6SubnetLen (/64) boundary",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:1:8000::""#,
                "IPv6SubnetMax fd00:0:0:1:8000:: is not on an IPv6SubnetLen (/64) boundary",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetMin":"10.0.0.1""#,
                "IPv6SubnetMin \"10.0.0.1\" is not an IPv6 address",
            ),
            (
                r#","IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:8::""#,
                "IPv6SubnetMin fd00:0:0:9:: is above IPv6SubnetMax fd00:0:0:8::",
            ),
        ];
        for (extra, expected) in cases {
            let json = dual(extra);
            let message = error(&json);
            assert!(message.contains(expected), "{json}: {message}");
        }
        let not_bool =
            error(r#"{"Network":"10.1.0.0/16","EnableIPv6":"yes","Backend":{"Type":"vxlan"}}"#);
        assert!(
            not_bool.contains("EnableIPv6 must be true or false"),
            "{not_bool}"
        );
    }

    #[test]
    fn ipv6_only_has_no_ipv4_network() {
        // flanneld's IPv6-only config: Network is not needed, and not used.
        for json in [
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.1.0.0/16","enableipv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"host-gw"}}"#,
        ] {
            let config = parse(json);
            assert_eq!(config.ipv4, None, "{json}");
            assert_eq!(
                config.ipv6.as_ref().map(|ipv6| ipv6.network.to_string()),
                Some("fd00::/48".to_owned())
            );
        }
        let neither =
            error(r#"{"Network":"10.1.0.0/16","EnableIPv4":false,"Backend":{"Type":"vxlan"}}"#);
        assert!(
            neither.contains("EnableIPv4 and EnableIPv6 are both false"),
            "{neither}"
        );
    }
}
