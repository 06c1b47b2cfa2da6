//! `cargo xtask bench`: weft against the stock flannel path and a no-overlay
//! floor, on the same lab, in one run (docs/performance/README.md).
//!
//! Every configuration gets a fresh 2-node lab with one pod per node; the
//! client pod is on node 1, the server pod on node 2 (`underlay`, the
//! physical limit, has no pods: node 1 talks to node 2). Request/response
//! latency is measured with client and server pinned to the same CPU (the
//! headline) and to different CPUs (secondary); every measurement is
//! repeated and the median kept. A configuration whose traffic did not take
//! the path it claims is reported as invalid. The performance goals are
//! reported as met or missed after the results, never asserted.

// The weft-bench binary's argument parser; cargo cannot scope a dependency
// to one target, and the lint checks the library too.
use clap as _;

mod ct_marking;
mod drops;
mod families;
mod goals;
mod measure;
mod path_counters;
mod profile;
mod program_cost;
mod program_time;
mod report;
mod scale;
mod scrape_load;
mod spread;
mod tcp_events;
mod validity;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, lab::FLANNELD_ENV, privileged::REQUIRE_PRIVILEGED,
};

pub use ct_marking::{CtMarking, ct_marking};
pub use drops::Drops;
pub use families::{FamilyRow, family_rows, family_table};
pub use goals::{Goal, goals};
pub use path_counters::FAST_PATH_COUNTERS;
pub use program_cost::{
    CostEffort, PathCost, ProgramCost, StepCost, program_cost, program_cost_table,
};
pub use program_time::{ProgramTime, program_time_table};
pub use report::{goals_table, svg, table};
pub use scale::{ScaleResult, scale};
pub use scrape_load::{ScrapeLoad, scrape_load, scrape_load_line};
pub use spread::{Range, Spread, spread_table};
pub use tcp_events::TcpReordering;

use measure::{Run, endpoints, measure};
use report::machine;
use validity::check_path;

/// Which ends the traffic runs between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// A pod on node 1 and a pod on node 2.
    Pods,
    /// Node 1 and node 2 themselves, on their underlay addresses: no pod,
    /// no veth into a pod, no routing hop.
    Nodes,
}

/// One configuration: a lab whose nodes all run `dataplane` on `backend`,
/// measured between `endpoints`.
#[derive(Clone, Copy, Debug)]
pub struct Configuration {
    pub name: &'static str,
    pub backend: Backend,
    pub dataplane: Dataplane,
    pub endpoints: Endpoints,
}

impl Configuration {
    const fn new(name: &'static str, backend: Backend, dataplane: Dataplane) -> Self {
        Self {
            name,
            backend,
            dataplane,
            endpoints: Endpoints::Pods,
        }
    }

    /// The lab's name, `<prefix>-<short name>`: lab names have at most 16
    /// characters, so `flanneld-` is shortened to `fl-` and `kernel-` to `k-`.
    pub fn lab_name(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}",
            self.name
                .replace("flanneld-", "fl-")
                .replace("kernel-", "k-")
        )
    }

    /// What runs the path, as the table and the chart label it.
    pub fn path(&self) -> &'static str {
        match (self.endpoints, self.dataplane) {
            (Endpoints::Nodes, _) => "node to node",
            (Endpoints::Pods, Dataplane::Floor) => "no overlay",
            (Endpoints::Pods, Dataplane::Flanneld) => "stock flannel",
            (Endpoints::Pods, Dataplane::Kernel) => "weft kernel",
            (Endpoints::Pods, Dataplane::Ebpf) => "weft eBPF",
        }
    }
}

/// The configurations, in report order: the physical limit (node to node
/// over the underlay, no pods, no agent), the floor (pods, no overlay),
/// then per backend stock flanneld, weft's kernel mode (the same kernel
/// datapath, programmed by weft) and weft's fast path.
pub const CONFIGURATIONS: [Configuration; 8] = [
    Configuration {
        name: "underlay",
        backend: Backend::HostGw,
        dataplane: Dataplane::Floor,
        endpoints: Endpoints::Nodes,
    },
    Configuration::new("floor", Backend::HostGw, Dataplane::Floor),
    Configuration::new("flanneld-vxlan", Backend::Vxlan, Dataplane::Flanneld),
    Configuration::new("kernel-vxlan", Backend::Vxlan, Dataplane::Kernel),
    Configuration::new("ebpf-vxlan", Backend::Vxlan, Dataplane::Ebpf),
    Configuration::new("flanneld-host-gw", Backend::HostGw, Dataplane::Flanneld),
    Configuration::new("kernel-host-gw", Backend::HostGw, Dataplane::Kernel),
    Configuration::new("ebpf-host-gw", Backend::HostGw, Dataplane::Ebpf),
];

/// The configuration named `name`.
pub fn configuration(name: &str) -> Option<&'static Configuration> {
    CONFIGURATIONS.iter().find(|config| config.name == name)
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub out: PathBuf,
    pub weft_bin: PathBuf,
    /// Stock flanneld for the `flanneld-*` configurations; without it they
    /// are left out (an error where `WEFT_REQUIRE_PRIVILEGED=1`).
    pub flanneld_bin: Option<PathBuf>,
    pub repeats: usize,
    /// Length of each throughput / request-response run.
    pub seconds: f64,
    pub pings: usize,
    /// Only these configurations (all when empty).
    pub only: Vec<String>,
    /// Measure per-packet program cost and control-plane scale too.
    pub extras: bool,
    pub scale: Vec<usize>,
    /// Labs are named `<lab_prefix>-<configuration>` (default `b`): two
    /// benches on one machine need different prefixes.
    pub lab_prefix: String,
    /// Configurations whose TCP throughput is profiled (`perf record -a
    /// -g`) in one more run after the measured ones; none by default.
    pub profile: Vec<String>,
}

impl BenchOptions {
    pub fn new(quick: bool, out: PathBuf, weft_bin: PathBuf) -> Self {
        Self {
            out,
            weft_bin,
            flanneld_bin: weft_tests::lab::reference_flanneld(),
            repeats: if quick { 1 } else { 3 },
            seconds: if quick { 1.0 } else { 3.0 },
            pings: if quick { 200 } else { 500 },
            only: Vec::new(),
            extras: true,
            scale: if quick {
                vec![1000]
            } else {
                // The larger one just inside PEERS (MAX_PEERS, 16,384):
                // leases past it stay on the kernel path, never in PEERS.
                vec![1000, 16_000]
            },
            lab_prefix: "b".to_owned(),
            profile: Vec::new(),
        }
    }
}

/// One configuration's medians (the schema of results.json).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConfigResult {
    pub name: String,
    /// "node to node", "no overlay", "stock flannel", "weft kernel" or
    /// "weft eBPF".
    pub path: String,
    pub icmp_rtt_us_p50: f64,
    pub icmp_rtt_us_p99: f64,
    /// Request/response latency with client and server on the same CPU:
    /// the datapath plus two context switches (the headline). sockperf's
    /// figure: half the round trip, so one direction of the datapath.
    pub tcp_rr_same_cpu_us_p50: f64,
    pub tcp_rr_same_cpu_us_p99: f64,
    pub udp_rr_same_cpu_us_p50: f64,
    pub udp_rr_same_cpu_us_p99: f64,
    /// ... with client and server on different CPUs: adds a vCPU wake-up
    /// per message (secondary).
    pub tcp_rr_cross_cpu_us_p50: f64,
    pub tcp_rr_cross_cpu_us_p99: f64,
    pub udp_rr_cross_cpu_us_p50: f64,
    pub udp_rr_cross_cpu_us_p99: f64,
    pub tcp_rr_tps: f64,
    pub udp_pps: f64,
    pub tcp_gbps: f64,
    pub cpu_s_per_gb: f64,
    /// TCP segments retransmitted in one throughput run (iperf3's
    /// `end.sum_sent.retransmits`; the median of the runs, each counted on
    /// its own).
    pub tcp_retransmits: u64,
    /// Reordering and duplicate events of both ends in one throughput run
    /// (medians of the runs, field by field).
    #[serde(flatten)]
    pub reordering: TcpReordering,
    /// Where the throughput run's packets were dropped, by location
    /// (medians of the runs, field by field).
    #[serde(flatten)]
    pub drops: Drops,
    pub fastpath_packets: u64,
    /// Packets the fast path handed to netfilter during the TCP run (a
    /// flow's set-up, TCP control, re-checks, ruleset changes).
    pub netfilter_refusals: u64,
    /// The headline metrics' lowest and highest runs: the noise between
    /// runs the medians above hide.
    pub spread: Spread,
    /// Why the numbers do not describe the configuration, if they do not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Details {
    pub machine: String,
    /// `flanneld --version` of the stock flanneld the `flanneld-*` rows
    /// ran, if they ran.
    pub stock_flanneld: Option<String>,
    pub programs: Option<ProgramCost>,
    /// How fast the agent makes fast-pathed TCP flows liberal in conntrack.
    pub ct_marking: Option<CtMarking>,
    pub control_plane: Vec<ScaleResult>,
    /// `/metrics` under parallel scrapes with `FLOWS` nearly full.
    pub scrape_load: Option<ScrapeLoad>,
    /// IPv6 next to IPv4 on weft's kernel path, in dual-stack labs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<FamilyRow>,
    /// The performance goals, met or missed.
    pub goals: Vec<Goal>,
    /// The `perf` profiles written (`--profile`), one file per configuration.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<PathBuf>,
    /// What each eBPF configuration's programs cost per packet in one more
    /// request/response run, by the kernel's run-time statistics.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub program_time: Vec<ProgramTime>,
}

/// Runs the benchmark; writes results.json, details.json, results.svg and
/// table.txt (the printed table and goals) in `options.out`.
pub fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<ConfigResult>, Details)> {
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    let selected: Vec<&Configuration> = CONFIGURATIONS
        .iter()
        .filter(|config| {
            options.only.is_empty() || options.only.iter().any(|only| only == config.name)
        })
        .collect();
    for name in &options.profile {
        anyhow::ensure!(
            selected.iter().any(|config| config.name == name),
            "--profile {name}: not one of the configurations this run measures"
        );
    }
    let stock_flanneld = stock_flanneld(options, &selected, progress)?;
    let mut results = Vec::new();
    let mut profiles = Vec::new();
    let mut program_times = Vec::new();
    for config in selected {
        let Configuration {
            name,
            backend,
            dataplane,
            endpoints: ends,
        } = *config;
        if dataplane == Dataplane::Flanneld && stock_flanneld.is_none() {
            continue;
        }
        progress(&format!("{name}: bringing up a 2-node lab"));
        let pods_per_node = match ends {
            Endpoints::Pods => 1,
            Endpoints::Nodes => 0,
        };
        let mut spec = LabSpec::new(&config.lab_name(&options.lab_prefix), 2, pods_per_node);
        spec.backend = backend;
        spec.dataplane = dataplane;
        spec.weft_bin = options.weft_bin.clone();
        spec.flanneld_bin = options.flanneld_bin.clone();
        let lab = Lab::up(&spec)?;
        wait_until_ends_reach_each_other(&lab, config)?;
        if ends == Endpoints::Pods {
            lab.warm_up()?;
        }
        let mut runs = Vec::new();
        for repeat in 1..=options.repeats {
            progress(&format!("{name}: run {repeat}/{}", options.repeats));
            runs.push(measure(&lab, config, options, progress)?);
        }
        let mut result = median(config, &runs);
        result.invalid = check_path(config, &runs);
        results.push(result);
        if dataplane == Dataplane::Ebpf {
            progress(&format!(
                "{name}: one more TCP request/response run with BPF run-time statistics (not counted)"
            ));
            program_times.extend(program_time::program_time(&lab, config, options)?);
        }
        if options.profile.iter().any(|profiled| profiled == name) {
            progress(&format!(
                "{name}: one more TCP throughput run under perf record -a -g (not counted)"
            ));
            profiles.push(profile::profile_throughput(&lab, config, options)?);
        }
        drop(lab);
    }
    let mut details = Details {
        machine: machine(),
        stock_flanneld,
        profiles,
        program_time: program_times,
        ..Details::default()
    };
    if options.extras {
        progress("program cost: BPF_PROG_TEST_RUN, step by step");
        details.programs = Some(program_cost(CostEffort::new(options.repeats <= 1))?);
        progress("conntrack marking: ctnetlink update and FLOWS confirmation per flow");
        details.ct_marking = Some(if options.repeats > 1 {
            ct_marking(1000, 20)?
        } else {
            ct_marking(500, 4)?
        });
        for &leases in &options.scale {
            progress(&format!("control plane: {leases} leases"));
            details.control_plane.push(scale(options, leases)?);
        }
        progress("/metrics: parallel scrapes against a nearly full FLOWS");
        details.scrape_load = Some(scrape_load(options)?);
        progress("IPv6 next to IPv4: dual-stack labs, weft's kernel path");
        details.families = family_rows(options, progress)?;
    }
    details.goals = goals(&results, details.programs.as_ref());
    std::fs::write(
        options.out.join("table.txt"),
        format!(
            "{}\n{}\n{}{}{}{}{}",
            table(&results),
            spread_table(&results),
            if details.program_time.is_empty() {
                String::new()
            } else {
                format!("{}\n", program_time_table(&details.program_time))
            },
            details
                .programs
                .as_ref()
                .map(|cost| format!("{}\n", program_cost_table(cost)))
                .unwrap_or_default(),
            details
                .scrape_load
                .as_ref()
                .map(|load| format!("{}\n\n", scrape_load_line(load)))
                .unwrap_or_default(),
            if details.families.is_empty() {
                String::new()
            } else {
                format!("{}\n", family_table(&details.families))
            },
            goals_table(&details.goals)
        ),
    )?;
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

/// Waits until the client and server reach each other: a node is ready
/// once its own lease is in subnet.env, and stock flanneld programs a peer
/// only when its watch delivers that peer's lease, a moment later.
fn wait_until_ends_reach_each_other(lab: &Lab, config: &Configuration) -> Result<()> {
    let (client, server) = endpoints(lab, config);
    let ping = |from: &measure::Endpoint, to: &measure::Endpoint| {
        weft_tests::netns::run(&from.ns, &["ping", "-c", "1", "-W", "1", &to.ip])
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reached = ping(&client, &server).and_then(|_| ping(&server, &client));
        match reached {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                return Err(
                    error.context("the client and server did not reach each other within 30 s")
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The version of stock flanneld the `flanneld-*` configurations will run,
/// `None` (said once) when none was given and none is required.
fn stock_flanneld(
    options: &BenchOptions,
    selected: &[&Configuration],
    progress: &mut dyn FnMut(&str),
) -> Result<Option<String>> {
    if !selected
        .iter()
        .any(|config| config.dataplane == Dataplane::Flanneld)
    {
        return Ok(None);
    }
    let Some(flanneld) = &options.flanneld_bin else {
        let required = std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|value| value == "1");
        anyhow::ensure!(
            !required,
            "the flanneld-* configurations need stock flanneld and none was given \
             (set {FLANNELD_ENV}, or WEFT_FLANNEL_SOURCE for `cargo xtask bench`); \
             {REQUIRE_PRIVILEGED}=1 forbids leaving them out"
        );
        progress(&format!(
            "no stock flanneld ({FLANNELD_ENV} unset): the flanneld-* configurations are left out"
        ));
        return Ok(None);
    };
    let out = std::process::Command::new(flanneld)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} --version", flanneld.display()))?;
    let version = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "{} --version failed: {version}",
        flanneld.display()
    );
    Ok(Some(format!("flanneld {}", version.trim())))
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median(config: &Configuration, runs: &[Run]) -> ConfigResult {
    let m = |pick: &dyn Fn(&Run) -> f64| median_of(runs.iter().map(pick).collect());
    ConfigResult {
        name: config.name.to_owned(),
        path: config.path().to_owned(),
        icmp_rtt_us_p50: m(&|run| run.icmp.0),
        icmp_rtt_us_p99: m(&|run| run.icmp.1),
        tcp_rr_same_cpu_us_p50: m(&|run| run.tcp_rr_same_cpu.0),
        tcp_rr_same_cpu_us_p99: m(&|run| run.tcp_rr_same_cpu.1),
        udp_rr_same_cpu_us_p50: m(&|run| run.udp_rr_same_cpu.0),
        udp_rr_same_cpu_us_p99: m(&|run| run.udp_rr_same_cpu.1),
        tcp_rr_cross_cpu_us_p50: m(&|run| run.tcp_rr_cross_cpu.0),
        tcp_rr_cross_cpu_us_p99: m(&|run| run.tcp_rr_cross_cpu.1),
        udp_rr_cross_cpu_us_p50: m(&|run| run.udp_rr_cross_cpu.0),
        udp_rr_cross_cpu_us_p99: m(&|run| run.udp_rr_cross_cpu.1),
        tcp_rr_tps: m(&|run| run.tcp_rr_tps),
        udp_pps: m(&|run| run.udp_pps),
        tcp_gbps: m(&|run| run.tcp_gbps),
        cpu_s_per_gb: m(&|run| run.cpu_s_per_gb),
        tcp_retransmits: m(&|run| run.tcp_retransmits as f64) as u64,
        reordering: TcpReordering {
            sender_sack_reorder: m(&|run| run.reordering.sender_sack_reorder as f64) as u64,
            sender_ts_reorder: m(&|run| run.reordering.sender_ts_reorder as f64) as u64,
            sender_dsack_recv: m(&|run| run.reordering.sender_dsack_recv as f64) as u64,
            receiver_dsack_old_sent: m(&|run| run.reordering.receiver_dsack_old_sent as f64) as u64,
            receiver_ofo_queue: m(&|run| run.reordering.receiver_ofo_queue as f64) as u64,
            sender_dsack_segments: m(&|run| run.reordering.sender_dsack_segments as f64) as u64,
        },
        drops: Drops {
            drops_into_uplink: m(&|run| run.drops.drops_into_uplink as f64) as u64,
            drops_out_of_uplink: m(&|run| run.drops.drops_out_of_uplink as f64) as u64,
            drops_pod_veths: m(&|run| run.drops.drops_pod_veths as f64) as u64,
            drops_cpu_backlog: m(&|run| run.drops.drops_cpu_backlog as f64) as u64,
            drops_receiver_socket: m(&|run| run.drops.drops_receiver_socket as f64) as u64,
        },
        fastpath_packets: m(&|run| run.fastpath_packets as f64) as u64,
        netfilter_refusals: m(&|run| run.netfilter_refusals as f64) as u64,
        spread: spread::spread(runs),
        invalid: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stay_per_run_the_median_of_the_runs_not_their_sum() {
        let run = |retransmits, sack_reorder| Run {
            tcp_retransmits: retransmits,
            reordering: TcpReordering {
                sender_sack_reorder: sack_reorder,
                ..TcpReordering::default()
            },
            ..Run::default()
        };
        let result = median(
            configuration("ebpf-vxlan").unwrap(),
            &[run(40, 7), run(3, 90), run(5, 11)],
        );
        assert_eq!(result.tcp_retransmits, 5);
        assert_eq!(result.reordering.sender_sack_reorder, 11);
    }

    #[test]
    fn every_lab_name_fits_with_a_two_letter_prefix() {
        for config in CONFIGURATIONS {
            let name = config.lab_name("bb");
            assert!(name.len() <= 16, "{name}");
        }
        assert_eq!(
            configuration("kernel-host-gw").unwrap().lab_name("b"),
            "b-k-host-gw"
        );
    }
}
