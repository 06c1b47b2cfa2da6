//! `weft-bench`: the benchmark CLI behind `cargo xtask bench`.

// The binary sees every dependency of its package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Parser;
use weft_tests::{lab::default_weft_bin, privileged::ensure_bpffs};

#[derive(Parser)]
#[command(
    name = "weft-bench",
    about = "weft against stock flanneld, a no-overlay floor and the underlay itself: underlay, floor, flanneld-vxlan, kernel-vxlan, ebpf-vxlan, flanneld-host-gw, kernel-host-gw, ebpf-host-gw in turn"
)]
struct BenchArgs {
    /// One repetition, shorter runs, 1,000 leases only.
    #[arg(long)]
    quick: bool,
    /// Where results.json, details.json and results.svg go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Only these configurations (repeatable).
    #[arg(long = "config")]
    configs: Vec<String>,
    /// Seconds per throughput / request-response run.
    #[arg(long)]
    seconds: Option<f64>,
    /// Skip the per-packet program cost, the control-plane scale and the
    /// /metrics load runs.
    #[arg(long)]
    no_extras: bool,
    /// Only the conntrack marking rate (no labs): how fast the agent makes
    /// fast-pathed TCP flows liberal.
    #[arg(long)]
    ct_marking_only: bool,
    /// Only the IPv6 rows next to IPv4 (two dual-stack labs, weft's kernel
    /// path): printed, and written to families.json in --out.
    #[arg(long)]
    families_only: bool,
    /// Only the per-packet program cost, step by step (no labs): printed,
    /// and written to program-cost.json in --out.
    #[arg(long)]
    program_cost_only: bool,
    /// Only the control-plane scale row for this many leases (one lab):
    /// all of them in, then all of them deleted.
    #[arg(long, value_name = "LEASES")]
    scale_only: Option<usize>,
    /// The weft binary the nodes run (default: $WEFT_BIN or target/debug/weft).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
    /// Stock flanneld for the flanneld-* configurations (default: $WEFT_FLANNELD;
    /// without one they are left out).
    #[arg(long)]
    flanneld: Option<PathBuf>,
    /// Profile this configuration's TCP throughput (repeatable): one more
    /// run after the measured ones under `perf record -a -g`, its top
    /// symbols in profile-CONFIG.txt in the output directory.
    #[arg(long, value_name = "CONFIG")]
    profile: Vec<String>,
    /// Name the labs PREFIX-CONFIG (at most 16 characters in all), so two
    /// benches can run on one machine.
    #[arg(long, value_name = "PREFIX", default_value = "b")]
    lab_prefix: String,
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the bench needs root (network namespaces, BPF)"
    );
    ensure_bpffs();
    if args.ct_marking_only {
        let (connections, rounds) = if args.quick { (500, 4) } else { (1000, 20) };
        let marking = weft_bench::ct_marking(connections, rounds)?;
        print_ct_marking(&marking);
        return Ok(());
    }
    if args.program_cost_only {
        let cost = weft_bench::program_cost(weft_bench::CostEffort::new(args.quick))?;
        print!("{}", weft_bench::program_cost_table(&cost));
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(
            args.out.join("program-cost.json"),
            serde_json::to_string_pretty(&cost)?,
        )?;
        return Ok(());
    }
    let mut options = weft_bench::BenchOptions::new(
        args.quick,
        args.out,
        args.weft_bin.unwrap_or_else(default_weft_bin),
    );
    if let Some(flanneld) = args.flanneld {
        options.flanneld_bin = Some(flanneld);
    }
    options.lab_prefix = args.lab_prefix.clone();
    if args.families_only {
        if let Some(seconds) = args.seconds {
            options.seconds = seconds;
        }
        let started = std::time::Instant::now();
        let rows = weft_bench::family_rows(&options, &mut |step| {
            eprintln!("[{:>6.1}s] {step}", started.elapsed().as_secs_f64());
        })?;
        print!("{}", weft_bench::family_table(&rows));
        std::fs::create_dir_all(&options.out)?;
        std::fs::write(
            options.out.join("families.json"),
            serde_json::to_string_pretty(&rows)?,
        )?;
        return Ok(());
    }
    if let Some(leases) = args.scale_only {
        print_scale(&weft_bench::scale(&options, leases)?);
        return Ok(());
    }
    let names: Vec<&str> = weft_bench::CONFIGURATIONS
        .iter()
        .map(|config| config.name)
        .collect();
    for config in &args.profile {
        anyhow::ensure!(
            weft_bench::configuration(config).is_some(),
            "--profile {config}: not one of {}",
            names.join(", ")
        );
    }
    for config in &args.configs {
        let known = weft_bench::configuration(config)
            .ok_or_else(|| anyhow::anyhow!("--config {config}: not one of {}", names.join(", ")))?;
        anyhow::ensure!(
            known.dataplane != weft_tests::Dataplane::Flanneld || options.flanneld_bin.is_some(),
            "--config {config} runs stock flanneld: set WEFT_FLANNELD (or WEFT_FLANNEL_SOURCE for \
             `cargo xtask bench`), or pass --flanneld PATH"
        );
    }
    options.only = args.configs;
    options.profile = args.profile;
    options.lab_prefix = args.lab_prefix;
    if let Some(seconds) = args.seconds {
        options.seconds = seconds;
        options.pings = options.pings.min(50 + (seconds * 100.0) as usize);
    }
    options.extras = !args.no_extras;
    let started = std::time::Instant::now();
    let (results, details) = weft_bench::run(&options, &mut |step| {
        eprintln!("[{:>6.1}s] {step}", started.elapsed().as_secs_f64());
    })?;
    println!("\n{}", weft_bench::table(&results));
    println!("{}", weft_bench::spread_table(&results));
    println!("machine: {}", details.machine);
    if let Some(flanneld) = &details.stock_flanneld {
        println!("stock flannel: {flanneld}");
    }
    if let Some(programs) = &details.programs {
        print!("{}", weft_bench::program_cost_table(programs));
    }
    if let Some(marking) = &details.ct_marking {
        print_ct_marking(marking);
    }
    for scale in &details.control_plane {
        print_scale(scale);
    }
    if let Some(load) = &details.scrape_load {
        println!("{}", weft_bench::scrape_load_line(load));
    }
    println!(
        "\nperformance goals (reported, not asserted):\n{}",
        weft_bench::goals_table(&details.goals)
    );
    for profile in &details.profiles {
        println!("profile: {}", profile.display());
    }
    println!(
        "wrote {}/results.json, details.json, results.svg, table.txt in {:.0} s",
        options.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_ct_marking(marking: &weft_bench::CtMarking) {
    println!(
        "conntrack marking (agent, per fast-pathed TCP flow: ctnetlink update + FLOWS confirmation): \
         {:.0} flows/s, {:.1} us per flow ({} connections x {} rounds)",
        marking.flows_per_s, marking.us_per_flow, marking.connections, marking.rounds
    );
}

fn print_scale(scale: &weft_bench::ScaleResult) {
    println!(
        "control plane: {} leases in PEERS after {:.3} s, in the kernel after {:.3} s; all deleted: out of PEERS after {:.3} s, out of the kernel after {:.3} s; agent peak RSS {:.1} MiB; ruleset generation moved {} times",
        scale.leases,
        scale.peers_converged_s,
        scale.kernel_converged_s,
        scale.peers_removed_s,
        scale.kernel_removed_s,
        scale.agent_peak_rss_mib,
        scale.ruleset_generation_moves
    );
}
