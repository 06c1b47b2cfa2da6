//! tc stays an authority: where the agent found tc configuration on a
//! path (the `ENDPOINT_TC_*` and `CONFIG_TC_*` flags), the fast path leaves
//! the packet to the kernel path, which applies it. And a TC program that
//! takes no action hands the packet on with `TCX_NEXT`: `TC_ACT_OK` would
//! end the TCX chain, so classic filters (the CNI bandwidth plugin's
//! redirect to its ifb) and later TCX programs would never see it.

use weft_common::{
    CONFIG_TC_BRIDGE, CONFIG_TC_UPLINK, CONFIG_TC_VTEP, ENDPOINT_TC_RECEIVES, ENDPOINT_TC_SENDS,
    Endpoint, NodeConfig, Reason,
};

/// TCX: no verdict, run the next program (then the classic filters).
/// Under a classic cls_bpf direct-action filter it is `TC_ACT_UNSPEC`,
/// which also carries on with the next filter.
pub const TCX_NEXT: i32 = -1;

/// A pod's packet may leave on the fast path only if tc acts neither on
/// its veth's ingress (where this program runs, before the classic
/// filters) nor on the bridge the kernel path would take it through.
#[inline(always)]
pub fn sending_allowed(sender_flags: u8, config: &NodeConfig) -> Result<(), Reason> {
    if sender_flags & ENDPOINT_TC_SENDS != 0 {
        return Err(Reason::PassTcSender);
    }
    if config.flags & CONFIG_TC_BRIDGE != 0 {
        return Err(Reason::PassTcBridge);
    }
    Ok(())
}

/// A redirect into `endpoint` skips its host veth's egress (root qdisc,
/// filters, programs); only where tc has nothing there.
#[inline(always)]
pub fn receiving_allowed(endpoint: &Endpoint) -> Result<(), Reason> {
    if endpoint.flags & ENDPOINT_TC_RECEIVES != 0 {
        return Err(Reason::PassTcReceiver);
    }
    Ok(())
}

/// A delivery from the uplink skips the uplink's ingress after this hook,
/// flannel.<VNI> (VXLAN), the bridge and the pod's veth egress.
#[inline(always)]
pub fn uplink_delivery_allowed(
    endpoint: &Endpoint,
    config: &NodeConfig,
    vxlan: bool,
) -> Result<(), Reason> {
    if config.flags & CONFIG_TC_UPLINK != 0 {
        return Err(Reason::PassTcUplink);
    }
    if vxlan {
        encap_allowed(config)?;
    }
    if config.flags & CONFIG_TC_BRIDGE != 0 {
        return Err(Reason::PassTcBridge);
    }
    receiving_allowed(endpoint)
}

/// Encapsulating (or decapsulating) skips flannel.<VNI>.
#[inline(always)]
pub fn encap_allowed(config: &NodeConfig) -> Result<(), Reason> {
    if config.flags & CONFIG_TC_VTEP != 0 {
        return Err(Reason::PassTcVtep);
    }
    Ok(())
}
