//! Start-up steps that run once, before the agent's loop: the lease value
//! this node announces, and the fast path's programs and maps.

use std::{collections::BTreeSet, sync::Arc};

use anyhow::Result;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    dataplane::{
        ebpf::{AttachedXdpMode, EbpfPrograms},
        fastpath::FastPath,
        kernel::{KernelDataplane, VxlanDevice},
        maps::FastPathMaps,
        pod_neighbours,
    },
    desired::{self, NodeFacts},
    lease::{LeaseAttrs, VxlanBackendData},
    mark_conflicts,
    net::Uplink,
    subnet_env::SubnetEnv,
    verdicts::{self, Marks},
};

/// The lease value this node announces, as flanneld's `newSubnetAttrs`
/// (vxlan) and host-gw's `RegisterNetwork` build it: `PublicIPv6` when the
/// network is dual-stack, and `BackendV6Data` when `flannel-v6.<VNI>`
/// exists too (vxlan); host-gw has no backend data in either family.
pub fn lease_attrs(
    uplink: &Uplink,
    config: &NetworkConfig,
    vxlan: Option<VxlanDevice>,
    vxlan_v6: Option<VxlanDevice>,
) -> LeaseAttrs {
    let public_ipv6 = config.ipv6.as_ref().and(uplink.public_ipv6);
    let backend_data = |device: Option<VxlanDevice>| match (config.backend.vni(), device) {
        (Some(vni), Some(device)) => Some(VxlanBackendData {
            vni,
            vtep_mac: device.mac,
        }),
        _ => None,
    };
    LeaseAttrs {
        // flanneld writes `0.0.0.0` for an IPv6-only node.
        public_ip: uplink.public_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        public_ipv6,
        backend_type: config.backend.type_name().to_owned(),
        backend_data: backend_data(vxlan),
        backend_v6_data: public_ipv6.and(backend_data(vxlan_v6)),
    }
}

/// Removes what a family the network no longer runs left from dual stack:
/// its VXLAN device, its peer routes on the uplink and (after a crash) its
/// pods' pinned entries on the bridge, the last two found through the
/// previous `subnet.env`. Each removal is logged as a warning, and each
/// failure; what failed stays.
pub async fn remove_left_overs(
    kernel: &KernelDataplane,
    handle: &rtnetlink::Handle,
    bridge: &str,
    config: &NetworkConfig,
    previous: Option<&SubnetEnv>,
) {
    let ipv6_device = kernel.remove_left_over_vxlan_v6_device().await;
    log_device_removal(ipv6_device, "IPv4-only", "IPv6");
    let ipv4_device = kernel.remove_left_over_vxlan_device().await;
    log_device_removal(ipv4_device, "IPv6-only", "IPv4");
    if let Some(former) = previous.and_then(|env| env.ipv6.as_ref()) {
        let removed = kernel.remove_left_over_ipv6_routes(former).await;
        log_routes_removal(removed, &former.network, "IPv4-only", "IPv6");
    }
    if let Some(former) = previous.and_then(|env| env.ipv4.as_ref()) {
        let removed = kernel.remove_left_over_ipv4_routes(former).await;
        log_routes_removal(removed, &former.network, "IPv6-only", "IPv4");
    }
    let Some(previous) = previous else {
        return;
    };
    match pod_neighbours::unpin_dropped_families(handle, bridge, config, previous).await {
        Ok(0) => {}
        Ok(unpinned) => warn!(
            unpinned,
            %bridge,
            "removed the pods' pinned neighbour entries of a family the network no longer runs"
        ),
        Err(error) => warn!("{error:#}; the pods' pinned entries of a dropped family stay"),
    }
}

/// `now`: what the network is; `family`: the one whose device went.
fn log_device_removal(removed: Result<Option<String>>, now: &str, family: &str) {
    match removed {
        Ok(Some(device)) => warn!(
            %device,
            "the network is {now}: removed the {family} VXLAN device left from dual stack"
        ),
        Ok(None) => {}
        Err(error) => warn!("{error:#}; the {family} VXLAN device left from dual stack stays"),
    }
}

/// `former_network`: the pod network of `family` the routes led into.
fn log_routes_removal(
    removed: Result<usize>,
    former_network: &dyn std::fmt::Display,
    now: &str,
    family: &str,
) {
    match removed {
        Ok(0) => {}
        Ok(removed) => warn!(
            removed,
            former_network = %former_network,
            "the network is {now}: removed the {family} peer routes left from dual stack on the uplink"
        ),
        Err(error) => warn!("{error:#}; they stay"),
    }
}

/// What CONFIG and the route plans need to know about this node (the
/// uplink XDP flag is set once the programs are attached).
pub fn node_facts(
    uplink: &Uplink,
    config: &NetworkConfig,
    vxlan: Option<VxlanDevice>,
    vxlan_v6: Option<VxlanDevice>,
    args: &AgentArgs,
) -> NodeFacts {
    NodeFacts {
        network: config.clone(),
        public_ip: uplink.public_ip,
        uplink_index: uplink.index,
        uplink_mac: uplink.mac,
        uplink_mtu: uplink.mtu,
        vtep_mac: vxlan.map(|device| device.mac),
        public_ipv6: config.ipv6.as_ref().and(uplink.public_ipv6),
        vtep_v6_mac: vxlan_v6.map(|device| device.mac),
        vtep_v6_index: vxlan_v6.map(|device| device.index),
        strict_vteps: args.strict_vteps,
        bulk_tcp_via_gro: args.bulk_tcp_via_gro,
        verdict_probes: args.verdict_probes,
        uplink_xdp: false,
        own_tc_programs: BTreeSet::new(),
        accept_mark: args.accept_mark,
        verdict_ttl_ns: crate::verdict_clock::ttl_on_clock_ns(args.verdict_ttl_ms),
    }
}

/// The fast path as started: its programs and maps, the ruleset
/// generation this run starts from, the verdict chain's bits, and whether
/// another rule uses the accept bit (no verdicts then).
pub struct Started {
    pub fast_path: FastPath,
    pub ruleset_generation: u32,
    pub marks: Marks,
    pub verdicts_suspended: bool,
}

/// Loads and attaches the programs, writes CONFIG dormant, installs the
/// nftables rule that tells the fast path what netfilter passed, and starts
/// following the node's ruleset (the local view is followed in either
/// dataplane: `commands/agent.rs`). Sets
/// `facts.uplink_xdp` from how XDP ended up attached.
pub fn start_fast_path(
    args: &AgentArgs,
    uplink: &Uplink,
    vxlan_devices: &[String],
    facts: &mut NodeFacts,
    handle: rtnetlink::Handle,
    ruleset_changed: Arc<Notify>,
) -> Result<Started> {
    let mut programs = EbpfPrograms::load(&args.bpf_pin_dir)?;
    let mut maps = FastPathMaps::open_pinned(&args.bpf_pin_dir)?;
    // Verdicts recorded before this start (pinned FLOWS and FLOWS6, both
    // checked against CONFIG's generation) were not followed by this
    // agent's ruleset watch: a new generation voids them.
    let ruleset_generation = maps.cached_config().ruleset_generation.wrapping_add(1);
    // Dormant until the maps hold this run's leases and pods (the agent
    // goes live then): a previous run's pinned entries may be stale.
    maps.set_config(desired::dormant_config(ruleset_generation))?;
    // Record verdicts before anything is fast-pathed: where kernel-path
    // packets leave the node's netfilter (pod veths follow as they appear).
    programs.attach_verdicts(&uplink.name)?;
    for device in vxlan_devices {
        programs.attach_verdicts(device)?;
    }
    let mode = programs.attach_uplink(uplink, args.xdp_mode)?;
    info!(iface = %uplink.name, xdp = ?mode, veth = uplink.is_veth, "uplink programs attached");
    // TC on the uplink counts what XDP would have counted when XDP is off.
    facts.uplink_xdp = mode != AttachedXdpMode::Off;
    // tc on a hook the fast path bypasses is found apart from these.
    facts.own_tc_programs = programs.tc_program_ids()?;
    let marks = Marks::new(args.accept_mark, args.kernel_path_mark)?;
    verdicts::watch_ruleset(ruleset_changed)?;
    // The bit must be weft's alone: with another rule using it, weft leaves
    // it untouched and records no verdict (the loop looks again after every
    // ruleset change).
    let conflicts = mark_conflicts::find(marks.accept);
    crate::metrics::global().set_accept_mark_conflicts(conflicts.len());
    let verdicts_suspended = !conflicts.is_empty();
    if verdicts_suspended {
        super::mark_check::warn_conflicts(marks, &conflicts);
        verdicts::remove()?;
    } else {
        verdicts::install(marks)?;
    }
    // Before any TCP verdict can be confirmed: tc_verdict's requests wait
    // in the ring buffer until then.
    crate::ct_liberal::spawn(&args.bpf_pin_dir)?;
    info!(
        table = verdicts::TABLE,
        mark = format_args!("{:#x}", args.accept_mark),
        "netfilter verdict rule installed; the fast path takes only flows it marks"
    );
    crate::metrics::global().fast_path_started(&args.bpf_pin_dir);
    Ok(Started {
        fast_path: FastPath::new(programs, maps, handle),
        ruleset_generation,
        marks,
        verdicts_suspended,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;
    use crate::{config::Ipv6Network, lease::MacAddr};

    fn uplink() -> Uplink {
        Uplink {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            public_ip: Some(Ipv4Addr::new(192, 168, 77, 1)),
            ipv6: Some("fd00:77::1".parse().unwrap()),
            public_ipv6: Some("fd00:1::1".parse().unwrap()),
            is_veth: true,
        }
    }

    fn config(backend: &str, dual_stack: bool) -> NetworkConfig {
        let mut config = NetworkConfig::parse(&format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#
        ))
        .unwrap();
        config.ipv6 = dual_stack.then(|| Ipv6Network {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet_len: 64,
            subnet_min: "fd00:10:244:1::".parse().unwrap(),
            subnet_max: "fd00:10:244:ff::".parse().unwrap(),
        });
        config
    }

    fn device(first: u8) -> Option<VxlanDevice> {
        Some(VxlanDevice {
            index: 5,
            mac: MacAddr([first, 1, 192, 168, 77, 1]),
        })
    }

    /// The value as etcd holds it (what flanneld peers read).
    fn announced(attrs: LeaseAttrs) -> serde_json::Value {
        serde_json::to_value(attrs).unwrap()
    }

    #[test]
    fn dual_stack_leases_announce_public_ipv6_and_backend_v6_data_as_flanneld() {
        let vxlan = announced(lease_attrs(
            &uplink(),
            &config("vxlan", true),
            device(0x0e),
            device(0x1e),
        ));
        assert_eq!(
            vxlan,
            json!({
                "PublicIP": "192.168.77.1",
                "PublicIPv6": "fd00:1::1",
                "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": "0e:01:c0:a8:4d:01"},
                "BackendV6Data": {"VNI": 1, "VtepMAC": "1e:01:c0:a8:4d:01"},
            })
        );
        // host-gw: PublicIPv6 and no backend data in either family (flanneld
        // omits both keys).
        let host_gw = announced(lease_attrs(&uplink(), &config("host-gw", true), None, None));
        assert_eq!(
            host_gw,
            json!({
                "PublicIP": "192.168.77.1",
                "PublicIPv6": "fd00:1::1",
                "BackendType": "host-gw",
            })
        );
        // IPv4-only: PublicIPv6 null (as flanneld writes it), no
        // BackendV6Data, whatever the uplink has.
        let v4_only = announced(lease_attrs(
            &uplink(),
            &config("vxlan", false),
            device(0x0e),
            device(0x1e),
        ));
        assert_eq!(v4_only["PublicIPv6"], serde_json::Value::Null);
        assert!(v4_only.get("BackendV6Data").is_none(), "{v4_only}");
    }

    /// An IPv6-only node announces what flanneld's does: `PublicIP`
    /// `0.0.0.0` (no IPv4 address), no `BackendData` (no flannel.<VNI>),
    /// its IPv6 address and flannel-v6's MAC.
    #[test]
    fn ipv6_only_leases_announce_the_ipv6_half_alone() {
        let config = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let uplink = Uplink {
            public_ip: None,
            ..uplink()
        };
        assert_eq!(
            announced(lease_attrs(&uplink, &config, None, device(0x2e))),
            json!({
                "PublicIP": "0.0.0.0",
                "PublicIPv6": "fd00:1::1",
                "BackendType": "vxlan",
                "BackendV6Data": {"VNI": 1, "VtepMAC": "2e:01:c0:a8:4d:01"},
            })
        );
    }
}
