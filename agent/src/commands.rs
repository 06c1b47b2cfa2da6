//! What each subcommand does.

use anyhow::{Context as _, Result};

use crate::cli::{Cli, Command};

pub mod agent;
pub mod cleanup;
pub mod maps;
pub mod stats_watch;
pub mod status;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(agent::run(args))
        }
        Command::Maps(args) => maps::maps(&args),
        Command::Cleanup(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(cleanup::cleanup(&args))
        }
        Command::Status(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(status::status(&args))
        }
    }
}
