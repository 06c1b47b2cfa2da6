//! The noise between runs: each configuration is measured several times
//! and the table shows medians, so next to them the bench keeps the lowest
//! and the highest value of the headline metrics. A ratio between two
//! configurations means something only where it is larger than their
//! spreads.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{ConfigResult, measure::Run};

/// The lowest and the highest value of one metric over the runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Range {
    pub lowest: f64,
    pub highest: f64,
}

impl Range {
    fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        Range {
            lowest: values.iter().copied().fold(f64::INFINITY, f64::min),
            highest: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// (highest - lowest) / `median`, in per cent; zero for a zero median.
    pub fn percent_of(self, median: f64) -> f64 {
        if median == 0.0 {
            return 0.0;
        }
        (self.highest - self.lowest) / median * 100.0
    }
}

/// The headline metrics' ranges over one configuration's runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub runs: usize,
    pub tcp_rr_same_cpu_us_p50: Range,
    pub udp_rr_same_cpu_us_p50: Range,
    pub tcp_gbps: Range,
    pub tcp_retransmits: Range,
}

pub(crate) fn spread(runs: &[Run]) -> Spread {
    let range = |pick: fn(&Run) -> f64| Range::of(&runs.iter().map(pick).collect::<Vec<_>>());
    Spread {
        runs: runs.len(),
        tcp_rr_same_cpu_us_p50: range(|run| run.tcp_rr_same_cpu.0),
        udp_rr_same_cpu_us_p50: range(|run| run.udp_rr_same_cpu.0),
        tcp_gbps: range(|run| run.tcp_gbps),
        tcp_retransmits: range(|run| run.tcp_retransmits as f64),
    }
}

/// A headline metric: its label, its range, its median.
type Headline = (&'static str, fn(&ConfigResult) -> (Range, f64));

const HEADLINES: [Headline; 4] = [
    ("TCP RR p50 (us)", |r| {
        (r.spread.tcp_rr_same_cpu_us_p50, r.tcp_rr_same_cpu_us_p50)
    }),
    ("UDP RR p50 (us)", |r| {
        (r.spread.udp_rr_same_cpu_us_p50, r.udp_rr_same_cpu_us_p50)
    }),
    ("TCP throughput (Gbit/s)", |r| {
        (r.spread.tcp_gbps, r.tcp_gbps)
    }),
    ("TCP retransmissions", |r| {
        (r.spread.tcp_retransmits, r.tcp_retransmits as f64)
    }),
];

const LABEL_WIDTH: usize = 30;
const CELL_WIDTH: usize = 24;

/// The printed section: per configuration and headline metric, the
/// lowest and highest run and their distance as a share of the median.
pub fn spread_table(results: &[ConfigResult]) -> String {
    let runs = results.iter().map(|r| r.spread.runs).max().unwrap_or(0);
    let mut out = format!(
        "noise between runs: lowest-highest of {runs} runs (the table gives the median), \
         (highest-lowest)/median in per cent\n"
    );
    let _ = write!(out, "{:<LABEL_WIDTH$}", "metric");
    for result in results {
        let _ = write!(out, "{:>CELL_WIDTH$}", result.name);
    }
    out.push('\n');
    for (label, pick) in HEADLINES {
        let _ = write!(out, "{label:<LABEL_WIDTH$}");
        for result in results {
            let (range, median) = pick(result);
            let cell = format!(
                "{:.2}-{:.2} {:.0}%",
                range.lowest,
                range.highest,
                range.percent_of(median)
            );
            let _ = write!(out, "{cell:>CELL_WIDTH$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tcp_rr_us: f64, gbps: f64, retransmits: u64) -> Run {
        Run {
            tcp_rr_same_cpu: (tcp_rr_us, tcp_rr_us * 2.0),
            tcp_gbps: gbps,
            tcp_retransmits: retransmits,
            ..Run::default()
        }
    }

    #[test]
    fn the_spread_is_the_lowest_and_highest_run_around_the_median() {
        let spread = spread(&[run(10.0, 4.0, 7), run(9.0, 4.4, 0), run(12.0, 4.2, 30)]);
        assert_eq!(spread.runs, 3);
        assert_eq!(
            spread.tcp_rr_same_cpu_us_p50,
            Range {
                lowest: 9.0,
                highest: 12.0
            }
        );
        assert_eq!(spread.tcp_gbps.lowest, 4.0);
        assert_eq!(spread.tcp_gbps.highest, 4.4);
        assert_eq!(spread.tcp_retransmits.highest, 30.0);
        // 3 us between the extremes around a 10 us median.
        assert_eq!(spread.tcp_rr_same_cpu_us_p50.percent_of(10.0), 30.0);
        assert_eq!(Range::default().percent_of(0.0), 0.0);
    }

    #[test]
    fn the_printed_spread_names_every_configuration_and_its_range() {
        let result = ConfigResult {
            name: "ebpf-vxlan".to_owned(),
            tcp_rr_same_cpu_us_p50: 10.0,
            spread: spread(&[run(10.0, 4.0, 1), run(9.5, 4.0, 1), run(11.0, 4.0, 1)]),
            ..ConfigResult::default()
        };
        let table = spread_table(&[result]);
        assert!(table.contains("of 3 runs"), "{table}");
        assert!(table.contains("ebpf-vxlan"), "{table}");
        assert!(table.contains("9.50-11.00 15%"), "{table}");
    }
}
