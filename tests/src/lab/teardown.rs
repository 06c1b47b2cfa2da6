//! Removing a lab (`down`, also on Ctrl-C) and describing one (`status`).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, Once},
    time::Duration,
};

use anyhow::{Result, anyhow};

use super::{
    Dataplane, UNDERLAY_BRIDGE, UNDERLAY_GATEWAY, UNDERLAY_PREFIX, UNDERLAY_PREFIX_V6, UPLINK,
    load, run_dir,
};
use crate::{host::BPFFS, netns, process};

/// Removes everything lab `name` created: agents and etcd (SIGTERM, then
/// SIGKILL), pod, node and underlay namespaces, pin dirs, the run directory.
/// Works from any process and after a partial `up`; keeps going past errors
/// and reports them together.
pub fn down(name: &str) -> Result<()> {
    let mut errors = Vec::new();
    let dir = run_dir(name);
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut pid_files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
            .collect();
        // Agents first, etcd last: agents detach cleanly while etcd is up.
        pid_files.sort_by_key(|path| path.ends_with("etcd.pid"));
        for pid_file in pid_files {
            if let Err(error) = process::stop(&pid_file, Duration::from_secs(10)) {
                errors.push(format!("{error:#}"));
            }
        }
    }
    let mut namespaces: Vec<String> = netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| belongs_to(name, ns))
        .collect();
    // Pods before nodes before the underlay.
    namespaces.sort_by_key(|ns| std::cmp::Reverse(ns.len()));
    for ns in namespaces {
        if let Err(error) = netns::delete(&ns) {
            errors.push(format!("{error:#}"));
        }
    }
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if belongs_to(name, &file_name)
                && let Err(error) = fs::remove_dir_all(entry.path())
            {
                errors.push(format!("cannot remove {}: {error}", entry.path().display()));
            }
        }
    }
    if dir.exists()
        && let Err(error) = fs::remove_dir_all(&dir)
    {
        errors.push(format!("cannot remove {}: {error}", dir.display()));
    }
    unregister(name);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// Whether `item` (a namespace or pin dir name) is one of lab `name`'s:
/// `name-ul`, `name-nN` or `name-nN-pM`, and nothing else (`name-x` or
/// another lab `name2-...` never matches).
pub fn belongs_to(name: &str, item: &str) -> bool {
    let Some(rest) = item
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    if rest == "ul" {
        return true;
    }
    let numbered = |part: &str, tag: char| {
        part.strip_prefix(tag)
            .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
    };
    match rest.split_once('-') {
        None => numbered(rest, 'n'),
        Some((node, pod)) => numbered(node, 'n') && numbered(pod, 'p'),
    }
}

/// Human-readable status of lab `name`.
pub fn status(name: &str) -> Result<String> {
    let state = load(name)?;
    let alive = |pid_file: &Path| match process::running_pid(pid_file) {
        Some(pid) => format!("running (pid {pid})"),
        None => "not running".to_owned(),
    };
    let mut out = format!(
        "lab {}  backend {:?}  dataplane {:?}\n  {}  {UNDERLAY_BRIDGE} {UNDERLAY_GATEWAY}/{UNDERLAY_PREFIX}  etcd {} {}\n",
        state.name,
        state.backend,
        state.dataplane,
        state.underlay_ns,
        state.etcd_endpoint,
        alive(&state.run_dir.join("etcd.pid")),
    );
    if let Some(kube) = &state.kube {
        out += &format!(
            "  kube-apiserver {} {} (admin kubeconfig {}; agents use {})\n",
            kube.server,
            alive(&state.run_dir.join("kube-apiserver.pid")),
            kube.admin_kubeconfig.display(),
            kube.agent_kubeconfig.display()
        );
    }
    if let Some(url) = &state.prometheus {
        out += &format!(
            "  prometheus {url} {} (scrapes every weft agent's /metrics)\n",
            alive(&state.run_dir.join("prometheus.pid"))
        );
    }
    for node in &state.nodes {
        let agent = match node.dataplane {
            Dataplane::Floor => "no agent (floor: plain routes)".to_owned(),
            Dataplane::Flanneld => format!(
                "stock flanneld {}",
                alive(&node.agent_pid_file(&state.run_dir))
            ),
            dataplane => format!(
                "agent ({}) {}",
                dataplane.flag(),
                alive(&node.agent_pid_file(&state.run_dir))
            ),
        };
        let ip6 = node
            .ip6
            .as_ref()
            .map(|ip6| format!(" {ip6}/{UNDERLAY_PREFIX_V6}"))
            .unwrap_or_default();
        let subnet6 = node
            .subnet6
            .as_ref()
            .map(|subnet6| format!(" {subnet6}"))
            .unwrap_or_default();
        out += &format!(
            "  {}  {UPLINK} {}/{UNDERLAY_PREFIX}{ip6}  subnet {}{subnet6}  pins {}  {agent}\n",
            node.ns,
            node.ip,
            node.subnet,
            node.pin_dir.display()
        );
        for pod in &node.pods {
            let address6 = pod
                .network
                .address6
                .as_ref()
                .map(|address6| format!(" {address6}"))
                .unwrap_or_default();
            out += &format!(
                "    {}  eth0 {}{address6}  host veth {}\n",
                pod.ns, pod.network.address, pod.network.host_veth
            );
        }
    }
    Ok(out)
}

// Ctrl-C / SIGTERM: tear down every lab this process is bringing up or
// holding, then exit. A lab left running on purpose (`lab up`) leaves this
// list through `Lab::keep`.
static LIVE_LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub(super) fn register(name: &str) {
    LIVE_LABS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .push(name.to_owned());
}

pub(super) fn unregister(name: &str) {
    LIVE_LABS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .retain(|live| live != name);
}

pub(super) fn install_interrupt_teardown() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            let names = LIVE_LABS
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            for name in names {
                eprintln!("interrupted: tearing down lab {name}");
                if let Err(error) = down(&name) {
                    eprintln!("lab {name}: teardown incomplete: {error:#}");
                }
            }
            std::process::exit(130);
        });
        if let Err(error) = installed {
            // Another handler (e.g. the test harness's) owns the signal; Drop
            // still tears labs down on panic and normal exit.
            eprintln!("weft lab: cannot install the Ctrl-C teardown handler: {error}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::belongs_to;

    #[test]
    fn only_the_labs_own_names_belong_to_it() {
        for own in ["weft-ul", "weft-n1", "weft-n12", "weft-n3-p2"] {
            assert!(belongs_to("weft", own), "{own}");
        }
        for foreign in [
            "weft",
            "weft-",
            "weft-x",
            "weft2-n1",
            "weftn1",
            "weft-n",
            "weft-n1-p",
            "weft-n1-q1",
            "weft-ul0",
            "other-n1",
        ] {
            assert!(!belongs_to("weft", foreign), "{foreign}");
        }
    }
}
