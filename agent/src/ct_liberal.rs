//! Liberal TCP tracking for exactly the flows the fast path carries.
//!
//! conntrack does not see the segments the fast path carries, so when a
//! flow's next packet goes through netfilter (at its verdict's re-check)
//! its sequence numbers are far past the window conntrack tracked: strict
//! tracking would call it INVALID, and kube-proxy drops INVALID. The
//! kernel's flowtable solves this by setting `IP_CT_TCP_FLAG_BE_LIBERAL` in
//! the conntrack entry of each flow it offloads; weft does the same, per
//! flow, through ctnetlink. `nf_conntrack_tcp_be_liberal` stays as the
//! operator set it, so every other connection on the node (the node's own
//! included) keeps strict window tracking.
//!
//! `tc_verdict` records a new TCP verdict pending and sends its flow on the
//! `CT_LIBERAL` ring buffer; this thread marks the flow's conntrack entry
//! liberal in both directions, then confirms the verdict in FLOWS (an IPv4
//! flow, a 16-byte `FlowKey` record) or FLOWS6 (IPv6, a 40-byte
//! `FlowKey6`: conntrack's IPv6 table, the same flags). Until
//! then the flow takes the kernel path (`*_pass_verdict_pending`). If the
//! entry is gone, or the kernel refuses, the pending verdict is removed so
//! the flow's next marked packet asks again.

pub mod message;

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapError, RingBuf};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use tracing::{info, warn};
use weft_common::{
    FLOW_CONFIRMED, FLOW_KEY_LEN, FLOW_KEY6_LEN, FLOW_PENDING, FlowKey, FlowKey6, FlowVerdict,
    map_names,
};

use message::{Answer, MakeLiberal};

/// `BPF_EXIST`: update only an entry that is still there.
const BPF_EXIST: u64 = 2;

/// A flow key conntrack can be asked about, and the verdict map it keys.
pub trait Flow: aya::Pod + std::fmt::Debug {
    /// FLOWS or FLOWS6.
    const MAP: &'static str;

    /// The ctnetlink update that makes its entry liberal; `None` unless it
    /// is TCP.
    fn make_liberal(&self) -> Option<MakeLiberal>;
}

impl Flow for FlowKey {
    const MAP: &'static str = map_names::FLOWS;

    fn make_liberal(&self) -> Option<MakeLiberal> {
        MakeLiberal::new(self)
    }
}

impl Flow for FlowKey6 {
    const MAP: &'static str = map_names::FLOWS6;

    fn make_liberal(&self) -> Option<MakeLiberal> {
        MakeLiberal::new6(self)
    }
}

/// A ctnetlink socket that marks conntrack entries liberal, one request
/// and its ack at a time.
pub struct Marker {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl Marker {
    /// Opens the socket in the calling thread's network namespace (the
    /// node's: conntrack is per namespace).
    pub fn new() -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_NETFILTER).context("cannot open a ctnetlink socket")?;
        socket
            .bind_auto()
            .context("cannot bind the ctnetlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("cannot connect the ctnetlink socket to the kernel")?;
        Ok(Self {
            socket,
            seq: 0,
            buffer: vec![0; 8192],
        })
    }

    /// Sets `IP_CT_TCP_FLAG_BE_LIBERAL` in both directions of `key`'s
    /// conntrack entry. `ENOENT`: there is none.
    pub fn make_liberal(&mut self, key: &impl Flow) -> io::Result<()> {
        let request = key
            .make_liberal()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a TCP flow"))?;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.socket.send(&request.to_bytes(seq), 0)?;
        loop {
            let length = self.socket.recv(&mut &mut self.buffer[..], 0)?;
            match message::answer(&self.buffer[..length], seq)? {
                Answer::Ack => return Ok(()),
                Answer::Refused(error) => return Err(error),
                // An earlier request's late answer: not this one's.
                Answer::Other(_) => continue,
            }
        }
    }
}

/// What became of one flow the agent was asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Marked liberal; its verdict confirmed.
    Confirmed,
    /// Marked liberal, but its verdict was gone already (FIN or RST, or
    /// evicted): nothing to confirm.
    Lapsed,
    /// conntrack holds no entry for it: the pending verdict is removed.
    NoConntrackEntry,
    /// The kernel refused the update: the pending verdict is removed.
    Refused,
    /// A record on the ring buffer that is not a flow key.
    Malformed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Confirmed,
        Outcome::Lapsed,
        Outcome::NoConntrackEntry,
        Outcome::Refused,
        Outcome::Malformed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Lapsed => "lapsed",
            Outcome::NoConntrackEntry => "no_conntrack_entry",
            Outcome::Refused => "refused",
            Outcome::Malformed => "malformed",
        }
    }
}

/// FLOWS (or, for [`FlowKey6`], FLOWS6), where verdicts are confirmed.
pub struct Flows<K: Flow = FlowKey> {
    map: HashMap<MapData, K, FlowVerdict>,
}

impl<K: Flow> Flows<K> {
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let path = pin_dir.join(K::MAP);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("cannot open pinned map {}", path.display()))?;
        let map = HashMap::try_from(Map::LruHashMap(data))
            .with_context(|| format!("{} is not weft's {}", path.display(), K::MAP))?;
        Ok(Self::from_map(map))
    }

    pub fn from_map(map: HashMap<MapData, K, FlowVerdict>) -> Self {
        Self { map }
    }

    fn get(&self, key: &K) -> Option<FlowVerdict> {
        match self.map.get(key, 0) {
            Ok(verdict) => Some(verdict),
            Err(MapError::KeyNotFound) => None,
            Err(error) => {
                warn!("cannot read {}: {error}", K::MAP);
                None
            }
        }
    }

    /// Confirms `key`'s verdict if it is still pending; whether one was
    /// there to confirm. Seen time and generation are kept: the verdict
    /// lapses when it would have.
    fn confirm(&mut self, key: &K) -> bool {
        let Some(verdict) = self.get(key) else {
            return false;
        };
        if verdict.state != FLOW_PENDING {
            return true;
        }
        let confirmed = FlowVerdict {
            state: FLOW_CONFIRMED,
            ..verdict
        };
        self.map.insert(key, confirmed, BPF_EXIST).is_ok()
    }

    /// Removes `key`'s verdict if it is (still) pending.
    fn forget_pending(&mut self, key: &K) {
        if self
            .get(key)
            .is_some_and(|verdict| verdict.state == FLOW_PENDING)
        {
            let _ = self.map.remove(key);
        }
    }
}

/// Marks `key`'s conntrack entry liberal, then confirms its verdict.
pub fn handle<K: Flow>(marker: &mut Marker, flows: &mut Flows<K>, key: &K) -> Outcome {
    match marker.make_liberal(key) {
        Ok(()) if flows.confirm(key) => Outcome::Confirmed,
        Ok(()) => Outcome::Lapsed,
        Err(error) => {
            flows.forget_pending(key);
            if error.raw_os_error() == Some(libc::ENOENT) {
                Outcome::NoConntrackEntry
            } else {
                warn!(?key, "conntrack refused to make the flow liberal: {error}");
                Outcome::Refused
            }
        }
    }
}

/// A ring buffer record: which family's flow, told by its length.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    V4(FlowKey),
    V6(FlowKey6),
}

/// Reads a flow key from a ring buffer record; `None` for any length but
/// a [`FlowKey`]'s or a [`FlowKey6`]'s.
fn key_of(record: &[u8]) -> Option<Record> {
    // SAFETY (both reads): exactly the key's bytes; both keys are plain
    // bytes with alignment 1 (every bit pattern is a valid key).
    match record.len() {
        FLOW_KEY_LEN => Some(Record::V4(unsafe {
            std::ptr::read_unaligned(record.as_ptr().cast::<FlowKey>())
        })),
        FLOW_KEY6_LEN => Some(Record::V6(unsafe {
            std::ptr::read_unaligned(record.as_ptr().cast::<FlowKey6>())
        })),
        _ => None,
    }
}

/// Starts the thread that answers `tc_verdict`'s requests (the maps pinned
/// in `pin_dir`), in the calling thread's network namespace.
pub fn spawn(pin_dir: &Path) -> Result<()> {
    let path = pin_dir.join(map_names::CT_LIBERAL);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("cannot open pinned map {}", path.display()))?;
    let mut requests = RingBuf::try_from(Map::RingBuf(data))
        .with_context(|| format!("{} is not weft's ring buffer", path.display()))?;
    let mut flows = Flows::<FlowKey>::open_pinned(pin_dir)?;
    let mut flows6 = Flows::<FlowKey6>::open_pinned(pin_dir)?;
    let mut marker = Marker::new()?;
    std::thread::Builder::new()
        .name("ct-liberal".into())
        .spawn(move || {
            let metrics = crate::metrics::global();
            loop {
                while let Some(record) = requests.next() {
                    let key = key_of(&record);
                    drop(record);
                    let outcome = match key {
                        Some(Record::V4(key)) => handle(&mut marker, &mut flows, &key),
                        Some(Record::V6(key)) => handle(&mut marker, &mut flows6, &key),
                        None => Outcome::Malformed,
                    };
                    metrics.ct_liberal(outcome.name());
                }
                let mut poll = [libc::pollfd {
                    fd: requests.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd; blocks until the ring buffer
                // has records (or a signal interrupts, which loops).
                unsafe { libc::poll(poll.as_mut_ptr(), 1, -1) };
            }
        })
        .context("cannot start the conntrack marking thread")?;
    info!("conntrack entries of fast-pathed TCP flows are made liberal per flow (ctnetlink)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_length_tells_an_ipv4_flow_from_an_ipv6_one() {
        let v4 = FlowKey {
            saddr: [10, 244, 1, 2],
            daddr: [10, 244, 2, 3],
            sport: [0x9c, 0x40],
            dport: [0x1f, 0x90],
            proto: 6,
            ..FlowKey::default()
        };
        let bytes: Vec<u8> = [
            &v4.saddr[..],
            &v4.daddr,
            &v4.sport,
            &v4.dport,
            &[6, 0, 0, 0],
        ]
        .concat();
        assert_eq!(key_of(&bytes), Some(Record::V4(v4)));
        let mut bytes6 = vec![0u8; FLOW_KEY6_LEN];
        bytes6[0] = 0xfd;
        bytes6[15] = 2;
        bytes6[16] = 0xfd;
        bytes6[31] = 3;
        bytes6[32..36].copy_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        bytes6[36] = 6;
        let Some(Record::V6(v6)) = key_of(&bytes6) else {
            panic!("a 40-byte record is an IPv6 flow");
        };
        assert_eq!(
            (v6.saddr[0], v6.saddr[15], v6.daddr[15], v6.dport, v6.proto),
            (0xfd, 2, 3, [0x1f, 0x90], 6)
        );
        for length in [0, 15, 17, 39, 41, 56] {
            assert_eq!(key_of(&vec![0; length]), None, "{length} bytes");
        }
    }
}
