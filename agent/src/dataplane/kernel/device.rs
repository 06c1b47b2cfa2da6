//! `flannel.<VNI>`: created or adopted with flanneld's settings and a
//! stable VTEP MAC, and given the node's subnet address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use ipnet::Ipv4Net;

use super::{
    KernelDataplane, VxlanDevice,
    entries::vxlan_settings_match,
    vxlan_link::{AddressWords, VxlanSettings},
};
use crate::{
    config::BackendConfig,
    desired::overlay_mtu,
    lease::MacAddr,
    net::{link_by_name, mac_of},
};

impl KernelDataplane {
    pub fn vxlan_name(vni: u32) -> String {
        format!("flannel.{vni}")
    }

    /// Creates (or adopts) `flannel.<VNI>` with flanneld's settings and
    /// returns its VTEP MAC. An existing device with other settings is
    /// recreated; its MAC is kept, so leases stay valid across restarts.
    /// Nothing unless the network is VXLAN with IPv4 (an IPv6-only network
    /// has `flannel-v6.<VNI>` alone, as flanneld).
    pub async fn ensure_vxlan_device(&mut self, uplink_mtu: u32) -> Result<Option<VxlanDevice>> {
        let BackendConfig::Vxlan { vni, port, .. } = self.config.backend else {
            return Ok(None);
        };
        let (Some(_), Some(public_ip)) = (&self.config.ipv4, self.public_ip) else {
            return Ok(None);
        };
        let name = Self::vxlan_name(vni);
        let mtu = overlay_mtu(&self.config, uplink_mtu);
        let existing = link_by_name(&self.handle, &name).await?;
        let mut keep_mac = None;
        if let Some(link) = &existing {
            keep_mac = mac_of(link);
            let local = IpAddr::V4(public_ip);
            let settings_match = vxlan_settings_match(link, vni, port, local, self.uplink_index);
            self.adopt_or_delete(&name, link, settings_match).await?;
        }
        let adopt = existing.is_some()
            && keep_mac.is_some()
            && link_by_name(&self.handle, &name).await?.is_some();
        if !adopt {
            self.create_vxlan(&VxlanSettings {
                name: &name,
                vni,
                port,
                local: IpAddr::V4(public_ip),
                mtu,
                mac: keep_mac.unwrap_or_else(|| stable_vtep_mac(public_ip, vni)),
            })
            .await?;
        }
        let device = self.bring_up(&name, mtu).await?;
        self.vxlan = Some(device);
        Ok(Some(device))
    }

    /// Gives flannel.<VNI> the address `<subnet network>/32`, dropping any
    /// other address (a subnet from an earlier lease).
    pub async fn set_vxlan_address(&self, subnet: &Ipv4Net) -> Result<()> {
        let Some(device) = self.vxlan else {
            return Ok(());
        };
        let words = AddressWords {
            stale: "VXLAN",
            device: "the VXLAN device",
        };
        self.set_only_address(device, IpAddr::V4(subnet.network()), 32, words)
            .await
    }
}

/// A locally administered unicast MAC made of the VNI's low byte and the
/// node address: the same node gets the same VTEP MAC even when the device is
/// recreated (after a reboot), so its lease stays valid for every peer, and
/// the MAC says whose it is.
pub fn stable_vtep_mac(public_ip: Ipv4Addr, vni: u32) -> MacAddr {
    let [a, b, c, d] = public_ip.octets();
    MacAddr([0x0e, vni as u8, a, b, c, d])
}

/// [`stable_vtep_mac`] for `flannel-v6.<VNI>`: in a dual-stack network
/// made of the node's IPv4 address too (unique per node, where an IPv6
/// address's last bytes need not be), with another first byte (still local
/// unicast), so the two devices' MACs differ. An IPv6-only node has no
/// IPv4 address: its MAC is made of a hash of its IPv6 underlay address
/// (`local`) instead, with a third first byte (so it never equals a
/// dual-stack node's). Two nodes whose hashes meet would announce one MAC:
/// every peer then uses the older lease's and refuses the younger one
/// (`vtep_mac_in_use`), as for any MAC clash.
pub fn stable_vtep_v6_mac(public_ip: Option<Ipv4Addr>, local: Ipv6Addr, vni: u32) -> MacAddr {
    let (first, [a, b, c, d]) = match public_ip {
        Some(ip) => (0x1e, ip.octets()),
        None => (0x2e, fnv1a_32(&local.octets()).to_be_bytes()),
    };
    MacAddr([first, vni as u8, a, b, c, d])
}

/// FNV-1a, 32 bits: a hash whose value is fixed by its definition (std's
/// hashers may change between Rust releases, and a VTEP MAC must not).
fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}
