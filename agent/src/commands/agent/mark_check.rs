//! Looks for other rules that use the accept bit (`mark_conflicts.rs`) off
//! the agent's runtime, after the start and after every ruleset change: one
//! look at a time, and one more after it if the ruleset changed meanwhile.

use tokio::sync::mpsc;

use crate::{
    mark_conflicts::{self, Conflict},
    verdicts::Marks,
};

pub type CheckResult = Vec<Conflict>;

pub struct MarkChecks {
    bit: u32,
    running: bool,
    again: bool,
    results: mpsc::Sender<CheckResult>,
}

impl MarkChecks {
    /// Checks for `bit`; results arrive on the returned receiver.
    pub fn new(bit: u32) -> (Self, mpsc::Receiver<CheckResult>) {
        let (results, receiver) = mpsc::channel(1);
        (
            Self {
                bit,
                running: false,
                again: false,
                results,
            },
            receiver,
        )
    }

    /// The ruleset changed: look again (after the look under way, if any).
    pub fn request(&mut self) {
        if self.running {
            self.again = true;
            return;
        }
        self.running = true;
        let (bit, results) = (self.bit, self.results.clone());
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || mark_conflicts::find(bit))
                .await
                .unwrap_or_else(|error| {
                    vec![Conflict::unreadable(&anyhow::anyhow!(
                        "the ruleset check died: {error}"
                    ))]
                });
            let _ = results.send(result).await;
        });
    }

    /// A look finished: start the next if one was asked for meanwhile.
    pub fn finished(&mut self) {
        self.running = false;
        if std::mem::take(&mut self.again) {
            self.request();
        }
    }
}

/// Says which rules use the accept bit, and what weft does about it.
pub fn warn_conflicts(marks: Marks, conflicts: &[Conflict]) {
    let rules: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
    tracing::warn!(
        mark = format_args!("{:#x}", marks.accept),
        rules = %rules.join("; "),
        "other rules use weft's accept bit: the fast path takes no flow and weft leaves the bit alone until they are gone (or pick another --accept-mark)"
    );
}
