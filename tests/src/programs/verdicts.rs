//! FLOWS, the verdicts `tc_verdict` records: written and read directly,
//! since the agent never writes them.

use aya::maps::HashMap;
use weft_common::{FlowKey, FlowVerdict};

use super::*;

impl Programs {
    /// Records netfilter's verdict for every flow the fixture frames use
    /// (ICMP echo and port-0 TCP between the fixture's pods, each way), as
    /// `tc_verdict` would after netfilter passed them: the tests of
    /// forwarding and delivery start from flows netfilter accepted.
    pub fn accept_fixture_flows(&mut self) {
        let pods = [LOCAL_POD, OTHER_LOCAL_POD, REMOTE_POD, HOSTGW_POD];
        for src in pods {
            for dst in pods.into_iter().filter(|dst| *dst != src) {
                self.set_verdict(flow(src, dst, IPPROTO_ICMP, ECHO_ID, [0, 0]), GENERATION);
                self.set_verdict(flow(src, dst, IPPROTO_TCP, [0, 0], [0, 0]), GENERATION);
            }
        }
    }

    /// Writes a verdict for `key` seen now under `generation`.
    pub fn set_verdict(&mut self, key: FlowKey, generation: u32) {
        let mut flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut("FLOWS").unwrap()).unwrap();
        let verdict = FlowVerdict {
            seen_ns: monotonic_ns(),
            generation,
            _pad: 0,
        };
        flows.insert(key, verdict, 0).unwrap();
    }

    /// The verdict recorded for `key`, if any.
    pub fn verdict(&self, key: &FlowKey) -> Option<FlowVerdict> {
        let flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map("FLOWS").unwrap()).unwrap();
        flows.get(key, 0).ok()
    }

    /// Forgets every recorded verdict.
    pub fn clear_verdicts(&mut self) {
        let mut flows: HashMap<_, FlowKey, FlowVerdict> =
            HashMap::try_from(self.ebpf.map_mut("FLOWS").unwrap()).unwrap();
        let keys: Vec<FlowKey> = flows.keys().map(Result::unwrap).collect();
        for key in keys {
            flows.remove(&key).unwrap();
        }
    }
}

/// A flow direction as FLOWS keys it.
pub fn flow(src: [u8; 4], dst: [u8; 4], proto: u8, sport: [u8; 2], dport: [u8; 2]) -> FlowKey {
    FlowKey {
        saddr: src,
        daddr: dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
