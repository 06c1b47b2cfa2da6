//! `flannel-v6.<VNI>` (dual-stack VXLAN): flanneld's `newVXLANDevice` with
//! the uplink's IPv6 address as the local end (vxlan id VNI, local = the
//! uplink's IPv6 address, dev = uplink, dstport, nolearning, accept_ra 0),
//! a stable VTEP MAC, and `ConfigureIPv6`'s address: the own IPv6 subnet's
//! network address /128. Its MTU is the overlay MTU, which leaves room for
//! the IPv6 outer header (`desired::overlay_mtu`), and never more than the
//! kernel takes for VXLAN over IPv6 (uplink - 70).

use std::net::{IpAddr, Ipv6Addr};

use anyhow::Result;
use ipnet::Ipv6Net;
use tracing::warn;

use super::{
    KernelDataplane, VxlanDevice,
    device::stable_vtep_v6_mac,
    entries::vxlan_settings_match,
    vxlan_link::{AddressWords, VxlanSettings},
};
use crate::{
    config::BackendConfig,
    desired::{VXLAN_V6_OVERHEAD, overlay_mtu},
    net::{link_by_name, mac_of},
};

impl KernelDataplane {
    pub fn vxlan_v6_name(vni: u32) -> String {
        format!("flannel-v6.{vni}")
    }

    /// Creates (or adopts) `flannel-v6.<VNI>` sending from `local`, the
    /// uplink's IPv6 address; nothing unless the network is dual-stack
    /// VXLAN. An existing device with other settings is recreated with
    /// its MAC, so the lease's `BackendV6Data` stays valid.
    pub async fn ensure_vxlan_v6_device(
        &mut self,
        uplink_mtu: u32,
        local: Ipv6Addr,
    ) -> Result<Option<VxlanDevice>> {
        let BackendConfig::Vxlan { vni, port, .. } = self.config.backend else {
            return Ok(None);
        };
        if self.config.ipv6.is_none() {
            return Ok(None);
        }
        let name = Self::vxlan_v6_name(vni);
        // The kernel refuses more than the uplink's less the IPv6 outer
        // header on a VXLAN device over IPv6 (a configured `MTU` may be
        // larger: that is the IPv4 device's and the pods').
        let mtu =
            overlay_mtu(&self.config, uplink_mtu).min(uplink_mtu.saturating_sub(VXLAN_V6_OVERHEAD));
        let existing = link_by_name(&self.handle, &name).await?;
        let mut keep_mac = None;
        let mut adopt = false;
        if let Some(link) = &existing {
            keep_mac = mac_of(link);
            let settings_match =
                vxlan_settings_match(link, vni, port, IpAddr::V6(local), self.uplink_index);
            adopt = self.adopt_or_delete(&name, link, settings_match).await? && keep_mac.is_some();
        }
        if !adopt {
            self.create_vxlan(&VxlanSettings {
                name: &name,
                vni,
                port,
                local: IpAddr::V6(local),
                mtu,
                mac: keep_mac.unwrap_or_else(|| stable_vtep_v6_mac(self.public_ip, local, vni)),
            })
            .await?;
        }
        // As flanneld: the overlay device takes no router advertisements
        // (an RA on it would add routes and addresses nobody asked for).
        let accept_ra = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
        if let Err(error) = std::fs::write(&accept_ra, "0") {
            warn!("cannot write {accept_ra}: {error}");
        }
        let device = self.bring_up(&name, mtu).await?;
        self.vxlan_v6 = Some(device);
        Ok(Some(device))
    }

    /// Gives flannel-v6.<VNI> the address `<v6 subnet network>/128` (the
    /// source of host-to-pod IPv6 traffic, as flanneld's `ConfigureIPv6`),
    /// dropping any other global address (a subnet from an earlier lease);
    /// the kernel's link-local address stays.
    pub async fn set_vxlan_v6_address(&self, subnet: &Ipv6Net) -> Result<()> {
        let Some(device) = self.vxlan_v6 else {
            return Ok(());
        };
        let words = AddressWords {
            stale: "flannel-v6",
            device: "flannel-v6",
        };
        self.set_only_address(device, IpAddr::V6(subnet.network()), 128, words)
            .await
    }

    /// `flannel-v6.<VNI>`, once created.
    pub fn vxlan_v6(&self) -> Option<VxlanDevice> {
        self.vxlan_v6
    }
}
