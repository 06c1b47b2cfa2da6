//! Start-up steps that run once, before the agent's loop: the lease value
//! this node announces, and the fast path's programs and maps.

use std::{collections::BTreeSet, sync::Arc};

use anyhow::Result;
use tokio::sync::Notify;
use tracing::info;

use crate::{
    cli::AgentArgs,
    config::NetworkConfig,
    dataplane::{
        ebpf::{AttachedXdpMode, EbpfPrograms},
        fastpath::FastPath,
        kernel::VxlanDevice,
        maps::FastPathMaps,
    },
    desired::{self, NodeFacts},
    lease::{LeaseAttrs, VxlanBackendData},
    mark_conflicts,
    net::Uplink,
    verdicts::{self, Marks},
};

/// The lease value this node announces.
pub fn lease_attrs(
    uplink: &Uplink,
    config: &NetworkConfig,
    vxlan: Option<VxlanDevice>,
) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: uplink.public_ip,
        public_ipv6: None,
        backend_type: config.backend.type_name().to_owned(),
        backend_data: match (config.backend.vni(), vxlan) {
            (Some(vni), Some(device)) => Some(VxlanBackendData {
                vni,
                vtep_mac: device.mac,
            }),
            _ => None,
        },
    }
}

/// What CONFIG and the route plans need to know about this node (the
/// uplink XDP flag is set once the programs are attached).
pub fn node_facts(
    uplink: &Uplink,
    config: &NetworkConfig,
    vxlan: Option<VxlanDevice>,
    args: &AgentArgs,
) -> NodeFacts {
    NodeFacts {
        network: config.clone(),
        public_ip: uplink.public_ip,
        uplink_index: uplink.index,
        uplink_mac: uplink.mac,
        uplink_mtu: uplink.mtu,
        vtep_mac: vxlan.map(|device| device.mac),
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
    vxlan_device: Option<&str>,
    facts: &mut NodeFacts,
    handle: rtnetlink::Handle,
    ruleset_changed: Arc<Notify>,
) -> Result<Started> {
    let mut programs = EbpfPrograms::load(&args.bpf_pin_dir)?;
    let mut maps = FastPathMaps::open_pinned(&args.bpf_pin_dir)?;
    // Verdicts recorded before this start (pinned FLOWS) were not followed
    // by this agent's ruleset watch: a new generation voids them.
    let ruleset_generation = maps.cached_config().ruleset_generation.wrapping_add(1);
    // Dormant until the maps hold this run's leases and pods (the agent
    // goes live then): a previous run's pinned entries may be stale.
    maps.set_config(desired::dormant_config(ruleset_generation))?;
    // Record verdicts before anything is fast-pathed: where kernel-path
    // packets leave the node's netfilter (pod veths follow as they appear).
    programs.attach_verdicts(&uplink.name)?;
    if let Some(device) = vxlan_device {
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
