//! What the probe tests share: a network namespace for the clones the
//! programs send, and verdicts aged to a chosen point of their TTL.

use weft_common::{FLOW_CONFIRMED, FlowKey, FlowKey6, FlowVerdict, Hook, Reason};

use super::*;
use crate::netns;

/// The TTL the probe tests run with.
pub const PROBE_TTL_NS: u64 = 1_000_000_000;

/// A confirmed verdict under the fixture's generation, `age_ns` old, no
/// probe sent for it yet.
fn aged(age_ns: u64) -> FlowVerdict {
    FlowVerdict {
        seen_ns: monotonic_ns().wrapping_sub(age_ns),
        generation: GENERATION,
        state: FLOW_CONFIRMED,
        ..FlowVerdict::default()
    }
}

impl Programs {
    /// Records a confirmed verdict for `key` that is `age_ns` old, no
    /// probe sent for it yet.
    pub fn age_verdict(&mut self, key: FlowKey, age_ns: u64) {
        self.put_verdict(key, aged(age_ns));
    }

    /// [`Self::age_verdict`] in FLOWS6.
    pub fn age_verdict6(&mut self, key: FlowKey6, age_ns: u64) {
        self.put_verdict6(key, aged(age_ns));
    }
}

/// Runs `work` in a network namespace of its own with `lo` up: a probe is
/// cloned into the ingress of the device the test run's packet is on,
/// `lo` of the caller's namespace, where this one routes it nowhere.
pub fn in_probe_netns(name: &'static str, work: impl FnOnce() + Send) {
    let ns = TestNetns::new(name);
    netns::run(ns.0, &["ip", "link", "set", "lo", "up"]).unwrap();
    netns::in_netns(ns.0, || {
        work();
        Ok(())
    })
    .unwrap();
}

/// A network namespace of the test's own, removed when dropped (also when
/// the test fails).
pub struct TestNetns(pub &'static str);

impl TestNetns {
    pub fn new(name: &'static str) -> Self {
        let _ = netns::delete(name);
        netns::add(name).unwrap();
        Self(name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = netns::delete(self.0);
    }
}

impl Programs {
    /// Runs `hook`'s program (`tc_pod_egress` or `tc_uplink`) on `frame`
    /// and checks that it sent a probe and forwarded the frame itself
    /// (`TC_ACT_REDIRECT`), counting only what it saw, the probe and
    /// `forwarded`; the frame as it left.
    pub fn assert_probe_sent(&mut self, hook: Hook, frame: &[u8], forwarded: Reason) -> Vec<u8> {
        let before = self.counters();
        let (verdict, out) = match hook {
            Hook::TcPodEgress => self.tc(frame),
            Hook::TcUplink => self.uplink_tc(frame),
            _ => panic!("{hook:?} sends no probes"),
        };
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "{hook:?} did not forward the frame"
        );
        assert_only(
            &before,
            &self.counters(),
            &[
                hook.counter(Reason::Seen),
                hook.counter(Reason::ProbeSent),
                hook.counter(forwarded),
            ],
        );
        out
    }
}

impl Programs {
    /// Runs `tc_verdict` on `probe` as netfilter passed it (marked) and
    /// checks that it was taken: its verdict learned again, the probe
    /// dropped, the mark cleared.
    pub fn assert_probe_taken(&mut self, probe: &[u8]) {
        let before = self.counters();
        let (verdict, _, mark) = self.tc_verdict(probe, ACCEPT_MARK);
        assert_eq!((verdict, mark), (TC_ACT_SHOT, 0), "the probe was not taken");
        assert_only(
            &before,
            &self.counters(),
            &[
                Hook::TcVerdict.counter(Reason::Learned),
                Hook::TcVerdict.counter(Reason::ProbeTaken),
            ],
        );
    }
}
