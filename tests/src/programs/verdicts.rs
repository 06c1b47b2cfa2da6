//! FLOWS and FLOWS6, the verdicts `tc_verdict` records (and the agent
//! confirms): written and read directly; and CT_LIBERAL, the flows
//! `tc_verdict` asks the agent to make liberal.

use std::net::Ipv6Addr;

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, RingBuf},
};
use weft_common::{
    FLOW_CONFIRMED, FLOW_KEY_LEN, FLOW_KEY6_LEN, FLOW_PENDING, FlowKey, FlowKey6, FlowVerdict,
    map_names,
};

use super::*;

impl Programs {
    /// Records netfilter's verdict for every flow the fixture frames use
    /// (ICMP echo requests and port-0 TCP between the fixture's pods, each
    /// way), confirmed, as `tc_verdict` and the agent would after netfilter
    /// passed them: the tests of forwarding and delivery start from flows
    /// netfilter accepted.
    pub fn accept_fixture_flows(&mut self) {
        let pods = [LOCAL_POD, OTHER_LOCAL_POD, REMOTE_POD, HOSTGW_POD];
        for src in pods {
            for dst in pods.into_iter().filter(|dst| *dst != src) {
                self.set_verdict(flow(src, dst, IPPROTO_ICMP, ECHO_ID, [0, 0]), GENERATION);
                self.set_verdict(flow(src, dst, IPPROTO_TCP, [0, 0], [0, 0]), GENERATION);
            }
        }
    }

    /// Writes a confirmed verdict for `key` seen now under `generation`.
    pub fn set_verdict(&mut self, key: FlowKey, generation: u32) {
        self.write_verdict(key, generation, FLOW_CONFIRMED);
    }

    /// Writes a pending verdict for `key` (a TCP flow whose conntrack
    /// entry the agent has not made liberal yet).
    pub fn set_pending_verdict(&mut self, key: FlowKey, generation: u32) {
        self.write_verdict(key, generation, FLOW_PENDING);
    }

    fn write_verdict(&mut self, key: FlowKey, generation: u32, state: u32) {
        self.write_verdict_in(map_names::FLOWS, key, generation, state);
    }

    /// Writes a verdict for `key` seen now into the verdict map `map`
    /// (FLOWS or FLOWS6).
    fn write_verdict_in<K: Pod>(&mut self, map: &str, key: K, generation: u32, state: u32) {
        let mut flows: HashMap<_, K, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut(map).unwrap()).unwrap();
        let verdict = FlowVerdict {
            seen_ns: monotonic_ns(),
            generation,
            state,
            ..FlowVerdict::default()
        };
        flows.insert(key, verdict, 0).unwrap();
    }

    /// A second handle on FLOWS, for the agent's own code (`ct_liberal`).
    pub fn flows_handle(&self) -> HashMap<MapData, FlowKey, FlowVerdict> {
        HashMap::try_from(Map::LruHashMap(self.second_map_handle(map_names::FLOWS))).unwrap()
    }

    /// Takes every flow `tc_verdict` has asked the agent to make liberal
    /// since the last call.
    pub fn liberal_requests(&self) -> Vec<FlowKey> {
        let mut ring =
            RingBuf::try_from(Map::RingBuf(self.second_map_handle(map_names::CT_LIBERAL))).unwrap();
        let mut keys = Vec::new();
        while let Some(record) = ring.next() {
            assert_eq!(record.len(), size_of::<FlowKey>(), "a record is a flow key");
            // SAFETY: exactly a FlowKey's bytes (alignment 1).
            keys.push(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<FlowKey>()) });
        }
        keys
    }

    /// Takes every record on CT_LIBERAL since the last call, each read as
    /// the agent reads it, by its length: a 16-byte IPv4 [`FlowKey`] or a
    /// 40-byte IPv6 [`FlowKey6`] (any other length fails the test).
    pub fn liberal_records(&self) -> Vec<LiberalRequest> {
        let mut ring =
            RingBuf::try_from(Map::RingBuf(self.second_map_handle(map_names::CT_LIBERAL))).unwrap();
        let mut records = Vec::new();
        while let Some(record) = ring.next() {
            // SAFETY: exactly a FlowKey's or FlowKey6's bytes (both of
            // alignment 1), as the length says.
            records.push(match record.len() {
                FLOW_KEY_LEN => LiberalRequest::V4(unsafe {
                    std::ptr::read_unaligned(record.as_ptr().cast::<FlowKey>())
                }),
                FLOW_KEY6_LEN => LiberalRequest::V6(unsafe {
                    std::ptr::read_unaligned(record.as_ptr().cast::<FlowKey6>())
                }),
                len => {
                    panic!("a CT_LIBERAL record of {len} bytes: neither a FlowKey nor a FlowKey6")
                }
            });
        }
        records
    }

    /// The verdict recorded for `key`, if any.
    pub fn verdict(&self, key: &FlowKey) -> Option<FlowVerdict> {
        let flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map("FLOWS").unwrap()).unwrap();
        flows.get(key, 0).ok()
    }

    /// Writes `verdict` for `key` as it is.
    pub fn put_verdict(&mut self, key: FlowKey, verdict: FlowVerdict) {
        let mut flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut("FLOWS").unwrap()).unwrap();
        flows.insert(key, verdict, 0).unwrap();
    }

    /// Forgets every recorded verdict.
    pub fn clear_verdicts(&mut self) {
        self.clear_verdicts_in::<FlowKey>(map_names::FLOWS);
    }

    /// Forgets every verdict in the verdict map `map` (FLOWS or FLOWS6).
    fn clear_verdicts_in<K: Pod>(&mut self, map: &str) {
        let mut flows: HashMap<_, K, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut(map).unwrap()).unwrap();
        let keys: Vec<K> = flows.keys().map(Result::unwrap).collect();
        for key in keys {
            flows.remove(&key).unwrap();
        }
    }

    /// [`Self::accept_fixture_flows`] for the dual-stack fixture's IPv6
    /// pods, in FLOWS6: ICMPv6 echo requests and port-0 TCP, each way.
    pub fn accept_fixture_flows6(&mut self) {
        let pods = [LOCAL_POD6, OTHER_LOCAL_POD6, REMOTE_POD6, HOSTGW_POD6];
        for src in pods {
            for dst in pods.into_iter().filter(|dst| *dst != src) {
                self.set_verdict6(flow6(src, dst, IPPROTO_ICMPV6, ECHO_ID, [0, 0]), GENERATION);
                self.set_verdict6(flow6(src, dst, IPPROTO_TCP, [0, 0], [0, 0]), GENERATION);
            }
        }
    }

    /// [`Self::set_verdict`] in FLOWS6.
    pub fn set_verdict6(&mut self, key: FlowKey6, generation: u32) {
        self.write_verdict_in(map_names::FLOWS6, key, generation, FLOW_CONFIRMED);
    }

    /// [`Self::set_pending_verdict`] in FLOWS6.
    pub fn set_pending_verdict6(&mut self, key: FlowKey6, generation: u32) {
        self.write_verdict_in(map_names::FLOWS6, key, generation, FLOW_PENDING);
    }

    /// Writes `verdict` for `key` in FLOWS6 as is.
    pub fn put_verdict6(&mut self, key: FlowKey6, verdict: FlowVerdict) {
        let mut flows: HashMap<_, FlowKey6, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut(map_names::FLOWS6).unwrap()).unwrap();
        flows.insert(key, verdict, 0).unwrap();
    }

    /// The verdict recorded in FLOWS6 for `key`, if any.
    pub fn verdict6(&self, key: &FlowKey6) -> Option<FlowVerdict> {
        let flows: HashMap<_, FlowKey6, FlowVerdict> =
            HashMap::try_from(self.ebpf.map(map_names::FLOWS6).unwrap()).unwrap();
        flows.get(key, 0).ok()
    }

    /// Forgets every verdict recorded in FLOWS6.
    pub fn clear_verdicts6(&mut self) {
        self.clear_verdicts_in::<FlowKey6>(map_names::FLOWS6);
    }
}

/// A CT_LIBERAL record, by its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiberalRequest {
    V4(FlowKey),
    V6(FlowKey6),
}

/// ICMP echo request and reply types.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;

/// A flow direction as FLOWS keys it; for ICMP, an echo request (as
/// `packets::icmp_echo` builds it), `sport` its identifier.
pub fn flow(src: [u8; 4], dst: [u8; 4], proto: u8, sport: [u8; 2], dport: [u8; 2]) -> FlowKey {
    let icmp_type = if proto == IPPROTO_ICMP {
        ICMP_ECHO_REQUEST
    } else {
        0
    };
    FlowKey {
        saddr: src,
        daddr: dst,
        sport,
        dport,
        proto,
        icmp_type,
        icmp_code: 0,
        _pad: 0,
    }
}

/// An ICMP echo flow direction of type `icmp_type` with identifier `id`.
pub fn echo_flow(src: [u8; 4], dst: [u8; 4], icmp_type: u8, id: [u8; 2]) -> FlowKey {
    FlowKey {
        icmp_type,
        ..flow(src, dst, IPPROTO_ICMP, id, [0, 0])
    }
}

/// ICMPv6 echo request and reply types.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// A flow direction as FLOWS6 keys it; for ICMPv6, an echo request (as
/// `packets::icmpv6_echo` builds it), `sport` its identifier.
pub fn flow6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, sport: [u8; 2], dport: [u8; 2]) -> FlowKey6 {
    let icmp_type = if proto == IPPROTO_ICMPV6 {
        ICMPV6_ECHO_REQUEST
    } else {
        0
    };
    FlowKey6 {
        saddr: src.octets(),
        daddr: dst.octets(),
        sport,
        dport,
        proto,
        icmp_type,
        icmp_code: 0,
        _pad: 0,
    }
}

/// An ICMPv6 echo flow direction of type `icmp_type` with identifier `id`.
pub fn echo_flow6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, id: [u8; 2]) -> FlowKey6 {
    FlowKey6 {
        icmp_type,
        ..flow6(src, dst, IPPROTO_ICMPV6, id, [0, 0])
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the verdict clock
/// (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
