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
use aya::programs::{SchedClassifier, TcAttachType};
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
}

/// tc on every interface the fast path bypasses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcView {
    pub uplink: TcHooks,
    /// The pods' bridge (cni0).
    pub bridge: TcHooks,
    /// flannel.<VNI> (VXLAN only).
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
        let mut found = TcHooks::default();
        let mut classic = None;
        for qdisc in qdiscs
            .iter()
            .filter(|qdisc| u32::try_from(qdisc.header.index).ok() == Some(*index))
        {
            let kind = kind_of(qdisc);
            if qdisc.header.parent == TcHandle::ROOT && qdisc.header.handle != TcHandle::UNSPEC {
                found.root_qdisc = Some(kind.unwrap_or("?").to_owned());
            } else if qdisc.header.parent == TcHandle::INGRESS {
                classic = Some(kind == Some("clsact"));
            }
        }
        if let Some(clsact) = classic {
            found.ingress_filters = filters(handle, *index, TcHandle::MIN_INGRESS).await?;
            if clsact {
                found.egress_filters = filters(handle, *index, TcHandle::MIN_EGRESS).await?;
            }
        }
        found.tcx_ingress = tcx_programs(name, TcAttachType::Ingress);
        found.tcx_egress = tcx_programs(name, TcAttachType::Egress);
        hooks.insert(*index, found);
    }
    Ok(hooks)
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

/// The TCX programs on one hook of `interface`, by id; none when the
/// interface is gone or the kernel has no TCX (weft then attaches no
/// programs either).
fn tcx_programs(interface: &str, hook: TcAttachType) -> Vec<u32> {
    SchedClassifier::query_tcx(interface, hook)
        .map(|(_, programs)| {
            programs
                .iter()
                .map(aya::programs::ProgramInfo::id)
                .collect()
        })
        .unwrap_or_default()
}
