//! Whether a packet leaving through the uplink fits its MTU.

use aya_ebpf::programs::TcContext;
use network_types::{eth::EthHdr, udp::UdpHdr};
use weft_common::NodeConfig;

use crate::lib::headers::{IPPROTO_TCP, IPPROTO_UDP};

/// Whether the packet (or each GSO segment) fits the uplink MTU with
/// `overhead` more bytes in front of it.
#[inline(always)]
pub fn fits(
    ctx: &TcContext,
    config: &NodeConfig,
    overhead: usize,
    ip_header_len: usize,
    protocol: u8,
) -> bool {
    let room = config.uplink_mtu as usize - overhead;
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size } as usize;
    if gso_size == 0 {
        return ctx.len() as usize - EthHdr::LEN <= room;
    }
    // Each segment carries gso_size bytes of payload behind the IPv4 and
    // transport headers.
    let transport_len = match protocol {
        IPPROTO_TCP => {
            // The TCP data offset: the high nibble of byte 12.
            let Ok(offset_byte) = ctx.load::<u8>(EthHdr::LEN + ip_header_len + 12) else {
                return false;
            };
            usize::from(offset_byte >> 4) * 4
        }
        IPPROTO_UDP => UdpHdr::LEN,
        _ => return false,
    };
    gso_size + ip_header_len + transport_len <= room
}
