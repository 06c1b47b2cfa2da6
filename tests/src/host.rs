//! What the lab may touch on the host, captured so a test can prove that
//! `lab down` left it exactly as it was.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context as _, Result};

use crate::netns;

pub const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSnapshot {
    pub netns: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub bpffs: BTreeSet<String>,
}

impl HostSnapshot {
    pub fn take() -> Result<Self> {
        let links: serde_json::Value =
            serde_json::from_str(&netns::run_host(&["ip", "-j", "link", "show"])?)
                .context("ip -j link show printed no JSON")?;
        Ok(Self {
            netns: netns::list()?.into_iter().collect(),
            links: links
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
                .collect(),
            bpffs: walk(Path::new(BPFFS))?,
        })
    }

    /// Only what is named after lab `name` (its namespaces, links and pin
    /// directories all start with it): on a shared machine other labs come
    /// and go meanwhile.
    pub fn of_lab(&self, name: &str) -> Self {
        let prefix = format!("{name}-");
        let pins = format!("{BPFFS}/{prefix}");
        let keep = |set: &BTreeSet<String>, prefix: &str| {
            set.iter()
                .filter(|entry| entry.starts_with(prefix))
                .cloned()
                .collect()
        };
        Self {
            netns: keep(&self.netns, &prefix),
            links: keep(&self.links, &prefix),
            bpffs: keep(&self.bpffs, &pins),
        }
    }
}

fn walk(dir: &Path) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(found);
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        found.insert(path.display().to_string());
        if entry.file_type()?.is_dir() {
            found.extend(walk(&path)?);
        }
    }
    Ok(found)
}
