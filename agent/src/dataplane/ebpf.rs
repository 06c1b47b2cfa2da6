//! The eBPF programs: load the embedded object, pin its maps, attach XDP and
//! TC (TCX) ingress to the uplink, TC (TCX) ingress to every pod veth, and
//! `tc_verdict` (TCX egress) wherever forwarded packets leave netfilter:
//! pod veths, flannel.<VNI> and the uplink.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::MapInfo,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use tracing::{info, warn};
use weft_common::{
    CT_LIBERAL_BYTES, Endpoint, EndpointKey, EndpointKey6, FlowKey, FlowKey6, FlowVerdict,
    MAX_ENDPOINTS, MAX_FLOWS, MAX_PEERS, NodeConfig, PacketCounter, Peer, Peer6, STATS_MAX_ENTRIES,
    Vtep, VtepKey, map_names, program_names,
};

use crate::{cli::XdpModeArg, endpoints::BridgePorts, net::Uplink};

/// The eBPF object built by build.rs (see `cargo xtask build-ebpf`).
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft"));

/// Every map the object declares, pinned under the pin dir by name, with
/// the (key size, value size, max entries) this build's programs expect.
const PINNED_MAPS: [(&str, u32, u32, u32); 10] = [
    (map_names::CONFIG, 4, size::<NodeConfig>(), 1),
    // LPM trie keys: a u32 prefix length, then the address.
    (map_names::PEERS, 8, size::<Peer>(), MAX_PEERS),
    (map_names::PEERS6, 4 + 16, size::<Peer6>(), MAX_PEERS),
    (
        map_names::ENDPOINTS,
        size::<EndpointKey>(),
        size::<Endpoint>(),
        MAX_ENDPOINTS,
    ),
    (
        map_names::ENDPOINTS6,
        size::<EndpointKey6>(),
        size::<Endpoint>(),
        MAX_ENDPOINTS,
    ),
    // Its value was one byte before it carried the VTEP's subnet: an older
    // agent's VTEPS is replaced, not misread.
    (
        map_names::VTEPS,
        size::<VtepKey>(),
        size::<Vtep>(),
        MAX_PEERS,
    ),
    (
        map_names::FLOWS,
        size::<FlowKey>(),
        size::<FlowVerdict>(),
        MAX_FLOWS,
    ),
    (
        map_names::FLOWS6,
        size::<FlowKey6>(),
        size::<FlowVerdict>(),
        MAX_FLOWS,
    ),
    (
        map_names::STATS,
        4,
        size::<PacketCounter>(),
        STATS_MAX_ENTRIES,
    ),
    // A ring buffer: no key or value, its size in bytes.
    (map_names::CT_LIBERAL, 0, 0, CT_LIBERAL_BYTES),
];

const fn size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// Unpins maps a different build left behind with another layout: reused,
/// they would fail the verifier or, worse, be read with the wrong layout.
/// Counters and verdicts in them are lost; the agent rewrites the rest.
fn replace_stale_pins(pin_dir: &Path) -> Result<()> {
    for (name, key_size, value_size, max_entries) in PINNED_MAPS {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let layout = MapInfo::from_pin(&path)
            .map(|info| (info.key_size(), info.value_size(), info.max_entries()));
        let expected = (key_size, value_size, max_entries);
        if layout.as_ref().ok() != Some(&expected) {
            warn!(
                map = name,
                found = ?layout.map_err(|error| error.to_string()),
                ?expected,
                "pinned map has another layout (key, value, entries); replacing it"
            );
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot unpin stale map {}", path.display()))?;
        }
    }
    Ok(())
}

/// How XDP ended up attached to the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedXdpMode {
    Native,
    Generic,
    /// Not attached: TC ingress alone delivers, after GRO.
    Off,
}

/// A pod veth's two attachments.
struct PodLinks {
    name: String,
    /// `tc_pod_egress`, ingress on the host side: what the pod sends.
    sending: SchedClassifierLinkId,
    /// `tc_verdict`, egress on the host side: what netfilter let in.
    verdicts: SchedClassifierLinkId,
}

pub struct EbpfPrograms {
    ebpf: Ebpf,
    uplink: Option<XdpLinkId>,
    /// TC ingress on the uplink: delivery of what XDP left for GRO.
    uplink_tc: Option<SchedClassifierLinkId>,
    /// `tc_verdict` on the uplink and flannel.<VNI> (egress).
    verdict_links: Vec<(String, SchedClassifierLinkId)>,
    /// Attached pod veths by ifindex.
    pods: BTreeMap<u32, PodLinks>,
}

impl EbpfPrograms {
    /// Loads and verifies the programs; maps are created, or reused when
    /// already pinned in `pin_dir`, so counters survive an agent restart.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        replace_stale_pins(pin_dir)?;
        let mut loader = EbpfLoader::new();
        for (name, ..) in PINNED_MAPS {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let mut ebpf = loader.load(OBJECT).with_context(|| {
            format!(
                "cannot load the eBPF object (maps pinned in {})",
                pin_dir.display()
            )
        })?;
        program_mut::<Xdp>(&mut ebpf, program_names::XDP_UPLINK)?
            .load()
            .with_context(|| format!("the kernel rejected {}", program_names::XDP_UPLINK))?;
        for name in [
            program_names::TC_POD_EGRESS,
            program_names::TC_UPLINK,
            program_names::TC_VERDICT,
        ] {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        Ok(Self {
            ebpf,
            uplink: None,
            uplink_tc: None,
            verdict_links: Vec::new(),
            pods: BTreeMap::new(),
        })
    }

    /// Attaches `tc_verdict` to `iface`'s egress: forwarded packets leaving
    /// through it have passed netfilter.
    pub fn attach_verdicts(&mut self, iface: &str) -> Result<()> {
        let link = verdict_program(&mut self.ebpf)?
            .attach(iface, TcAttachType::Egress)
            .with_context(|| format!("cannot attach {} to {iface}", program_names::TC_VERDICT))?;
        self.verdict_links.push((iface.to_owned(), link));
        Ok(())
    }

    /// Attaches TC ingress to the uplink, which delivers what XDP leaves for
    /// GRO (or everything, without XDP), then XDP: `auto` skips it on a veth
    /// uplink and otherwise prefers native (driver) mode, falling back to
    /// generic where the driver has no XDP support.
    pub fn attach_uplink(&mut self, uplink: &Uplink, mode: XdpModeArg) -> Result<AttachedXdpMode> {
        let (iface, ifindex) = (uplink.name.as_str(), uplink.index);
        if self.uplink.is_some() || self.uplink_tc.is_some() {
            bail!("the uplink programs are already attached");
        }
        let tc = program_mut::<SchedClassifier>(&mut self.ebpf, program_names::TC_UPLINK)?
            .attach(iface, TcAttachType::Ingress)
            .with_context(|| format!("cannot attach TC ingress to {iface}"))?;
        self.uplink_tc = Some(tc);
        // veth's native XDP copies every frame that arrives without 256 bytes
        // of headroom or in fragments, which is nearly all of them (see
        // docs/performance/README.md): on a veth, TC alone is faster.
        if mode == XdpModeArg::Off || (mode == XdpModeArg::Auto && uplink.is_veth) {
            return Ok(AttachedXdpMode::Off);
        }
        let program = program_mut::<Xdp>(&mut self.ebpf, program_names::XDP_UPLINK)?;
        let attach = |program: &mut Xdp, xdp_mode| {
            program
                .attach_to_if_index(ifindex, xdp_mode)
                .with_context(|| format!("cannot attach XDP ({xdp_mode:?} mode) to {iface}"))
        };
        let (link, attached) = match mode {
            XdpModeArg::Native => (attach(program, XdpMode::Driver)?, AttachedXdpMode::Native),
            XdpModeArg::Generic => (attach(program, XdpMode::Skb)?, AttachedXdpMode::Generic),
            XdpModeArg::Off => unreachable!("handled above"),
            XdpModeArg::Auto => match attach(program, XdpMode::Driver) {
                Ok(link) => (link, AttachedXdpMode::Native),
                Err(error) => {
                    warn!("{error:#}; falling back to generic XDP, which is slower");
                    (attach(program, XdpMode::Skb)?, AttachedXdpMode::Generic)
                }
            },
        };
        self.uplink = Some(link);
        Ok(attached)
    }

    /// Brings the TC attachments in line with the bridge's current ports.
    pub fn reconcile_pod_ports(&mut self, ports: &BridgePorts) {
        let stale: Vec<u32> = self
            .pods
            .iter()
            .filter(|(index, pod)| ports.get(index).map(|port| &port.name) != Some(&pod.name))
            .map(|(index, _)| *index)
            .collect();
        for index in stale {
            if let Some(pod) = self.pods.remove(&index) {
                // The kernel drops a TCX link with its device; detaching a
                // link whose veth is gone can fail, and that is fine.
                let _ = self.tc_program().map(|program| program.detach(pod.sending));
                let _ = verdict_program(&mut self.ebpf).map(|program| program.detach(pod.verdicts));
                info!(veth = %pod.name, ifindex = index, "pod veth gone");
            }
        }
        for (index, port) in ports {
            if self.pods.contains_key(index) {
                continue;
            }
            let name = &port.name;
            match self.attach_pod(name) {
                Ok(links) => {
                    info!(veth = %name, ifindex = index, "TC attached to pod veth");
                    self.pods.insert(*index, links);
                }
                Err(error) => warn!(veth = %name, "{error:#}"),
            }
        }
    }

    /// Both programs or neither: a pod whose verdicts are not recorded
    /// would never be fast-pathed into, one without `tc_pod_egress` never
    /// out of, and half an attachment would be retried as new.
    fn attach_pod(&mut self, veth: &str) -> Result<PodLinks> {
        // Egress on the host side of the veth is what enters the pod.
        let verdicts = verdict_program(&mut self.ebpf)?
            .attach(veth, TcAttachType::Egress)
            .with_context(|| format!("cannot attach TC egress to pod veth {veth}"))?;
        // Ingress on the host side of the veth is egress from the pod.
        let sending = match self.tc_program()?.attach(veth, TcAttachType::Ingress) {
            Ok(link) => link,
            Err(error) => {
                let _ = verdict_program(&mut self.ebpf).map(|program| program.detach(verdicts));
                return Err(error).with_context(|| format!("cannot attach TC to pod veth {veth}"));
            }
        };
        Ok(PodLinks {
            name: veth.to_owned(),
            sending,
            verdicts,
        })
    }

    /// The ids of weft's TC programs, to tell them apart from anything
    /// else attached on a TCX hook.
    pub fn tc_program_ids(&self) -> Result<BTreeSet<u32>> {
        [
            program_names::TC_POD_EGRESS,
            program_names::TC_UPLINK,
            program_names::TC_VERDICT,
        ]
        .into_iter()
        .map(|name| {
            let program: &SchedClassifier = self
                .ebpf
                .program(name)
                .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
                .try_into()
                .map_err(|error| anyhow!("program {name} has an unexpected type: {error}"))?;
            Ok(program
                .info()
                .with_context(|| format!("cannot read {name}'s id"))?
                .id())
        })
        .collect()
    }

    fn tc_program(&mut self) -> Result<&mut SchedClassifier> {
        program_mut(&mut self.ebpf, program_names::TC_POD_EGRESS)
    }

    /// Detaches every program; returns how many attachments it removed.
    pub fn detach_all(&mut self) -> usize {
        let mut detached = 0;
        let pods = std::mem::take(&mut self.pods);
        let mut verdict_links: Vec<SchedClassifierLinkId> =
            self.verdict_links.drain(..).map(|(_, link)| link).collect();
        if let Ok(program) = self.tc_program() {
            for pod in pods.into_values() {
                detached += usize::from(program.detach(pod.sending).is_ok());
                verdict_links.push(pod.verdicts);
            }
        }
        if let Ok(program) = verdict_program(&mut self.ebpf) {
            for link in verdict_links {
                detached += usize::from(program.detach(link).is_ok());
            }
        }
        // TC before XDP: what XDP still leaves for GRO meanwhile goes to
        // the kernel path.
        if let Some(link) = self.uplink_tc.take()
            && let Ok(program) =
                program_mut::<SchedClassifier>(&mut self.ebpf, program_names::TC_UPLINK)
        {
            detached += usize::from(program.detach(link).is_ok());
        }
        if let Some(link) = self.uplink.take()
            && let Ok(program) = program_mut::<Xdp>(&mut self.ebpf, program_names::XDP_UPLINK)
        {
            detached += usize::from(program.detach(link).is_ok());
        }
        detached
    }
}

fn verdict_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    program_mut(ebpf, program_names::TC_VERDICT)
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    program
        .try_into()
        .map_err(|error| anyhow!("program {name} has an unexpected type: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_is_one_weft_cleanup_removes() {
        assert_eq!(PINNED_MAPS.map(|(name, ..)| name), map_names::PINNED);
    }
}
