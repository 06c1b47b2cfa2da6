//! What weft's programs cost per packet in the running datapath: one more
//! same-CPU TCP request/response run per eBPF configuration, with the
//! kernel's BPF run-time statistics on, after its measured runs and never
//! one of them (the statistics add two clock reads to every program run).
//!
//! `program_cost.rs` times the programs warm, one test frame repeated, on
//! a linear skb. Here they run as real traffic runs them: between the
//! sockets' work, with cold caches, on the skbs the stack makes (a TCP
//! segment is a clone whose linear part ends with its headers). The two
//! differ most where a program touches the skb itself: pulling past a
//! segment's headers reallocates its head, which no test frame shows.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    maps::MapInfo,
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use serde::Serialize;
use weft_tests::{Lab, NodeId};

use crate::{
    BenchOptions, Configuration,
    measure::{Pinning, endpoints, sockperf},
};

/// The nodes of a bench lab.
const NODES: [usize; 2] = [1, 2];

/// One program of one node during the run.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramTime {
    pub configuration: String,
    pub node: usize,
    pub program: String,
    /// How often it ran during the run.
    pub runs: u64,
    /// Its mean run time, by the kernel's statistics (which include their
    /// own clock reads).
    pub ns_per_run: f64,
}

/// (node, program name) -> (run time, runs), summed over the programs of
/// that name that use the node's maps.
type Reading = BTreeMap<(usize, String), (Duration, u64)>;

/// The per-packet time of every program on both nodes of `lab` during one
/// same-CPU TCP request/response run (sockperf, as the latency rows run it).
pub(crate) fn program_time(
    lab: &Lab,
    config: &Configuration,
    options: &BenchOptions,
) -> Result<Vec<ProgramTime>> {
    let (client, server) = endpoints(lab, config);
    let _stats = enable_stats(Stats::RunTime).context("cannot enable BPF run-time statistics")?;
    let before = read(lab)?;
    sockperf(&client, &server, true, Pinning::SameCpu, options.seconds)?;
    let after = read(lab)?;
    Ok(after
        .into_iter()
        .filter_map(|(key, (time, runs))| {
            let (time_before, runs_before) = before.get(&key).copied().unwrap_or_default();
            let runs = runs - runs_before;
            (runs > 0).then(|| ProgramTime {
                configuration: config.name.to_owned(),
                node: key.0,
                program: key.1,
                runs,
                ns_per_run: (time - time_before).as_nanos() as f64 / runs as f64,
            })
        })
        .collect())
}

/// Run time and count of every program that uses a node's STATS map: that
/// node's agent loaded it.
fn read(lab: &Lab) -> Result<Reading> {
    let mut reading = Reading::new();
    for node in NODES {
        let pins = &lab.node(NodeId::new(node)).pin_dir;
        let stats = stats_map_id(pins)?;
        for program in loaded_programs() {
            let program = program.context("cannot read a loaded BPF program's information")?;
            let uses_stats = program
                .map_ids()
                .context("cannot read a BPF program's maps")?
                .is_some_and(|ids| ids.contains(&stats));
            if !uses_stats {
                continue;
            }
            let name = program.name_as_str().unwrap_or("?").to_owned();
            let entry = reading.entry((node, name)).or_default();
            entry.0 += program.run_time();
            entry.1 += program.run_count();
        }
    }
    Ok(reading)
}

fn stats_map_id(pins: &Path) -> Result<u32> {
    let path = pins.join("STATS");
    Ok(MapInfo::from_pin(&path)
        .with_context(|| format!("cannot open the pinned map {}", path.display()))?
        .id())
}

/// The table under the program cost in table.txt.
pub fn program_time_table(rows: &[ProgramTime]) -> String {
    let mut out = String::from(
        "program time in the datapath (one more same-CPU TCP request/response run per eBPF \
         configuration, kernel run-time statistics on; not one of the measured runs)\n",
    );
    out.push_str(&format!(
        "  {:<16} {:>4}  {:<16} {:>10} {:>10}\n",
        "configuration", "node", "program", "runs", "ns/run"
    ));
    for row in rows {
        out.push_str(&format!(
            "  {:<16} {:>4}  {:<16} {:>10} {:>10.0}\n",
            row.configuration, row.node, row.program, row.runs, row.ns_per_run
        ));
    }
    out
}
