//! `--profile CONFIG`: where the CPU time of a TCP throughput run goes.
//! One more iperf3 run after the measured ones (so the profiler never
//! touches a reported figure) under `perf record -a -g`, then the symbols
//! with the most self time (the BPF programs appear as
//! `bpf_prog_<tag>_<name>`, from the kernel's BPF symbols) and the share of
//! each CPU, in `profile-<config>.txt` next to the results.

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
    let symbols = perf_report(&data, "sym")?;
    let cpus = perf_report(&data, "cpu")?;
    let path = options.out.join(format!("profile-{}.txt", config.name));
    let mut text = format!(
        "# perf record -a -g over one iperf3 TCP run of {} ({:.2} Gbit/s for {seconds:.0} s), \
         after and apart from the measured runs\n# {}\n# self %  symbol ([k] kernel, [.] user space; \
         bpf_prog_<tag>_<name> are weft's programs)\n",
        config.name,
        tcp.gbps,
        machine()
    );
    for (share, symbol) in top(&symbols, TOP_SYMBOLS) {
        text.push_str(&format!("{share:>7.2}%  {symbol}\n"));
    }
    text.push_str("# share of samples by CPU\n");
    for (share, cpu) in top(&cpus, usize::MAX) {
        text.push_str(&format!("{share:>7.2}%  CPU {cpu}\n"));
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `perf report` of `data`, self time only, sorted by `key`.
fn perf_report(data: &Path, key: &str) -> Result<String> {
    netns::run_host(&[
        "perf",
        "report",
        "-i",
        &data.display().to_string(),
        "--no-children",
        "--sort",
        key,
        "--stdio",
        "-g",
        "none",
        "--percent-limit",
        "0.1",
    ])
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
}
