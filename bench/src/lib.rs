//! `cargo xtask bench`: weft against the stock flannel path and a no-overlay
//! floor, on the same lab, in one run (README, "Performance").
//!
//! Every configuration gets a fresh 2-node lab with one pod per node; the
//! client pod is on node 1, the server pod on node 2. Latencies are
//! measured with client and server pinned to different CPUs; every
//! measurement is repeated and the median kept. A configuration whose
//! traffic did not take the path it claims is reported as invalid.

// The weft-bench binary's argument parser and root check; cargo cannot scope
// a dependency to one target, and the lint checks the library too.
use clap as _;
use nix as _;

mod measure;
mod program_cost;
mod report;
mod scale;
mod validity;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde::Serialize;
use weft_tests::{Backend, Dataplane, Lab, LabSpec};

pub use program_cost::{ProgramCost, program_cost};
pub use report::{svg, table};
pub use scale::{ScaleResult, scale};
pub use validity::FAST_PATH_COUNTERS;

use measure::{Run, measure};
use report::machine;
use validity::check_path;

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
