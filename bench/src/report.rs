//! The report: the machine, the printed table and the SVG chart.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::ConfigResult;

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
