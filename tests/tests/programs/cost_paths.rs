//! The premise of the benchmark's program cost (bench/src/program_cost.rs):
//! every step frame leaves its program where the step says, with the
//! return value it claims, and every step timed by repetition leaves its
//! frame unchanged (so each repetition runs the same step). A step whose
//! frame exits elsewhere after a program change fails here.
//!
//! Checked by hand: with the "no verdict" step's frame carrying the
//! fixture's accepted flow, the test fails on the step's return value
//! (the frame is decapsulated).

use weft_tests::{privileged, programs::*};

#[test]
fn every_program_cost_step_exits_where_it_claims_and_repeatable_ones_leave_their_frame() {
    let _guard = privileged!(
        "every_program_cost_step_exits_where_it_claims_and_repeatable_ones_leave_their_frame"
    );
    let mut programs = Programs::load(true);
    programs.record_cost_verdicts();
    for path in cost_paths() {
        programs.set_flags(path.flags);
        let last = path.steps.last().expect("a path has steps");
        assert!(
            !last.repeatable
                && path.steps[..path.steps.len() - 1]
                    .iter()
                    .all(|s| s.repeatable)
                || path.steps.iter().all(|s| s.repeatable),
            "{}: only the last step may change its frame",
            path.name
        );
        for step in &path.steps {
            step.assert_exits(&programs, path.hook);
        }
    }
}
