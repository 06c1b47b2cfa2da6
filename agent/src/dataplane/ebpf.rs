//! The eBPF dataplane: load the embedded object, pin its maps, attach XDP and
//! TC (TCX) ingress to the uplink and TC (TCX) ingress to every pod veth.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use tracing::{info, warn};
use weft_common::{map_names, program_names};

use crate::{cli::XdpModeArg, endpoints::BridgePorts, net::Uplink};

/// The eBPF object built by build.rs (see `cargo xtask build-ebpf`).
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft"));

/// Every map the object declares, pinned under the pin dir by name.
const PINNED_MAPS: [&str; 5] = map_names::ALL;

/// How XDP ended up attached to the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedXdpMode {
    Native,
    Generic,
    /// Not attached: TC ingress alone delivers, after GRO.
    Off,
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    uplink: Option<XdpLinkId>,
    /// TC ingress on the uplink: delivery of what XDP left for GRO.
    uplink_tc: Option<SchedClassifierLinkId>,
    /// Attached pod veths: ifindex -> (name, link).
    pods: BTreeMap<u32, (String, SchedClassifierLinkId)>,
}

impl EbpfDataplane {
    /// Loads and verifies the programs; maps are created, or reused when
    /// already pinned in `pin_dir`, so counters survive an agent restart.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for name in &PINNED_MAPS {
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
        for name in [program_names::TC_POD_EGRESS, program_names::TC_UPLINK] {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        Ok(Self {
            ebpf,
            uplink: None,
            uplink_tc: None,
            pods: BTreeMap::new(),
        })
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
        // of headroom or in fragments, which is nearly all of them (see the
        // README's Performance section): on a veth, TC alone is faster.
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
            .filter(|(index, (name, _))| ports.get(index).map(|port| &port.name) != Some(name))
            .map(|(index, _)| *index)
            .collect();
        for index in stale {
            if let Some((name, link)) = self.pods.remove(&index) {
                // The kernel drops a TCX link with its device; detaching a
                // link whose veth is gone can fail, and that is fine.
                let _ = self.tc_program().map(|program| program.detach(link));
                info!(veth = %name, ifindex = index, "pod veth gone");
            }
        }
        for (index, port) in ports {
            if self.pods.contains_key(index) {
                continue;
            }
            let name = &port.name;
            match self.attach_pod(name) {
                Ok(link) => {
                    info!(veth = %name, ifindex = index, "TC attached to pod veth");
                    self.pods.insert(*index, (name.clone(), link));
                }
                Err(error) => warn!(veth = %name, "{error:#}"),
            }
        }
    }

    fn attach_pod(&mut self, veth: &str) -> Result<SchedClassifierLinkId> {
        // Ingress on the host side of the veth is egress from the pod.
        self.tc_program()?
            .attach(veth, TcAttachType::Ingress)
            .with_context(|| format!("cannot attach TC to pod veth {veth}"))
    }

    fn tc_program(&mut self) -> Result<&mut SchedClassifier> {
        program_mut(&mut self.ebpf, program_names::TC_POD_EGRESS)
    }

    /// Detaches every program; returns how many attachments it removed.
    pub fn detach_all(&mut self) -> usize {
        let mut detached = 0;
        let pods = std::mem::take(&mut self.pods);
        if let Ok(program) = self.tc_program() {
            for (_, (_, link)) in pods {
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
