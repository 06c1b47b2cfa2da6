//! The per-packet cost of each eBPF program, step by step: what each map
//! lookup and helper on the decap and encap paths costs, timed by the
//! kernel (BPF_PROG_TEST_RUN and BPF run-time statistics).
//!
//! The production programs run on frames that leave them at successive
//! exits (`weft_tests::programs::cost_paths`). Every exit but a path's last
//! passes its frame unchanged, so one call repeats it `repeat` times, warm,
//! as a stream of alike packets runs; the difference between successive
//! steps is what the program did between them. The last step (the decap or
//! encap itself) changes its frame, and the kernel does not restore the
//! frame between repetitions of one call, so it runs once per call; its
//! warm cost is estimated from the step before it, which is also timed once
//! per call: last warm = previous warm + (last - previous, both one run per
//! call), so the two cold starts cancel.
//!
//! The clock is the kernel's BPF run-time statistics (`sched_clock` around
//! each run of the program alone), for repeated and single runs alike. The
//! `duration` BPF_PROG_TEST_RUN returns is the whole loop's time divided
//! by `repeat`: it adds the loop's own overhead and, while run-time
//! statistics are on, their clock reads.

use anyhow::{Context as _, Result, ensure};
use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
    sys::{Stats, enable_stats},
};
use serde::Serialize;
use weft_common::{CounterId, Hook, Reason, program_names};
use weft_tests::programs::{CostPath, CostStep, Counts, Programs, cost_paths};

/// How much to time: `rounds` rounds, each step once per round.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CostEffort {
    pub rounds: u32,
    /// Repetitions in one call, for a step that leaves its frame unchanged.
    pub repeat: u32,
    /// Calls of one run each, per step and round.
    pub calls: u32,
}

impl CostEffort {
    /// The full bench's effort, or `--quick`'s.
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 5,
                repeat: 20_000,
                calls: 2_000,
            }
        } else {
            Self {
                rounds: 7,
                repeat: 100_000,
                calls: 10_000,
            }
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgramCost {
    /// What the figures are: rounds, repetitions and calls per step.
    pub rounds: u32,
    pub repeat: u32,
    pub calls: u32,
    pub paths: Vec<PathCost>,
    /// The goal's figure: the XDP decap path's last step (a whole decap)
    /// over its first (the pass-through calibration), warm.
    pub xdp_decap_over_pass_ns: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PathCost {
    /// `program path`, e.g. `xdp_uplink decap`.
    pub path: String,
    pub steps: Vec<StepCost>,
    /// The last step over the first (the pass-through calibration), warm.
    pub over_pass_ns: f64,
    /// The same from one run per call each (what the bench reported before
    /// it timed steps; each figure carries its own cold start).
    pub over_pass_one_per_call_ns: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StepCost {
    /// The counter the step's frame leaves under (checked every round).
    pub exit: String,
    /// What the program does for this step beyond the previous one.
    pub adds: String,
    /// ns per run, warm: median over rounds of the mean of `repeat`
    /// repetitions in one call; for a step that changes its frame
    /// (`repeated` false), estimated from the previous step (see above).
    pub ns: f64,
    /// The lowest and highest round's figure.
    pub ns_min: f64,
    pub ns_max: f64,
    pub repeated: bool,
    /// `ns` minus the previous step's `ns`: the cost of `adds` (0 for the
    /// first step).
    pub over_previous_ns: f64,
    /// ns per run, one run per call (cold: caches, branch predictors and
    /// map lookups start from the syscall), median over rounds of `calls`.
    pub one_per_call_ns: f64,
}

/// Times every cost path. Fails if a step's frame leaves its program
/// anywhere but its step's exit (then the figure would time another path).
pub fn program_cost(effort: CostEffort) -> Result<ProgramCost> {
    let mut programs = Programs::load(true);
    programs.record_cost_verdicts();
    let _stats = enable_stats(Stats::RunTime).context("cannot enable BPF run-time statistics")?;
    let paths = cost_paths();
    // Per path, per step: each round's (warm, one per call) figure.
    let mut rounds: Vec<Vec<Vec<(f64, f64)>>> = paths
        .iter()
        .map(|path| vec![Vec::new(); path.steps.len()])
        .collect();
    // Rounds outermost, so drift on the shared machine spreads over all
    // steps alike.
    for _ in 0..effort.rounds {
        for (path, figures) in paths.iter().zip(&mut rounds) {
            programs.set_flags(path.flags);
            for (step, figures) in path.steps.iter().zip(figures.iter_mut()) {
                let warm = if step.repeatable {
                    time_step(&programs, path, step, effort.repeat, 1)?
                } else {
                    f64::NAN
                };
                let cold = time_step(&programs, path, step, 1, effort.calls)?;
                figures.push((warm, cold));
            }
        }
    }
    let paths: Vec<PathCost> = paths
        .iter()
        .zip(rounds)
        .map(|(path, figures)| path_cost(path, &figures))
        .collect();
    let xdp_decap_over_pass_ns = paths
        .iter()
        .find(|path| path.path == "xdp_uplink decap")
        .context("no XDP decap path")?
        .over_pass_ns;
    Ok(ProgramCost {
        rounds: effort.rounds,
        repeat: effort.repeat,
        calls: effort.calls,
        paths,
        xdp_decap_over_pass_ns,
    })
}

/// The path's figures from each step's per-round (warm, one per call).
fn path_cost(path: &CostPath, figures: &[Vec<(f64, f64)>]) -> PathCost {
    let mut steps: Vec<StepCost> = Vec::new();
    let mut previous_warm: Option<Vec<f64>> = None;
    let mut previous_cold: Option<Vec<f64>> = None;
    for (step, rounds) in path.steps.iter().zip(figures) {
        let cold: Vec<f64> = rounds.iter().map(|(_, cold)| *cold).collect();
        let warm: Vec<f64> = if step.repeatable {
            rounds.iter().map(|(warm, _)| *warm).collect()
        } else {
            // Round by round: the previous step warm, plus what this step
            // adds with both cold.
            let (Some(warm), Some(before)) = (&previous_warm, &previous_cold) else {
                unreachable!("cost_paths: a first step always repeats");
            };
            (0..rounds.len())
                .map(|round| warm[round] + cold[round] - before[round])
                .collect()
        };
        let ns = median(&warm);
        steps.push(StepCost {
            exit: step.exit.name().to_owned(),
            adds: step.adds.to_owned(),
            ns,
            ns_min: warm.iter().copied().fold(f64::INFINITY, f64::min),
            ns_max: warm.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            repeated: step.repeatable,
            over_previous_ns: steps.last().map_or(0.0, |previous| ns - previous.ns),
            one_per_call_ns: median(&cold),
        });
        previous_warm = Some(warm);
        previous_cold = Some(cold);
    }
    let (first, last) = (&steps[0], &steps[steps.len() - 1]);
    PathCost {
        path: path.name.to_owned(),
        over_pass_ns: last.ns - first.ns,
        over_pass_one_per_call_ns: last.one_per_call_ns - first.one_per_call_ns,
        steps,
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// ns per run of `step`: `calls` calls of `repeat` runs each, timed by the
/// run-time statistics; checks every call's return value and, after all of
/// them, that the step's exit counter (and no other but `Seen`) rose by
/// one per run.
fn time_step(
    programs: &Programs,
    path: &CostPath,
    step: &CostStep,
    repeat: u32,
    calls: u32,
) -> Result<f64> {
    let counters = programs.counters();
    let runs = u64::from(repeat) * u64::from(calls);
    let (time, count) = match path.hook {
        Hook::XdpUplink => {
            let program: &Xdp = programs
                .ebpf
                .program(program_names::XDP_UPLINK)
                .context("no xdp_uplink")?
                .try_into()?;
            timed(
                || program.info(),
                || run_calls(program, step, repeat, calls),
            )?
        }
        hook => {
            let name = match hook {
                Hook::TcUplink => program_names::TC_UPLINK,
                Hook::TcPodEgress => program_names::TC_POD_EGRESS,
                other => anyhow::bail!("no cost path runs {}", other.name()),
            };
            let program: &SchedClassifier = programs
                .ebpf
                .program(name)
                .context("no TC program")?
                .try_into()?;
            timed(
                || program.info(),
                || run_calls(program, step, repeat, calls),
            )?
        }
    };
    ensure!(
        count == runs,
        "{} {}: the kernel counted {count} of {runs} runs",
        path.name,
        step.exit
    );
    exited_only_at(&counters, &programs.counters(), step.exit, runs)
        .with_context(|| format!("{}: a step frame left elsewhere", path.name))?;
    Ok(time.as_nanos() as f64 / runs as f64)
}

/// The kernel's run time and run count of a program across `run`, read
/// from its run-time statistics (`info`) before and after.
fn timed(
    info: impl Fn() -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
    run: impl FnOnce() -> Result<()>,
) -> Result<(std::time::Duration, u64)> {
    let before = info()?;
    run()?;
    let after = info()?;
    Ok((
        after.run_time() - before.run_time(),
        after.run_count() - before.run_count(),
    ))
}

fn run_calls<P>(program: &P, step: &CostStep, repeat: u32, calls: u32) -> Result<()>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // Room for what encapsulation adds.
    let mut out = vec![0u8; step.frame.len() + 256];
    for _ in 0..calls {
        let result = program.test_run(TestRunOptions {
            data_in: Some(&step.frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        })?;
        ensure!(
            result.return_value == step.action,
            "{}: returned {} instead of {}",
            step.exit,
            result.return_value,
            step.action
        );
        // A repeated step must leave its frame as it found it, or the
        // repetitions after the first would time another path.
        ensure!(
            !step.repeatable || out[..result.data_size_out as usize] == step.frame[..],
            "{}: the frame changed, so its repetitions would differ",
            step.exit
        );
    }
    Ok(())
}

/// Whether exactly `exit` rose by `runs` (the `Seen` counters aside).
fn exited_only_at(before: &Counts, after: &Counts, exit: CounterId, runs: u64) -> Result<()> {
    for (counter, value) in after {
        if counter.reason == Reason::Seen {
            continue;
        }
        let rose = value - before[counter];
        let expected = if *counter == exit { runs } else { 0 };
        ensure!(
            rose == expected,
            "counter {counter} rose by {rose}, expected {expected} (the step exits at {exit})"
        );
    }
    Ok(())
}

/// The program-cost part of the printed report.
pub fn program_cost_table(cost: &ProgramCost) -> String {
    let mut table = format!(
        "program cost (BPF_PROG_TEST_RUN on the production programs, kernel run-time stats; \
         median of {} rounds of {} repetitions per step, warm; 1/call: {} calls of one run)\n",
        cost.rounds, cost.repeat, cost.calls
    );
    for path in &cost.paths {
        table.push_str(&format!(
            "  {}: +{:.0} ns over the pass-through (+{:.0} ns one run per call each)\n",
            path.path, path.over_pass_ns, path.over_pass_one_per_call_ns
        ));
        table.push_str(&format!(
            "    {:<38} {:>7} {:>15} {:>7} {:>8}  {}\n",
            "exit", "ns", "rounds", "step", "1/call", "adds"
        ));
        for step in &path.steps {
            table.push_str(&format!(
                "    {:<38} {:>7.1} {:>15} {:>+7.1} {:>8.1}  {}{}\n",
                step.exit,
                step.ns,
                format!("{:.1}-{:.1}", step.ns_min, step.ns_max),
                step.over_previous_ns,
                step.one_per_call_ns,
                step.adds,
                if step.repeated {
                    ""
                } else {
                    " (estimated: changes its frame)"
                }
            ));
        }
    }
    table
}
