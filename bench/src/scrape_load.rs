//! `/metrics` under load: one agent with `FLOWS` nearly full, many scrapers
//! at once, `/healthz` asked throughout (docs/operating.md, "Metrics").

use anyhow::{Result, bail};
use serde::Serialize;
use weft_tests::{
    Lab, LabSpec, NodeId,
    lab::HEALTHZ_PORT,
    netns,
    scrapes::{self, Response, fill_flows, flows_walked, sample, storm, wait_until_stale},
};

use crate::{BenchOptions, measure::percentile};

/// Synthetic verdicts in `FLOWS` (of 65,536).
const FLOWS: u32 = 60_000;
/// Scrapers at once...
const SCRAPERS: usize = 50;
/// ... each scraping this many times in a row.
const ROUNDS: usize = 5;
/// Lone scrapes that each render anew, timed.
const LONE: usize = 5;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrapeLoad {
    /// Entries in `FLOWS` during the run.
    pub flows: u64,
    pub scrapers: usize,
    pub scrapes: usize,
    /// One scrape that renders anew with nothing else running (median).
    pub lone_scrape_ms: f64,
    /// For comparison: walking `FLOWS` key by key, one syscall per entry,
    /// as every scrape did before (median).
    pub key_walk_ms: f64,
    pub scrape_ms_p50: f64,
    pub scrape_ms_p99: f64,
    pub scrape_ms_max: f64,
    /// `/healthz` asked one after another during the scrapes.
    pub healthz: usize,
    pub healthz_ms_p50: f64,
    pub healthz_ms_p99: f64,
    /// Of the scrapes: how many read the maps (rendered anew) and how many
    /// were answered with a shared rendering (`weft_metrics_scrapes_total`).
    pub computed: u64,
    pub shared: u64,
    /// Scrapes and `/healthz` requests without a 200 answer.
    pub failed: usize,
}

/// Fills one agent's `FLOWS` with [`FLOWS`] verdicts and times [`SCRAPERS`]
/// parallel scrapers against it while `/healthz` is asked in a loop.
pub fn scrape_load(options: &BenchOptions) -> Result<ScrapeLoad> {
    let mut spec = LabSpec::new(&format!("{}-scrape", options.lab_prefix), 1, 0);
    spec.weft_bin = options.weft_bin.clone();
    let lab = Lab::up(&spec)?;
    let node = lab.node(NodeId::FIRST).clone();
    fill_flows(&node.pin_dir, FLOWS)?;
    let mut walks = Vec::new();
    let mut flows = 0;
    for _ in 0..LONE {
        let started = std::time::Instant::now();
        flows = flows_walked(&node.pin_dir)?;
        walks.push(started.elapsed().as_secs_f64() * 1e3);
    }
    walks.sort_by(f64::total_cmp);

    let mut lone = Vec::new();
    for _ in 0..LONE {
        wait_until_stale();
        lone.push(ms(&get_metrics(&node.ns)?));
    }
    lone.sort_by(f64::total_cmp);
    wait_until_stale();
    let served_before = served(&get_metrics(&node.ns)?.body)?;
    wait_until_stale();
    let storm = storm(&node.ns, HEALTHZ_PORT, SCRAPERS, ROUNDS)?;
    wait_until_stale();
    let served_after = served(&get_metrics(&node.ns)?.body)?;
    // The scrape that read `served_before` is counted in `served_after`.
    let computed = (served_after.0 - served_before.0).saturating_sub(1);
    let shared = served_after.1 - served_before.1;

    let failed = storm
        .scrapes
        .iter()
        .chain(&storm.healthz)
        .filter(|answer| !answer.as_ref().is_ok_and(ok))
        .count();
    let times = |answers: &[Result<Response>]| {
        let mut times: Vec<f64> = answers.iter().flatten().filter(|r| ok(r)).map(ms).collect();
        times.sort_by(f64::total_cmp);
        times
    };
    let scrape_times = times(&storm.scrapes);
    let healthz_times = times(&storm.healthz);
    drop(lab);
    Ok(ScrapeLoad {
        flows,
        scrapers: SCRAPERS,
        scrapes: storm.scrapes.len(),
        lone_scrape_ms: lone[lone.len() / 2],
        key_walk_ms: walks[walks.len() / 2],
        scrape_ms_p50: percentile(&scrape_times, 50.0),
        scrape_ms_p99: percentile(&scrape_times, 99.0),
        scrape_ms_max: scrape_times.last().copied().unwrap_or_default(),
        healthz: storm.healthz.len(),
        healthz_ms_p50: percentile(&healthz_times, 50.0),
        healthz_ms_p99: percentile(&healthz_times, 99.0),
        computed,
        shared,
        failed,
    })
}

/// The report's line.
pub fn scrape_load_line(load: &ScrapeLoad) -> String {
    format!(
        "/metrics under load: {} parallel scrapers, {} scrapes, FLOWS {} entries: scrape p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms ({} read the maps, {} shared a reading; a lone scrape that reads \
         them {:.1} ms, walking FLOWS key by key {:.1} ms); /healthz meanwhile ({}): p50 {:.2} ms, p99 {:.2} ms; {} without a 200",
        load.scrapers,
        load.scrapes,
        load.flows,
        load.scrape_ms_p50,
        load.scrape_ms_p99,
        load.scrape_ms_max,
        load.computed,
        load.shared,
        load.lone_scrape_ms,
        load.key_walk_ms,
        load.healthz,
        load.healthz_ms_p50,
        load.healthz_ms_p99,
        load.failed
    )
}

fn ok(response: &Response) -> bool {
    response.status.contains(" 200 ")
}

fn ms(response: &Response) -> f64 {
    response.took.as_secs_f64() * 1e3
}

/// One `GET /metrics` from inside `ns`, which must answer 200.
fn get_metrics(ns: &str) -> Result<Response> {
    let response = netns::in_netns(ns, || scrapes::get(HEALTHZ_PORT, "/metrics"))?;
    if !ok(&response) {
        bail!("GET /metrics: {}", response.status);
    }
    Ok(response)
}

/// (computed, shared) from `weft_metrics_scrapes_total` in `body`.
fn served(body: &str) -> Result<(u64, u64)> {
    let count = |served: &str| {
        let name = format!("weft_metrics_scrapes_total{{served=\"{served}\"}}");
        sample(body, &name)
            .map(|value| value as u64)
            .ok_or_else(|| anyhow::anyhow!("no {name} in the exposition"))
    };
    Ok((count("computed")?, count("recent")? + count("in_flight")?))
}
