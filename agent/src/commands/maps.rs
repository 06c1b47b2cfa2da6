//! `weft maps`: what a running (or stopped) agent left in its pinned maps,
//! for people (tables) and scripts (--json).

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use serde::Serialize;
use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_TC_BRIDGE, CONFIG_TC_UPLINK,
    CONFIG_TC_VTEP, CONFIG_VERDICT_PROBES, ENDPOINT_TC_RECEIVES, ENDPOINT_TC_SENDS, Endpoint,
    FlowVerdict, NodeConfig, PeerMode,
};

use super::placement::Placement;
use crate::{
    cli::{MapName, MapsArgs},
    dataplane::maps::FastPathMaps,
    lease::MacAddr,
    stats,
};

/// A PEERS entry (or, with `A` = [`Ipv6Addr`], a PEERS6 one).
#[derive(Serialize)]
pub struct PeerRow<A = Ipv4Addr> {
    pub subnet: String,
    pub mode: &'static str,
    pub public_ip: A,
    pub vni: u32,
    pub vtep_mac: String,
    /// None while the agent has not resolved the underlay neighbour.
    pub nexthop_mac: Option<String>,
}

/// A VTEPS entry: an accepted outer source, and the inner sources its
/// frames may carry.
#[derive(Serialize)]
pub struct VtepRow {
    pub source: Ipv4Addr,
    /// The one subnet of the peer with this PublicIP; `None` when several
    /// subnets name it (then `PEERS` decides, `subnets` says how many).
    pub subnet: Option<String>,
    pub subnets: u8,
}

/// An ENDPOINTS entry (or, with `A` = [`Ipv6Addr`], an ENDPOINTS6 one).
#[derive(Serialize)]
pub struct EndpointRow<A = Ipv4Addr> {
    pub ip: A,
    pub ifindex: u32,
    /// The interface's name in the node's namespace; `None` when run
    /// elsewhere (an ifindex names another interface there, or none).
    pub interface: Option<String>,
    pub mac: String,
    /// tc acts on what the pod sends / receives (its veth's ingress / root
    /// qdisc or egress): that traffic takes the kernel path.
    pub tc_sends: bool,
    pub tc_receives: bool,
}

#[derive(Serialize)]
pub struct ConfigRow {
    pub node_ip: Ipv4Addr,
    pub uplink_ifindex: u32,
    pub uplink_mac: String,
    pub uplink_mtu: u32,
    pub vni: u32,
    pub vxlan_port: u16,
    pub vtep_mac: String,
    pub gateway_mac: String,
    /// cni0's address: no pod's ARP may claim it.
    pub gateway_ip: Ipv4Addr,
    pub strict_vteps: bool,
    pub bulk_tcp_via_gro: bool,
    /// tc acts on the uplink's ingress, flannel.<VNI> or the bridge: the
    /// traffic through them takes the kernel path.
    pub tc_uplink: bool,
    pub tc_vtep: bool,
    pub tc_bridge: bool,
    /// The mark bit weft's nftables rule sets on what netfilter passes unchanged.
    pub accept_mark: String,
    /// Bumped on every nftables ruleset change; older verdicts are void.
    pub ruleset_generation: u32,
    pub verdict_ttl_ms: u64,
    /// `--verdict-probes`: live TCP verdicts renewed by probes.
    pub verdict_probes: bool,
    /// Where the node runs VXLAN over IPv6: its PublicIPv6 (the IPv6
    /// VXLAN it decapsulates is addressed there), `flannel-v6.<VNI>`'s MAC
    /// and ifindex (what pods send to VXLAN peers over IPv6 is handed to
    /// it). None elsewhere.
    pub node_ip6: Option<Ipv6Addr>,
    pub vtep6_mac: Option<String>,
    pub vtep6_ifindex: Option<u32>,
}

fn mac(bytes: [u8; 6]) -> String {
    MacAddr(bytes).to_string()
}

fn mode_name(mode: u8) -> &'static str {
    match mode {
        m if m == PeerMode::Vxlan as u8 => "vxlan",
        m if m == PeerMode::HostGw as u8 => "host-gw",
        _ => "unknown",
    }
}

pub fn peers(maps: &FastPathMaps) -> Result<Vec<PeerRow>> {
    let mut rows: Vec<PeerRow> = maps
        .peers()?
        .into_iter()
        .map(|(key, peer)| PeerRow {
            subnet: format!("{}/{}", Ipv4Addr::from(key.data()), key.prefix_len()),
            mode: mode_name(peer.mode),
            public_ip: Ipv4Addr::from(peer.public_ip),
            vni: peer.vni,
            vtep_mac: mac(peer.vtep_mac),
            nexthop_mac: (peer.nexthop_mac != [0; 6]).then(|| mac(peer.nexthop_mac)),
        })
        .collect();
    rows.sort_by(|a, b| a.subnet.cmp(&b.subnet));
    Ok(rows)
}

pub fn vtep_rows(maps: &FastPathMaps) -> Result<Vec<VtepRow>> {
    let mut rows: Vec<VtepRow> = maps
        .vteps()?
        .into_iter()
        .map(|(key, vtep)| VtepRow {
            source: Ipv4Addr::from(key.addr),
            subnet: (vtep.subnets == 1)
                .then(|| format!("{}/{}", Ipv4Addr::from(vtep.subnet), vtep.prefix_len)),
            subnets: vtep.subnets,
        })
        .collect();
    rows.sort_by_key(|row| row.source);
    Ok(rows)
}

pub fn peer6_rows(maps: &FastPathMaps) -> Result<Vec<PeerRow<Ipv6Addr>>> {
    let mut rows: Vec<PeerRow<Ipv6Addr>> = maps
        .peers6()?
        .into_iter()
        .map(|(key, peer)| PeerRow {
            subnet: format!("{}/{}", Ipv6Addr::from(key.data()), key.prefix_len()),
            mode: mode_name(peer.mode),
            public_ip: Ipv6Addr::from(peer.public_ip),
            vni: peer.vni,
            vtep_mac: mac(peer.vtep_mac),
            nexthop_mac: (peer.nexthop_mac != [0; 6]).then(|| mac(peer.nexthop_mac)),
        })
        .collect();
    rows.sort_by(|a, b| a.subnet.cmp(&b.subnet));
    Ok(rows)
}

fn endpoint_row<A>(ip: A, endpoint: Endpoint, placement: Placement) -> EndpointRow<A> {
    EndpointRow {
        ip,
        ifindex: endpoint.ifindex,
        interface: placement
            .names_interfaces()
            .then(|| nix::net::if_::if_indextoname(endpoint.ifindex).ok())
            .flatten()
            .map(|name| name.to_string_lossy().into_owned()),
        mac: mac(endpoint.mac),
        tc_sends: endpoint.flags & ENDPOINT_TC_SENDS != 0,
        tc_receives: endpoint.flags & ENDPOINT_TC_RECEIVES != 0,
    }
}

pub fn endpoint_rows(maps: &FastPathMaps, placement: Placement) -> Result<Vec<EndpointRow>> {
    let mut rows: Vec<EndpointRow> = maps
        .endpoints()?
        .into_iter()
        .map(|(key, endpoint)| endpoint_row(Ipv4Addr::from(key.addr), endpoint, placement))
        .collect();
    rows.sort_by_key(|row| row.ip);
    Ok(rows)
}

pub fn endpoint6_rows(
    maps: &FastPathMaps,
    placement: Placement,
) -> Result<Vec<EndpointRow<Ipv6Addr>>> {
    let mut rows: Vec<EndpointRow<Ipv6Addr>> = maps
        .endpoints6()?
        .into_iter()
        .map(|(key, endpoint)| endpoint_row(Ipv6Addr::from(key.addr), endpoint, placement))
        .collect();
    rows.sort_by_key(|row| row.ip);
    Ok(rows)
}

/// A flow direction netfilter passed unchanged, as FLOWS (or FLOWS6)
/// holds it.
#[derive(Serialize)]
pub struct FlowRow {
    pub protocol: String,
    pub source: String,
    pub destination: String,
    /// Since netfilter last passed a packet of it.
    pub age_ms: u64,
    /// Whether the fast path takes it now: same ruleset, younger than the
    /// TTL, and confirmed.
    pub current: bool,
    /// `confirmed`, or `pending` while the agent has not yet made a TCP
    /// flow's conntrack entry liberal.
    pub state: &'static str,
}

/// FLOWS' verdicts.
pub fn flow_rows(dir: &std::path::Path, config: &NodeConfig) -> Result<Vec<FlowRow>> {
    use weft_common::{FlowKey, map_names};
    verdict_rows(dir, map_names::FLOWS, config, |key: &FlowKey| {
        (
            protocol_name(key.proto, "icmp", 1, key.icmp_type, key.icmp_code),
            format!(
                "{}:{}",
                Ipv4Addr::from(key.saddr),
                u16::from_be_bytes(key.sport)
            ),
            format!(
                "{}:{}",
                Ipv4Addr::from(key.daddr),
                u16::from_be_bytes(key.dport)
            ),
        )
    })
}

/// FLOWS6' verdicts, addresses as `[address]:port`.
pub fn flow6_rows(dir: &std::path::Path, config: &NodeConfig) -> Result<Vec<FlowRow>> {
    use weft_common::{FlowKey6, map_names};
    verdict_rows(dir, map_names::FLOWS6, config, |key: &FlowKey6| {
        (
            protocol_name(key.proto, "icmpv6", 58, key.icmp_type, key.icmp_code),
            format!(
                "[{}]:{}",
                Ipv6Addr::from(key.saddr),
                u16::from_be_bytes(key.sport)
            ),
            format!(
                "[{}]:{}",
                Ipv6Addr::from(key.daddr),
                u16::from_be_bytes(key.dport)
            ),
        )
    })
}

/// A flow key's protocol as `weft maps flows` names it: ICMP (`icmp`, 1;
/// `icmpv6`, 58) with its type and code.
fn protocol_name(proto: u8, icmp: &str, icmp_proto: u8, icmp_type: u8, icmp_code: u8) -> String {
    match proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        p if p == icmp_proto => format!("{icmp}/{icmp_type}/{icmp_code}"),
        other => other.to_string(),
    }
}

/// The verdicts of the verdict map `name`, each key described by
/// `describe` as (protocol, source, destination).
fn verdict_rows<K: aya::Pod>(
    dir: &std::path::Path,
    name: &str,
    config: &NodeConfig,
    describe: impl Fn(&K) -> (String, String, String),
) -> Result<Vec<FlowRow>> {
    use aya::maps::{HashMap, Map};
    use weft_common::FLOW_CONFIRMED;
    let path = dir.join(name);
    let data = crate::bpffs::open_pinned_map(dir, name)?;
    let flows: HashMap<_, K, FlowVerdict> = HashMap::try_from(Map::LruHashMap(data))
        .map_err(|error| anyhow::anyhow!("{} is not weft's: {error}", path.display()))?;
    let now_ns = crate::verdict_clock::now_ns()?;
    let mut rows = Vec::new();
    for entry in flows.iter() {
        let (key, verdict) = entry.with_context(|| format!("cannot read {name}"))?;
        let age_ns = now_ns.saturating_sub(verdict.seen_ns);
        let (protocol, source, destination) = describe(&key);
        rows.push(FlowRow {
            protocol,
            source,
            destination,
            age_ms: age_ns / 1_000_000,
            current: verdict.is_current(config, || now_ns).is_ok(),
            state: if verdict.state == FLOW_CONFIRMED {
                "confirmed"
            } else {
                "pending"
            },
        });
    }
    rows.sort_by(|a, b| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)));
    Ok(rows)
}

pub fn config_row(maps: &FastPathMaps) -> Result<ConfigRow> {
    let config = maps.config()?;
    Ok(ConfigRow {
        node_ip: Ipv4Addr::from(config.node_ip),
        uplink_ifindex: config.uplink_ifindex,
        uplink_mac: mac(config.uplink_mac),
        uplink_mtu: config.uplink_mtu,
        vni: config.vni,
        vxlan_port: u16::from_be(config.vxlan_port_be),
        vtep_mac: mac(config.vtep_mac),
        gateway_mac: mac(config.gateway_mac),
        gateway_ip: Ipv4Addr::from(config.gateway_ip),
        strict_vteps: config.flags & CONFIG_STRICT_VTEPS != 0,
        bulk_tcp_via_gro: config.flags & CONFIG_BULK_TCP_VIA_GRO != 0,
        tc_uplink: config.flags & CONFIG_TC_UPLINK != 0,
        tc_vtep: config.flags & CONFIG_TC_VTEP != 0,
        tc_bridge: config.flags & CONFIG_TC_BRIDGE != 0,
        accept_mark: format!("{:#x}", config.accept_mark),
        ruleset_generation: config.ruleset_generation,
        verdict_ttl_ms: crate::verdict_clock::configured_ttl_ms(config.verdict_ttl_ns),
        verdict_probes: config.flags & CONFIG_VERDICT_PROBES != 0,
        node_ip6: (config.node_ip6 != [0; 16]).then(|| Ipv6Addr::from(config.node_ip6)),
        vtep6_mac: (config.vtep6_mac != [0; 6]).then(|| mac(config.vtep6_mac)),
        vtep6_ifindex: (config.vtep6_ifindex != 0).then_some(config.vtep6_ifindex),
    })
}

pub fn maps(args: &MapsArgs) -> Result<()> {
    let dir = &args.bpf_pin_dir;
    let print = |value: serde_json::Value, table: String| {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("rows serialize")
            );
        } else {
            print!("{table}");
        }
    };
    match args.map {
        MapName::Stats {
            watch: Some(interval),
            count,
        } => {
            return super::stats_watch::watch(dir, interval, count);
        }
        MapName::Stats { .. } => {
            let stats = stats::read_pinned(dir)?;
            let table = stats::render_table(&stats) + "\n" + &stats::render_by_hook(&stats);
            print(serde_json::to_value(&stats)?, table);
        }
        MapName::Peers => {
            let rows = peers(&FastPathMaps::open_pinned(dir)?)?;
            print(serde_json::to_value(&rows)?, peer_table(&rows, 20, 16));
        }
        MapName::Peers6 => {
            let rows = peer6_rows(&FastPathMaps::open_pinned(dir)?)?;
            print(serde_json::to_value(&rows)?, peer_table(&rows, 30, 26));
        }
        MapName::Endpoints | MapName::Endpoints6 => {
            let maps = FastPathMaps::open_pinned(dir)?;
            let placement = Placement::find(dir, maps.config()?.uplink_ifindex)?;
            if let Some(why) = placement.why_no_interfaces() {
                eprintln!("weft: {why}");
            }
            if matches!(args.map, MapName::Endpoints) {
                let rows = endpoint_rows(&maps, placement)?;
                print(serde_json::to_value(&rows)?, endpoint_table(&rows, 16));
            } else {
                let rows = endpoint6_rows(&maps, placement)?;
                print(serde_json::to_value(&rows)?, endpoint_table(&rows, 26));
            }
        }
        MapName::Vteps => {
            let rows = vtep_rows(&FastPathMaps::open_pinned(dir)?)?;
            let table = std::iter::once(format!(
                "{:<21} {}\n",
                "ACCEPTED VXLAN SOURCE", "INNER SOURCES"
            ))
            .chain(rows.iter().map(|row| {
                let inner = match &row.subnet {
                    Some(subnet) => subnet.clone(),
                    None => format!("{} subnets (as PEERS says)", row.subnets),
                };
                format!("{:<21} {inner}\n", row.source)
            }))
            .collect();
            print(serde_json::to_value(&rows)?, table);
        }
        MapName::Flows => {
            let rows = flow_rows(dir, &FastPathMaps::open_pinned(dir)?.config()?)?;
            print(serde_json::to_value(&rows)?, flow_table(&rows, 21));
        }
        MapName::Flows6 => {
            let rows = flow6_rows(dir, &FastPathMaps::open_pinned(dir)?.config()?)?;
            print(serde_json::to_value(&rows)?, flow_table(&rows, 47));
        }
        MapName::Config => {
            let row = config_row(&FastPathMaps::open_pinned(dir)?)?;
            let value = serde_json::to_value(&row)?;
            let table = value
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, value)| {
                    let shown = if value.is_null() {
                        "-".to_owned()
                    } else {
                        value.to_string().trim_matches('"').to_owned()
                    };
                    format!("{key:<16} {shown}\n")
                })
                .collect();
            print(value, table);
        }
    }
    Ok(())
}

/// `weft maps peers` (`peers6`): `subnet` and `ip` are the widths of the
/// subnet and public IP columns.
fn peer_table<A: std::fmt::Display>(rows: &[PeerRow<A>], subnet: usize, ip: usize) -> String {
    let mut table = format!(
        "{:<subnet$} {:<8} {:<ip$} {:>4} {:<18} {:<18}\n",
        "SUBNET", "MODE", "PUBLIC IP", "VNI", "VTEP MAC", "NEXT-HOP MAC"
    );
    for row in rows {
        let nexthop = row.nexthop_mac.as_deref().unwrap_or("(unresolved)");
        table += &format!(
            "{:<subnet$} {:<8} {:<ip$} {:>4} {:<18} {:<18}\n",
            row.subnet,
            row.mode,
            row.public_ip.to_string(),
            row.vni,
            row.vtep_mac,
            nexthop
        );
    }
    table
}

/// `weft maps endpoints` (`endpoints6`): `ip` is the width of the pod IP
/// column.
fn endpoint_table<A: std::fmt::Display>(rows: &[EndpointRow<A>], ip: usize) -> String {
    let mut table = format!(
        "{:<ip$} {:>8} {:<16} {:<18} {}\n",
        "POD IP", "IFINDEX", "INTERFACE", "MAC", "TC (KERNEL PATH)"
    );
    for row in rows {
        let tc = match (row.tc_sends, row.tc_receives) {
            (false, false) => "-",
            (true, false) => "sends",
            (false, true) => "receives",
            (true, true) => "sends,receives",
        };
        table += &format!(
            "{:<ip$} {:>8} {:<16} {:<18} {tc}\n",
            row.ip.to_string(),
            row.ifindex,
            row.interface.as_deref().unwrap_or("-"),
            row.mac
        );
    }
    table
}

/// `weft maps flows` (`flows6`): `end` is the width of the source and
/// destination columns.
fn flow_table(rows: &[FlowRow], end: usize) -> String {
    std::iter::once(format!(
        "{:<8} {:<end$} {:<end$} {:>8}  {:<9}  CURRENT\n",
        "PROTO", "SOURCE", "DESTINATION", "AGE MS", "STATE"
    ))
    .chain(rows.iter().map(|row| {
        format!(
            "{:<8} {:<end$} {:<end$} {:>8}  {:<9}  {}\n",
            row.protocol, row.source, row.destination, row.age_ms, row.state, row.current
        )
    }))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_rows_print_ipv6_addresses_in_wider_columns() {
        let peers = [PeerRow {
            subnet: "fd00:10:244:2::/64".into(),
            mode: "host-gw",
            public_ip: "fd00:77::2".parse::<Ipv6Addr>().unwrap(),
            vni: 0,
            vtep_mac: mac([0; 6]),
            nexthop_mac: None,
        }];
        let table = peer_table(&peers, 30, 26);
        let row = table.lines().nth(1).unwrap();
        assert!(
            row.starts_with("fd00:10:244:2::/64             host-gw  fd00:77::2                    0 00:00:00:00:00:00  (unresolved)"),
            "{row:?}"
        );
        let flows = [FlowRow {
            protocol: protocol_name(58, "icmpv6", 58, 128, 0),
            source: "[fd00:10:244:1::2]:7".into(),
            destination: "[fd00:10:244:2::3]:0".into(),
            age_ms: 5,
            current: true,
            state: "confirmed",
        }];
        let table = flow_table(&flows, 47);
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("icmpv6/128/0 [fd00:10:244:1::2]:7"),
            "{table}"
        );
        assert_eq!(
            protocol_name(1, "icmpv6", 58, 8, 0),
            "1",
            "ICMPv4 in an IPv6 key is no ICMP"
        );
        assert_eq!(protocol_name(1, "icmp", 1, 8, 0), "icmp/8/0");
    }
}
