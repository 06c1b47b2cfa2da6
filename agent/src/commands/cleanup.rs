//! `weft cleanup`: removes what a stopped agent leaves on a node, for an
//! uninstall or a rollback to flanneld.
//!
//! A stopped agent leaves: table `inet weft` (kill -9 leaves all of it;
//! SIGTERM keeps the overlay guard, so the node stays closed to injected
//! VXLAN while the agent restarts), the maps pinned in its bpffs directory,
//! and (after kill -9) the pods' permanent neighbour entries on the bridge
//! (IPv4, and IPv6 in a dual-stack network).
//! Programs need no cleanup: their attachments belong to the agent's
//! process and end with it. The overlay guard's IPv6 set and rules
//! (dual-stack) are in table `inet weft` and go with it. What flanneld
//! shares with weft stays: the `flannel.<VNI>` device (and in a dual-stack
//! network `flannel-v6.<VNI>`), routes, fdb and neighbour entries to peers
//! in both families, `subnet.env`, the masquerade tables (`ip
//! flannel-ipv4`, `ip6 flannel-ipv6`), and the lease in etcd; flanneld
//! takes them over as they are, so the pods keep talking over IPv4 and
//! IPv6 across a rollback.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use weft_common::map_names;

use crate::{bpffs, cli::NodeFiles, dataplane::pod_neighbours, net, subnet_env, weft_table};

pub async fn cleanup(args: &NodeFiles) -> Result<()> {
    // Refuse first, before removing anything: a running agent would put it
    // all back, or run on maps pulled from under it.
    let lock = if args.bpf_pin_dir.exists() {
        Some(lock_when_free(&args.bpf_pin_dir).await?)
    } else {
        None
    };
    weft_table::remove()?;
    println!("removed table inet {}", weft_table::TABLE);
    if lock.is_some() {
        let unpinned = unpin_maps(&args.bpf_pin_dir)?;
        drop(lock);
        std::fs::remove_dir(&args.bpf_pin_dir).with_context(|| {
            format!(
                "cannot remove {} (files weft did not put there?)",
                args.bpf_pin_dir.display()
            )
        })?;
        println!(
            "removed {} pinned maps and {}",
            unpinned,
            args.bpf_pin_dir.display()
        );
    }
    let removed = unpin_neighbours(args).await?;
    println!(
        "removed {removed} pinned pod neighbour entries on {}",
        args.bridge
    );
    println!(
        "kept what flanneld shares with weft: flannel.<VNI> (and flannel-v6.<VNI>), routes, fdb and neighbour entries to peers, {}, the masquerade tables",
        args.subnet_file.display()
    );
    Ok(())
}

/// How long a just-killed agent may take to let go of its pin directory:
/// its last threads still hold its files for a moment after its main
/// thread is gone.
const EXITING_AGENT: std::time::Duration = std::time::Duration::from_secs(3);

/// The pin directory's lock, once no agent holds it.
async fn lock_when_free(pin_dir: &Path) -> Result<bpffs::PinDirLock> {
    let deadline = tokio::time::Instant::now() + EXITING_AGENT;
    loop {
        match bpffs::lock_pin_dir(pin_dir) {
            Ok(lock) => return Ok(lock),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(error.context("weft cleanup: stop the agent first"));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// Unpins the maps weft pins; returns how many there were.
fn unpin_maps(pin_dir: &Path) -> Result<usize> {
    let mut unpinned = 0;
    for name in map_names::PINNED {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => unpinned += 1,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot unpin {}", path.display()));
            }
        }
    }
    Ok(unpinned)
}

/// The pods' pinned entries: permanent, on the bridge, inside the subnets
/// `subnet.env` names (FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET, whichever
/// it has; weft pins nothing else there).
async fn unpin_neighbours(args: &NodeFiles) -> Result<usize> {
    let Some(env) = subnet_env::read_if_present(&args.subnet_file)? else {
        println!(
            "no {}: no subnet, so no pod neighbour entries to look for",
            args.subnet_file.display()
        );
        return Ok(0);
    };
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    tokio::spawn(connection);
    let Some(bridge) = net::link_by_name(&handle, &args.bridge).await? else {
        return Ok(0);
    };
    let subnet = env.ipv4.as_ref().map(|ipv4| ipv4.subnet.trunc());
    if subnet.is_some_and(|subnet| subnet.prefix_len() == 0) {
        bail!("{}: a /0 subnet", args.subnet_file.display());
    }
    let subnet_v6 = env.ipv6.as_ref().map(|ipv6| ipv6.subnet.trunc());
    if subnet_v6.is_some_and(|subnet_v6| subnet_v6.prefix_len() == 0) {
        bail!("{}: a /0 IPv6 subnet", args.subnet_file.display());
    }
    let own = pod_neighbours::OwnSubnets {
        v4: subnet,
        v6: subnet_v6,
    };
    pod_neighbours::unpin_all(&handle, bridge.header.index, own).await
}
