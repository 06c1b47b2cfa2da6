//! The one ctnetlink request weft sends: "make this TCP conntrack entry
//! liberal in both directions", an `IPCTNL_MSG_CT_NEW` update of an
//! existing entry (no `NLM_F_CREATE`: a missing entry is `ENOENT`, never a
//! new one). The kernel's `nlattr_to_tcp` (net/netfilter/
//! nf_conntrack_proto_tcp.c) applies `CTA_PROTOINFO_TCP_FLAGS_ORIGINAL` and
//! `_REPLY` as `flags = (flags & !mask) | (value & mask)` under the entry's
//! lock, so only `IP_CT_TCP_FLAG_BE_LIBERAL` changes.
//!
//! netlink-packet-netfilter has no ctnetlink messages (0.4: nflog and
//! nftables only), so the attributes are built here on netlink-packet-core's
//! framing (header, attribute alignment, acks).

use std::io;

use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NetlinkDeserializable,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, Nla,
};
use weft_common::{FlowKey, FlowKey6};

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`.
const CT_NEW: u16 = 1 << 8;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NFNETLINK_V0: u8 = 0;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_PROTOINFO: u16 = 4;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

/// `IP_CT_TCP_FLAG_BE_LIBERAL`: skip the window checks for this direction
/// (out-of-window RSTs stay INVALID).
pub const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;
const IPPROTO_TCP: u8 = 6;

/// A netlink attribute: bytes, or nested attributes.
enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, value) => value.len(),
            Attr::Nested(_, inner) => inner.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes(kind, _) => *kind,
            Attr::Nested(kind, _) => kind | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, value) => buffer.copy_from_slice(value),
            Attr::Nested(_, inner) => inner.as_slice().emit(buffer),
        }
    }
}

/// The update for one TCP flow's conntrack entry. The flow's tuple as the
/// packet carried it is a conntrack tuple (weft marks only flows without
/// NAT); the kernel finds the entry by either direction's tuple, and both
/// directions get the same flags, so which one the packet was is moot.
pub struct MakeLiberal {
    /// The nfgenmsg family: conntrack looks the tuple up in this family's
    /// table (`AF_INET` or `AF_INET6`).
    family: u8,
    attrs: Vec<Attr>,
}

impl MakeLiberal {
    /// The update for `key`'s conntrack entry; `None` unless it is TCP.
    pub fn new(key: &FlowKey) -> Option<Self> {
        (key.proto == IPPROTO_TCP).then(|| {
            Self::tcp(
                AF_INET,
                [
                    Attr::Bytes(CTA_IP_V4_SRC, key.saddr.to_vec()),
                    Attr::Bytes(CTA_IP_V4_DST, key.daddr.to_vec()),
                ],
                key.sport,
                key.dport,
            )
        })
    }

    /// The update for an IPv6 flow's conntrack entry; `None` unless it is
    /// TCP.
    pub fn new6(key: &FlowKey6) -> Option<Self> {
        (key.proto == IPPROTO_TCP).then(|| {
            Self::tcp(
                AF_INET6,
                [
                    Attr::Bytes(CTA_IP_V6_SRC, key.saddr.to_vec()),
                    Attr::Bytes(CTA_IP_V6_DST, key.daddr.to_vec()),
                ],
                key.sport,
                key.dport,
            )
        })
    }

    /// The request for a TCP tuple whose addresses are `addresses` (the
    /// family's source and destination attributes), ports big endian.
    fn tcp(family: u8, addresses: [Attr; 2], sport: [u8; 2], dport: [u8; 2]) -> Self {
        let liberal = vec![IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL];
        let tuple = Attr::Nested(
            CTA_TUPLE_ORIG,
            vec![
                Attr::Nested(CTA_TUPLE_IP, addresses.into()),
                Attr::Nested(
                    CTA_TUPLE_PROTO,
                    vec![
                        Attr::Bytes(CTA_PROTO_NUM, vec![IPPROTO_TCP]),
                        Attr::Bytes(CTA_PROTO_SRC_PORT, sport.to_vec()),
                        Attr::Bytes(CTA_PROTO_DST_PORT, dport.to_vec()),
                    ],
                ),
            ],
        );
        let protoinfo = Attr::Nested(
            CTA_PROTOINFO,
            vec![Attr::Nested(
                CTA_PROTOINFO_TCP,
                vec![
                    // struct nf_ct_tcp_flags { flags, mask }
                    Attr::Bytes(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, liberal.clone()),
                    Attr::Bytes(CTA_PROTOINFO_TCP_FLAGS_REPLY, liberal),
                ],
            )],
        );
        Self {
            family,
            attrs: vec![tuple, protoinfo],
        }
    }

    /// The whole netlink message, asking for an ack, with sequence `seq`.
    pub fn to_bytes(self, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(self));
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }
}

impl NetlinkSerializable for MakeLiberal {
    fn message_type(&self) -> u16 {
        CT_NEW
    }

    fn buffer_len(&self) -> usize {
        4 + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        // struct nfgenmsg: family, version, res_id (big endian).
        buffer[..4].copy_from_slice(&[self.family, NFNETLINK_V0, 0, 0]);
        self.attrs.as_slice().emit(&mut buffer[4..]);
    }
}

/// The kernel only ever answers an update with an ack (an error message).
impl NetlinkDeserializable for MakeLiberal {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, _: &[u8]) -> Result<Self, Self::Error> {
        Err(DecodeError::from(format!(
            "unexpected ctnetlink message type {:#x}",
            header.message_type
        )))
    }
}

/// What a message read from the socket says about request `seq`.
#[derive(Debug)]
pub enum Answer {
    /// Done.
    Ack,
    /// Refused with this errno (`ENOENT`: no such conntrack entry).
    Refused(io::Error),
    /// The answer to another (earlier) request.
    Other(u32),
}

/// Reads the kernel's answer in `bytes`; an error if it is not an ack.
pub fn answer(bytes: &[u8], seq: u32) -> io::Result<Answer> {
    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidData, message);
    let message = NetlinkMessage::<MakeLiberal>::deserialize(bytes)
        .map_err(|error| invalid(format!("unreadable ctnetlink answer: {error}")))?;
    let NetlinkPayload::Error(error) = message.payload else {
        return Err(invalid(format!(
            "ctnetlink answered type {:#x}, not an ack",
            message.header.message_type
        )));
    };
    Ok(if message.header.sequence_number != seq {
        Answer::Other(message.header.sequence_number)
    } else if error.code.is_none() {
        Answer::Ack
    } else {
        Answer::Refused(error.to_io())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_key() -> FlowKey {
        FlowKey {
            saddr: [10, 244, 1, 2],
            daddr: [10, 244, 2, 3],
            sport: 40000u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
            proto: IPPROTO_TCP,
            ..FlowKey::default()
        }
    }

    #[test]
    fn encodes_the_tuple_and_both_directions_liberal_flags() {
        let bytes = MakeLiberal::new(&tcp_key()).unwrap().to_bytes(7);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // nlmsghdr: length, type CT_NEW, flags REQUEST|ACK, seq 7, pid 0
            &[96, 0, 0, 0][..], &[0x00, 0x01], &[0x05, 0x00], &[7, 0, 0, 0], &[0, 0, 0, 0],
            // nfgenmsg: AF_INET, v0, res_id 0
            &[2, 0, 0, 0],
            // CTA_TUPLE_ORIG (nested), 52 bytes
            &[52, 0, 0x01, 0x80],
            //   CTA_TUPLE_IP (nested): v4 src, v4 dst
            &[20, 0, 0x01, 0x80], &[8, 0, 1, 0, 10, 244, 1, 2], &[8, 0, 2, 0, 10, 244, 2, 3],
            //   CTA_TUPLE_PROTO (nested): proto 6 (padded), sport, dport (big endian)
            &[28, 0, 0x02, 0x80], &[5, 0, 1, 0, 6, 0, 0, 0],
            &[6, 0, 2, 0, 0x9c, 0x40, 0, 0], &[6, 0, 3, 0, 0x1f, 0x90, 0, 0],
            // CTA_PROTOINFO (nested) > CTA_PROTOINFO_TCP (nested)
            &[24, 0, 0x04, 0x80], &[20, 0, 0x01, 0x80],
            //   FLAGS_ORIGINAL and FLAGS_REPLY: {flags 0x08, mask 0x08}
            &[6, 0, 4, 0, 0x08, 0x08, 0, 0], &[6, 0, 5, 0, 0x08, 0x08, 0, 0],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn only_tcp_has_window_tracking_to_relax() {
        for proto in [1, 17] {
            let key = FlowKey { proto, ..tcp_key() };
            assert!(MakeLiberal::new(&key).is_none());
        }
        for proto in [17, 58] {
            let key = FlowKey6 {
                proto,
                ..tcp_key6()
            };
            assert!(MakeLiberal::new6(&key).is_none());
        }
    }

    fn tcp_key6() -> FlowKey6 {
        let ip = |last: u8| {
            let mut ip = [0u8; 16];
            ip[..8].copy_from_slice(&[0xfd, 0, 0, 0x10, 0x02, 0x44, 0, last]);
            ip[15] = 2 + last;
            ip
        };
        FlowKey6 {
            saddr: ip(1),
            daddr: ip(2),
            sport: 40000u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
            proto: IPPROTO_TCP,
            ..FlowKey6::default()
        }
    }

    #[test]
    fn encodes_the_ipv6_tuple_in_the_ipv6_family_with_the_same_flags() {
        let bytes = MakeLiberal::new6(&tcp_key6()).unwrap().to_bytes(9);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // nlmsghdr: length, type CT_NEW, flags REQUEST|ACK, seq 9, pid 0
            &[120, 0, 0, 0][..], &[0x00, 0x01], &[0x05, 0x00], &[9, 0, 0, 0], &[0, 0, 0, 0],
            // nfgenmsg: AF_INET6, v0, res_id 0
            &[10, 0, 0, 0],
            // CTA_TUPLE_ORIG (nested), 76 bytes
            &[76, 0, 0x01, 0x80],
            //   CTA_TUPLE_IP (nested): v6 src (3), v6 dst (4), 16 bytes each
            &[44, 0, 0x01, 0x80],
            &[20, 0, 3, 0], &[0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3],
            &[20, 0, 4, 0], &[0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 2, 0, 0, 0, 0, 0, 0, 0, 4],
            //   CTA_TUPLE_PROTO (nested): proto 6 (padded), sport, dport (big endian)
            &[28, 0, 0x02, 0x80], &[5, 0, 1, 0, 6, 0, 0, 0],
            &[6, 0, 2, 0, 0x9c, 0x40, 0, 0], &[6, 0, 3, 0, 0x1f, 0x90, 0, 0],
            // CTA_PROTOINFO (nested) > CTA_PROTOINFO_TCP (nested)
            &[24, 0, 0x04, 0x80], &[20, 0, 0x01, 0x80],
            //   FLAGS_ORIGINAL and FLAGS_REPLY: {flags 0x08, mask 0x08}
            &[6, 0, 4, 0, 0x08, 0x08, 0, 0], &[6, 0, 5, 0, 0x08, 0x08, 0, 0],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    /// An NLMSG_ERROR answer to `seq` with `code` (0: an ack).
    fn reply(seq: u32, code: i32) -> Vec<u8> {
        let mut bytes = vec![0u8; 36];
        bytes[..4].copy_from_slice(&36u32.to_ne_bytes());
        bytes[4..6].copy_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        bytes[8..12].copy_from_slice(&seq.to_ne_bytes());
        bytes[16..20].copy_from_slice(&code.to_ne_bytes());
        bytes
    }

    #[test]
    fn reads_acks_and_refusals() {
        assert!(matches!(answer(&reply(3, 0), 3), Ok(Answer::Ack)));
        let Ok(Answer::Refused(refused)) = answer(&reply(3, -libc::ENOENT), 3) else {
            panic!("ENOENT not read as a refusal");
        };
        assert_eq!(refused.raw_os_error(), Some(libc::ENOENT));
        assert!(matches!(answer(&reply(2, 0), 3), Ok(Answer::Other(2))));
        assert!(answer(&[1, 2, 3], 3).is_err(), "truncated");
    }
}
