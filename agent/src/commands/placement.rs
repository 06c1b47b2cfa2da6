//! Which network namespace a pin dir's programs are attached in, as far as
//! `weft status` and `weft maps` can tell from where they run.
//!
//! The maps hold ifindexes (the uplink's, the pods' veths'), and an ifindex
//! names an interface only inside one network namespace: read from another
//! (the host's, against a node's pin dir) it names some other interface, or
//! none. The pins know where they are used: the programs attached to the
//! node's interfaces hold the pinned maps. So the commands look for a
//! program using the pinned CONFIG on the interface CONFIG names, here; if
//! none is there they say so instead of reporting this namespace's
//! interfaces as the node's.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    maps::MapInfo,
    programs::{SchedClassifier, TcAttachType, loaded_programs},
};
use serde::Serialize;
use weft_common::{map_names, program_names};

/// Where the programs using a pin dir's maps are, seen from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// On the uplink CONFIG names, in this network namespace: ifindexes
    /// name the node's interfaces here.
    ThisNamespace,
    /// Loaded, but not on that interface here: attached in another
    /// network namespace (the node's).
    OtherNamespace,
    /// No program uses the maps: the agent is stopped (the maps stay
    /// pinned); nothing tells which namespace their ifindexes belong to.
    NotLoaded,
}

impl Placement {
    /// Finds where the programs using the maps pinned in `pin_dir` are,
    /// with `uplink_ifindex` as CONFIG holds it.
    pub fn find(pin_dir: &Path, uplink_ifindex: u32) -> Result<Self> {
        let path = pin_dir.join(map_names::CONFIG);
        let config = MapInfo::from_pin(&path)
            .with_context(|| format!("cannot read the info of {}", path.display()))?
            .id();
        let uses_config = |program: &aya::programs::ProgramInfo| {
            program
                .map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&config))
        };
        let here = nix::net::if_::if_indextoname(uplink_ifindex)
            .ok()
            .and_then(|name| name.into_string().ok())
            .and_then(|name| SchedClassifier::query_tcx(&name, TcAttachType::Ingress).ok())
            .is_some_and(|(_, programs)| {
                programs.iter().any(|program| {
                    program.name_as_str() == Some(program_names::TC_UPLINK) && uses_config(program)
                })
            });
        if here {
            return Ok(Self::ThisNamespace);
        }
        let loaded = loaded_programs()
            .filter_map(Result::ok)
            .any(|program| uses_config(&program));
        Ok(if loaded {
            Self::OtherNamespace
        } else {
            Self::NotLoaded
        })
    }

    /// Whether ifindexes from the maps name the node's interfaces here.
    pub fn names_interfaces(self) -> bool {
        self == Self::ThisNamespace
    }

    /// What to tell someone who asked for interface facts, when they
    /// cannot be given from here.
    pub fn why_no_interfaces(self) -> Option<&'static str> {
        match self {
            Self::ThisNamespace => None,
            Self::OtherNamespace => Some(
                "the programs using these maps are attached in another network namespace: \
                 interfaces are not shown; run inside the node's network namespace \
                 (nsenter --net=/run/netns/<node>, which keeps /sys/fs/bpf; \
                 `ip netns exec` hides it)",
            ),
            Self::NotLoaded => Some(
                "no program uses these maps (the agent is stopped): nothing is attached, \
                 and nothing tells which network namespace their interface indexes belong to",
            ),
        }
    }
}
