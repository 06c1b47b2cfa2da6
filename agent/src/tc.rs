//! tc's configuration on the interfaces the fast path would bypass, read
//! from the kernel: configured root qdiscs, classic ingress/egress filters
//! (an `ingress` or `clsact` qdisc's), and the TCX programs on each hook.
//! The CNI `bandwidth` plugin, which kube's `kubernetes.io/ingress-
//! bandwidth` and `egress-bandwidth` annotations drive, puts a tbf as the
//! pod's host veth's root qdisc (what the pod receives) and an ingress u32
//! filter redirecting to an ifb with a tbf (what the pod sends). Whatever
//! tc does there, weft's redirects would skip it; `desired.rs` turns these
//! facts into the flags that make the programs leave such traffic to the
//! kernel path. Read with the rest of the local view (endpoints.rs), again
//! on every tc event (RTNLGRP_TC); TCX attachments raise no netlink event
//! and are seen on the view's periodic re-read.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::{
    programs::{ProgramError, SchedClassifier, TcAttachType, TcError},
    sys::SyscallError,
};
use futures::TryStreamExt as _;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::Handle;

/// What tc holds on one interface. weft's own TCX programs are listed
/// too; `acts_on_*` tells them apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcHooks {
    /// The kind of a root qdisc someone configured. The kernel's default
    /// root qdiscs (noqueue, pfifo_fast, mq, the sysctl's default) carry
    /// handle `0:`; one added by `tc` or netlink always has another.
    pub root_qdisc: Option<String>,
    /// Classic filters on the ingress hook (`ingress` or `clsact` qdisc)
    /// and on the egress hook (`clsact`), counted as the kernel dumps them.
    pub ingress_filters: usize,
    pub egress_filters: usize,
    /// TCX programs by id, in chain order.
    pub tcx_ingress: Vec<u32>,
    pub tcx_egress: Vec<u32>,
}

impl TcHooks {
    /// Something other than weft's programs (`own`) acts on what arrives.
    pub fn acts_on_ingress(&self, own: &BTreeSet<u32>) -> bool {
        self.ingress_filters > 0 || self.tcx_ingress.iter().any(|id| !own.contains(id))
    }

    /// Something other than weft's programs acts on what leaves: a
    /// configured root qdisc, egress filters, another program.
    pub fn acts_on_egress(&self, own: &BTreeSet<u32>) -> bool {
        self.root_qdisc.is_some()
            || self.egress_filters > 0
            || self.tcx_egress.iter().any(|id| !own.contains(id))
    }

    /// Either way.
    pub fn acts(&self, own: &BTreeSet<u32>) -> bool {
        self.acts_on_ingress(own) || self.acts_on_egress(own)
    }

    /// What `self` and `other` hold together: it acts where either does.
    pub fn merged(mut self, other: TcHooks) -> TcHooks {
        self.root_qdisc = self.root_qdisc.or(other.root_qdisc);
        self.ingress_filters += other.ingress_filters;
        self.egress_filters += other.egress_filters;
        self.tcx_ingress.extend(other.tcx_ingress);
        self.tcx_egress.extend(other.tcx_egress);
        self
    }
}

/// tc on every interface the fast path bypasses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcView {
    pub uplink: TcHooks,
    /// The pods' bridge (cni0).
    pub bridge: TcHooks,
    /// flannel.<VNI> and, dual-stack, flannel-v6.<VNI> (VXLAN only),
    /// together: tc on either keeps VXLAN of both families on the kernel
    /// path.
    pub vtep: TcHooks,
    /// The bridge's ports (pods' host veths) by ifindex.
    pub ports: BTreeMap<u32, TcHooks>,
    /// tc could not be read (the error is logged): what it does is
    /// unknown, so nothing may bypass it.
    pub unreadable: bool,
}

/// Reads tc on `interfaces` (ifindex, name): one qdisc dump for all, a
/// filter dump where an `ingress` or `clsact` qdisc exists, and a TCX
/// query per hook.
pub async fn read(handle: &Handle, interfaces: &[(u32, &str)]) -> Result<BTreeMap<u32, TcHooks>> {
    let qdiscs: Vec<TcMessage> = handle
        .qdisc()
        .get()
        .execute()
        .try_collect()
        .await
        .context("cannot list qdiscs")?;
    let mut hooks = BTreeMap::new();
    for (index, name) in interfaces {
        let (root_qdisc, classic) = qdiscs_of(&qdiscs, *index);
        let mut found = TcHooks {
            root_qdisc,
            ..TcHooks::default()
        };
        if let Some(hook) = classic {
            found.ingress_filters = filters(handle, *index, TcHandle::MIN_INGRESS).await?;
            if hook == ClassicHook::Clsact {
                found.egress_filters = filters(handle, *index, TcHandle::MIN_EGRESS).await?;
            }
        }
        found.tcx_ingress = tcx_programs(name, TcAttachType::Ingress)?;
        found.tcx_egress = tcx_programs(name, TcAttachType::Egress)?;
        hooks.insert(*index, found);
    }
    Ok(hooks)
}

/// The qdisc that holds classic filters outside the root: `ingress`
/// (ingress hook only) or `clsact` (both hooks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassicHook {
    Ingress,
    Clsact,
}

/// From a qdisc dump, interface `index`'s configured root qdisc (its kind)
/// and its `ingress`/`clsact` qdisc, if any.
pub fn qdiscs_of(qdiscs: &[TcMessage], index: u32) -> (Option<String>, Option<ClassicHook>) {
    let mut root = None;
    let mut classic = None;
    for qdisc in qdiscs
        .iter()
        .filter(|qdisc| u32::try_from(qdisc.header.index).ok() == Some(index))
    {
        let kind = kind_of(qdisc);
        if qdisc.header.parent == TcHandle::ROOT && qdisc.header.handle != TcHandle::UNSPEC {
            root = Some(kind.unwrap_or("?").to_owned());
        } else if qdisc.header.parent == TcHandle::INGRESS {
            classic = Some(if kind == Some("clsact") {
                ClassicHook::Clsact
            } else {
                ClassicHook::Ingress
            });
        }
    }
    (root, classic)
}

fn kind_of(message: &TcMessage) -> Option<&str> {
    message.attributes.iter().find_map(|attr| match attr {
        TcAttribute::Kind(kind) => Some(kind.as_str()),
        _ => None,
    })
}

/// How many filter entries the kernel dumps on one hook (`minor`:
/// `MIN_INGRESS` or `MIN_EGRESS` under the ingress/clsact qdisc). An
/// interface that vanished meanwhile has none.
async fn filters(handle: &Handle, index: u32, minor: u16) -> Result<usize> {
    let Ok(index) = i32::try_from(index) else {
        return Ok(0);
    };
    let mut request = handle.traffic_filter(index).get();
    request = if minor == TcHandle::MIN_EGRESS {
        request.egress()
    } else {
        request.ingress()
    };
    match request.execute().try_collect::<Vec<_>>().await {
        Ok(entries) => Ok(entries.len()),
        Err(rtnetlink::Error::NetlinkError(error))
            if error.raw_code() == -libc::ENODEV || error.raw_code() == -libc::EINVAL =>
        {
            Ok(0)
        }
        Err(error) => {
            Err(error).with_context(|| format!("cannot list tc filters of ifindex {index}"))
        }
    }
}

/// The TCX programs on one hook of `interface`, by id. None when the
/// interface (or a program) went away meanwhile, or the kernel has no TCX
/// (weft then attaches no programs either); any other failure is an
/// error: what is attached there is unknown.
fn tcx_programs(interface: &str, hook: TcAttachType) -> Result<Vec<u32>> {
    match SchedClassifier::query_tcx(interface, hook) {
        Ok((_, programs)) => Ok(programs
            .iter()
            .map(aya::programs::ProgramInfo::id)
            .collect()),
        Err(error) if gone_or_unsupported(&error) => Ok(Vec::new()),
        Err(error) => {
            Err(error).with_context(|| format!("cannot list the TCX programs on {interface}"))
        }
    }
}

fn gone_or_unsupported(error: &ProgramError) -> bool {
    let io_error = match error {
        ProgramError::SyscallError(SyscallError { io_error, .. })
        | ProgramError::TcError(TcError::IoError(io_error)) => io_error,
        _ => return false,
    };
    matches!(
        io_error.raw_os_error(),
        Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qdisc(index: i32, kind: &str, handle: TcHandle, parent: TcHandle) -> TcMessage {
        let mut message = TcMessage::default();
        message.header.index = index;
        message.header.handle = handle;
        message.header.parent = parent;
        message.attributes.push(TcAttribute::Kind(kind.to_owned()));
        message
    }

    const fn handle(major: u16) -> TcHandle {
        TcHandle { major, minor: 0 }
    }

    #[test]
    fn the_kernels_default_qdiscs_are_no_configuration() {
        // What a fresh veth, a NIC and its queues show: handle 0: everywhere.
        let dump = [
            qdisc(7, "noqueue", TcHandle::UNSPEC, TcHandle::ROOT),
            qdisc(2, "mq", TcHandle::UNSPEC, TcHandle::ROOT),
            qdisc(
                2,
                "fq_codel",
                TcHandle::UNSPEC,
                TcHandle { major: 0, minor: 1 },
            ),
        ];
        assert_eq!(qdiscs_of(&dump, 7), (None, None));
        assert_eq!(qdiscs_of(&dump, 2), (None, None));
    }

    #[test]
    fn the_bandwidth_plugins_qdiscs_are_found_on_their_interface_only() {
        // `tc qdisc show` after the plugin: a tbf root and an ingress qdisc
        // on the pod's veth (7); the ifb (9) has its own tbf.
        let dump = [
            qdisc(7, "tbf", handle(1), TcHandle::ROOT),
            qdisc(7, "ingress", handle(0xffff), TcHandle::INGRESS),
            qdisc(9, "tbf", handle(1), TcHandle::ROOT),
            qdisc(8, "clsact", handle(0xffff), TcHandle::INGRESS),
        ];
        assert_eq!(
            qdiscs_of(&dump, 7),
            (Some("tbf".to_owned()), Some(ClassicHook::Ingress))
        );
        assert_eq!(qdiscs_of(&dump, 8), (None, Some(ClassicHook::Clsact)));
        assert_eq!(qdiscs_of(&dump, 3), (None, None));
    }

    #[test]
    fn merged_hooks_act_where_either_acts() {
        let own = BTreeSet::from([10]);
        let ours = TcHooks {
            tcx_egress: vec![10],
            ..TcHooks::default()
        };
        let shaped = TcHooks {
            root_qdisc: Some("tbf".into()),
            ..TcHooks::default()
        };
        let filtered = TcHooks {
            ingress_filters: 1,
            ..TcHooks::default()
        };
        assert!(!ours.clone().merged(TcHooks::default()).acts(&own));
        assert!(ours.clone().merged(shaped.clone()).acts_on_egress(&own));
        assert!(shaped.merged(ours.clone()).acts_on_egress(&own));
        let both = ours.merged(filtered);
        assert!(both.acts_on_ingress(&own) && !both.acts_on_egress(&own));
    }

    #[test]
    fn only_other_programs_filters_or_a_root_qdisc_act() {
        let own = BTreeSet::from([10, 11]);
        let ours = TcHooks {
            tcx_ingress: vec![10],
            tcx_egress: vec![11],
            ..TcHooks::default()
        };
        assert!(!ours.acts(&own));
        let after_ours = TcHooks {
            tcx_ingress: vec![10, 12],
            ..ours.clone()
        };
        assert!(after_ours.acts_on_ingress(&own) && !after_ours.acts_on_egress(&own));
        let filtered = TcHooks {
            egress_filters: 1,
            ..ours.clone()
        };
        assert!(!filtered.acts_on_ingress(&own) && filtered.acts_on_egress(&own));
        let shaped = TcHooks {
            root_qdisc: Some("htb".into()),
            ..ours
        };
        assert!(shaped.acts_on_egress(&own) && !shaped.acts_on_ingress(&own));
    }
}
