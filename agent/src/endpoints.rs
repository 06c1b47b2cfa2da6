//! Local pod discovery: the host-side veths plugged into the CNI bridge.
//!
//! The CNI bridge plugin creates `cni0` with the first pod and plugs every
//! pod's host-side veth into it. Nothing about the CNI setup changes for
//! weft: the agent follows the kernel's link events and re-reads the bridge's
//! ports whenever a link changes.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use netlink_packet_route::link::LinkAttribute;
use netlink_sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::{Handle, constants::RTMGRP_LINK};
use tokio::sync::mpsc;

use crate::net::{self, name_of};

/// The bridge's ports: ifindex -> interface name.
pub type BridgePorts = BTreeMap<u32, String>;

/// Sends the bridge's port set on `ports` at start and whenever it changes.
/// Returns only on error (or when the receiver is gone).
pub async fn watch_bridge_ports(bridge: String, ports: mpsc::Sender<BridgePorts>) -> Result<()> {
    let (mut connection, handle, mut events) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    // Subscribe before the first dump so no change between the two is missed.
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .context("cannot subscribe to link events")?;
    tokio::spawn(connection);

    let mut last_sent: Option<BridgePorts> = None;
    loop {
        let current = bridge_ports(&handle, &bridge).await?;
        if last_sent.as_ref() != Some(&current) {
            if ports.send(current.clone()).await.is_err() {
                return Ok(());
            }
            last_sent = Some(current);
        }
        if events.next().await.is_none() {
            bail!("the kernel link event stream closed");
        }
        // A pod coming up is a burst of link events; read the bridge once
        // the burst is over rather than once per event.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), events.next()).await
        {
        }
    }
}

/// The current ports of `bridge` (empty while the bridge does not exist).
pub async fn bridge_ports(handle: &Handle, bridge: &str) -> Result<BridgePorts> {
    let links = net::links(handle).await?;
    let Some(bridge_index) = links
        .iter()
        .find(|link| name_of(link) == Some(bridge))
        .map(|link| link.header.index)
    else {
        return Ok(BridgePorts::new());
    };
    Ok(links
        .iter()
        .filter(|link| {
            link.attributes.iter().any(
                |attr| matches!(attr, LinkAttribute::Controller(index) if *index == bridge_index),
            )
        })
        .filter_map(|link| Some((link.header.index, name_of(link)?.to_owned())))
        .collect())
}
