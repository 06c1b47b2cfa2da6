//! `weft status`: the node at a glance, from the pinned maps, `subnet.env`
//! and the kernel (which programs are attached where). Interfaces are only
//! named from the node's own network namespace (`placement.rs`): from
//! another, the command says so instead of showing that namespace's.

use std::net::Ipv6Addr;

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use serde::Serialize;
use weft_common::program_names;

use super::{
    maps::{
        ConfigRow, EndpointRow, PeerRow, config_row, endpoint_rows, endpoint6_rows, peer6_rows,
        peers,
    },
    placement::Placement,
};
use crate::{
    cli::StatusArgs,
    dataplane::maps::FastPathMaps,
    endpoints,
    stats::{self, CounterValue},
    subnet_env,
};

#[derive(Serialize)]
struct Status {
    subnet_file: String,
    /// subnet.env's IPv4 pair (none in an IPv6-only network)...
    subnet: Option<String>,
    network: Option<String>,
    /// ...and its IPv6 pair (a network with IPv6).
    subnet6: Option<String>,
    network6: Option<String>,
    config: ConfigRow,
    /// Where the programs using the maps are, seen from where this runs.
    placement: Placement,
    /// Why interfaces are not shown (not in the node's namespace).
    interfaces_not_shown: Option<&'static str>,
    /// The uplink's name; `None` unless run in the node's namespace.
    uplink: Option<String>,
    /// `None` where it cannot be told from here.
    xdp_attached: Option<bool>,
    uplink_tc_attached: Option<bool>,
    pod_veths: Vec<PodVeth>,
    peers: Vec<PeerRow>,
    endpoints: Vec<EndpointRow>,
    /// The IPv6 halves (PEERS6, ENDPOINTS6): empty outside dual stack.
    peers6: Vec<PeerRow<Ipv6Addr>>,
    endpoints6: Vec<EndpointRow<Ipv6Addr>>,
    counters: Vec<CounterValue>,
}

#[derive(Serialize)]
struct PodVeth {
    name: String,
    tc_attached: bool,
}

pub async fn status(args: &StatusArgs) -> Result<()> {
    let maps = FastPathMaps::open_pinned(&args.node.bpf_pin_dir)?;
    let env = subnet_env::read_if_present(&args.node.subnet_file)?;
    let config = config_row(&maps)?;
    let placement = Placement::find(&args.node.bpf_pin_dir, config.uplink_ifindex)?;
    let (uplink, xdp_attached, uplink_tc_attached, pod_veths) = match placement {
        Placement::ThisNamespace => {
            let uplink = nix::net::if_::if_indextoname(config.uplink_ifindex)
                .ok()
                .map(|name| name.to_string_lossy().into_owned());
            let (connection, handle, _) =
                rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
            tokio::spawn(connection);
            let view =
                endpoints::read_view(&handle, &args.node.bridge, config.uplink_ifindex, &[], None)
                    .await?;
            let uplink_tc_attached = uplink
                .as_deref()
                .is_some_and(|name| tc_on(name, program_names::TC_UPLINK));
            let xdp_attached = match &uplink {
                Some(name) => xdp_on(name)?,
                None => false,
            };
            let pod_veths = view
                .ports
                .values()
                .map(|port| PodVeth {
                    name: port.name.clone(),
                    tc_attached: tc_on(&port.name, program_names::TC_POD_EGRESS),
                })
                .collect();
            (
                uplink,
                Some(xdp_attached),
                Some(uplink_tc_attached),
                pod_veths,
            )
        }
        Placement::OtherNamespace => (None, None, None, Vec::new()),
        // Nothing uses the maps, so nothing is attached anywhere.
        Placement::NotLoaded => (None, Some(false), Some(false), Vec::new()),
    };
    let ipv4 = env.as_ref().and_then(|env| env.ipv4);
    let ipv6 = env.as_ref().and_then(|env| env.ipv6);
    let status = Status {
        subnet_file: args.node.subnet_file.display().to_string(),
        subnet: ipv4.map(|ipv4| ipv4.subnet.to_string()),
        network: ipv4.map(|ipv4| ipv4.network.to_string()),
        subnet6: ipv6.map(|ipv6| ipv6.subnet.to_string()),
        network6: ipv6.map(|ipv6| ipv6.network.to_string()),
        config,
        placement,
        interfaces_not_shown: placement.why_no_interfaces(),
        uplink,
        xdp_attached,
        uplink_tc_attached,
        pod_veths,
        peers: peers(&maps)?,
        endpoints: endpoint_rows(&maps, placement)?,
        peers6: peer6_rows(&maps)?,
        endpoints6: endpoint6_rows(&maps, placement)?,
        counters: stats::read_pinned(&args.node.bpf_pin_dir)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    // An IPv6-only node has the IPv6 lease alone.
    let ipv6_only = status.subnet.is_none() && status.subnet6.is_some();
    if !ipv6_only {
        println!(
            "lease       {} in {} ({})",
            status.subnet.as_deref().unwrap_or("none"),
            status.network.as_deref().unwrap_or("?"),
            status.subnet_file
        );
    }
    if let Some(subnet6) = &status.subnet6 {
        println!(
            "lease ipv6  {subnet6} in {} ({})",
            status.network6.as_deref().unwrap_or("?"),
            status.subnet_file
        );
    }
    println!(
        "node        {}  VNI {}  port {}  VTEP {}  strict VTEPs {}",
        status.config.node_ip,
        status.config.vni,
        status.config.vxlan_port,
        status.config.vtep_mac,
        status.config.strict_vteps
    );
    if let (Some(ip6), Some(vtep6)) = (&status.config.node_ip6, &status.config.vtep6_mac) {
        println!("node ipv6   {ip6}  VTEP {vtep6} (VXLAN over IPv6 on the fast path)");
    }
    match status.interfaces_not_shown {
        None => println!(
            "uplink      {} (ifindex {})  TC {}: {}  XDP {}: {}  bulk TCP via GRO {}",
            status.uplink.as_deref().unwrap_or("?"),
            status.config.uplink_ifindex,
            program_names::TC_UPLINK,
            attached(status.uplink_tc_attached == Some(true)),
            program_names::XDP_UPLINK,
            // --xdp-mode off (and auto on a veth uplink) leaves XDP out.
            if status.xdp_attached == Some(true) {
                "attached"
            } else {
                "not attached (TC delivers everything)"
            },
            status.config.bulk_tcp_via_gro
        ),
        Some(why) => println!(
            "uplink      ifindex {} in the node's namespace  bulk TCP via GRO {}\ninterfaces  {why}",
            status.config.uplink_ifindex, status.config.bulk_tcp_via_gro
        ),
    }
    for veth in &status.pod_veths {
        println!(
            "pod veth    {}  TC {}: {}",
            veth.name,
            program_names::TC_POD_EGRESS,
            attached(veth.tc_attached)
        );
    }
    println!("peers       {}", status.peers.len());
    for peer in &status.peers {
        println!(
            "  {:<20} {:<8} via {:<16} next hop {}",
            peer.subnet,
            peer.mode,
            peer.public_ip,
            peer.nexthop_mac.as_deref().unwrap_or("(unresolved)")
        );
    }
    // IPv6 lines only where there are IPv6 entries (dual stack).
    if !status.peers6.is_empty() {
        println!("peers6      {}", status.peers6.len());
    }
    for peer in &status.peers6 {
        println!(
            "  {:<30} {:<8} via {:<26} next hop {}",
            peer.subnet,
            peer.mode,
            peer.public_ip.to_string(),
            peer.nexthop_mac.as_deref().unwrap_or("(unresolved)")
        );
    }
    println!("endpoints   {}", status.endpoints.len());
    for endpoint in &status.endpoints {
        println!(
            "  {:<16} {} ({})",
            endpoint.ip,
            endpoint.interface.as_deref().unwrap_or("-"),
            endpoint.mac
        );
    }
    if !status.endpoints6.is_empty() {
        println!("endpoints6  {}", status.endpoints6.len());
    }
    for endpoint in &status.endpoints6 {
        println!(
            "  {:<26} {} ({})",
            endpoint.ip.to_string(),
            endpoint.interface.as_deref().unwrap_or("-"),
            endpoint.mac
        );
    }
    println!("counters");
    for counter in status.counters.iter().filter(|counter| counter.packets > 0) {
        println!(
            "  {:<36} {:>12} packets {:>14} bytes",
            counter.name, counter.packets, counter.bytes
        );
    }
    Ok(())
}

fn xdp_on(interface: &str) -> Result<bool> {
    let out = std::process::Command::new("ip")
        .args(["-j", "link", "show", "dev", interface])
        .output();
    Ok(out
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .is_some_and(|links| !links[0]["xdp"].is_null()))
}

fn attached(yes: bool) -> &'static str {
    if yes { "attached" } else { "NOT attached" }
}

fn tc_on(interface: &str, program: &str) -> bool {
    SchedClassifier::query_tcx(interface, TcAttachType::Ingress).is_ok_and(|(_, programs)| {
        programs
            .iter()
            .any(|info| info.name_as_str() == Some(program))
    })
}
