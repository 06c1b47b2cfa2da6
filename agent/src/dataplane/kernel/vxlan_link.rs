//! The steps `flannel.<VNI>` and `flannel-v6.<VNI>` share: adopting or
//! recreating an existing device, creating one with flanneld's settings,
//! bringing it up, and giving it exactly one address. `device.rs` and
//! `device_v6.rs` keep what differs (the local end, the MTU, the MAC,
//! the IPv6 device's `accept_ra`).

use std::net::IpAddr;

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use netlink_packet_route::{address::AddressAttribute, link::LinkMessage};
use rtnetlink::{LinkUnspec, LinkVxlan};
use tracing::{info, warn};

use super::{KernelDataplane, VxlanDevice};
use crate::{lease::MacAddr, net::link_by_name, net::mac_of};

/// flanneld's settings for a VXLAN device (`newVXLANDevice`).
pub struct VxlanSettings<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub port: u16,
    /// The underlay address the device sends from.
    pub local: IpAddr,
    pub mtu: u32,
    pub mac: MacAddr,
}

/// How an address change on one device is named in errors.
pub struct AddressWords {
    /// "cannot remove a stale {stale} address".
    pub stale: &'static str,
    /// "cannot add {address}/{prefix} to {device}".
    pub device: &'static str,
}

impl KernelDataplane {
    /// Keeps `link` when `settings_match` (and says so), else deletes it
    /// so it can be recreated; returns `settings_match`.
    pub(super) async fn adopt_or_delete(
        &self,
        name: &str,
        link: &LinkMessage,
        settings_match: bool,
    ) -> Result<bool> {
        if settings_match {
            info!(device = %name, "adopting existing VXLAN device");
        } else {
            warn!(device = %name, "existing VXLAN device has other settings; recreating it");
            self.delete_link(name, link).await?;
        }
        Ok(settings_match)
    }

    /// Deletes the device `link` (named `name`, for the error).
    pub(super) async fn delete_link(&self, name: &str, link: &LinkMessage) -> Result<()> {
        self.handle
            .link()
            .del(link.header.index)
            .execute()
            .await
            .with_context(|| format!("cannot delete {name}"))
    }

    /// Creates the device: vxlan id, local end, uplink, port, no learning,
    /// MTU and MAC as `settings` say.
    pub(super) async fn create_vxlan(&self, settings: &VxlanSettings<'_>) -> Result<()> {
        let link = LinkVxlan::new(settings.name, settings.vni).dev(self.uplink_index);
        let link = match settings.local {
            IpAddr::V4(local) => link.local(local),
            IpAddr::V6(local) => link.local6(local),
        };
        let message = link
            .port(settings.port)
            .learning(false)
            .mtu(settings.mtu)
            .address(settings.mac.0.to_vec())
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .with_context(|| format!("cannot create {}", settings.name))
    }

    /// Sets `name` up with `mtu` and returns its index and MAC.
    pub(super) async fn bring_up(&self, name: &str, mtu: u32) -> Result<VxlanDevice> {
        let link = link_by_name(&self.handle, name)
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
        Ok(VxlanDevice { index, mac })
    }

    /// Gives `device` the address `wanted/prefix_len`, dropping any other
    /// address of the same family (a subnet from an earlier lease) but an
    /// IPv6 link-local one (the kernel's own).
    pub(super) async fn set_only_address(
        &self,
        device: VxlanDevice,
        wanted: IpAddr,
        prefix_len: u8,
        words: AddressWords,
    ) -> Result<()> {
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(device.index)
            .execute();
        let mut present = false;
        while let Some(message) = addresses.try_next().await? {
            let address = message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(address) if address.is_ipv4() == wanted.is_ipv4() => {
                    Some(*address)
                }
                _ => None,
            });
            match address {
                Some(address) if address == wanted && message.header.prefix_len == prefix_len => {
                    present = true
                }
                Some(IpAddr::V6(address)) if address.is_unicast_link_local() => {}
                Some(_) => self
                    .handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .with_context(|| format!("cannot remove a stale {} address", words.stale))?,
                None => {}
            }
        }
        if !present {
            self.handle
                .address()
                .add(device.index, wanted, prefix_len)
                .execute()
                .await
                .with_context(|| format!("cannot add {wanted}/{prefix_len} to {}", words.device))?;
        }
        Ok(())
    }
}
