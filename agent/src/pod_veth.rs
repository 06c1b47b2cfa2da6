//! What a pod's own veth end needs for the fast path to deliver into it,
//! and what the pod's namespace says the pod is (its addresses and MAC).
//!
//! XDP_REDIRECT into a veth hands the frame to the peer (pod-side) end's
//! NAPI instance; a veth has one only while GRO is on (or an XDP program is
//! attached), otherwise the kernel drops the frame (-ENXIO). The CNI bridge
//! plugin leaves GRO off, so the agent turns it on, in the pod's network
//! namespace, found among the named namespaces in /run/netns (where
//! iproute2, containerd and CRI-O keep them) by the nsid the host-side veth
//! reports for its peer.

use std::{
    ffi::CString,
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

use crate::lease::MacAddr;

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

/// A pod's end of its veth, as read inside the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSide {
    pub mac: MacAddr,
    /// IPv4 addresses configured on the interface (by the CNI plugin).
    pub addresses: Vec<Ipv4Addr>,
    /// Its IPv6 addresses other than link-local ones (the kernel's own
    /// fe80:: address is no pod address the CNI plugin gave it).
    pub addresses_v6: Vec<Ipv6Addr>,
    /// GRO is on, read back after turning it on: XDP may redirect into it.
    pub gro_on: bool,
    /// Whether this call turned GRO on.
    pub gro_turned_on: bool,
}

/// Turns GRO on for interface `ifindex` inside namespace `netns` (a name in
/// /run/netns), confirms it, and reads the interface's MAC and IPv4 and
/// IPv6 addresses.
pub fn prepare(netns: &str, ifindex: u32) -> Result<PodSide> {
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
                let was_on = ethtool_value(&name, ETHTOOL_GGRO, 0)? != 0;
                if !was_on {
                    ethtool_value(&name, ETHTOOL_SGRO, 1)?;
                }
                let gro_on = ethtool_value(&name, ETHTOOL_GGRO, 0)? != 0;
                let (mac, addresses, addresses_v6) = mac_and_addresses(&name.to_string_lossy())?;
                Ok(PodSide {
                    mac: mac.ok_or_else(|| anyhow!("{name:?} in {netns} has no MAC"))?,
                    addresses,
                    addresses_v6,
                    gro_on,
                    gro_turned_on: !was_on && gro_on,
                })
            })
            .join()
            .map_err(|_| anyhow!("the thread inside {netns} panicked"))?
    })
}

/// The MAC, IPv4 addresses and non-link-local IPv6 addresses of interface
/// `name` in this thread's namespace.
fn mac_and_addresses(name: &str) -> Result<(Option<MacAddr>, Vec<Ipv4Addr>, Vec<Ipv6Addr>)> {
    let mut mac = None;
    let mut addresses = Vec::new();
    let mut addresses_v6 = Vec::new();
    for entry in nix::ifaddrs::getifaddrs().context("cannot list interface addresses")? {
        if entry.interface_name != name {
            continue;
        }
        let Some(address) = entry.address else {
            continue;
        };
        if let Some(inet) = address.as_sockaddr_in() {
            addresses.push(inet.ip());
        } else if let Some(inet6) = address.as_sockaddr_in6() {
            let ip = inet6.ip();
            if !ip.is_unicast_link_local() && !ip.is_multicast() && !ip.is_loopback() {
                addresses_v6.push(ip);
            }
        } else if let Some(link) = address.as_link_addr()
            && let Some(bytes) = link.addr()
        {
            mac = Some(MacAddr(bytes));
        }
    }
    addresses.sort();
    addresses_v6.sort();
    Ok((mac, addresses, addresses_v6))
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
