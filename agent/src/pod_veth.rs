//! What a pod's own veth end needs for the fast path to deliver into it.
//!
//! XDP_REDIRECT into a veth hands the frame to the peer (pod-side) end's
//! NAPI instance; a veth has one only while GRO is on (or an XDP program is
//! attached), otherwise the kernel drops the frame (-ENXIO). The CNI bridge
//! plugin leaves GRO off, so the agent turns it on, in the pod's network
//! namespace, found among the named namespaces in /run/netns (where
//! iproute2, containerd and CRI-O keep them) by the nsid the host-side veth
//! reports for its peer.

use std::{ffi::CString, fs::File, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

pub const NETNS_DIR: &str = "/run/netns";

// linux/ethtool.h and linux/sockios.h.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// The named namespace whose nsid (as seen from here) is `nsid`.
pub async fn netns_by_id(handle: &Handle, nsid: i32) -> Result<Option<String>> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(Some(id)) = handle.link().get_netns_id(name.clone()).execute().await
            && id == nsid
        {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Turns GRO on for interface `ifindex` inside namespace `netns` (a name in
/// /run/netns); returns whether it had to.
pub fn enable_gro(netns: &str, ifindex: u32) -> Result<bool> {
    let path = Path::new(NETNS_DIR).join(netns);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // A thread of its own: setns changes only the calling thread, and this
    // one ends right after.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter {}", path.display()))?;
                let name = nix::net::if_::if_indextoname(ifindex)
                    .map_err(|error| anyhow!("no interface {ifindex} in {netns}: {error}"))?;
                let on = ethtool_value(&name, ETHTOOL_GGRO, 0)? != 0;
                if !on {
                    ethtool_value(&name, ETHTOOL_SGRO, 1)?;
                }
                Ok(!on)
            })
            .join()
            .map_err(|_| anyhow!("the thread inside {netns} panicked"))?
    })
}

fn ethtool_value(interface: &CString, cmd: u32, data: u32) -> Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: plain socket + SIOCETHTOOL ioctl with a zeroed ifreq that
    // names the interface and points at `value`, which outlives the call.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            bail!("cannot open a socket: {}", std::io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request
            .ifr_name
            .iter_mut()
            .zip(interface.as_bytes_with_nul())
        {
            *dst = *src as libc::c_char;
        }
        request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        let result = libc::ioctl(socket, SIOCETHTOOL, &mut request);
        let error = std::io::Error::last_os_error();
        libc::close(socket);
        if result < 0 {
            bail!("ethtool on {interface:?} failed: {error}");
        }
    }
    Ok(value.data)
}
