//! One repetition's measurements on a running lab: ping, sockperf and
//! iperf3 between the client and the server (pods, or the nodes themselves
//! for `underlay`), the machine's busy CPU time, the path counters the
//! validity check reads and the TCP events of both ends.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use weft_tests::{Lab, NodeId, netns, traffic};

use crate::{
    BenchOptions, Configuration, Endpoints,
    drops::{DropReading, Drops},
    path_counters::{KernelPath, KernelReading, fast_path_counts, netfilter_refusals},
    tcp_events::{TcpEvents, TcpReordering},
};

/// One end of the measured traffic: a network namespace and its address.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) ns: String,
    pub(crate) ip: String,
}

impl Endpoint {
    fn ip(&self) -> &str {
        &self.ip
    }
}

/// (client, server): node 1's first pod and node 2's, or for
/// [`Endpoints::Nodes`] the two nodes on their underlay addresses.
pub(crate) fn endpoints(lab: &Lab, config: &Configuration) -> (Endpoint, Endpoint) {
    let end = |node: usize| {
        let node = lab.node(NodeId::new(node));
        match config.endpoints {
            Endpoints::Pods => Endpoint {
                ns: node.pods[0].ns.clone(),
                ip: node.pods[0].ip().to_owned(),
            },
            Endpoints::Nodes => Endpoint {
                ns: node.ns.clone(),
                ip: node.ip.clone(),
            },
        }
    };
    (end(1), end(2))
}

/// One repetition's raw numbers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    pub(crate) icmp: (f64, f64),
    /// Request/response (p50, p99), client and server on the same CPU.
    pub(crate) tcp_rr_same_cpu: (f64, f64),
    pub(crate) udp_rr_same_cpu: (f64, f64),
    /// ... and on different CPUs.
    pub(crate) tcp_rr_cross_cpu: (f64, f64),
    pub(crate) udp_rr_cross_cpu: (f64, f64),
    pub(crate) tcp_rr_tps: f64,
    pub(crate) udp_pps: f64,
    pub(crate) tcp_gbps: f64,
    pub(crate) cpu_s_per_gb: f64,
    /// TCP segments the sender retransmitted during the throughput run.
    pub(crate) tcp_retransmits: u64,
    pub(crate) fastpath_packets: u64,
    /// Bytes the fast path's delivery counters saw during the TCP run, both
    /// nodes and directions: at least twice the transfer when it carried
    /// all of it (sent by one node, delivered by the other).
    pub(crate) fastpath_bytes: u64,
    pub(crate) tcp_bytes: u64,
    /// What the kernel path carried during the TCP run: flannel.1's
    /// counters and the IPv4 forwarding counter, on both nodes.
    pub(crate) kernel_path: KernelPath,
    pub(crate) tcp_packets: u64,
    pub(crate) netfilter_refusals: u64,
    /// Reordering and duplicate events of the TCP run, both ends.
    pub(crate) reordering: TcpReordering,
    /// Where the TCP run's packets were dropped.
    pub(crate) drops: Drops,
}

pub(crate) fn measure(
    lab: &Lab,
    config: &Configuration,
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Run> {
    let (client, server) = endpoints(lab, config);
    let seconds = options.seconds;
    progress("  ICMP RTT");
    let icmp = icmp_rtt(&client, server.ip(), options.pings)?;
    progress("  TCP and UDP request/response latency (sockperf, client and server on one CPU)");
    let tcp_rr_same_cpu = sockperf(&client, &server, true, Pinning::SameCpu, seconds)?;
    let udp_rr_same_cpu = sockperf(&client, &server, false, Pinning::SameCpu, seconds)?;
    progress("  ... and on different CPUs");
    let tcp_rr_cross_cpu = sockperf(&client, &server, true, Pinning::CrossCpu, seconds)?;
    let udp_rr_cross_cpu = sockperf(&client, &server, false, Pinning::CrossCpu, seconds)?;
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
    let kernel_before = KernelReading::read(lab)?;
    let (sender_before, receiver_before) =
        (TcpEvents::read(&client.ns)?, TcpEvents::read(&server.ns)?);
    let drops_before = DropReading::read(lab, &server.ns)?;
    let cpu_before = busy_cpu_seconds()?;
    let tcp = iperf_tcp(&client, &server, seconds)?;
    let cpu = busy_cpu_seconds()? - cpu_before;
    let drops = DropReading::read(lab, &server.ns)?.since(&drops_before);
    let reordering = TcpReordering::between(
        (&sender_before, &TcpEvents::read(&client.ns)?),
        (&receiver_before, &TcpEvents::read(&server.ns)?),
    );
    let counters_after = fast_path_counts(lab)?;
    Ok(Run {
        icmp,
        tcp_rr_same_cpu,
        udp_rr_same_cpu,
        tcp_rr_cross_cpu,
        udp_rr_cross_cpu,
        tcp_rr_tps,
        udp_pps,
        tcp_gbps: tcp.gbps,
        cpu_s_per_gb: cpu / (tcp.bytes as f64 / 1e9),
        tcp_retransmits: tcp.retransmits,
        fastpath_packets: counters_after.0 - counters_before.0,
        fastpath_bytes: counters_after.1 - counters_before.1,
        tcp_bytes: tcp.bytes,
        kernel_path: KernelReading::read(lab)?.since(&kernel_before),
        tcp_packets: tcp.packets,
        netfilter_refusals: netfilter_refusals(lab)? - refusals_before,
        reordering,
        drops,
    })
}

/// Tools that take whole seconds get at least one.
fn whole_seconds(seconds: f64) -> u64 {
    seconds.ceil().max(1.0) as u64
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn icmp_rtt(client: &Endpoint, server: &str, count: usize) -> Result<(f64, f64)> {
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

/// Where sockperf's client and server run.
#[derive(Clone, Copy)]
pub(crate) enum Pinning {
    /// Both on CPU 1: the datapath plus two context switches, stable
    /// within a few per cent on a VM.
    SameCpu,
    /// Client on CPU 0, server on CPU 1: adds a vCPU wake-up per message,
    /// which on a shared VM varies more than the datapath does.
    CrossCpu,
}

impl Pinning {
    /// (client CPU, server CPU).
    fn cpus(self) -> (&'static str, &'static str) {
        match self {
            Pinning::SameCpu => ("1", "1"),
            Pinning::CrossCpu => ("0", "1"),
        }
    }
}

/// sockperf ping-pong, client and server pinned as `pinning` says: (p50, p99) in µs.
pub(crate) fn sockperf(
    client: &Endpoint,
    server: &Endpoint,
    tcp: bool,
    pinning: Pinning,
    seconds: f64,
) -> Result<(f64, f64)> {
    let port = if tcp { "11111" } else { "11112" };
    let (client_cpu, server_cpu) = pinning.cpus();
    let mut server_args = vec![
        "taskset",
        "-c",
        server_cpu,
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
        client_cpu,
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
    client: &Endpoint,
    server: &Endpoint,
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

fn iperf_udp_pps(client: &Endpoint, server: &Endpoint, seconds: f64) -> Result<f64> {
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

/// One iperf3 TCP run.
pub(crate) struct TcpRun {
    /// Bytes the server received.
    pub(crate) bytes: u64,
    pub(crate) gbps: f64,
    /// Segments on the wire (at least; at most 1448 bytes of payload each).
    packets: u64,
    /// Segments the client retransmitted.
    retransmits: u64,
}

pub(crate) fn iperf_tcp(client: &Endpoint, server: &Endpoint, seconds: f64) -> Result<TcpRun> {
    let report = iperf_json(client, server, "5203", &[], seconds)?;
    let received = &report["end"]["sum_received"];
    let bytes = received["bytes"]
        .as_u64()
        .ok_or_else(|| anyhow!("no TCP byte count: {report}"))?;
    let bps = received["bits_per_second"].as_f64().unwrap_or(0.0);
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .ok_or_else(|| anyhow!("no TCP retransmission count: {report}"))?;
    Ok(TcpRun {
        bytes,
        gbps: bps / 1e9,
        packets: bytes / 1448,
        retransmits,
    })
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
