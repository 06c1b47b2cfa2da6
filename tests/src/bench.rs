//! `cargo xtask bench`: weft against the stock flannel path and a no-overlay
//! floor, on the same lab, in one run (README, "Performance").
//!
//! Every configuration gets a fresh 2-node lab with one pod per node; the
//! client pod is on node 1, the server pod on node 2. Latencies are
//! measured with client and server pinned to different CPUs; every
//! measurement is repeated and the median kept. A configuration whose
//! traffic did not take the path it claims is reported as invalid.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde::Serialize;
use weft_common::CounterId;

use crate::{
    Backend, Dataplane, Lab, LabSpec, inspect,
    lab::{ETCD_PREFIX, PodState},
    netns, traffic,
};

/// The configurations, in report order.
pub const CONFIGURATIONS: [(&str, Backend, Dataplane); 5] = [
    ("floor", Backend::HostGw, Dataplane::Floor),
    ("kernel-vxlan", Backend::Vxlan, Dataplane::Kernel),
    ("ebpf-vxlan", Backend::Vxlan, Dataplane::Ebpf),
    ("kernel-host-gw", Backend::HostGw, Dataplane::Kernel),
    ("ebpf-host-gw", Backend::HostGw, Dataplane::Ebpf),
];

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub out: PathBuf,
    pub weft_bin: PathBuf,
    pub repeats: usize,
    /// Length of each throughput / request-response run.
    pub seconds: f64,
    pub pings: usize,
    /// Only these configurations (all when empty).
    pub only: Vec<String>,
    /// Measure per-packet program cost and control-plane scale too.
    pub extras: bool,
    pub scale: Vec<usize>,
}

impl BenchOptions {
    pub fn new(quick: bool, out: PathBuf, weft_bin: PathBuf) -> Self {
        Self {
            out,
            weft_bin,
            repeats: if quick { 1 } else { 3 },
            seconds: if quick { 1.0 } else { 3.0 },
            pings: if quick { 200 } else { 500 },
            only: Vec::new(),
            extras: true,
            scale: if quick { vec![1000] } else { vec![1000, 5000] },
        }
    }
}

/// One configuration's medians (the schema of results.json).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConfigResult {
    pub name: String,
    pub icmp_rtt_us_p50: f64,
    pub icmp_rtt_us_p99: f64,
    pub tcp_rr_us_p50: f64,
    pub tcp_rr_us_p99: f64,
    pub udp_rr_us_p50: f64,
    pub udp_rr_us_p99: f64,
    pub tcp_rr_tps: f64,
    pub udp_pps: f64,
    pub tcp_gbps: f64,
    pub cpu_s_per_gb: f64,
    pub fastpath_packets: u64,
    /// Packets the fast path handed to netfilter during the TCP run (a
    /// flow's set-up, TCP control, re-checks, ruleset changes).
    pub netfilter_refusals: u64,
    /// Why the numbers do not describe the configuration, if they do not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

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

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleResult {
    pub leases: usize,
    /// From the first lease written to all of them in PEERS.
    pub peers_converged_s: f64,
    /// ... and all of them routed by the kernel path.
    pub kernel_converged_s: f64,
    pub agent_peak_rss_mib: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Details {
    pub machine: String,
    pub programs: Option<ProgramCost>,
    pub control_plane: Vec<ScaleResult>,
}

/// Runs the benchmark; writes results.json, details.json and results.svg in
/// `options.out`, and returns the table it prints.
pub fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<ConfigResult>, Details)> {
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    let mut results = Vec::new();
    for (name, backend, dataplane) in CONFIGURATIONS {
        if !options.only.is_empty() && !options.only.iter().any(|only| only == name) {
            continue;
        }
        progress(&format!("{name}: bringing up a 2-node lab"));
        let mut spec = LabSpec::new(&format!("b-{name}"), 2, 1);
        spec.backend = backend;
        spec.dataplane = dataplane;
        spec.weft_bin = options.weft_bin.clone();
        let lab = Lab::up(&spec)?;
        lab.warm_up()?;
        let mut runs = Vec::new();
        for repeat in 1..=options.repeats {
            progress(&format!("{name}: run {repeat}/{}", options.repeats));
            runs.push(measure(&lab, options, progress)?);
        }
        let mut result = median(name, &runs);
        result.invalid = check_path(name, dataplane, backend, &runs);
        results.push(result);
        drop(lab);
    }
    let mut details = Details {
        machine: machine(),
        ..Details::default()
    };
    if options.extras {
        progress("program cost: BPF_PROG_TEST_RUN, one run per call");
        details.programs = Some(program_cost(if options.repeats > 1 {
            200_000
        } else {
            50_000
        })?);
        for &leases in &options.scale {
            progress(&format!("control plane: {leases} leases"));
            details.control_plane.push(scale(options, leases)?);
        }
    }
    std::fs::write(
        options.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(
        options.out.join("details.json"),
        serde_json::to_string_pretty(&details)?,
    )?;
    std::fs::write(options.out.join("results.svg"), svg(&results))?;
    Ok((results, details))
}

/// One repetition's raw numbers.
#[derive(Clone, Debug, Default)]
struct Run {
    icmp: (f64, f64),
    tcp_rr: (f64, f64),
    udp_rr: (f64, f64),
    tcp_rr_tps: f64,
    udp_pps: f64,
    tcp_gbps: f64,
    cpu_s_per_gb: f64,
    fastpath_packets: u64,
    /// Bytes the fast path's delivery counters saw during the TCP run, both
    /// nodes and directions: at least twice the transfer when it carried
    /// all of it (sent by one node, delivered by the other).
    fastpath_bytes: u64,
    tcp_bytes: u64,
    /// Packets the kernel path carried during the TCP run: flannel.1's
    /// counters plus the IPv4 forwarding counter, on both nodes.
    kernel_packets: u64,
    tcp_packets: u64,
    netfilter_refusals: u64,
}

fn measure(lab: &Lab, options: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Run> {
    let client = lab.node(1).pods[0].clone();
    let server = lab.node(2).pods[0].clone();
    let seconds = options.seconds;
    progress("  ICMP RTT");
    let icmp = icmp_rtt(&client, server.ip(), options.pings)?;
    progress("  TCP and UDP request/response latency (sockperf, pinned)");
    let tcp_rr = sockperf(&client, &server, true, seconds)?;
    let udp_rr = sockperf(&client, &server, false, seconds)?;
    progress("  many-flow TCP request/response rate");
    let tcp_rr_tps = traffic::tcp_rr_rate(
        &server.ns,
        server.ip(),
        5201,
        &client.ns,
        32,
        Duration::from_secs_f64(seconds),
    )?;
    progress("  64-byte UDP packet rate");
    let udp_pps = iperf_udp_pps(&client, &server, seconds)?;
    progress("  TCP throughput, CPU per GB, and which path carried it");
    let counters_before = fast_path_counts(lab)?;
    let refusals_before = netfilter_refusals(lab)?;
    let kernel_before = kernel_path_packets(lab)?;
    let cpu_before = busy_cpu_seconds()?;
    let (bytes, gbps, packets) = iperf_tcp(&client, &server, seconds)?;
    let cpu = busy_cpu_seconds()? - cpu_before;
    let counters_after = fast_path_counts(lab)?;
    Ok(Run {
        icmp,
        tcp_rr,
        udp_rr,
        tcp_rr_tps,
        udp_pps,
        tcp_gbps: gbps,
        cpu_s_per_gb: cpu / (bytes as f64 / 1e9),
        fastpath_packets: counters_after.0 - counters_before.0,
        fastpath_bytes: counters_after.1 - counters_before.1,
        tcp_bytes: bytes,
        kernel_packets: kernel_path_packets(lab)? - kernel_before,
        tcp_packets: packets,
        netfilter_refusals: netfilter_refusals(lab)? - refusals_before,
    })
}

/// Tools that take whole seconds get at least one.
fn whole_seconds(seconds: f64) -> u64 {
    seconds.ceil().max(1.0) as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn icmp_rtt(client: &PodState, server: &str, count: usize) -> Result<(f64, f64)> {
    let out = netns::run(
        &client.ns,
        &[
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.002",
            "-W",
            "1",
            server,
        ],
    )?;
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|line| {
            line.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|ms| ms * 1000.0)
        .collect();
    ensure!(
        times.len() * 10 >= count * 9,
        "only {} of {count} pings answered",
        times.len()
    );
    times.sort_by(f64::total_cmp);
    Ok((percentile(&times, 50.0), percentile(&times, 99.0)))
}

/// A program started inside a namespace, stopped (and reaped) on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn background(ns: &str, args: &[&str]) -> Result<Background> {
    let mut command = netns::command(ns, args[0])?;
    command
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(Background(command.spawn().with_context(|| {
        format!("cannot start {}", args.join(" "))
    })?))
}

/// sockperf ping-pong, server pinned to CPU 1 and client to CPU 0: (p50, p99) in µs.
fn sockperf(client: &PodState, server: &PodState, tcp: bool, seconds: f64) -> Result<(f64, f64)> {
    let port = if tcp { "11111" } else { "11112" };
    let mut server_args = vec![
        "taskset",
        "-c",
        "1",
        "sockperf",
        "server",
        "-i",
        server.ip(),
        "-p",
        port,
    ];
    let mut client_args = vec![
        "taskset",
        "-c",
        "0",
        "sockperf",
        "ping-pong",
        "-i",
        server.ip(),
        "-p",
        port,
        "-m",
        "64",
    ];
    if tcp {
        server_args.push("--tcp");
        client_args.push("--tcp");
    }
    let _server = background(&server.ns, &server_args)?;
    std::thread::sleep(Duration::from_millis(300));
    let time = format!("{}", whole_seconds(seconds));
    client_args.extend(["-t", &time]);
    let limit = format!("{}", whole_seconds(seconds) + 30);
    let mut bounded = vec!["timeout", limit.as_str()];
    bounded.extend(client_args);
    let out = netns::run(&client.ns, &bounded)?;
    let value = |p: &str| -> Result<f64> {
        out.lines()
            .find(|line| line.contains(&format!("percentile {p} =")))
            .and_then(|line| line.rsplit('=').next()?.trim().parse().ok())
            .ok_or_else(|| anyhow!("sockperf printed no percentile {p}:\n{out}"))
    };
    Ok((value("50.000")?, value("99.000")?))
}

fn iperf_json(
    client: &PodState,
    server: &PodState,
    port: &str,
    extra: &[&str],
    seconds: f64,
) -> Result<serde_json::Value> {
    let _server = background(&server.ns, &["iperf3", "-s", "-1", "-p", port])?;
    std::thread::sleep(Duration::from_millis(300));
    // iperf3 reads -t as a whole number (and 0 as "forever").
    let time = format!("{}", whole_seconds(seconds));
    let limit = format!("{}", whole_seconds(seconds) + 30);
    let mut args = vec![
        "timeout",
        &limit,
        "iperf3",
        "-c",
        server.ip(),
        "-p",
        port,
        "-t",
        &time,
        "-J",
    ];
    args.extend_from_slice(extra);
    let out = netns::run(&client.ns, &args)?;
    serde_json::from_str(&out).context("iperf3 printed no JSON")
}

fn iperf_udp_pps(client: &PodState, server: &PodState, seconds: f64) -> Result<f64> {
    let report = iperf_json(
        client,
        server,
        "5202",
        &["-u", "-l", "64", "-b", "0"],
        seconds,
    )?;
    let sum = &report["end"]["sum"];
    let packets = sum["packets"]
        .as_f64()
        .ok_or_else(|| anyhow!("no UDP packet count: {report}"))?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds);
    Ok((packets - lost) / secs)
}

/// (bytes received, Gbit/s, packets the server node received on its uplink).
fn iperf_tcp(client: &PodState, server: &PodState, seconds: f64) -> Result<(u64, f64, u64)> {
    let report = iperf_json(client, server, "5203", &[], seconds)?;
    let received = &report["end"]["sum_received"];
    let bytes = received["bytes"]
        .as_u64()
        .ok_or_else(|| anyhow!("no TCP byte count: {report}"))?;
    let bps = received["bits_per_second"].as_f64().unwrap_or(0.0);
    // At most 1448 bytes of payload per segment on the wire.
    Ok((bytes, bps / 1e9, bytes / 1448))
}

/// Every counter of a packet the fast path carried: sent to a peer node,
/// or delivered into a pod (by XDP, or by TC after GRO, where one packet
/// stands for many wire frames).
pub const FAST_PATH_COUNTERS: [&str; 6] = [
    "tc_encap",
    "tc_host_gw",
    "xdp_decap",
    "xdp_host_gw",
    "tc_uplink_decap",
    "tc_uplink_host_gw",
];

/// (packets, bytes) of the fast path on both nodes.
fn fast_path_counts(lab: &Lab) -> Result<(u64, u64)> {
    let mut total = (0, 0);
    for node in [1, 2] {
        if lab.node(node).dataplane != Dataplane::Ebpf {
            continue;
        }
        let counters = lab.counters(node)?;
        for name in FAST_PATH_COUNTERS {
            let (packets, bytes) = counters.get(name).copied().unwrap_or_default();
            total = (total.0 + packets, total.1 + bytes);
        }
    }
    Ok(total)
}

/// Why the fast path hands a packet to netfilter: a few packets per flow
/// (set-up, SYN/FIN, one per re-check interval), never a share of a
/// transfer.
const NETFILTER_REFUSALS: [CounterId; 12] = {
    use weft_common::{Hook, Reason};
    const fn on(hook: Hook) -> [CounterId; 4] {
        [
            CounterId::new(hook, Reason::PassNoVerdict),
            CounterId::new(hook, Reason::PassRulesetChanged),
            CounterId::new(hook, Reason::PassRecheck),
            CounterId::new(hook, Reason::PassTcpControl),
        ]
    }
    let [xdp, tc_uplink, pod] = [
        on(Hook::XdpUplink),
        on(Hook::TcUplink),
        on(Hook::TcPodEgress),
    ];
    [
        xdp[0],
        xdp[1],
        xdp[2],
        xdp[3],
        tc_uplink[0],
        tc_uplink[1],
        tc_uplink[2],
        tc_uplink[3],
        pod[0],
        pod[1],
        pod[2],
        pod[3],
    ]
};

fn netfilter_refusals(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for node in [1, 2] {
        if lab.node(node).dataplane != Dataplane::Ebpf {
            continue;
        }
        let counters = lab.counters(node)?;
        total += NETFILTER_REFUSALS
            .iter()
            .map(|id| counters.get(id.name()).map_or(0, |(packets, _)| *packets))
            .sum::<u64>();
    }
    Ok(total)
}

fn kernel_path_packets(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for node in [1, 2] {
        let ns = &lab.node(node).ns;
        if let Ok((rx, tx)) = inspect::packet_counts(ns, "flannel.1") {
            total += rx + tx;
        }
        total += inspect::forwarded_datagrams(ns)?;
    }
    Ok(total)
}

/// Busy CPU seconds of the whole machine (all but idle and iowait).
fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty /proc/stat"))?
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: f64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    Ok((total - idle) / 100.0)
}

/// The path check: the fast path must have carried the TCP run on eBPF
/// configurations (and the kernel path must be near idle), and must not
/// exist on the others.
fn check_path(name: &str, dataplane: Dataplane, backend: Backend, runs: &[Run]) -> Option<String> {
    for run in runs {
        match dataplane {
            Dataplane::Ebpf => {
                // Bytes, not packets: after GRO one packet is many frames.
                if run.fastpath_bytes < run.tcp_bytes * 9 / 5 {
                    return Some(format!(
                        "{name}: the fast path carried {} bytes of a {} byte transfer \
                         (sent and delivered: expected twice that)",
                        run.fastpath_bytes, run.tcp_bytes
                    ));
                }
                if run.netfilter_refusals > run.tcp_packets / 100 {
                    return Some(format!(
                        "{name}: the fast path handed {} packets of ~{} to netfilter",
                        run.netfilter_refusals, run.tcp_packets
                    ));
                }
                if run.kernel_packets > run.tcp_packets / 20 {
                    return Some(format!(
                        "{name}: the kernel path carried {} packets of ~{}",
                        run.kernel_packets, run.tcp_packets
                    ));
                }
            }
            Dataplane::Kernel | Dataplane::Floor => {
                if run.fastpath_packets != 0 {
                    return Some(format!(
                        "{name}: eBPF counters rose on a {} node",
                        dataplane.flag()
                    ));
                }
                // The kernel counts GRO-merged packets, so only "none at all"
                // proves a wrong path here.
                if run.kernel_packets == 0 {
                    return Some(format!(
                        "{name}: the kernel path ({backend:?}) carried nothing"
                    ));
                }
            }
        }
    }
    None
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median(name: &str, runs: &[Run]) -> ConfigResult {
    let m = |pick: &dyn Fn(&Run) -> f64| median_of(runs.iter().map(pick).collect());
    ConfigResult {
        name: name.to_owned(),
        icmp_rtt_us_p50: m(&|run| run.icmp.0),
        icmp_rtt_us_p99: m(&|run| run.icmp.1),
        tcp_rr_us_p50: m(&|run| run.tcp_rr.0),
        tcp_rr_us_p99: m(&|run| run.tcp_rr.1),
        udp_rr_us_p50: m(&|run| run.udp_rr.0),
        udp_rr_us_p99: m(&|run| run.udp_rr.1),
        tcp_rr_tps: m(&|run| run.tcp_rr_tps),
        udp_pps: m(&|run| run.udp_pps),
        tcp_gbps: m(&|run| run.tcp_gbps),
        cpu_s_per_gb: m(&|run| run.cpu_s_per_gb),
        fastpath_packets: m(&|run| run.fastpath_packets as f64) as u64,
        netfilter_refusals: m(&|run| run.netfilter_refusals as f64) as u64,
        invalid: None,
    }
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

    use crate::programs::{
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
        crate::packets::Ipv4Options::default(),
    ));
    let not_vxlan = crate::programs::vxlan_frame(
        crate::programs::PEER_IP,
        crate::programs::NODE_IP,
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

/// Writes `leases` synthetic VXLAN leases and times how long one agent takes
/// to have them all in PEERS and in the kernel routes; reports its peak RSS.
pub fn scale(options: &BenchOptions, leases: usize) -> Result<ScaleResult> {
    // A /8 pod network has room for 65,535 /24 leases.
    let mut spec = LabSpec::new("b-scale", 1, 0);
    spec.weft_bin = options.weft_bin.clone();
    spec.network_config = Some(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#.to_owned());
    let lab = Lab::up(&spec)?;
    let node = lab.node(1).clone();
    let weft = options.weft_bin.display().to_string();
    let pin_dir = node.pin_dir.display().to_string();
    let own = format!("{ETCD_PREFIX}/subnets/{}", node.subnet.replace('/', "-"));
    let values: Vec<(String, String)> = (0..leases + 1)
        .map(|index| {
            let subnet = 1 + index;
            let key = format!("{ETCD_PREFIX}/subnets/10.{}.{}.0-24", 100 + subnet / 256, subnet % 256);
            let ip = format!("172.16.{}.{}", subnet / 250, 1 + subnet % 250);
            let value = format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:ac:10:{:02x}:{:02x}"}}}}"#,
                subnet / 250,
                1 + subnet % 250
            );
            (key, value)
        })
        .filter(|(key, _)| *key != own)
        .take(leases)
        .collect();
    let started = Instant::now();
    lab.etcd().put_many(&values)?;
    let mut peers_at = None;
    let deadline = started + Duration::from_secs(120);
    loop {
        if peers_at.is_none() {
            let out =
                netns::run_host(&[&weft, "maps", "peers", "--json", "--bpf-pin-dir", &pin_dir])?;
            let count = serde_json::from_str::<serde_json::Value>(&out)?
                .as_array()
                .map_or(0, Vec::len);
            if count >= leases {
                peers_at = Some(started.elapsed());
            }
        }
        if let Some(peers_at) = peers_at {
            let routes = inspect::routes(&node.ns)?
                .iter()
                .filter(|route| route["dev"] == "flannel.1")
                .count();
            if routes >= leases {
                let rss = peak_rss_mib(lab.agent_pid(0).ok_or_else(|| anyhow!("the agent died"))?)?;
                return Ok(ScaleResult {
                    leases,
                    peers_converged_s: peers_at.as_secs_f64(),
                    kernel_converged_s: started.elapsed().as_secs_f64(),
                    agent_peak_rss_mib: rss,
                });
            }
        }
        if Instant::now() > deadline {
            bail!("{leases} leases did not converge within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM for pid {pid}"))?;
    Ok(kib / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name")
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpus} vCPU {cpu}, kernel {}", kernel.trim())
}

/// How a metric is read off a result.
type Metric = fn(&ConfigResult) -> f64;

/// The printed table: each metric with its ratios to floor and to the
/// matching kernel path.
pub fn table(results: &[ConfigResult]) -> String {
    let by_name: BTreeMap<&str, &ConfigResult> = results
        .iter()
        .map(|result| (result.name.as_str(), result))
        .collect();
    let mut out = String::new();
    let metrics: [(&str, Metric); 12] = [
        ("ICMP RTT p50 (us)", |r| r.icmp_rtt_us_p50),
        ("ICMP RTT p99 (us)", |r| r.icmp_rtt_us_p99),
        ("TCP RR p50 (us)", |r| r.tcp_rr_us_p50),
        ("TCP RR p99 (us)", |r| r.tcp_rr_us_p99),
        ("UDP RR p50 (us)", |r| r.udp_rr_us_p50),
        ("UDP RR p99 (us)", |r| r.udp_rr_us_p99),
        ("TCP RR rate (tx/s)", |r| r.tcp_rr_tps),
        ("UDP 64 B rate (pps)", |r| r.udp_pps),
        ("TCP throughput (Gbit/s)", |r| r.tcp_gbps),
        ("CPU s per GB", |r| r.cpu_s_per_gb),
        ("fast-path packets", |r| r.fastpath_packets as f64),
        ("handed to netfilter", |r| r.netfilter_refusals as f64),
    ];
    let _ = write!(out, "{:<26}", "metric");
    for result in results {
        let _ = write!(out, "{:>24}", result.name);
    }
    out.push('\n');
    for (label, pick) in metrics {
        let _ = write!(out, "{label:<26}");
        for result in results {
            let value = pick(result);
            let mut cell = format!("{value:.2}");
            if result.name != "floor"
                && let Some(floor) = by_name.get("floor").filter(|floor| pick(floor) > 0.0)
            {
                let _ = write!(cell, " {:.2}xF", value / pick(floor));
            }
            if let Some(kernel) = result
                .name
                .strip_prefix("ebpf-")
                .and_then(|rest| by_name.get(format!("kernel-{rest}").as_str()))
                .filter(|kernel| pick(kernel) > 0.0)
            {
                let _ = write!(cell, " {:.2}xK", value / pick(kernel));
            }
            let _ = write!(out, "{cell:>24}");
        }
        out.push('\n');
    }
    for result in results.iter().filter(|result| result.invalid.is_some()) {
        let _ = writeln!(
            out,
            "INVALID {}: {}",
            result.name,
            result.invalid.as_deref().unwrap_or_default()
        );
    }
    out.push_str("xF: ratio to floor; xK: ratio to the matching kernel (stock flannel) path\n");
    out
}

/// A grouped bar chart of every metric relative to floor (1.0 = floor).
pub fn svg(results: &[ConfigResult]) -> String {
    let metrics: [(&str, Metric); 7] = [
        ("ICMP p50", |r| r.icmp_rtt_us_p50),
        ("TCP RR p50", |r| r.tcp_rr_us_p50),
        ("UDP RR p50", |r| r.udp_rr_us_p50),
        ("TCP RR tx/s", |r| r.tcp_rr_tps),
        ("UDP pps", |r| r.udp_pps),
        ("TCP Gbit/s", |r| r.tcp_gbps),
        ("CPU s/GB", |r| r.cpu_s_per_gb),
    ];
    let colors = ["#888888", "#d9822b", "#2b8cd9", "#b35c1e", "#1e5fb3"];
    let floor = results.iter().find(|result| result.name == "floor");
    let (width, height, group) = (900.0, 420.0, 120.0);
    let bar = group / (results.len() as f64 + 1.0);
    let scale = 120.0; // pixels per 1.0x floor
    let base = 330.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<text x="10" y="18" font-size="14">weft benchmark: each metric relative to floor (dashed line = floor)</text>
<line x1="40" y1="{}" x2="{}" y2="{}" stroke="black" stroke-dasharray="4"/>
"#,
        base - scale,
        width - 10.0,
        base - scale
    );
    for (m, (label, pick)) in metrics.iter().enumerate() {
        let x0 = 50.0 + m as f64 * group;
        for (i, result) in results.iter().enumerate() {
            let reference = floor.map(pick).filter(|value| *value > 0.0).unwrap_or(1.0);
            let ratio = (pick(result) / reference).min(2.4);
            let h = ratio * scale;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.2}x</title></rect>"#,
                x0 + i as f64 * bar,
                base - h,
                bar - 2.0,
                h,
                colors[i % colors.len()],
                result.name,
                label,
                ratio
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" >{label}</text>"#,
            x0,
            base + 16.0
        );
    }
    for (i, result) in results.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}{}</text>"#,
            50 + i * 170,
            base + 40.0,
            colors[i % colors.len()],
            64 + i * 170,
            base + 49.0,
            result.name,
            if result.invalid.is_some() {
                " (INVALID)"
            } else {
                ""
            }
        );
    }
    svg.push_str("</svg>\n");
    svg
}
