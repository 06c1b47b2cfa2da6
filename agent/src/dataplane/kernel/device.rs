//! `flannel.<VNI>`: created or adopted with flanneld's settings and a
//! stable VTEP MAC, and given the node's subnet address.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::{LinkUnspec, LinkVxlan};
use tracing::{info, warn};

use super::{KernelDataplane, VxlanDevice, entries::vxlan_settings_match};
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
            if vxlan_settings_match(link, vni, port, self.public_ip, self.uplink_index) {
                info!(device = %name, "adopting existing VXLAN device");
            } else {
                warn!(device = %name, "existing VXLAN device has other settings; recreating it");
                self.handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .with_context(|| format!("cannot delete {name}"))?;
            }
        }
        let adopt = existing.is_some()
            && keep_mac.is_some()
            && link_by_name(&self.handle, &name).await?.is_some();
        if !adopt {
            let mac = keep_mac.unwrap_or_else(|| stable_vtep_mac(self.public_ip, vni));
            let message = LinkVxlan::new(&name, vni)
                .dev(self.uplink_index)
                .local(self.public_ip)
                .port(port)
                .learning(false)
                .mtu(mtu)
                .address(mac.0.to_vec())
                .build();
            self.handle
                .link()
                .add(message)
                .execute()
                .await
                .with_context(|| format!("cannot create {name}"))?;
        }
        let link = link_by_name(&self.handle, &name)
            .await?
            .ok_or_else(|| anyhow!("{name} vanished"))?;
        let index = link.header.index;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .with_context(|| format!("cannot set {name} up with MTU {mtu}"))?;
        let mac = mac_of(&link).ok_or_else(|| anyhow!("{name} has no MAC address"))?;
        let device = VxlanDevice { index, mac };
        self.vxlan = Some(device);
        Ok(Some(device))
    }

    /// Gives flannel.<VNI> the address `<subnet network>/32`, dropping any
    /// other address (a subnet from an earlier lease).
    pub async fn set_vxlan_address(&self, subnet: &Ipv4Net) -> Result<()> {
        let Some(device) = self.vxlan else {
            return Ok(());
        };
        let wanted = subnet.network();
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(device.index)
            .execute();
        let mut present = false;
        while let Some(message) = addresses.try_next().await? {
            let address = message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(address)) => Some(*address),
                _ => None,
            });
            match address {
                Some(address) if address == wanted && message.header.prefix_len == 32 => {
                    present = true
                }
                Some(_) => self
                    .handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .context("cannot remove a stale VXLAN address")?,
                None => {}
            }
        }
        if !present {
            self.handle
                .address()
                .add(device.index, IpAddr::V4(wanted), 32)
                .execute()
                .await
                .with_context(|| format!("cannot add {wanted}/32 to the VXLAN device"))?;
        }
        Ok(())
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
