//! flannel's `subnet.env`: what the CNI flannel plugin reads to wire pods.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! `FLANNEL_SUBNET` is the node's pod subnet written with its first host
//! address (the cni0 gateway), exactly as flanneld writes it. A dual-stack
//! node adds `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` (written the
//! same way) after `FLANNEL_SUBNET`, in flanneld's order; an IPv6-only
//! node writes only those two (flanneld writes the IPv4 pair with
//! `EnableIPv4` only).

use std::{
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::{Ipv4Net, Ipv6Net};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 pod network and this node's pod subnet, unless the network
    /// is IPv6-only; both or neither.
    pub ipv4: Option<Ipv4SubnetEnv>,
    /// The IPv6 pod network and this node's IPv6 pod subnet, in a network
    /// with IPv6; both or neither.
    pub ipv6: Option<Ipv6SubnetEnv>,
    pub mtu: u32,
    pub ipmasq: bool,
}

/// `FLANNEL_NETWORK` and `FLANNEL_SUBNET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4SubnetEnv {
    /// The whole cluster pod network.
    pub network: Ipv4Net,
    /// This node's pod subnet, addressed by its gateway (first host address).
    pub subnet: Ipv4Net,
}

/// `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6SubnetEnv {
    pub network: Ipv6Net,
    /// This node's IPv6 pod subnet, addressed by its first host address.
    pub subnet: Ipv6Net,
}

/// The pods' gateway (cni0) address in this node's IPv4 pod `subnet`: its
/// first host, as flanneld addresses it in `FLANNEL_SUBNET`. The one rule
/// for subnet.env, for what is never a pod (`ENDPOINTS`) and for what no
/// pod's ARP may claim (`CONFIG`).
pub fn gateway_of(subnet: Ipv4Net) -> Option<std::net::Ipv4Addr> {
    subnet.hosts().next()
}

impl SubnetEnv {
    /// The gateway (cni0) address of this node's IPv4 pod subnet.
    pub fn gateway(&self) -> Option<std::net::Ipv4Addr> {
        self.ipv4.map(|ipv4| ipv4.subnet.addr())
    }
}

impl fmt::Display for SubnetEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ipv4) = &self.ipv4 {
            writeln!(f, "FLANNEL_NETWORK={}", ipv4.network)?;
            writeln!(f, "FLANNEL_SUBNET={}", ipv4.subnet)?;
        }
        if let Some(ipv6) = &self.ipv6 {
            writeln!(f, "FLANNEL_IPV6_NETWORK={}", ipv6.network)?;
            writeln!(f, "FLANNEL_IPV6_SUBNET={}", ipv6.subnet)?;
        }
        writeln!(f, "FLANNEL_MTU={}", self.mtu)?;
        writeln!(f, "FLANNEL_IPMASQ={}", self.ipmasq)
    }
}

/// Parses the text of a subnet.env; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<SubnetEnv> {
    let mut network = None;
    let mut subnet = None;
    let mut ipv6_network = None;
    let mut ipv6_subnet = None;
    let mut mtu = None;
    let mut ipmasq = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{origin}:{}", index + 1);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("{}: expected KEY=VALUE, found {line:?}", at()))?;
        match key {
            "FLANNEL_NETWORK" => network = Some(parse_cidr(key, value).with_context(at)?),
            "FLANNEL_SUBNET" => subnet = Some(parse_cidr(key, value).with_context(at)?),
            "FLANNEL_IPV6_NETWORK" => {
                ipv6_network = Some(parse_cidr_v6(key, value).with_context(at)?)
            }
            "FLANNEL_IPV6_SUBNET" => {
                ipv6_subnet = Some(parse_cidr_v6(key, value).with_context(at)?)
            }
            "FLANNEL_MTU" => {
                let parsed: u32 = value
                    .parse()
                    .ok()
                    .filter(|mtu| (68..=65535).contains(mtu))
                    .ok_or_else(|| {
                        anyhow!("{}: FLANNEL_MTU={value:?} is not an MTU (68..65535)", at())
                    })?;
                mtu = Some(parsed);
            }
            "FLANNEL_IPMASQ" => {
                let parsed = match value {
                    "true" => true,
                    "false" => false,
                    _ => bail!("{}: FLANNEL_IPMASQ={value:?} is not true or false", at()),
                };
                ipmasq = Some(parsed);
            }
            // Unknown keys must not stop a node.
            _ => {}
        }
    }
    let missing = |key: &str| anyhow!("{origin}: {key} is missing");
    let ipv4 = match (network, subnet) {
        (None, None) => None,
        (Some(network), Some(subnet)) => {
            if !network.contains(&subnet) {
                bail!("{origin}: FLANNEL_SUBNET={subnet} is not inside FLANNEL_NETWORK={network}");
            }
            Some(Ipv4SubnetEnv { network, subnet })
        }
        (Some(_), None) => return Err(missing("FLANNEL_SUBNET")),
        (None, Some(_)) => return Err(missing("FLANNEL_NETWORK")),
    };
    let ipv6 = match (ipv6_network, ipv6_subnet) {
        (None, None) => None,
        (Some(network), Some(subnet)) => {
            if !network.contains(&subnet) {
                bail!(
                    "{origin}: FLANNEL_IPV6_SUBNET={subnet} is not inside FLANNEL_IPV6_NETWORK={network}"
                );
            }
            Some(Ipv6SubnetEnv { network, subnet })
        }
        (Some(_), None) => return Err(missing("FLANNEL_IPV6_SUBNET")),
        (None, Some(_)) => return Err(missing("FLANNEL_IPV6_NETWORK")),
    };
    if ipv4.is_none() && ipv6.is_none() {
        return Err(missing(
            "FLANNEL_NETWORK (or, IPv6-only, FLANNEL_IPV6_NETWORK)",
        ));
    }
    Ok(SubnetEnv {
        ipv4,
        ipv6,
        mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
        ipmasq: ipmasq.ok_or_else(|| missing("FLANNEL_IPMASQ"))?,
    })
}

fn parse_cidr(key: &str, value: &str) -> Result<Ipv4Net> {
    value
        .parse()
        .map_err(|_| anyhow!("{key}={value:?} is not an IPv4 CIDR like 10.244.0.0/16"))
}

fn parse_cidr_v6(key: &str, value: &str) -> Result<Ipv6Net> {
    value
        .parse()
        .map_err(|_| anyhow!("{key}={value:?} is not an IPv6 CIDR like fd00:10:244::/56"))
}

/// Reads `path`; `Ok(None)` when there is no such file.
pub fn read_if_present(path: &Path) -> Result<Option<SubnetEnv>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &path.display().to_string()).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `env` to `path` atomically: readers (the CNI plugin) see the old
/// file or the new one, never half of one.
pub fn write_atomic(path: &Path, env: &SubnetEnv) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut temp = PathBuf::from(path);
    temp.as_mut_os_string()
        .push(format!(".tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(env.to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|error| {
        let _ = std::fs::remove_file(&temp);
        anyhow!("cannot write {}: {error}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn parses_what_flanneld_writes() {
        let env = parse(GOOD, "subnet.env").unwrap();
        let ipv4 = env.ipv4.unwrap();
        assert_eq!(ipv4.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(ipv4.subnet.to_string(), "10.244.3.1/24");
        assert_eq!(env.gateway().unwrap().to_string(), "10.244.3.1");
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
    }

    #[test]
    fn round_trips_through_display() {
        let env = parse(GOOD, "subnet.env").unwrap();
        assert_eq!(env.to_string(), GOOD);
    }

    /// flanneld v0.20.2's file on a dual-stack node, byte for byte.
    const DUAL_STACK: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn ignores_unknown_keys_comments_and_blank_lines() {
        let text = format!("# written by flanneld\n\n{GOOD}FLANNEL_FUTURE=1\n");
        assert_eq!(parse(&text, "x").unwrap(), parse(GOOD, "x").unwrap());
    }

    #[test]
    fn dual_stack_round_trips_in_flanneld_order() {
        let env = parse(DUAL_STACK, "subnet.env").unwrap();
        let ipv6 = env.ipv6.unwrap();
        assert_eq!(ipv6.network.to_string(), "fd00:10:244::/56");
        assert_eq!(ipv6.subnet.to_string(), "fd00:10:244:3::1/64");
        assert_eq!(env.to_string(), DUAL_STACK);
        assert_eq!(parse(GOOD, "x").unwrap().ipv6, None);
    }

    /// What flanneld v0.20.2 writes on an IPv6-only node (`EnableIPv4`
    /// false): no IPv4 pair.
    const IPV6_ONLY: &str = "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn ipv6_only_round_trips_without_the_ipv4_pair() {
        let env = parse(IPV6_ONLY, "subnet.env").unwrap();
        assert_eq!(env.ipv4, None);
        assert_eq!(env.gateway(), None);
        assert_eq!(env.ipv6.unwrap().subnet.to_string(), "fd00:10:244:3::1/64");
        assert_eq!(env.to_string(), IPV6_ONLY);
        // Neither pair: nothing to wire pods with.
        let neither = IPV6_ONLY.lines().skip(2).collect::<Vec<_>>().join("\n");
        assert!(
            error_of(&neither)
                .ends_with("FLANNEL_NETWORK (or, IPv6-only, FLANNEL_IPV6_NETWORK) is missing"),
            "{}",
            error_of(&neither)
        );
    }

    #[test]
    fn half_an_ipv4_pair_is_an_error() {
        let no_subnet = GOOD.replace("FLANNEL_SUBNET=10.244.3.1/24\n", "");
        assert!(error_of(&no_subnet).ends_with("FLANNEL_SUBNET is missing"));
        let no_network = GOOD.replace("FLANNEL_NETWORK=10.244.0.0/16\n", "");
        assert!(error_of(&no_network).ends_with("FLANNEL_NETWORK is missing"));
    }

    #[test]
    fn half_an_ipv6_pair_or_a_foreign_ipv6_subnet_is_an_error() {
        let no_subnet = DUAL_STACK.replace("FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n", "");
        assert!(error_of(&no_subnet).ends_with("FLANNEL_IPV6_SUBNET is missing"));
        let no_network = DUAL_STACK.replace("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n", "");
        assert!(error_of(&no_network).ends_with("FLANNEL_IPV6_NETWORK is missing"));
        let outside = DUAL_STACK.replace("fd00:10:244:3::1/64", "fd00:99::1/64");
        assert!(error_of(&outside).contains("is not inside FLANNEL_IPV6_NETWORK"));
        let not_v6 = DUAL_STACK.replace("fd00:10:244:3::1/64", "10.1.1.1/24");
        assert!(
            error_of(&not_v6)
                .contains(":4: FLANNEL_IPV6_SUBNET=\"10.1.1.1/24\" is not an IPv6 CIDR"),
            "{}",
            error_of(&not_v6)
        );
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", parse(text, "/run/flannel/subnet.env").unwrap_err())
    }

    #[test]
    fn bad_values_name_the_file_line_and_key() {
        let bad_subnet = GOOD.replace("10.244.3.1/24", "10.244.3.300/24");
        assert_eq!(
            error_of(&bad_subnet),
            "/run/flannel/subnet.env:2: FLANNEL_SUBNET=\"10.244.3.300/24\" is not an IPv4 CIDR like 10.244.0.0/16"
        );
        let bad_mtu = GOOD.replace("1450", "9x");
        assert!(
            error_of(&bad_mtu).contains(":3: FLANNEL_MTU=\"9x\""),
            "{}",
            error_of(&bad_mtu)
        );
        let bad_masq = GOOD.replace("true", "yes");
        assert!(error_of(&bad_masq).contains(":4: FLANNEL_IPMASQ=\"yes\""));
        assert!(error_of("garbage\n").contains(":1: expected KEY=VALUE, found \"garbage\""));
    }

    #[test]
    fn missing_keys_and_foreign_subnets_are_errors() {
        let no_mtu = GOOD.replace("FLANNEL_MTU=1450\n", "");
        assert!(error_of(&no_mtu).ends_with("FLANNEL_MTU is missing"));
        let outside = GOOD.replace("10.244.3.1/24", "10.9.3.1/24");
        assert!(error_of(&outside).contains("is not inside FLANNEL_NETWORK"));
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("weft-subnet-env-{}", std::process::id()));
        let path = dir.join("subnet.env");
        let env = parse(GOOD, "x").unwrap();
        write_atomic(&path, &env).unwrap();
        write_atomic(&path, &env).unwrap();
        assert_eq!(read_if_present(&path).unwrap(), Some(env));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_if_present(&path).unwrap(), None);
    }
}
