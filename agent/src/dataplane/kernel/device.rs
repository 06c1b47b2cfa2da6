//! `flannel.<VNI>`: created or adopted with flanneld's settings and a
//! stable VTEP MAC, and given the node's subnet address.

use std::net::{IpAddr, Ipv4Addr};

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
    pub async fn ensure_vxlan_device(&mut self, uplink_mtu: u32) -> Result<Option<VxlanDevice>> {
        let BackendConfig::Vxlan { vni, port, .. } = self.config.backend else {
            return Ok(None);
        };
        let name = Self::vxlan_name(vni);
        let mtu = overlay_mtu(&self.config, uplink_mtu);
        let existing = link_by_name(&self.handle, &name).await?;
        let mut keep_mac = None;
        if let Some(link) = &existing {
            keep_mac = mac_of(link);
            let local = IpAddr::V4(self.public_ip);
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
                local: IpAddr::V4(self.public_ip),
                mtu,
                mac: keep_mac.unwrap_or_else(|| stable_vtep_mac(self.public_ip, vni)),
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

/// [`stable_vtep_mac`] for `flannel-v6.<VNI>`: made of the node's IPv4
/// address too (unique per node, where an IPv6 address's last bytes need
/// not be), with another first byte (still local unicast), so the two
/// devices' MACs differ.
pub fn stable_vtep_v6_mac(public_ip: Ipv4Addr, vni: u32) -> MacAddr {
    let [a, b, c, d] = public_ip.octets();
    MacAddr([0x1e, vni as u8, a, b, c, d])
}
