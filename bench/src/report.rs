//! The report: the machine, the printed table and the SVG chart.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{ConfigResult, Goal};

pub(crate) fn machine() -> String {
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

/// The printed table's rows: the same-CPU request/response latency is the
/// headline, the cross-CPU one a secondary row.
const TABLE_METRICS: [(&str, Metric); 28] = [
    ("ICMP RTT p50 (us)", |r| r.icmp_rtt_us_p50),
    ("ICMP RTT p99 (us)", |r| r.icmp_rtt_us_p99),
    ("TCP RR p50 (us)", |r| r.tcp_rr_same_cpu_us_p50),
    ("TCP RR p99 (us)", |r| r.tcp_rr_same_cpu_us_p99),
    ("UDP RR p50 (us)", |r| r.udp_rr_same_cpu_us_p50),
    ("UDP RR p99 (us)", |r| r.udp_rr_same_cpu_us_p99),
    ("TCP RR p50 x-CPU (us)", |r| r.tcp_rr_cross_cpu_us_p50),
    ("TCP RR p99 x-CPU (us)", |r| r.tcp_rr_cross_cpu_us_p99),
    ("UDP RR p50 x-CPU (us)", |r| r.udp_rr_cross_cpu_us_p50),
    ("UDP RR p99 x-CPU (us)", |r| r.udp_rr_cross_cpu_us_p99),
    ("TCP RR rate (tx/s)", |r| r.tcp_rr_tps),
    ("UDP 64 B rate (pps)", |r| r.udp_pps),
    ("TCP throughput (Gbit/s)", |r| r.tcp_gbps),
    ("CPU s per GB", |r| r.cpu_s_per_gb),
    ("TCP retransmissions (per run)", |r| {
        r.tcp_retransmits as f64
    }),
    ("sender SACK reorder events", |r| {
        r.reordering.sender_sack_reorder as f64
    }),
    ("sender TS reorder events", |r| {
        r.reordering.sender_ts_reorder as f64
    }),
    ("sender DSACKs received", |r| {
        r.reordering.sender_dsack_recv as f64
    }),
    ("sender DSACKed segments", |r| {
        r.reordering.sender_dsack_segments as f64
    }),
    ("receiver DSACKs sent", |r| {
        r.reordering.receiver_dsack_old_sent as f64
    }),
    ("receiver out-of-order queued", |r| {
        r.reordering.receiver_ofo_queue as f64
    }),
    ("drops into a node's uplink", |r| {
        r.drops.drops_into_uplink as f64
    }),
    ("drops out of a node's uplink", |r| {
        r.drops.drops_out_of_uplink as f64
    }),
    ("drops on pod veths", |r| r.drops.drops_pod_veths as f64),
    ("drops in CPU backlogs (host)", |r| {
        r.drops.drops_cpu_backlog as f64
    }),
    ("drops at the receiving socket", |r| {
        r.drops.drops_receiver_socket as f64
    }),
    ("fast-path packets", |r| r.fastpath_packets as f64),
    ("handed to netfilter", |r| r.netfilter_refusals as f64),
];

/// Rows that count events (per TCP run): printed whole, without ratios (a
/// ratio of retransmissions or of fast-path packets says nothing).
const COUNT_METRICS: [&str; 14] = [
    "TCP retransmissions (per run)",
    "sender SACK reorder events",
    "sender TS reorder events",
    "sender DSACKs received",
    "sender DSACKed segments",
    "receiver DSACKs sent",
    "receiver out-of-order queued",
    "drops into a node's uplink",
    "drops out of a node's uplink",
    "drops on pod veths",
    "drops in CPU backlogs (host)",
    "drops at the receiving socket",
    "fast-path packets",
    "handed to netfilter",
];

const LABEL_WIDTH: usize = 30;
const CELL_WIDTH: usize = 38;

/// What the ratio columns mean, printed under the table.
pub const RATIO_LEGEND: &str = "RR = request/response, client and server on the same CPU; \
x-CPU = on different CPUs (secondary: adds a vCPU wake-up per message); RR latencies are sockperf's, \
half the round trip (one direction)\n\
xU: ratio to underlay (node to node, no pods: the physical limit); xF: ratio to floor; \
xS: ratio to stock flannel (flanneld, same backend); xK: ratio to weft's kernel mode (same backend)\n\
counts are per TCP throughput run; sender = client, receiver = server (nstat in each namespace)\n\
DSACKed segments: retransmissions the receiver reported as duplicates (not lost); drops: the kernel's drop counters by location \
(underlay ports' and uplinks' tx_dropped, pod veths', CPU backlogs host-wide, the receiving socket's)\n";

/// The configuration a ratio column compares with, for `result`'s row.
fn counterpart<'a>(
    by_name: &BTreeMap<&str, &'a ConfigResult>,
    result: &ConfigResult,
    from: &str,
    to: &str,
) -> Option<&'a ConfigResult> {
    let rest = result.name.strip_prefix(from)?;
    by_name.get(format!("{to}{rest}").as_str()).copied()
}

/// The printed table: each metric with its ratios to underlay, to floor,
/// to stock flannel and to weft's kernel mode on the same backend.
pub fn table(results: &[ConfigResult]) -> String {
    let by_name: BTreeMap<&str, &ConfigResult> = results
        .iter()
        .map(|result| (result.name.as_str(), result))
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:<LABEL_WIDTH$}", "metric");
    for result in results {
        let _ = write!(out, "{:>CELL_WIDTH$}", result.name);
    }
    out.push('\n');
    let _ = write!(out, "{:<LABEL_WIDTH$}", "");
    for result in results {
        let _ = write!(out, "{:>CELL_WIDTH$}", format!("({})", result.path));
    }
    out.push('\n');
    for (label, pick) in TABLE_METRICS {
        let _ = write!(out, "{label:<LABEL_WIDTH$}");
        let is_count = COUNT_METRICS.contains(&label);
        for result in results {
            let value = pick(result);
            if is_count {
                let _ = write!(out, "{:>CELL_WIDTH$}", value as u64);
                continue;
            }
            let mut cell = format!("{value:.2}");
            let references = [
                (
                    "xU",
                    (result.name != "underlay")
                        .then(|| by_name.get("underlay").copied())
                        .flatten(),
                ),
                (
                    "xF",
                    (result.name != "floor")
                        .then(|| by_name.get("floor").copied())
                        .flatten(),
                ),
                (
                    "xS",
                    ["kernel-", "ebpf-"]
                        .iter()
                        .find_map(|from| counterpart(&by_name, result, from, "flanneld-")),
                ),
                ("xK", counterpart(&by_name, result, "ebpf-", "kernel-")),
            ];
            for (suffix, reference) in references {
                if let Some(reference) = reference.filter(|reference| pick(reference) > 0.0) {
                    let _ = write!(cell, " {:.2}{suffix}", value / pick(reference));
                }
            }
            let _ = write!(out, "{cell:>CELL_WIDTH$}");
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
    out.push_str(RATIO_LEGEND);
    out
}

/// The goals, one line each: goal, measured, met/missed.
pub fn goals_table(goals: &[Goal]) -> String {
    let width = goals.iter().map(|goal| goal.goal.len()).max().unwrap_or(0);
    let mut out = format!("{:<width$}  {:<12}  measured\n", "goal", "status");
    for goal in goals {
        let _ = writeln!(
            out,
            "{:<width$}  {:<12}  {}",
            goal.goal,
            goal.status(),
            goal.detail
        );
    }
    out
}

/// A grouped bar chart of every metric relative to floor (1.0 = floor);
/// stock flannel's bars are hatched and its legend entries say so.
pub fn svg(results: &[ConfigResult]) -> String {
    let metrics: [(&str, Metric); 7] = [
        ("ICMP p50", |r| r.icmp_rtt_us_p50),
        ("TCP RR p50", |r| r.tcp_rr_same_cpu_us_p50),
        ("UDP RR p50", |r| r.udp_rr_same_cpu_us_p50),
        ("TCP RR tx/s", |r| r.tcp_rr_tps),
        ("UDP pps", |r| r.udp_pps),
        ("TCP Gbit/s", |r| r.tcp_gbps),
        ("CPU s/GB", |r| r.cpu_s_per_gb),
    ];
    let floor = results.iter().find(|result| result.name == "floor");
    let (width, height, group) = (1000.0, 470.0, 135.0);
    let bar = group / (results.len() as f64 + 1.0);
    let scale = 120.0; // pixels per 1.0x floor
    let base = 330.0;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<defs><pattern id="stock" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="white"/><rect width="3" height="6" fill="#6a9f3a"/></pattern><pattern id="stock-hg" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="white"/><rect width="3" height="6" fill="#3f6b1f"/></pattern></defs>
<text x="10" y="18" font-size="14">weft benchmark, each metric relative to floor (dashed line); RR latency on one CPU; hatched = stock flannel</text>
<line x1="40" y1="{}" x2="{}" y2="{}" stroke="black" stroke-dasharray="4"/>
"##,
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
                fill(&result.name),
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
        // Four legend entries per line.
        let (column, line) = (i % 4, i / 4);
        let (x, y) = (50 + column * 235, base + 40.0 + line as f64 * 20.0);
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{y}" width="10" height="10" fill="{}" stroke="black" stroke-width="0.3"/><text x="{}" y="{}">{} ({}){}</text>"#,
            fill(&result.name),
            x + 14,
            y + 9.0,
            result.name,
            result.path,
            if result.invalid.is_some() {
                " INVALID"
            } else {
                ""
            }
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Each configuration's fill: grey floor, orange weft kernel mode, blue
/// weft eBPF, hatched green stock flannel; darker for host-gw.
fn fill(name: &str) -> &'static str {
    match name {
        "underlay" => "#cccccc",
        "floor" => "#888888",
        "flanneld-vxlan" => "url(#stock)",
        "kernel-vxlan" => "#d9822b",
        "ebpf-vxlan" => "#2b8cd9",
        "flanneld-host-gw" => "url(#stock-hg)",
        "kernel-host-gw" => "#b35c1e",
        "ebpf-host-gw" => "#1e5fb3",
        _ => "#444444",
    }
}
