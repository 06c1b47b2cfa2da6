//! `--profile CONFIG`: where the CPU time of a TCP throughput run goes.
//! One more iperf3 run after the measured ones (so the profiler never
//! touches a reported figure) under `perf record -a -g`, then the symbols
//! with the most self time (the BPF programs appear as
//! `bpf_prog_<tag>_<name>`, from the kernel's BPF symbols) and the share of
//! each command and CPU, in `profile-<config>.txt` next to the results.
//!
//! The symbols are those of the samples taken in iperf3 and the `ksoftirqd`
//! threads, as shares of those samples: the datapath of the run (veth
//! transmit, the softirq receive chain, the BPF programs, GRO, the TCP
//! stacks of both ends) runs in their context, and on a shared machine the
//! rest of `-a` is other people's compilers.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use nix::{sys::signal, unistd::Pid};
use weft_tests::netns;

use crate::{
    BenchOptions, Configuration,
    measure::{endpoints, iperf_tcp},
    report::machine,
};

/// How many symbols the profile file lists.
const TOP_SYMBOLS: usize = 40;

/// The profiled run lasts at least this long: enough samples at perf's
/// default 4 kHz per CPU to rank symbols of a few tenths of a per cent.
const MIN_SECONDS: f64 = 3.0;

/// Profiles one TCP throughput run of `config` on its running lab; returns
/// the path of the profile written.
pub(crate) fn profile_throughput(
    lab: &weft_tests::Lab,
    config: &Configuration,
    options: &BenchOptions,
) -> Result<PathBuf> {
    let (client, server) = endpoints(lab, config);
    let data = options.out.join(format!("profile-{}.data", config.name));
    let perf = Command::new("perf")
        .args(["record", "-a", "-g", "-q", "-o"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start perf record (linux-perf; `cargo xtask setup` installs it)")?;
    // perf lists the running processes and BPF programs before it samples.
    std::thread::sleep(Duration::from_millis(700));
    let seconds = options.seconds.max(MIN_SECONDS);
    let tcp = iperf_tcp(&client, &server, seconds);
    signal::kill(Pid::from_raw(perf.id() as i32), signal::Signal::SIGINT)
        .context("cannot stop perf record")?;
    let stopped = perf.wait_with_output()?;
    let tcp = tcp?;
    ensure!(
        stopped.status.success() || data.exists(),
        "perf record failed: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let (datapath_share, listed) =
        datapath_symbols(&perf_report(&data, "comm,sym", Some(&datapath_commands()))?);
    let commands = perf_report(&data, "comm", None)?;
    let cpus = perf_report(&data, "cpu", None)?;
    let path = options.out.join(format!("profile-{}.txt", config.name));
    let mut text = format!(
        "# perf record -a -g over one iperf3 TCP run of {} ({:.2} Gbit/s for {seconds:.0} s), \
         after and apart from the measured runs\n# {}\n# iperf3 and ksoftirqd (the run's datapath): \
         {datapath_share:.1}% of all samples\n# self % of those samples, symbol ([k] kernel, [.] user \
         space; bpf_prog_<tag>_<name> are weft's programs)\n",
        config.name,
        tcp.gbps,
        machine()
    );
    for (share, symbol) in listed.iter().take(TOP_SYMBOLS) {
        text.push_str(&format!("{share:>7.2}%  {symbol}\n"));
    }
    text.push_str("# weft's BPF programs (and their subprograms)\n");
    for (share, symbol) in listed
        .iter()
        .filter(|(_, symbol)| symbol.contains("bpf_prog_"))
    {
        text.push_str(&format!("{share:>7.2}%  {symbol}\n"));
    }
    text.push_str("# share of all samples by command (what else ran on the machine)\n");
    for (share, command) in top(&commands, 12) {
        text.push_str(&format!("{share:>7.2}%  {command}\n"));
    }
    text.push_str("# share of all samples by CPU\n");
    for (share, cpu) in top(&cpus, usize::MAX) {
        text.push_str(&format!("{share:>7.2}%  CPU {cpu}\n"));
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The commands whose samples are the run's datapath: iperf3 (client and
/// server, and the softirqs that run on their way out of a system call) and
/// every CPU's `ksoftirqd`.
fn datapath_commands() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut commands = vec!["iperf3".to_owned()];
    commands.extend((0..cpus).map(|cpu| format!("ksoftirqd/{cpu}")));
    commands.join(",")
}

/// (their share of all samples, every symbol's share of their samples,
/// largest first) from a `--sort comm,sym` listing of the datapath's
/// commands: one symbol's samples in iperf3 and in ksoftirqd add up.
fn datapath_symbols(report: &str) -> (f64, Vec<(f64, String)>) {
    let mut by_symbol = std::collections::BTreeMap::<String, f64>::new();
    for (share, command_and_symbol) in top(report, usize::MAX) {
        let symbol = command_and_symbol
            .split_once(char::is_whitespace)
            .map_or("", |(_, symbol)| symbol.trim());
        *by_symbol.entry(symbol.to_owned()).or_default() += share;
    }
    let total: f64 = by_symbol.values().sum();
    let mut symbols: Vec<(f64, String)> = by_symbol
        .into_iter()
        .map(|(symbol, share)| (share * 100.0 / total.max(f64::MIN_POSITIVE), symbol))
        .collect();
    symbols.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    (total, symbols)
}

/// `perf report` of `data`, self time only, sorted by `key`, as shares of
/// all samples; with `commands`, only theirs (`perf report --comms` alone
/// drops a symbol whose entry another command founded: sort by `comm,sym`
/// with it).
fn perf_report(data: &Path, key: &str, commands: Option<&str>) -> Result<String> {
    let data = data.display().to_string();
    let mut args = vec![
        "perf",
        "report",
        "-i",
        &data,
        "--no-children",
        "--sort",
        key,
        "--stdio",
        "-g",
        "none",
        "--percent-limit",
        "0.001",
    ];
    if let Some(commands) = commands {
        args.extend(["--comms", commands]);
    }
    netns::run_host(&args)
}

/// (per cent, what) of a `perf report --stdio -g none` listing, in its
/// order, at most `count` of them.
fn top(report: &str, count: usize) -> Vec<(f64, String)> {
    report
        .lines()
        .filter_map(|line| {
            let (share, rest) = line.trim_start().split_once('%')?;
            Some((share.parse().ok()?, rest.trim().to_owned()))
        })
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_keeps_symbols_in_perfs_order_and_skips_comments() {
        let report = "# Samples: 5K of event 'cpu-clock:pppH'\n#\n    \
            25.69%  [k] pv_native_safe_halt\n     \
            5.25%  [k] bpf_prog_4b1f0c8e2a1d9f33_tc_uplink\n\n     \
            0.12%  [.] memcpy\n";
        assert_eq!(
            top(report, 2),
            [
                (25.69, "[k] pv_native_safe_halt".to_owned()),
                (5.25, "[k] bpf_prog_4b1f0c8e2a1d9f33_tc_uplink".to_owned())
            ]
        );
        assert_eq!(top(report, 10).len(), 3);
    }

    #[test]
    fn a_symbols_samples_in_every_datapath_command_add_up() {
        let report = "# Samples: 46K\n     \
            3.00%  iperf3           [k] csum_partial\n     \
            1.00%  ksoftirqd/0      [k] bpf_prog_e651970b072a90bf_tc_uplink\n     \
            1.00%  ksoftirqd/1      [k] csum_partial\n";
        let (share, symbols) = datapath_symbols(report);
        assert!((share - 5.0).abs() < 1e-9);
        assert_eq!(
            symbols,
            [
                (80.0, "[k] csum_partial".to_owned()),
                (20.0, "[k] bpf_prog_e651970b072a90bf_tc_uplink".to_owned())
            ]
        );
    }
}
