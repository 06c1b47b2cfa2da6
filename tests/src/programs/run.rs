//! Running the programs once on a frame with BPF_PROG_TEST_RUN.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use weft_common::{
    CounterId,
    Hook::{TcUplink, XdpUplink},
    Reason,
    program_names::{TC_POD_EGRESS, TC_UPLINK, TC_VERDICT, XDP_UPLINK},
};

use super::*;

/// `__sk_buff.cb`'s offset.
const SKB_CB: usize = 48;

impl Programs {
    /// Runs `tc_verdict` on `frame` carrying packet mark `mark`: (verdict,
    /// the frame it left, the mark it left).
    pub fn tc_verdict(&self, frame: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        self.tc_marked(TC_VERDICT, frame, mark)
    }

    /// Runs `tc_pod_egress` on `frame` carrying packet mark `mark` (a
    /// probe coming back): (verdict, the frame it left, the mark it left).
    pub fn tc_pod_egress_marked(&self, frame: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        self.tc_marked(TC_POD_EGRESS, frame, mark)
    }

    /// Runs `tc_verdict` on `frame` carrying packet mark `mark` and `cb` in
    /// `__sk_buff.cb[0..2]`: (verdict, the cb it left).
    pub fn tc_verdict_with_cb(&self, frame: &[u8], mark: u32, cb: [u32; 2]) -> (u32, [u32; 2]) {
        let (verdict, _, _, cb) = self.tc_with_ctx(TC_VERDICT, frame, mark, cb);
        (verdict, cb)
    }

    /// Runs `tc_pod_egress` on `frame`: (verdict, the frame it left, the
    /// `__sk_buff.cb[0..2]` it left).
    pub fn tc_with_cb_out(&self, frame: &[u8]) -> (u32, Vec<u8>, [u32; 2]) {
        let (verdict, out, _, cb) = self.tc_with_ctx(TC_POD_EGRESS, frame, 0, [0; 2]);
        (verdict, out, cb)
    }

    fn tc_marked(&self, name: &str, frame: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        let (verdict, out, mark, _) = self.tc_with_ctx(name, frame, mark, [0; 2]);
        (verdict, out, mark)
    }

    fn tc_with_ctx(
        &self,
        name: &str,
        frame: &[u8],
        mark: u32,
        cb: [u32; 2],
    ) -> (u32, Vec<u8>, u32, [u32; 2]) {
        let program: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
        // struct __sk_buff up to and including `cb` (`mark` at offset 8,
        // `cb[5]` at 48); the kernel requires the fields between them
        // (but `priority`, `ingress_ifindex` and `ifindex`) to be zero.
        let mut ctx_in = [0u8; SKB_CB + 20];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx_in[SKB_CB..SKB_CB + 4].copy_from_slice(&cb[0].to_ne_bytes());
        ctx_in[SKB_CB + 4..SKB_CB + 8].copy_from_slice(&cb[1].to_ne_bytes());
        // The kernel writes back the whole struct (192 bytes on 6.x).
        let mut ctx_out = [0u8; 256];
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::new()
            })
            .unwrap();
        out.truncate(result.data_size_out as usize);
        let word = |at: usize| u32::from_ne_bytes(ctx_out[at..at + 4].try_into().unwrap());
        (
            result.return_value,
            out,
            word(8),
            [word(SKB_CB), word(SKB_CB + 4)],
        )
    }

    pub fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &Xdp = self.ebpf.program(XDP_UPLINK).unwrap().try_into().unwrap();
        run(program, frame)
    }

    pub fn tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_POD_EGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        run(program, frame)
    }

    /// TC ingress on the uplink (`tc_uplink`).
    pub fn uplink_tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self.ebpf.program(TC_UPLINK).unwrap().try_into().unwrap();
        run(program, frame)
    }

    /// `tc_uplink` on `frame` as a GSO packet of `segments` segments of
    /// `gso_size` bytes, as GRO hands it over (the test run sets no GSO
    /// type: `bpf_skb_adjust_room` refuses to decapsulate it, which a real
    /// GRO packet, TCP in a UDP tunnel, is not).
    pub fn uplink_tc_gso(&self, frame: &[u8], segments: u32, gso_size: u32) -> u32 {
        let program: &SchedClassifier = self.ebpf.program(TC_UPLINK).unwrap().try_into().unwrap();
        // struct __sk_buff up to and including `gso_size` (offset 176);
        // `gso_segs` is at 164, every other field zero.
        let mut ctx_in = [0u8; 180];
        ctx_in[164..168].copy_from_slice(&segments.to_ne_bytes());
        ctx_in[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ..TestRunOptions::new()
            })
            .unwrap()
            .return_value
    }

    /// Each (what, frame, counter): XDP hands the frame to the kernel
    /// untouched and counts it under `counter` alone.
    pub fn assert_xdp_passes(&self, cases: &[(&str, Vec<u8>, CounterId)]) {
        for (what, frame, counter) in cases {
            let before = self.counters();
            let (verdict, out) = self.xdp(frame);
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_eq!(&out, frame, "{what}: a passed frame must be untouched");
            assert_counted(&before, &self.counters(), *counter);
        }
    }

    /// Each (what, frame, counter): `tc_uplink` (with no XDP attached, so it
    /// counts what it refuses) hands the frame to the kernel untouched and
    /// counts it under `counter` alone.
    pub fn assert_uplink_tc_passes(&self, cases: &[(&str, Vec<u8>, CounterId)]) {
        for (what, frame, counter) in cases {
            let before = self.counters();
            let (verdict, out) = self.uplink_tc(frame);
            assert_eq!(verdict, TCX_NEXT, "{what}");
            assert_eq!(&out, frame, "{what}: a passed frame must be untouched");
            assert_counted(&before, &self.counters(), *counter);
        }
    }

    /// Each (what, frame, reason): both uplink programs, XDP and
    /// `tc_uplink` (counting itself, as without XDP), hand the frame to the
    /// kernel untouched and count it under `reason` alone.
    pub fn assert_uplink_refuses(&self, cases: &[(&str, Vec<u8>, Reason)]) {
        let under = |hook: weft_common::Hook| -> Vec<(&str, Vec<u8>, CounterId)> {
            cases
                .iter()
                .map(|(what, frame, reason)| (*what, frame.clone(), hook.counter(*reason)))
                .collect()
        };
        self.assert_xdp_passes(&under(XdpUplink));
        self.assert_uplink_tc_passes(&under(TcUplink));
    }

    /// Each (what, frame, counter): TC drops the packet and counts it
    /// under `counter` alone.
    pub fn assert_tc_drops(&self, cases: &[(&str, Vec<u8>, CounterId)]) {
        for (what, frame, counter) in cases {
            let before = self.counters();
            let (verdict, _) = self.tc(frame);
            assert_eq!(verdict, TC_ACT_SHOT, "{what}");
            assert_counted(&before, &self.counters(), *counter);
        }
    }

    /// Each (what, frame, counter): TC hands the packet to the kernel
    /// untouched and counts it under `counter` alone.
    pub fn assert_tc_passes(&self, cases: &[(&str, Vec<u8>, CounterId)]) {
        for (what, frame, counter) in cases {
            let before = self.counters();
            let (verdict, out) = self.tc(frame);
            assert_eq!(verdict, TCX_NEXT, "{what}");
            assert_eq!(&out, frame, "{what}: a passed packet must be untouched");
            assert_counted(&before, &self.counters(), *counter);
        }
    }
}

/// Runs `program` once on `frame`: (return value, the frame it left).
pub fn run<P>(program: &P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    // Room for what encapsulation adds.
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .unwrap();
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}
