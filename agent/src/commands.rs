//! What each subcommand does.

use anyhow::{Context as _, Result};

use crate::cli::{Cli, Command};

pub mod agent;
pub mod cleanup;
pub mod maps;
pub mod placement;
pub mod stats_watch;
pub mod status;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => block_on(agent::run(args)),
        Command::Maps(args) => maps::maps(&args),
        Command::Cleanup(args) => block_on(cleanup::cleanup(&args)),
        Command::Status(args) => block_on(status::status(&args)),
    }
}

/// Runs `work` on a single-threaded runtime (the agent's loop, and the
/// commands that speak netlink).
fn block_on<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(work)
}
