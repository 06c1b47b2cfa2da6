//! What each subcommand does.

use anyhow::{Context as _, Result};

use crate::cli::{Cli, Command, MapName, MapsArgs};

pub mod agent;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(agent::run(args))
        }
        Command::Maps(args) => maps(&args),
    }
}

fn maps(args: &MapsArgs) -> Result<()> {
    match args.map {
        MapName::Stats => {
            let stats = crate::stats::read_pinned(&args.bpf_pin_dir)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", crate::stats::render_table(&stats));
            }
        }
    }
    Ok(())
}
