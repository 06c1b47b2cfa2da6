//! `weft maps stats --watch`: per-second rates of the fast-path counters,
//! refreshed in place, for a person at a terminal (`top` for the fast path).
//! Piped, each refresh is a block of its own, so scripts can read it too.

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::stats::{self, CounterValue};

/// What a counter says happened to a packet, for the summary lines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A program forwarded it (decapsulated, encapsulated, redirected).
    Carried,
    /// A program left it to the kernel path (`pass_*`).
    HandedToKernel,
    /// A program dropped it (`drop_*`).
    Dropped,
    /// Bookkeeping: packets seen, verdicts recorded.
    Other,
}

fn outcome(counter: &CounterValue) -> Outcome {
    if counter.reason.starts_with("pass_") {
        Outcome::HandedToKernel
    } else if counter.reason.starts_with("drop_") {
        Outcome::Dropped
    } else if counter.reason == "seen" || counter.hook == "tc_verdict" {
        Outcome::Other
    } else {
        Outcome::Carried
    }
}

/// One counter's change over an interval, per second.
struct Rate<'a> {
    counter: &'a CounterValue,
    packets: f64,
    bytes: f64,
}

pub fn watch(pin_dir: &Path, interval: f64, count: Option<u64>) -> Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut previous = (Instant::now(), stats::read_pinned(pin_dir)?);
    let mut refreshes = 0;
    while count.is_none_or(|count| refreshes < count) {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let now = (Instant::now(), stats::read_pinned(pin_dir)?);
        let seconds = now.0.duration_since(previous.0).as_secs_f64();
        let rates = rates(&previous.1, &now.1, seconds);
        let mut out = String::new();
        if terminal {
            // Home and clear: the next screen replaces this one.
            out += "\x1b[H\x1b[2J";
        }
        out += &format!(
            "weft maps stats --watch  {}  every {interval} s  at {:.1} s\n",
            pin_dir.display(),
            started.elapsed().as_secs_f64()
        );
        out += &render(&rates);
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        if !terminal {
            stdout.write_all(b"\n")?;
        }
        stdout.flush()?;
        previous = now;
        refreshes += 1;
    }
    Ok(())
}

/// Per-second change of every counter between two readings (same order:
/// both come from `COUNTERS`). A counter that went backwards (the pinned
/// map was replaced) counts from zero.
fn rates<'a>(before: &[CounterValue], after: &'a [CounterValue], seconds: f64) -> Vec<Rate<'a>> {
    after
        .iter()
        .map(|counter| {
            let old = before.iter().find(|old| old.name == counter.name);
            let delta = |now: u64, then: Option<u64>| {
                let then = then.filter(|&then| then <= now).unwrap_or(0);
                (now - then) as f64 / seconds.max(f64::EPSILON)
            };
            Rate {
                counter,
                packets: delta(counter.packets, old.map(|old| old.packets)),
                bytes: delta(counter.bytes, old.map(|old| old.bytes)),
            }
        })
        .collect()
}

fn render(rates: &[Rate]) -> String {
    let mut out = format!(
        "{:<36} {:>14} {:>14} {:>16}\n",
        "", "PACKETS/S", "MBIT/S", "TOTAL PACKETS"
    );
    for (label, wanted) in [
        ("carried by the fast path", Outcome::Carried),
        ("handed to the kernel path", Outcome::HandedToKernel),
        ("dropped", Outcome::Dropped),
    ] {
        let of_kind = || rates.iter().filter(|rate| outcome(rate.counter) == wanted);
        out += &format!(
            "{label:<36} {:>14.0} {:>14.2} {:>16}\n",
            of_kind().map(|rate| rate.packets).sum::<f64>(),
            of_kind().map(|rate| rate.bytes * 8.0 / 1e6).sum::<f64>(),
            of_kind().map(|rate| rate.counter.packets).sum::<u64>(),
        );
    }
    let mut moving: Vec<&Rate> = rates.iter().filter(|rate| rate.packets > 0.0).collect();
    moving.sort_by(|a, b| b.packets.total_cmp(&a.packets));
    out += &format!("\n{:<36} {:>14} {:>14} {:>16}\n", "COUNTER", "", "", "");
    if moving.is_empty() {
        out += "(no counter moved)\n";
    }
    for rate in moving {
        out += &format!(
            "{:<36} {:>14.0} {:>14.2} {:>16}\n",
            rate.counter.name,
            rate.packets,
            rate.bytes * 8.0 / 1e6,
            rate.counter.packets
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(
        name: &'static str,
        hook: &'static str,
        reason: &'static str,
        packets: u64,
    ) -> CounterValue {
        CounterValue {
            name,
            hook,
            reason,
            packets,
            bytes: packets * 100,
        }
    }

    #[test]
    fn rates_are_per_second_and_summed_by_what_happened_to_the_packets() {
        let before = [
            counter("tc_encap", "tc_pod_egress", "encap", 100),
            counter("xdp_pass_no_verdict", "xdp_uplink", "pass_no_verdict", 5),
            counter(
                "tc_drop_vxlan_from_pod",
                "tc_pod_egress",
                "drop_vxlan_from_pod",
                0,
            ),
            counter("uplink_rx", "xdp_uplink", "seen", 0),
        ];
        let after = [
            counter("tc_encap", "tc_pod_egress", "encap", 300),
            counter("xdp_pass_no_verdict", "xdp_uplink", "pass_no_verdict", 9),
            counter(
                "tc_drop_vxlan_from_pod",
                "tc_pod_egress",
                "drop_vxlan_from_pod",
                2,
            ),
            counter("uplink_rx", "xdp_uplink", "seen", 1000),
        ];
        let rates = rates(&before, &after, 2.0);
        assert_eq!(rates[0].packets, 100.0);
        assert_eq!(rates[0].bytes, 10_000.0);
        let text = render(&rates);
        let line = |label: &str| {
            text.lines()
                .find(|line| line.starts_with(label))
                .unwrap()
                .to_owned()
        };
        assert!(
            line("carried by the fast path")
                .split_whitespace()
                .any(|w| w == "100"),
            "{text}"
        );
        assert!(
            line("handed to the kernel path")
                .split_whitespace()
                .any(|w| w == "2"),
            "{text}"
        );
        assert!(
            line("dropped").split_whitespace().any(|w| w == "1"),
            "{text}"
        );
        // Busiest first; `seen` is listed but never counted as carried.
        let listed: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("COUNTER"))
            .skip(1)
            .map(|line| line.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            listed,
            [
                "uplink_rx",
                "tc_encap",
                "xdp_pass_no_verdict",
                "tc_drop_vxlan_from_pod"
            ]
        );
    }

    #[test]
    fn a_replaced_map_counts_from_zero() {
        let before = [counter("tc_encap", "tc_pod_egress", "encap", 500)];
        let after = [counter("tc_encap", "tc_pod_egress", "encap", 20)];
        assert_eq!(rates(&before, &after, 1.0)[0].packets, 20.0);
    }
}
