//! `weft maps`: what a running (or stopped) agent left in its pinned maps,
//! for people (tables) and scripts (--json).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use serde::Serialize;
use weft_common::{
    CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_TC_BRIDGE, CONFIG_TC_UPLINK,
    CONFIG_TC_VTEP, CONFIG_VERDICT_PROBES, ENDPOINT_TC_RECEIVES, ENDPOINT_TC_SENDS, PeerMode,
};

use super::placement::Placement;
use crate::{
    cli::{MapName, MapsArgs},
    dataplane::maps::FastPathMaps,
    lease::MacAddr,
    stats,
};

#[derive(Serialize)]
pub struct PeerRow {
    pub subnet: String,
    pub mode: &'static str,
    pub public_ip: Ipv4Addr,
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

#[derive(Serialize)]
pub struct EndpointRow {
    pub ip: Ipv4Addr,
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

pub fn endpoint_rows(maps: &FastPathMaps, placement: Placement) -> Result<Vec<EndpointRow>> {
    let mut rows: Vec<EndpointRow> = maps
        .endpoints()?
        .into_iter()
        .map(|(key, endpoint)| EndpointRow {
            ip: Ipv4Addr::from(key.addr),
            ifindex: endpoint.ifindex,
            interface: placement
                .names_interfaces()
                .then(|| nix::net::if_::if_indextoname(endpoint.ifindex).ok())
                .flatten()
                .map(|name| name.to_string_lossy().into_owned()),
            mac: mac(endpoint.mac),
            tc_sends: endpoint.flags & ENDPOINT_TC_SENDS != 0,
            tc_receives: endpoint.flags & ENDPOINT_TC_RECEIVES != 0,
        })
        .collect();
    rows.sort_by_key(|row| row.ip);
    Ok(rows)
}

/// A flow direction netfilter passed unchanged, as FLOWS holds it.
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

pub fn flow_rows(dir: &std::path::Path, config: &weft_common::NodeConfig) -> Result<Vec<FlowRow>> {
    use aya::maps::{HashMap, Map};
    use weft_common::{FLOW_CONFIRMED, FlowKey, FlowVerdict, map_names};
    let path = dir.join(map_names::FLOWS);
    let data = crate::bpffs::open_pinned_map(dir, map_names::FLOWS)?;
    let flows: HashMap<_, FlowKey, FlowVerdict> = HashMap::try_from(Map::LruHashMap(data))
        .map_err(|error| anyhow::anyhow!("{} is not weft's: {error}", path.display()))?;
    let now_ns = crate::verdict_clock::now_ns()?;
    let mut rows = Vec::new();
    for entry in flows.iter() {
        let (key, verdict) = entry.context("cannot read FLOWS")?;
        let age_ns = now_ns.saturating_sub(verdict.seen_ns);
        let protocol = match key.proto {
            1 => format!("icmp/{}/{}", key.icmp_type, key.icmp_code),
            6 => "tcp".to_owned(),
            17 => "udp".to_owned(),
            other => other.to_string(),
        };
        rows.push(FlowRow {
            protocol,
            source: format!(
                "{}:{}",
                Ipv4Addr::from(key.saddr),
                u16::from_be_bytes(key.sport)
            ),
            destination: format!(
                "{}:{}",
                Ipv4Addr::from(key.daddr),
                u16::from_be_bytes(key.dport)
            ),
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
        strict_vteps: config.flags & CONFIG_STRICT_VTEPS != 0,
        bulk_tcp_via_gro: config.flags & CONFIG_BULK_TCP_VIA_GRO != 0,
        tc_uplink: config.flags & CONFIG_TC_UPLINK != 0,
        tc_vtep: config.flags & CONFIG_TC_VTEP != 0,
        tc_bridge: config.flags & CONFIG_TC_BRIDGE != 0,
        accept_mark: format!("{:#x}", config.accept_mark),
        ruleset_generation: config.ruleset_generation,
        verdict_ttl_ms: crate::verdict_clock::configured_ttl_ms(config.verdict_ttl_ns),
        verdict_probes: config.flags & CONFIG_VERDICT_PROBES != 0,
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
            let mut table = format!(
                "{:<20} {:<8} {:<16} {:>4} {:<18} {:<18}\n",
                "SUBNET", "MODE", "PUBLIC IP", "VNI", "VTEP MAC", "NEXT-HOP MAC"
            );
            for row in &rows {
                let nexthop = row
                    .nexthop_mac
                    .clone()
                    .unwrap_or_else(|| "(unresolved)".into());
                table += &format!(
                    "{:<20} {:<8} {:<16} {:>4} {:<18} {:<18}\n",
                    row.subnet, row.mode, row.public_ip, row.vni, row.vtep_mac, nexthop
                );
            }
            print(serde_json::to_value(&rows)?, table);
        }
        MapName::Endpoints => {
            let maps = FastPathMaps::open_pinned(dir)?;
            let placement = Placement::find(dir, maps.config()?.uplink_ifindex)?;
            if let Some(why) = placement.why_no_interfaces() {
                eprintln!("weft: {why}");
            }
            let rows = endpoint_rows(&maps, placement)?;
            let mut table = format!(
                "{:<16} {:>8} {:<16} {:<18} {}\n",
                "POD IP", "IFINDEX", "INTERFACE", "MAC", "TC (KERNEL PATH)"
            );
            for row in &rows {
                let tc = match (row.tc_sends, row.tc_receives) {
                    (false, false) => "-",
                    (true, false) => "sends",
                    (false, true) => "receives",
                    (true, true) => "sends,receives",
                };
                table += &format!(
                    "{:<16} {:>8} {:<16} {:<18} {tc}\n",
                    row.ip,
                    row.ifindex,
                    row.interface.as_deref().unwrap_or("-"),
                    row.mac
                );
            }
            print(serde_json::to_value(&rows)?, table);
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
            let table = std::iter::once(format!(
                "{:<8} {:<21} {:<21} {:>8}  {:<9}  CURRENT\n",
                "PROTO", "SOURCE", "DESTINATION", "AGE MS", "STATE"
            ))
            .chain(rows.iter().map(|row| {
                format!(
                    "{:<8} {:<21} {:<21} {:>8}  {:<9}  {}\n",
                    row.protocol, row.source, row.destination, row.age_ms, row.state, row.current
                )
            }))
            .collect();
            print(serde_json::to_value(&rows)?, table);
        }
        MapName::Config => {
            let row = config_row(&FastPathMaps::open_pinned(dir)?)?;
            let value = serde_json::to_value(&row)?;
            let table = value
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, value)| format!("{key:<16} {}\n", value.to_string().trim_matches('"')))
                .collect();
            print(value, table);
        }
    }
    Ok(())
}
