use std::process::ExitCode;

use clap::Parser as _;
use weft_agent::{cli::Cli, commands};

fn main() -> ExitCode {
    weft_agent::cli::apply_flanneld_env_aliases();
    let cli = Cli::parse();
    init_logging();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, naming what was wrong: `{:#}` joins the context chain.
            eprintln!("weft: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
