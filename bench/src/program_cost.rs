//! The per-packet cost of each eBPF program, timed by the kernel
//! (BPF_PROG_TEST_RUN and BPF run-time statistics).

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgramCost {
    /// XDP: a small VXLAN packet decapsulated into a pod.
    pub xdp_decap_ns: f64,
    /// XDP: a full-size TCP segment checked and left to GRO.
    pub xdp_pass_bulk_tcp_ns: f64,
    /// TC on the uplink: a VXLAN packet (after GRO, once per coalesced
    /// packet) decapsulated into a pod.
    pub tc_uplink_decap_ns: f64,
    /// TC on a pod veth: a packet encapsulated for a VXLAN peer.
    pub tc_encap_ns: f64,
    /// Calibration, on a frame XDP passes unchanged (so repetitions are
    /// alike): one run per call, as above...
    pub xdp_pass_one_per_call_ns: f64,
    /// ... and `runs` repetitions in one call, warm, as the kernel times
    /// them. The difference is the cold start each figure above carries.
    pub xdp_pass_repeated_ns: f64,
    /// Runs per program (one per BPF_PROG_TEST_RUN call).
    pub runs: u32,
}

/// Per-packet cost of each program: `runs` BPF_PROG_TEST_RUN calls of one
/// run each, timed by the kernel's BPF run-time statistics (the time inside
/// the program, as for real packets). One run per call because the kernel
/// does not restore the frame between repetitions of one call: after the
/// first, a decapsulating program would see its own output, and an
/// encapsulating one its own VXLAN, and time the wrong path.
pub fn program_cost(runs: u32) -> Result<ProgramCost> {
    use aya::{
        programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
        sys::{Stats, enable_stats},
    };
    use weft_common::program_names::{TC_POD_EGRESS, TC_UPLINK, XDP_UPLINK};

    use weft_tests::programs::{
        LOCAL_POD, Programs, REMOTE_POD, good_vxlan, inner_tcp_frame, pod_frame, vxlan_carrying,
    };
    let mut programs = Programs::load(true);
    // As the agent runs them on a node with XDP and GRO for bulk TCP.
    programs.set_flags(
        weft_common::CONFIG_STRICT_VTEPS
            | weft_common::CONFIG_BULK_TCP_VIA_GRO
            | weft_common::CONFIG_UPLINK_XDP,
    );
    let _stats = enable_stats(Stats::RunTime).context("cannot enable BPF run-time statistics")?;
    fn ns_per_run<P>(program: &P, frame: &[u8], runs: u32) -> Result<f64>
    where
        P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>
            + ProgramInfoOf,
    {
        let mut out = vec![0u8; frame.len() + 256];
        let before = program.stats()?;
        for _ in 0..runs {
            program.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })?;
        }
        let after = program.stats()?;
        let count = after.1 - before.1;
        anyhow::ensure!(
            count >= u64::from(runs),
            "the kernel counted {count} of {runs} runs"
        );
        Ok((after.0 - before.0).as_nanos() as f64 / count as f64)
    }
    let xdp: &Xdp = programs.ebpf.program(XDP_UPLINK).unwrap().try_into()?;
    let tc: &SchedClassifier = programs.ebpf.program(TC_POD_EGRESS).unwrap().try_into()?;
    let uplink_tc: &SchedClassifier = programs.ebpf.program(TC_UPLINK).unwrap().try_into()?;
    let bulk = vxlan_carrying(&inner_tcp_frame(
        LOCAL_POD,
        1400,
        weft_tests::packets::Ipv4Options::default(),
    ));
    let not_vxlan = weft_tests::programs::vxlan_frame(
        weft_tests::programs::PEER_IP,
        weft_tests::programs::NODE_IP,
        4789,
        1,
        &[0u8; 64],
        Default::default(),
    );
    let mut out = vec![0u8; not_vxlan.len() + 256];
    let repeated = xdp.test_run(TestRunOptions {
        data_in: Some(&not_vxlan),
        data_out: Some(&mut out),
        repeat: runs,
        ..TestRunOptions::new()
    })?;
    Ok(ProgramCost {
        xdp_pass_one_per_call_ns: ns_per_run(xdp, &not_vxlan, runs)?,
        // The kernel reports the mean per repetition.
        xdp_pass_repeated_ns: repeated.duration.as_nanos() as f64,
        xdp_decap_ns: ns_per_run(xdp, &good_vxlan(), runs)?,
        xdp_pass_bulk_tcp_ns: ns_per_run(xdp, &bulk, runs)?,
        tc_uplink_decap_ns: ns_per_run(uplink_tc, &bulk, runs)?,
        tc_encap_ns: ns_per_run(
            tc,
            &pod_frame(LOCAL_POD, REMOTE_POD, Default::default()),
            runs,
        )?,
        runs,
    })
}

/// A loaded program's run-time statistics: (total run time, run count).
trait ProgramInfoOf {
    fn stats(&self) -> Result<(Duration, u64)>;
}

impl ProgramInfoOf for aya::programs::Xdp {
    fn stats(&self) -> Result<(Duration, u64)> {
        let info = self.info()?;
        Ok((info.run_time(), info.run_count()))
    }
}

impl ProgramInfoOf for aya::programs::SchedClassifier {
    fn stats(&self) -> Result<(Duration, u64)> {
        let info = self.info()?;
        Ok((info.run_time(), info.run_count()))
    }
}
