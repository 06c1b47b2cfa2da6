//! Checks that a setting in a shipped config (the package's
//! /etc/default/weft, the DaemonSet's ConfigMap) is one `weft agent` reads,
//! with a value it accepts: the names come from the agent's own clap
//! definition, so a renamed flag breaks the check, not a node.

use anyhow::{Context as _, Result, bail};
use clap::{ArgAction, CommandFactory as _, Parser as _};
use weft_agent::cli::{Cli, FLANNELD_ALIASES};

/// The `weft agent` flag id `name` (a `WEFT_*` or flanneld's `FLANNELD_*`
/// environment name) sets, after checking `value` parses as that flag.
/// An empty value (an unset example) is only checked by name.
pub fn check_agent_setting(name: &str, value: &str) -> Result<String> {
    let weft_name = match name.strip_prefix("FLANNELD_") {
        Some(rest) if FLANNELD_ALIASES.contains(&rest) => format!("WEFT_{rest}"),
        Some(_) => bail!("{name}: the agent reads no such flanneld name"),
        None => name.to_owned(),
    };
    let cli = Cli::command();
    let agent = cli
        .find_subcommand("agent")
        .context("weft has no agent subcommand")?;
    let arg = agent
        .get_arguments()
        .find(|arg| arg.get_env().is_some_and(|env| env == weft_name.as_str()))
        .with_context(|| format!("{name}: no `weft agent` flag reads it"))?;
    let id = arg.get_id().to_string();
    if value.is_empty() {
        return Ok(id);
    }
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        // A switch: the environment takes clap's boolean words.
        if !["true", "false", "1", "0", "yes", "no", "on", "off"].contains(&value) {
            bail!("{name}={value}: not a boolean");
        }
        return Ok(id);
    }
    let flag = format!("--{}={value}", arg.get_long().context("no long flag")?);
    Cli::try_parse_from(["weft", "agent", &flag])
        .map_err(|error| anyhow::anyhow!("{name}={value}: {error}"))?;
    Ok(id)
}

/// Every `weft agent` setting that has an environment name, by flag id.
pub fn agent_settings() -> Vec<(String, String)> {
    let cli = Cli::command();
    let agent = cli
        .find_subcommand("agent")
        .expect("weft has an agent subcommand");
    agent
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            Some((arg.get_id().to_string(), env))
        })
        .collect()
}
