// The binary sees every dependency of its package; the lint is for the library.
#![allow(unused_crate_dependencies)]
use std::process::ExitCode;

use clap::Parser as _;
use weft_agent::{cli::Cli, commands};

fn main() -> ExitCode {
    weft_agent::cli::apply_flanneld_env_aliases();
    let cli = Cli::parse();
    weft_agent::logging::init();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, naming what was wrong: `{:#}` joins the context chain.
            eprintln!("weft: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
